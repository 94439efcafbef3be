"""A small, independent echo sender for lab tests: sends numbered probes to one lab address
over a raw socket, paced and bounded, and sorts every reply into what the lab claims it did.

It builds our probe format (docs/DESIGN.md: "LGEN" magic, run id, target, seq, tx time, fill)
with its own scalar code, so the reflector's vectorised codec is checked against it. An IPv6
address gets ICMPv6 echo (RFC 4443) over a raw ICMPv6 socket: the kernel writes the checksum,
hands over the ICMPv6 message alone, and drops a reply whose checksum is bad before we see it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = 0x4C47454E
HEADER = struct.Struct(">IIIQq")  # magic, run_id, target, seq, tx_ns
SETTLE_POLL_S = 0.05


def inet_checksum(data: bytes) -> int:
    """RFC 1071, written out plainly."""
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f">{len(data) // 2}H", data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fill(run_id: int, seq: int, n: int) -> bytes:
    """Deterministic fill for probe `seq`: different per probe, so any flipped bit shows."""
    pattern = struct.pack(">IQ", run_id, seq) * (n // 12 + 1)
    return bytes(b ^ (i & 0xFF) for i, b in enumerate(pattern[:n]))


ECHO = {4: (8, 0), 6: (128, 129)}  # (request, reply) types
ERRORS = {4: {3: "unreachable", 11: "time_exceeded"}, 6: {1: "unreachable", 3: "time_exceeded"}}
IP_HEADER6 = 40


def echo_request(ident: int, run_id: int, seq: int, size: int, version: int = 4) -> bytes:
    payload = HEADER.pack(MAGIC, run_id, 0, seq, time.time_ns()) + fill(run_id, seq, size - 28)
    head = struct.pack(">BBHHH", ECHO[version][0], 0, 0, ident, seq & 0xFFFF)
    if version == 6:  # the kernel fills the ICMPv6 checksum in (it covers a pseudo-header)
        return head + payload
    csum = inet_checksum(head + payload)
    return head[:2] + struct.pack(">H", csum) + head[4:] + payload


@dataclass
class Observed:
    """What came back, sorted the way loadgen's accounting sorts it."""

    sent: int = 0
    replied: set[int] = field(default_factory=set)  # seqs with a good reply
    duplicates: int = 0
    bitflips: int = 0
    corrupted: int = 0
    unreachable: set[int] = field(default_factory=set)
    time_exceeded: set[int] = field(default_factory=set)
    error_quote_lens: list[int] = field(default_factory=list)
    reordered: int = 0  # good replies arriving after a reply to a later probe
    rtt_ns: list[int] = field(default_factory=list)
    refused: int = 0  # sends the kernel said it dropped (ENOBUFS: IPv6 is told of a qdisc drop)

    def lost(self) -> set[int]:
        answered = self.replied | self.unreachable | self.time_exceeded
        return set(range(self.sent)) - answered


def _classify(
    obs: Observed,
    pkt: bytes,
    ident: int,
    run_id: int,
    size: int,
    now: int,
    top: list[int],
    version: int = 4,
) -> None:
    icmp = pkt[(pkt[0] & 0x0F) * 4 :] if version == 4 else pkt
    if len(icmp) < 8:
        return
    kind = icmp[0]
    error = ERRORS[version].get(kind)
    if error:  # an error quotes our request: IP header, then its ICMP header
        inner = icmp[8:]
        inner_ihl = IP_HEADER6 if version == 6 else (inner[0] & 0x0F) * 4 if inner else 0
        quoted = inner[inner_ihl:]
        if len(quoted) >= 8 + 28 and struct.unpack(">H", quoted[4:6])[0] == ident:
            seq = HEADER.unpack(quoted[8:36])[3]
            (obs.unreachable if error == "unreachable" else obs.time_exceeded).add(seq)
            obs.error_quote_lens.append(len(inner))
        return
    reply = ECHO[version][1]
    if kind != reply or struct.unpack(">H", icmp[4:6])[0] != ident or len(icmp) < 36:
        return
    magic, rid, _, seq, tx_ns = HEADER.unpack(icmp[8:36])
    if magic != MAGIC or rid != run_id:
        return
    if version == 4 and inet_checksum(icmp) != 0:
        obs.corrupted += 1
        return
    if icmp[36:] != fill(run_id, seq, size - 28):
        obs.bitflips += 1
        return
    if seq in obs.replied:
        obs.duplicates += 1
        return
    obs.replied.add(seq)
    obs.rtt_ns.append(now - tx_ns)
    if seq < top[0]:
        obs.reordered += 1
    top[0] = max(top[0], seq)


def probe(
    address: str,
    count: int,
    rate_pps: float,
    size: int = 64,
    linger_s: float = 0.3,
    settled: Callable[[], bool] | None = None,
    settle_bound_s: float = 30.0,
) -> Observed:
    """Send `count` probes to `address` (IPv4 or IPv6) at `rate_pps`, then listen for
    stragglers: until `settled()` says everything sent is through (answered and back, polled
    every SETTLE_POLL_S), or else for `linger_s`. A responder kept off its CPU by a busy
    machine then delays the return instead of losing its late answers.

    Bounded: it returns at most count / rate_pps + settle_bound_s (or linger_s) seconds after it
    starts.
    """
    version = 6 if ":" in address else 4
    ident = int.from_bytes(os.urandom(2), "big")
    run_id = int.from_bytes(os.urandom(4), "big")
    obs = Observed()
    top = [-1]
    family, proto = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6)
        if version == 6
        else (socket.AF_INET, socket.IPPROTO_ICMP)
    )

    def receive() -> None:
        while True:
            try:
                pkt, name = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if name[0] == address:
                _classify(obs, pkt, ident, run_id, size, time.time_ns(), top, version)

    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        start = time.monotonic()
        sent_by = start + count / rate_pps
        deadline = sent_by + (linger_s if settled is None else settle_bound_s)
        next_poll = sent_by
        while time.monotonic() < deadline:
            due = min(count, int((time.monotonic() - start) * rate_pps) + 1)
            while obs.sent < due:
                try:
                    # Built at send time: tx_ns in the payload is when it left.
                    pkt = echo_request(ident, run_id, obs.sent, size, version)
                    sock.sendto(pkt, (address, 0))
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    obs.refused += 1  # it left for the link and was dropped there: lost
                obs.sent += 1
            select.select([sock], [], [], 0.001)
            receive()
            if settled is not None and obs.sent == count and time.monotonic() >= next_poll:
                if settled():  # every answer is back at our end: in our socket by now
                    receive()
                    break
                next_poll = time.monotonic() + SETTLE_POLL_S
    return obs
