"""The lab's TCP hosts: open (a listener), closed (kernel RST), filtered (nft drop), unreachable
(nft rejects with an ICMP error), a random share of SYNs dropped and a SYN-cookie host with a
tiny backlog, for both IP versions; their
nft counters against an independent client, and nothing left behind after teardown."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from loadgen.lab import Lab, lab_up, parse_lab_spec, remains
from loadgen.lab.reap import is_reflector
from loadgen.lab.tcptruth import tcp_expected

from .tcpburst import burst

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(120)]

PORT = 80
N = 200
HOSTS: list[dict[str, object]] = [
    {"name": "open", "tcp_open": [PORT, 8080]},
    {"name": "closed", "tcp_closed": [PORT]},
    {"name": "filtered", "tcp_filtered": [PORT], "tcp_open": [8080]},
    {"name": "lossy", "tcp_open": [PORT], "tcp_drop": 0.3},
    {"name": "cookie", "tcp_open": [PORT], "tcp_backlog": 1, "tcp_syncookies": 2},
    {"name": "unreach", "tcp_unreachable": [PORT]},
    {"name": "icmp_only"},
]


@pytest.fixture
def tcp_lab(prefix: str) -> Iterator[Lab]:
    spec = parse_lab_spec({"prefix": prefix, "seed": 3, "hosts": HOSTS}, source="test")
    with lab_up(spec) as lab:
        yield lab


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_counters_match_an_independent_client_exactly(tcp_lab: Lab, version: int) -> None:
    lab = tcp_lab
    before = lab.tcp_truth(version=version)
    assert lab.host("icmp_only").address_of(version) not in before  # serves no TCP: no truth
    seen = {h.name: burst(h.address_of(version), PORT, N) for h in lab.hosts[:6]}
    # ICMP pings and a connect to an unserved port are not our probes: no TCP counter moves.
    subprocess.run(
        ["ping", "-c", "2", "-i", "0.01", lab.host("open").address_of(version)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    burst(lab.host("open").address_of(version), 9, 5)
    after = lab.tcp_truth(version=version)
    truth = {
        h.name: after[h.address_of(version)].since(before[h.address_of(version)])
        for h in lab.hosts[:6]
    }
    for name, b in seen.items():
        t = truth[name]
        assert b.other == (N if name == "unreach" else 0), name
        assert t.syn_out == t.syn_in == N, name
        exp = tcp_expected(t)
        assert (exp.sent, exp.received, exp.refused) == (N, b.established + b.refused, b.refused)
        assert (exp.lost, exp.errored) == (b.timed_out, b.other), name
    assert seen["open"].established == truth["open"].synack_out == N
    assert seen["closed"].refused == truth["closed"].rst_out == truth["closed"].out_rsts == N
    assert seen["filtered"].timed_out == truth["filtered"].syn_filtered == N
    lossy = truth["lossy"]
    assert 0 < lossy.syn_dropped == seen["lossy"].timed_out < N
    assert lossy.synack_out == seen["lossy"].established == N - lossy.syn_dropped
    # A backlog of 1 under 200 SYNs at once: every answer is a cookie, the rest are dropped by
    # the full accept queue (ListenDrops), which no nft rule sees.
    cookie = truth["cookie"]
    assert cookie.syncookies_sent == cookie.synack_out == seen["cookie"].established
    assert cookie.listen_drops == seen["cookie"].timed_out > 0


def test_tcp_lab_down_stops_listeners_and_leaves_nothing(prefix: str) -> None:
    spec = parse_lab_spec({"prefix": prefix, "seed": 3, "hosts": HOSTS}, source="test")
    lab = lab_up(spec)
    try:
        pids = [h.listener_pid for h in lab.hosts if h.impairments.tcp_open]
        assert len(pids) == 4 and all(p is not None and is_reflector(p) for p in pids)
        assert lab.host("open").listener_pid != lab.host("lossy").listener_pid
        assert burst(lab.host("open").address, 8080, 3).established == 3
    finally:
        lab.close()
    assert remains(prefix) == []
    assert not any(p is not None and is_reflector(p) for p in pids)
