"""Other traffic on a shaped, impaired link moves no truth figure.

While loadgen probes a host behind tbf and an nftables random drop faster than the link lets
through, both ends of its link also carry ARP requests and replies, IPv6 neighbour
solicitations, a UDP trickle both ways with the port unreachables it provokes, and echo requests
that are not probes. loadgen's counts still equal the truth exactly, and the other traffic is
seen to have gone round the shaper and past every probe counter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from loadgen.lab import Lab, LabHost
from loadgen.lab.netops import in_netns, nft_counters, read_snmp

from .chatter import Chatter, Sent
from .conftest import Labs, assert_counts_match, measure

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(60)]

RATE_PPS = 20_000
PROBES = 20_000
ROUNDS, EVERY_S = 300, 0.004  # the chatter: ~1.5 s, 3,600 frames and 600 datagrams at most
START_WITHIN_S = 20.0


def _direct_packets(ipr: IPRoute, ifname: str) -> int:
    """Packets htb sent by its direct queue on `ifname`: whatever matched no probe filter."""
    index = ipr.link_lookup(ifname=ifname)[0]
    for q in ipr.get_qdiscs(index=index):
        if q.get_attr("TCA_KIND") == "htb" and q["parent"] == 0xFFFFFFFF:
            return int(q.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_INIT")["direct_pkts"])
    raise AssertionError(f"no htb root on {ifname}: the link is not shaped")


def _around_the_shaper(host: LabHost) -> tuple[int, int]:
    with IPRoute() as ipr:
        root = _direct_packets(ipr, host.root_ifname)
    with IPRoute(netns=host.netns) as nsr:
        inside = _direct_packets(nsr, host.ns_ifname)
    return root, inside


def _host_stats(host: LabHost) -> dict[str, dict[str, int]]:
    return in_netns(host.netns, read_snmp)


def _chatter_while_probing(host: LabHost, before: int, out: dict[str, Any]) -> None:
    """Wait for loadgen's first probes on the link, then chatter alongside them (loadgen runs
    meanwhile; the truth is read only after this returns and the run has ended)."""
    deadline = time.monotonic() + START_WITHIN_S
    key = f"req_out_{host.index}"
    while (seen := nft_counters(None, host.nft_table, "netdev")[key]) == before:
        assert time.monotonic() < deadline, f"no probe left within {START_WITHIN_S:.0f} s"
        time.sleep(0.005)
    out["probes_when_started"] = seen - before
    chatter = Chatter(host)
    try:
        out["sent"] = chatter.run(ROUNDS, EVERY_S)
    finally:
        chatter.close()


@pytest.fixture(scope="module")
def lab(module_labs: Labs) -> Lab:
    return module_labs([{"name": "busy", "rate_limit": "512kbit", "drop": 0.05}], seed=11)


def test_counts_equal_the_truth_with_other_traffic_on_the_link(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("busy")
    before = nft_counters(None, host.nft_table, "netdev")[f"req_out_{host.index}"]
    around_before, snmp_before = _around_the_shaper(host), _host_stats(host)
    out: dict[str, Any] = {}
    run, truth = measure(
        lab,
        [host],
        tmp_path,
        rate_pps=RATE_PPS,
        count=PROBES,
        during=lambda pid: _chatter_while_probing(host, before, out),
    )
    sent: Sent = out["sent"]
    assert out["probes_when_started"] < PROBES, "the chatter began after the last probe"

    t = truth[host.address]
    assert_counts_match(run, truth)
    got = run.counts(host.address)
    assert got.sent == PROBES == t.requests_out
    # The link's tbf and the nftables drop both took probes: the figures are not trivially 0.
    assert t.root_link.shaped_drops > 0 and t.nft_dropped_random > 0
    assert t.lost_towards_host == t.root_link.shaped_drops
    assert got.lost == t.root_link.shaped_drops + t.nft_dropped + t.host_link.shaped_drops

    # The other traffic was there, went round the shaper on both ends, and reached the host:
    # ARP, neighbour solicitations, UDP and port unreachables, the stray echo requests.
    around_after = _around_the_shaper(host)
    root_around, host_around = (a - b for a, b in zip(around_after, around_before, strict=True))
    per_end = sent.frames // 2 + sent.datagrams // 2
    assert root_around >= per_end + sent.strays, (root_around, sent)
    assert host_around >= per_end, (host_around, sent)
    snmp = _host_stats(host)
    assert snmp["Udp"]["NoPorts"] - snmp_before["Udp"]["NoPorts"] == sent.datagrams // 2
    # The kernel answered the stray echo requests; no probe counter counted them.
    assert t.requests_seen == t.echo_requests_in - t.nft_dropped + sent.strays
    assert t.icmp_errors_out == t.errors_back == 0  # port unreachables quote no probe
