"""Datagram ICMP sockets as the kernel really behaves, checked in a network namespace of the
test's own (ping_group_range is per namespace): the identifier the kernel picks, replies
without the IPv4 header, TTL/TOS and hop limit/traffic class on the wire, RX and TX (OPT_ID)
kernel stamps, and ICMP errors read from the error queue, each exactly once, with the pending
errno they leave on the socket taken by a retried send or receive, never raised."""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from typing import Any

import numpy as np
import pytest
from private_netns import in_private_netns

from loadgen.errors import PermissionProblem
from loadgen.net.batchio import BatchIO, RecvBatch
from loadgen.net.families import ipv6_names
from loadgen.net.sockets import TimestampMode, open_icmp
from loadgen.wire.batch import EchoBuilder, ReplyDecoder
from loadgen.wire.family import Icmp6Type, IcmpType, family_of
from loadgen.wire.icmp import DecodeStatus, build_echo_request, echo_reply_for, fill_patterns
from loadgen.wire.records import RecordFlag

pytestmark = pytest.mark.root

RUN_ID, SIZE = 0x1234ABCD, 64
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT, IPV6_RECVTCLASS, IPV6_TCLASS = 51, 52, 66, 67


def _open(version: int, **kw: Any) -> BatchIO:
    sock = open_icmp(
        family=version,
        ttl=kw.pop("ttl", 64),
        tos=kw.pop("tos", 0),
        timestamps=kw.pop("timestamps", TimestampMode.SOFTWARE),
        bpf_program=None,
        datagram=True,
        **kw,
    )
    return BatchIO(sock, batch=64)


def _destinations(version: int, address: str, n: int) -> Any:
    if version == 4:
        return np.full(n, int.from_bytes(socket.inet_aton(address), "big"), np.uint32)
    return np.repeat(ipv6_names([address]), n)


def _send(io: BatchIO, version: int, address: str, n: int, first_id: int = 0) -> None:
    """n probes to target index 0, sequences 0..n-1, built with an identifier other than the
    socket's (the kernel replaces it with the socket's)."""
    other = (io.socket.ident or 0) ^ 0x5A5A
    builder = EchoBuilder(other, RUN_ID, SIZE, family=family_of(version))
    packets = builder.build(np.zeros(n, np.uint32), np.arange(n, dtype=np.uint64), time.time_ns())
    assert io.send(packets, _destinations(version, address, n), first_id).sent == n


def _collect(io: BatchIO, want: int, timeout_s: float = 5.0) -> list[RecvBatch]:
    got: list[RecvBatch] = []
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    poller.register(io.fileno(), select.POLLIN)
    while sum(b.n for b in got) < want and time.monotonic() < deadline:
        poller.poll(50)
        batch = io.recv()
        if batch.n:
            got.append(
                RecvBatch(
                    batch.n,
                    batch.data.copy(),
                    batch.lengths.copy(),
                    batch.rx_ns.copy(),
                    batch.rx_flags.copy(),
                    batch.truncated,
                    batch.dropped_total,
                )
            )
    return got


def _replies(version: int) -> dict[str, Any]:
    io = _open(version)
    ident = io.socket.ident
    _send(io, version, LOOPBACK[version], 8)
    batches = _collect(io, 8)
    decoder = ReplyDecoder(ident or 0, RUN_ID, SIZE, family_of(version), ip_header=False)
    statuses, seqs, lengths, flags = [], [], [], []
    for b in batches:
        dec = decoder.decode(b.data, b.lengths, b.n)
        statuses += dec.status.tolist()
        seqs += dec.seq.tolist()
        lengths += b.lengths.tolist()
        flags += b.rx_flags.tolist()
    first = batches[0].data[0, :8].tobytes()
    io.close()
    return {
        "ident": ident,
        "statuses": statuses,
        "seqs": seqs,
        "lengths": lengths,
        "flags": flags,
        "wire_ident": struct.unpack_from("!H", first, 4)[0],
        "type": first[0],
    }


@pytest.mark.parametrize("version", [4, 6])
def test_replies_carry_the_kernels_identifier_and_no_ip_header(version: int) -> None:
    got = in_private_netns(lambda: _replies(version))
    assert got["ident"] is not None, got
    assert got["wire_ident"] == got["ident"]  # the kernel rewrote the request's identifier
    assert got["type"] == (IcmpType.ECHO_REPLY if version == 4 else Icmp6Type.ECHO_REPLY)
    assert got["statuses"] == [DecodeStatus.REPLY] * 8, got
    assert sorted(got["seqs"]) == list(range(8)), got
    assert set(got["lengths"]) == {8 + SIZE}  # the ICMP message alone, IPv4 included
    assert set(got["flags"]) == {int(RecordFlag.RX_KERNEL)}  # SO_TIMESTAMPING RX stamps


def _wire_marks(version: int) -> tuple[int, int]:
    """Hop limit and traffic class of a probe as a raw socket on lo sees the request."""
    if version == 4:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        raw.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        raw.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
    raw.settimeout(2)
    io = _open(version, ttl=7, tos=0x28)
    _send(io, version, LOOPBACK[version], 1)
    try:
        while True:
            data, ancillary, _, _ = raw.recvmsg(2048, 256)
            if version == 4:
                if data[20] == IcmpType.ECHO_REQUEST:
                    return data[8], data[1]
            elif data[0] == Icmp6Type.ECHO_REQUEST:
                cmsgs = {t: struct.unpack("=i", v)[0] for _, t, v in ancillary}
                return cmsgs[IPV6_HOPLIMIT], cmsgs[IPV6_TCLASS]
    finally:
        raw.close()
        io.close()


