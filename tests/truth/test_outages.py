"""Outages and loss bursts against a lab host that drops known runs of consecutive probes.

The host drops the last R of every N echo requests it receives (`drop_every` + `drop_run`),
by nftables (`numgen inc`) or by its seeded reflector. Where in that cycle the run starts is
read off the host's own counters before it (requests its numgen or reflector already counted),
so the lost probes, hence every burst, are known exactly; loadgen's outage figures must equal
them. These labs carry the prefix "lgo" + 4 hex digits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.lab import truth_since
from loadgen.outages import Outages

from .conftest import Labs, _labs, assert_counts_match, run_loadgen

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(90)]

EVERY, RUN = 25, 4  # the last 4 of every 25 requests, in a row
COUNT, RATE_PPS = 600, 600


@pytest.fixture
def outage_labs() -> Iterator[Labs]:
    yield from _labs("lgo")


def expected_bursts(phase: int, count: int) -> list[int]:
    """Lengths of the runs of dropped probes among `count` probes, the first of which is the
    host's request number phase + 1 (requests are counted from 1)."""
    lengths, run = [], 0
    for i in range(count):
        if (phase + i) % EVERY >= EVERY - RUN:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return [*lengths, run] if run else lengths


@pytest.mark.parametrize("drop_by", ["nft", "reflector"])
def test_outages_equal_the_hosts_drop_runs(
    outage_labs: Labs, drop_by: str, version: int, tmp_path: Path
) -> None:
    lab = outage_labs([{"name": "runs", "drop_every": EVERY, "drop_run": RUN, "drop_by": drop_by}])
    host = lab.host("runs")
    address = host.address_of(version)
    before = lab.truth([host], version)[address]
    if drop_by == "nft":
        phase = before.echo_requests_in  # every request so far went past its numgen
    else:
        assert before.reflector is not None
        phase = before.reflector.requests_seen
    run = run_loadgen(tmp_path, [address], rate_pps=RATE_PPS, count=COUNT, outage_min=3)
    lab.wait_idle()
    truth = {address: truth_since(lab.truth([host], version)[address], before)}
    assert truth[address].responder_missed == 0, "the responder fell behind: not our drops"
    assert_counts_match(run, truth)

    lengths = expected_bursts(phase, COUNT)
    got = run.result.outcome.summary.outages[run.index(address)]
    classes = (
        sum(1 for n in lengths if n == 1),
        sum(1 for n in lengths if n == 2),
        sum(1 for n in lengths if 3 <= n <= 9),
        sum(1 for n in lengths if n >= 10),
    )
    assert got.bursts == classes
    assert got.count == sum(1 for n in lengths if n >= 3)
    assert got.longest_probes == max(lengths)
    assert run.counts(address).lost == sum(lengths)
    # A burst lasts from its first lost probe's send to the next probe's (1/600 s apart):
    # send times, not counted truths, so only bounds that pacing cannot break.
    assert 0 < got.longest_ns <= got.total_ns < COUNT / RATE_PPS * 1e9
    summary = run.rows[-1]
    row = summary["targets"][run.index(address)]
    assert (row["outages"], row["outage_longest_probes"]) == (got.count, got.longest_probes)
    assert row["loss_bursts"] == dict(zip(("1", "2", "3-9", "10+"), classes, strict=True))
    assert row["outage_total_ms"] == round(got.total_ns / 1e6, 3)
    assert run.result.outcome.summary.outages_total == Outages(
        got.count, got.longest_probes, got.longest_ns, got.total_ns, got.bursts
    )
