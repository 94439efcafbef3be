"""Link-layer sending (tx_path = "packet"): the IPv4 headers loadgen writes itself, next hops
read from a namespace's routing and neighbour tables, and a whole run over veth whose every
probe the responder's kernel counted and loadgen accounted for."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2 import IPRoute

from loadgen.bench.topology import CLIENT_ADDR, CLIENT_IF, RESPONDER_IF, bench_net
from loadgen.errors import ProfileError, TargetError
from loadgen.lab.netops import in_netns
from loadgen.net.linkpath import ETH_P_IP, SOCKADDR_LL, LinkHop, resolve_hops
from loadgen.profile import parse_profile
from loadgen.wire import icmp
from loadgen.wire.batch import EchoBuilder, Ipv4Headers

u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=60, deadline=None)
@given(
    src=u32,
    dst=st.lists(u32, min_size=1, max_size=8),
    seqs=st.lists(st.integers(0, 2**40), min_size=1, max_size=8),
    ttl=st.integers(1, 255),
    tos=st.integers(0, 255),
)
def test_headers_match_the_reference_and_verify(
    src: int, dst: list[int], seqs: list[int], ttl: int, tos: int
) -> None:
    n = min(len(dst), len(seqs))
    local = np.arange(n) % len(dst)
    seq = np.array(seqs[:n], np.uint64)
    builder = EchoBuilder(0x4242, 7, 56, headroom=20)
    rows = builder.build(np.zeros(n, np.uint32), seq, 5)
    headers = Ipv4Headers(np.full(len(dst), src), np.array(dst), ttl=ttl, tos=tos, total_len=84)
    headers.write(rows, local, seq)
    for i in range(n):
        message = rows[i, 20:].tobytes()
        want = bytearray(
            icmp.build_ipv4_packet(
                src, dst[local[i]], 1, message, ttl=ttl, tos=tos, ip_id=seqs[i] & 0xFFFF
            )
        )
        want[6] |= 0x40  # DF, which the reference does not set
        want[10:12] = b"\0\0"
        want[10:12] = icmp.checksum(bytes(want[:20])).to_bytes(2, "big")
        assert rows[i].tobytes() == bytes(want)
        assert icmp.checksum(rows[i, :20].tobytes()) == 0  # the header verifies


def test_headroom_leaves_the_message_unchanged() -> None:
    seq = np.arange(5, dtype=np.uint64) * 70_001
    targets = np.arange(5, dtype=np.uint32)
    plain = EchoBuilder(1, 2, 100).build(targets, seq, 9).copy()
    roomy = EchoBuilder(1, 2, 100, headroom=20).build(targets, seq, 9)
    assert roomy.shape == (5, 20 + plain.shape[1]) and (roomy[:, 20:] == plain).all()


def test_sockaddr_ll_layout() -> None:
    hop = LinkHop(1, 2, ifindex=7, ifname="x", hatype=1, lladdr=bytes.fromhex("0200c612aabb"))
    family, proto, ifindex, hatype, pkttype, halen, addr = SOCKADDR_LL.unpack(hop.sockaddr())
    assert (family, proto, ifindex, hatype, pkttype, halen) == (
        socket.AF_PACKET,
        socket.htons(ETH_P_IP),
        7,
        1,
        0,
        6,
    )
    assert addr[:6] == hop.lladdr and SOCKADDR_LL.size == 20


def test_packet_path_and_tx_stamps_do_not_mix() -> None:
    with pytest.raises(ProfileError, match="tx_path"):
        parse_profile(
            {"targets": ["198.18.1.1"], "tx_path": "packet", "tx_timestamps": True}, source="p"
        )
    with pytest.raises(ProfileError, match="tx_path"):
        parse_profile({"targets": ["198.18.1.1"], "tx_path": "ethernet"}, source="p")


@pytest.mark.root
def test_hops_come_from_the_namespace_tables() -> None:
    with bench_net(2) as net:
        targets = [int(ipaddress.IPv4Address(a)) for a in net.targets[:2]]
        # A fresh namespace has no neighbour entry for the gateway: this solicits it.
        hops = in_netns(net.client_ns, lambda: resolve_hops(targets))
        with IPRoute(netns=net.responder_ns) as ipr:
            mac = ipr.get_links(ipr.link_lookup(ifname=RESPONDER_IF)[0])[0].get_attr("IFLA_ADDRESS")
        assert [h.address for h in hops] == targets
        for hop in hops:
            assert hop.ifname == CLIENT_IF and hop.hatype == 1
            assert hop.source == int(ipaddress.IPv4Address(CLIENT_ADDR))
            assert hop.lladdr == bytes.fromhex(mac.replace(":", ""))
        unrouted = int(ipaddress.IPv4Address("198.19.255.1"))
        with pytest.raises(TargetError, match=r"no route to 198\.19\.255\.1"):
            in_netns(net.client_ns, lambda: resolve_hops([unrouted]))
        loopback = int(ipaddress.IPv4Address("127.0.0.1"))
        with pytest.raises(TargetError, match="is this host"):
            in_netns(net.client_ns, lambda: resolve_hops([loopback]))


@pytest.mark.root
def test_a_run_over_the_link_path_accounts_for_every_probe(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    with bench_net(8) as net:
        before = net.responder.read()["Icmp"]
        cmd = [sys.executable, "-m", "loadgen", "ping", ",".join(net.targets[:8])]
        cmd += ["-r", "4000", "-c", "500", "--workers", "2", "--tx-path", "packet"]
        cmd += ["--plain", "--jsonl", str(out)]
        done = subprocess.run(
            ["ip", "netns", "exec", net.client_ns, *cmd],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        after = net.responder.read()["Icmp"]
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    total = next(r for r in rows if r["type"] == "summary")["total"]
    assert total["sent"] == total["received"] == 8 * 500
    # The responder's kernel saw exactly the probes loadgen wrote to the link.
    assert after["InEchos"] - before["InEchos"] == 8 * 500
    summary = next(r for r in rows if r["type"] == "summary")
    assert summary["extra"]["tx_path"] == "packet"