@pytest.mark.parametrize("version", [4, 6])
def test_ttl_and_tos_reach_the_wire(version: int) -> None:
    assert in_private_netns(lambda: _wire_marks(version)) == (7, 0x28)


def _tx_stamps(version: int) -> tuple[list[int], int, list[int]]:
    io = _open(version)
    flag = io.enable_tx_timestamps()
    _send(io, version, LOOPBACK[version], 16)
    ids: list[int] = []
    deadline = time.monotonic() + 2
    while len(ids) < 16 and time.monotonic() < deadline:
        stamps = io.read_tx_timestamps()
        ids += stamps.ids.tolist()
        assert (stamps.tx_ns > 0).all()
        time.sleep(0.01)
    replies = _collect(io, 16)
    io.close()
    return ids, int(flag), [int(b.rx_flags[0]) for b in replies]


@pytest.mark.parametrize("version", [4, 6])
def test_kernel_tx_stamps_are_numbered_by_opt_id(version: int) -> None:
    ids, flag, rx_flags = in_private_netns(lambda: _tx_stamps(version))
    assert flag == RecordFlag.TX_KERNEL
    assert sorted(ids) == list(range(16))
    assert set(rx_flags) == {int(RecordFlag.RX_KERNEL)}


REJECT = {
    4: "ip daddr 127.0.0.2 icmp type echo-request reject with icmp type host-unreachable",
    6: "ip6 daddr ::1 icmpv6 type echo-request reject with icmpv6 type admin-prohibited",
}
ERROR_TYPE = {4: (IcmpType.DEST_UNREACH, 1), 6: (Icmp6Type.DEST_UNREACH, 1)}


def _errors(version: int, with_stamps: bool) -> dict[str, Any]:
    table = "inet lgdgram"
    rules = (
        f"table {table} {{\n chain input {{\n type filter hook input priority 0;\n"
        f" {REJECT[version]}\n }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)
    target = "127.0.0.2" if version == 4 else "::1"
    io = _open(version)
    if with_stamps:
        io.enable_tx_timestamps()
    decoder = ReplyDecoder(io.socket.ident or 0, RUN_ID, SIZE, family_of(version), ip_header=False)
    errors = []
    for round_ in range(3):
        # Each round's send finds the last round's pending errno, and each receive one too.
        _send(io, version, target, 5, first_id=5 * round_)
        deadline = time.monotonic() + 2
        got: list[Any] = []
        while len(got) < 5 and time.monotonic() < deadline:
            assert io.recv().n == 0  # nothing arrives as a packet; the errno is not raised
            if with_stamps:
                io.read_tx_timestamps()
            got += io.read_icmp_errors()
            time.sleep(0.01)
        errors += got
    dec = decoder.decode_queued(errors)
    io.close()
    return {
        "n": len(errors),
        "status": dec.status.tolist(),
        "seq": dec.seq.tolist(),
        "type_code": {(e.icmp_type, e.code) for e in errors},
        "destinations": {e.destination for e in errors},
        "quoted_dst": {
            bytes(dec.row(i).quoted_dst.to_bytes(16 if version == 6 else 4, "big"))
            for i in range(dec.n)
        },
    }


@pytest.mark.parametrize("with_stamps", [False, True], ids=["plain", "tx-stamps"])
@pytest.mark.parametrize("version", [4, 6])
def test_icmp_errors_come_from_the_error_queue_once_per_probe(
    version: int, with_stamps: bool
) -> None:
    got = in_private_netns(lambda: _errors(version, with_stamps))
    target = socket.inet_pton(socket.AF_INET if version == 4 else socket.AF_INET6,
                              "127.0.0.2" if version == 4 else "::1")  # fmt: skip
    assert got["n"] == 15
    assert got["status"] == [DecodeStatus.ICMP_ERROR] * 15
    assert got["seq"] == [0, 1, 2, 3, 4] * 3
    assert got["type_code"] == {ERROR_TYPE[version]}
    assert got["destinations"] == got["quoted_dst"] == {target}


def _refused() -> str:
    try:
        _open(4)
    except PermissionProblem as exc:
        return str(exc)
    return "opened"


def test_a_datagram_socket_the_range_refuses_is_one_line_with_both_fixes() -> None:
    """The plan decided from the range; should the kernel still refuse (the range changed since),
    the worker's error is the same kind of line, not a traceback."""
    line = in_private_netns(_refused, ping_range="1 0")
    assert line.startswith("opening a datagram IPv4 ICMP socket: EACCES")
    assert "setcap cap_net_raw+ep" in line and 'ping_group_range="0 2147483647"' in line


def _forged_replies() -> list[int]:
    """Two echo replies forged onto lo for the socket's identifier, the second with a broken
    checksum: the sequences the datagram socket gets."""
    io = _open(4)
    ident = io.socket.ident or 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        for seq, damage in ((1, 0), (2, 0x0101)):
            message = echo_reply_for(
                build_echo_request(
                    ident=ident, run_id=RUN_ID, target=0, seq=seq, tx_ns=0, size=SIZE,
                    fills=fill_patterns(RUN_ID, SIZE - 28),
                )
            )  # fmt: skip
            checksum = int.from_bytes(message[2:4], "big") ^ damage
            raw.sendto(message[:2] + checksum.to_bytes(2, "big") + message[4:], ("127.0.0.1", 0))
    got = _collect(io, 2, timeout_s=0.5)
    io.close()
    return [int.from_bytes(b.data[i, 6:8].tobytes(), "big") for b in got for i in range(b.n)]


def test_a_reply_whose_checksum_fails_never_reaches_the_socket() -> None:
    """So the datagram path cannot count `corrupted`: such a probe is lost (README)."""
    assert in_private_netns(_forged_replies) == [1]
