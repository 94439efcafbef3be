"""A plain-socket TCP client for lab tests: `burst` opens n connections to one address and port
at once (non-blocking, IPv4 or IPv6), waits a bounded time and says how each ended. It knows
nothing of loadgen, so the lab's TCP counters are checked against an independent client."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from dataclasses import dataclass

LINGER_RST = struct.pack("ii", 1, 0)  # close with a RST: no TIME_WAIT left behind


RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}


def queued_error(s: socket.socket) -> int:
    """errno.EHOSTUNREACH if an ICMP error waits in the socket's error queue (IP_RECVERR)."""
    try:
        _, ancillary, _, _ = s.recvmsg(0, 512, socket.MSG_ERRQUEUE)
    except BlockingIOError:
        return 0
    return errno.EHOSTUNREACH if ancillary else 0


@dataclass(frozen=True, slots=True)
class Burst:
    established: int
    refused: int
    timed_out: int
    other: int


def burst(address: str, port: int, n: int, wait_s: float = 0.5) -> Burst:
    """n connects at once; a connect still pending after `wait_s` (below the kernel's 1 s first
    SYN retransmission, so each connect sent one SYN) counts as timed out."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks: list[socket.socket] = []
    done = {"established": 0, "refused": 0, "other": 0}
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            s.setsockopt(*RECVERR[family], 1)  # an ICMP error the kernel takes as soft, too
            with contextlib.suppress(BlockingIOError):  # in progress: the usual answer
                s.connect((address, port))
        pending = set(socks)
        deadline = time.monotonic() + wait_s
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], 0.02)
            for s in writable:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or queued_error(s)
                kind = {0: "established", errno.ECONNREFUSED: "refused"}.get(err, "other")
                done[kind] += 1
                pending.discard(s)
        return Burst(timed_out=len(pending), **done)
    finally:
        for s in socks:
            s.close()
