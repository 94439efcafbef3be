"""Raw ICMPv6 sockets on loopback (::1 only): the options -t/-z/-I/-S set, ICMP6_FILTER, the
identifier filter, sockaddr_in6 sends, kernel RX and TX stamps, and a reply with a bad checksum
counted as a drop (with a filter attached the kernel checks it before queueing). The IPv4
socket tests are test_sockets.py; both families go through the same FamilySpec code.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from loadgen.errors import UsageError
from loadgen.net.batchio import BatchIO
from loadgen.net.families import ipv6_names
from loadgen.net.sockets import ICMP6_FILTER, SO_BINDTODEVICE, TimestampMode, open_icmp
from loadgen.wire import bpf
from loadgen.wire.batch import EchoBuilder, ReplyDecoder
from loadgen.wire.family import IPV6
from loadgen.wire.icmp import DecodeStatus, checksum6
from loadgen.wire.records import RecordFlag

pytestmark = pytest.mark.root

IDENT = (os.getpid() * 7919 + 6) & 0xFFFF
RUN_ID, SIZE = 0x600D6666, 56
LOOPBACK6 = socket.inet_pton(socket.AF_INET6, "::1")
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52  # <linux/in6.h>
IPV6_RECVTCLASS = 66


def open_lo6(batch: int = 64, **options: Any) -> BatchIO:
    settings: dict[str, Any] = {"ttl": 64, "tos": 0, "timestamps": TimestampMode.SOFTWARE}
    settings["bpf_program"] = bpf.pack(bpf.echo_filter(IPV6, IDENT))
    settings.update(options)
    return BatchIO(open_icmp(family=6, **settings), batch=batch)


def send_probes(io: BatchIO, count: int, first_id: int = 0) -> None:
    builder = EchoBuilder(IDENT, RUN_ID, SIZE, family=IPV6)
    packets = builder.build(np.zeros(count, np.uint32), np.arange(count, dtype=np.uint64), 1)
    assert io.send(packets, np.repeat(ipv6_names(["::1"]), count), first_id).sent == count


def receive(io: BatchIO, want: int, timeout_s: float = 2.0) -> tuple[list[int], list[int]]:
    """(decoded statuses, RX flags) of what came back, until `want` rows or the time is up."""
    decoder = ReplyDecoder(IDENT, RUN_ID, SIZE, family=IPV6)
    poller = select.poll()
    poller.register(io.fileno(), select.POLLIN)
    status: list[int] = []
    flags: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(status) < want and time.monotonic() < deadline:
        poller.poll(20)
        got = io.recv()
        status += decoder.decode(got.data, got.lengths, got.n).status.tolist()
        flags += got.rx_flags.tolist()
    return status, flags


@pytest.fixture
def sniffer() -> Iterator[socket.socket]:
    """A raw ICMPv6 socket that sees every ICMPv6 message on the host with its hop limit and
    traffic class (our echo requests included: loopback delivers them too)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sniff:
        sniff.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        sniff.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
        sniff.setblocking(False)
        yield sniff


def test_options_are_set_as_asked() -> None:
    sock = open_icmp(
        family=6,
        ttl=7,
        tos=0x28,
        timestamps=TimestampMode.SOFTWARE,
        bpf_program=None,
        interface="lo",
        source="::1",
    )
    with sock.sock as raw:
        assert raw.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) == 7
        assert raw.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS) == 0x28
        assert raw.getsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"
        assert raw.getsockname()[0] == "::1"
        assert raw.getsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, 32) == bpf.icmp6_filter()
        assert sock.spec.version == 6 and sock.rx_flags == RecordFlag.RX_KERNEL


def test_requests_carry_the_hop_limit_and_traffic_class(sniffer: socket.socket) -> None:
    with open_lo6(ttl=9, tos=0x20) as io:
        send_probes(io, 4)
        status, _ = receive(io, 4)
    assert status == [DecodeStatus.REPLY] * 4
    seen = []
    for _ in range(1000):
        try:
            data, ancillary, _, _ = sniffer.recvmsg(2048, 256)
        except BlockingIOError:
            break
        if data[0] == IPV6.echo_request and struct.unpack_from("!H", data, 4)[0] == IDENT:
            seen.append({kind: struct.unpack("=i", value)[0] for _, kind, value in ancillary})
    assert len(seen) == 4
    assert all(s[IPV6_HOPLIMIT] == 9 and s[socket.IPV6_TCLASS] == 0x20 for s in seen), seen


def test_replies_come_back_decoded_with_kernel_stamps() -> None:
    with open_lo6() as io:
        send_probes(io, 40)
        status, flags = receive(io, 40)
    assert status == [DecodeStatus.REPLY] * 40
    assert set(flags) == {RecordFlag.RX_KERNEL}


def test_tx_stamps_are_numbered_by_the_ids_we_give() -> None:
    with open_lo6(batch=16) as io:
        assert io.enable_tx_timestamps() == RecordFlag.TX_KERNEL
        send_probes(io, 30, first_id=100)
        ids: list[int] = []
        deadline = time.monotonic() + 2.0
        while len(ids) < 30 and time.monotonic() < deadline:
            stamps = io.read_tx_timestamps()
            assert (stamps.tx_flags == RecordFlag.TX_KERNEL).all() and (stamps.tx_ns > 0).all()
            ids += stamps.ids.tolist()
            if not stamps.more:
                time.sleep(0.005)
        status, _ = receive(io, 30)
    assert sorted(ids) == list(range(100, 130))
    assert status == [DecodeStatus.REPLY] * 30


def _reply(good: bool) -> bytes:
    """An IPv6 datagram ::1 -> ::1 holding an echo reply with our identifier."""
    message = bytearray(struct.pack("!BBHHH", IPV6.echo_reply, 0, 0, IDENT, 1) + bytes(SIZE))
    checksum = checksum6(LOOPBACK6, LOOPBACK6, bytes(message)) ^ (0 if good else 0x5555)
    message[2:4] = struct.pack("!H", checksum)
    header = struct.pack("!IHBB16s16s", 6 << 28, len(message), 58, 64, LOOPBACK6, LOOPBACK6)
    return header + bytes(message)


def test_a_bad_checksum_is_a_drop_and_never_hides_what_follows() -> None:
    """The kernel verifies the checksum of a message for a socket with a filter before it
    queues it (net/ipv6/raw.c, rawv6_rcv_skb): a damaged reply is counted in the socket's drops
    and a read never stops on it."""
    with (
        open_lo6() as io,
        socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as forge,
    ):
        before = io.kernel_drops()
        for good in (False, True, False, False, True):
            forge.sendto(_reply(good), ("::1", 0))
        time.sleep(0.05)
        assert io.kernel_drops() - before == 3
        got = io.recv()
        assert got.n == 2 and (got.lengths[:2] == 8 + SIZE).all()
        assert io.recv().n == 0


def test_destinations_carry_the_scope_of_a_link_local_target() -> None:
    names = ipv6_names(["::1", "fe80::1%lo", "fe80::2%1"])
    assert names["family"].tolist() == [socket.AF_INET6] * 3
    assert bytes(names["addr"][0]) == LOOPBACK6
    assert names["scope_id"].tolist() == [0, socket.if_nametoindex("lo"), 1]
    with pytest.raises(UsageError, match=r"fe80::1%nosuchif0: there is no interface"):
        ipv6_names(["fe80::1%nosuchif0"])
