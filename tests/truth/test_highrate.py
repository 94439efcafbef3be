"""100k probes per second, the design point, against hosts whose kernel answers (the fast path):
a clean host and one behind nftables drops. Counts are exact; if loadgen's own socket dropped
replies, it must say so, and the difference must be exactly that many.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.lab import Lab

from .conftest import Labs, assert_counts_match, measure

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(90)]

RATE_PPS = 100_000
SECONDS = 2


@pytest.fixture
def lab(make_lab: Labs) -> Lab:
    return make_lab([{"name": "clean"}, {"name": "nftdrop", "drop": 0.02, "drop_every": 50}])


def test_100k_pps_counts_equal_the_truth(lab: Lab, tmp_path: Path) -> None:
    hosts = list(lab.hosts)
    per_target = RATE_PPS * SECONDS // len(hosts)
    run, truth = measure(lab, hosts, tmp_path, rate_pps=RATE_PPS, count=per_target, workers=2)
    # Every worker owns one host, so a drop at its socket belongs to that host (rx_dropped).
    assert_counts_match(run, truth)
    for h in hosts:
        got = run.counts(h.address)
        assert got.sent == per_target == truth[h.address].echo_requests_in
        assert truth[h.address].responder_missed == 0
    t = truth[lab.host("nftdrop").address]
    assert t.nft_dropped_every == per_target // 50
    assert run.counts(lab.host("nftdrop").address).lost == t.nft_dropped + run.rx_dropped(
        lab.host("nftdrop").address
    )
    # The generator kept its rate (or says in which seconds it could not).
    outcome = run.result.outcome
    elapsed_s = (outcome.end_ns - outcome.start_ns) / 1e9
    assert elapsed_s < SECONDS * 3, elapsed_s
