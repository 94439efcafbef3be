"""Other traffic on a shaped, impaired link moves no truth figure.

While loadgen probes a host behind tbf and an nftables random drop faster than the link lets
through (and a reflector host beside it), both ends of each link also carry ARP requests and
replies, IPv6 neighbour solicitations, a UDP trickle both ways with the port unreachables it
provokes, and echo requests that are not probes. loadgen's counts still equal the truth exactly,
and the other traffic is seen to have gone round the shaper and past every probe counter. For
IPv6 probes the UDP trickle and the strays are IPv6 too, and each end solicits the other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from loadgen.lab import Lab, LabHost
from loadgen.lab.hostcfg import root_counter
from loadgen.lab.netops import in_netns, nft_counters, read_snmp

from .chatter import Chatter
from .conftest import Labs, assert_counts_match, measure, told_of_shaper_drops

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(60)]

# tx_path -> (rate in total, probes per host). An AF_PACKET sender is told of tbf's drops and
# sends again, so its probes to the shaped host cannot go faster than the link: fewer of them
# (a raw IPv6 socket is told too: IPv6 probes take the packet path's numbers).
PATHS = {"ip": (20_000, 20_000), "packet": (2_000, 2_000)}
ROUNDS, EVERY_S = 300, 0.004  # the chatter: ~1.5 s; per host 1,800 frames, 600 datagrams
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


def _chatter_while_probing(
    busy: LabHost, before: int, hosts: list[LabHost], out: dict[str, Any], version: int
) -> None:
    """Wait for loadgen's first probes on the shaped link, then chatter on every host's link
    alongside them (loadgen runs meanwhile; the truth is read only after this returns)."""
    deadline = time.monotonic() + START_WITHIN_S
    key = root_counter("req_out", busy.index, version)
    while (seen := nft_counters(None, busy.nft_table, "netdev")[key]) == before:
        assert time.monotonic() < deadline, f"no probe left within {START_WITHIN_S:.0f} s"
        time.sleep(0.005)
    out["probes_when_started"] = seen - before
    chatters = [Chatter(h, version) for h in hosts]
    try:
        for _ in range(ROUNDS):
            for c in chatters:
                c.round()
            time.sleep(EVERY_S)
    finally:
        for c in chatters:
            c.close()
    out["sent"] = {h.address_of(version): c.sent for h, c in zip(hosts, chatters, strict=True)}


@pytest.fixture(scope="module")
def lab(module_labs: Labs) -> Lab:
    return module_labs(
        [
            {"name": "busy", "rate_limit": "512kbit", "drop": 0.05},  # the kernel answers
            {"name": "echo", "duplicate": 0.05, "drop": 0.05},  # a reflector answers
        ],
        seed=11,
    )


# "packet" writes whole frames to the link (AF_PACKET): they pass the same tc and egress hooks.
@pytest.mark.parametrize("tx_path", PATHS)
def test_counts_equal_the_truth_with_other_traffic_on_the_link(
    lab: Lab, tx_path: str, version: int, tmp_path: Path
) -> None:
    if tx_path == "packet" and version == 6:
        pytest.skip('tx_path = "packet" refuses IPv6 targets')
    busy, echo = lab.host("busy"), lab.host("echo")
    told = told_of_shaper_drops(tx_path, version)
    rate_pps, probes = PATHS["packet" if told else "ip"]
    key = root_counter("req_out", busy.index, version)
    before = nft_counters(None, busy.nft_table, "netdev")[key]
    around_before, snmp_before = _around_the_shaper(busy), _host_stats(busy)
    out: dict[str, Any] = {}
    run, truth = measure(
        lab,
        [busy, echo],
        tmp_path,
        version,
        rate_pps=rate_pps,
        count=probes,
        tx_path=tx_path,
        during=lambda pid: _chatter_while_probing(busy, before, [busy, echo], out, version),
    )
    assert out["probes_when_started"] < probes, "the chatter began after the last probe"
    assert_counts_match(run, truth)
    for h in (busy, echo):
        t, got = truth[h.address_of(version)], run.counts(h.address_of(version))
        refused = t.root_link.shaped_drops if told else 0
        assert got.sent == probes == t.requests_out - refused, h.name
        assert t.nft_dropped_random > 0 and t.icmp_errors_out == t.errors_back == 0, h.name

    # The shaped link: its tbf took probes too, and nothing else.
    address, echo_address = busy.address_of(version), echo.address_of(version)
    t, got, sent = truth[address], run.counts(address), out["sent"][address]
    assert t.root_link.shaped_drops > 0
    assert t.lost_towards_host == t.root_link.shaped_drops
    if told:  # each tbf drop was refused (ENOBUFS) and sent again: not lost
        assert got.lost == t.nft_dropped + t.host_link.shaped_drops
    else:
        assert got.lost == t.root_link.shaped_drops + t.nft_dropped + t.host_link.shaped_drops
    # The other traffic was there, went round the shaper on both ends, and reached the host:
    # ARP, neighbour solicitations, UDP and port unreachables, the stray echo requests.
    around_after = _around_the_shaper(busy)
    root_around, host_around = (a - b for a, b in zip(around_after, around_before, strict=True))
    per_end = sent.frames // 2 + sent.datagrams // 2
    assert root_around >= per_end + sent.strays, (root_around, sent)
    assert host_around >= per_end, (host_around, sent)
    snmp, udp = _host_stats(busy), "Udp" if version == 4 else "Udp6"
    assert snmp[udp]["NoPorts"] - snmp_before[udp]["NoPorts"] == sent.datagrams // 2
    # The kernel answered the stray echo requests; no probe counter counted them.
    assert t.requests_seen == t.echo_requests_in - t.nft_dropped + sent.strays

    # The reflector host: the strays reached its reflector, which left them unanswered.
    r = truth[echo_address].reflector
    assert r is not None and r.duplicated > 0
    assert r.foreign == out["sent"][echo_address].strays > 0
