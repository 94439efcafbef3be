"""The truth over the datagram path: loadgen on datagram ICMP sockets counts known loss (nft
drops) and ICMP errors (a reflector's unreachables, read from the error queue) exactly, for
IPv4 and IPv6. The whole lab lives under a network namespace of the test's own, where
ping_group_range is opened, so the machine's setting is never touched; the lab's prefix is
swept from outside too, however the child ends.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from private_netns import in_private_netns

from loadgen.lab import lab_down, lab_up, parse_lab_spec, remains, truth_since

from .conftest import assert_counts_match, run_loadgen

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(180)]

HOSTS = [
    {"name": "nftdrop", "drop": 0.05, "drop_every": 10},
    {"name": "unreach", "unreachable": 0.05},
]
RATE, COUNT = 2_000, 2_000


def _measure(prefix: str, version: int, tmp_path: Path) -> dict[str, dict[str, int]]:
    spec = parse_lab_spec({"prefix": prefix, "seed": 11, "hosts": HOSTS}, source="truth")
    with lab_up(spec) as lab:
        hosts = [lab.host(h["name"]) for h in HOSTS]  # type: ignore[arg-type]
        before = lab.truth(hosts, version)
        run = run_loadgen(
            tmp_path,
            [h.address_of(version) for h in hosts],
            rate_pps=RATE,
            count=COUNT,
            icmp_socket="datagram",
        )
        lab.wait_idle()
        after = lab.truth(hosts, version)
        truth = {a: truth_since(after[a], before[a]) for a in after}
        assert str(run.result.plan.icmp_path) == "datagram"
        assert_counts_match(run, truth)
        return {h.name: vars_of(run.counts(h.address_of(version))) for h in hosts}


def vars_of(counts: object) -> dict[str, int]:
    return {k: getattr(counts, k) for k in counts.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
def test_datagram_path_counts_equal_the_truth(version: int, tmp_path: Path) -> None:
    prefix = "lgdg" + secrets.token_hex(2)
    try:
        got = in_private_netns(lambda: _measure(prefix, version, tmp_path), timeout_s=150)
    finally:
        lab_down(prefix)
    assert not remains(prefix)
    assert got["nftdrop"]["sent"] == COUNT and got["nftdrop"]["lost"] >= COUNT // 10
    assert got["unreach"]["errored"] > 0 and got["unreach"]["icmp_errors"] > 0
    assert got["unreach"]["lost"] == 0
