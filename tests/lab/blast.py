"""Offered load for reflector throughput tests: identical echo requests at a fixed rate,
sent in sendmmsg batches so the sender is not the bottleneck. Bounded by `duration_s`."""

from __future__ import annotations

import socket
import time

import numpy as np

from loadgen.lab.mmsg import SendBatch

from .probe import echo_request

BATCH = 64


def blast(address: str, rate_pps: float, duration_s: float, size: int = 64) -> tuple[int, float]:
    """Send at `rate_pps` for `duration_s` to an IPv4 or IPv6 address; returns (datagrams sent,
    seconds taken)."""
    version = 6 if ":" in address else 4
    family, proto = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6)
        if version == 6
        else (socket.AF_INET, socket.IPPROTO_ICMP)
    )
    pkt = np.frombuffer(echo_request(0x4C47, 1, 0, size, version), dtype=np.uint8).copy()
    base = np.full(BATCH, pkt.ctypes.data, dtype=np.uint64)
    length = np.full(BATCH, len(pkt), dtype=np.int64)
    packed = socket.inet_pton(family, address)
    dst = np.tile(np.frombuffer(packed, dtype=np.uint8), (BATCH, 1))
    tx = SendBatch(BATCH, version)
    sent = 0
    total = int(rate_pps * duration_s)
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        start = time.monotonic()
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate_pps) + BATCH)
            n = min(BATCH, due - sent)
            if n <= 0:
                time.sleep(0.0002)
                continue
            ok, _ = tx.send(sock, base[:n], length[:n], dst[:n])
            sent += ok
            if time.monotonic() - start > duration_s * 3:  # cannot keep up: stop anyway
                break
        return sent, time.monotonic() - start
