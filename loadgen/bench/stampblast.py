"""A bounded STAMP blaster for measuring `loadgen reflect`'s ceiling on loopback: one process
sends STAMP test packets in sendmmsg batches as fast as it can (or at `--rate`) to 127.0.0.1
or ::1 for at most `MAX_SECONDS`, reads what comes back, and prints sent and answered per
second. The reflector's own JSONL says what it reflected; this says what came back.

    python -m loadgen.bench.stampblast PORT [--seconds S] [--rate PPS] [--size N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loadgen.net.sockets import TimestampMode
from loadgen.net.udp import UdpBatchIO, open_udp_probe, udp_destinations
from loadgen.wire.stamp_batch import StampBuilder, stamp_spec

MAX_SECONDS = 30.0
BATCH = 256


def blast(
    port: int, seconds: float, *, rate_pps: float = 0.0, size: int = 64
) -> tuple[int, int, float]:
    """(sent, answered, elapsed seconds) of one bounded blast to 127.0.0.1:port."""
    seconds = min(seconds, MAX_SECONDS)
    sock = open_udp_probe(family=4, ttl=64, tos=0, timestamps=TimestampMode.USER)
    io = UdpBatchIO(sock, batch=BATCH, slot_bytes=2048)
    builder = StampBuilder(stamp_spec(0x0B1A57, 0xB1A5, size), np.zeros(1, np.uint32))
    dst = udp_destinations(["127.0.0.1"], [port], 4)
    local = np.zeros(BATCH, np.int64)
    names = dst[local]
    sent = answered = 0
    start = time.monotonic()
    deadline = start + seconds
    with io:
        while (now := time.monotonic()) < deadline:
            if rate_pps and sent >= (now - start) * rate_pps:
                time.sleep(0.0005)
            else:
                seqs = np.arange(sent, sent + BATCH, dtype=np.uint64)
                sent += io.send(builder.build(local, seqs, time.time_ns()), names).sent
            while (got := io.recv()).n:
                answered += got.n
        drain_until = time.monotonic() + 0.5
        while time.monotonic() < drain_until:
            answered += io.recv().n
            time.sleep(0.001)
    return sent, answered, time.monotonic() - start - 0.5


def main() -> None:
    p = argparse.ArgumentParser(prog="stampblast", description=__doc__)
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=0.0, help="pps; 0: as fast as it can")
    p.add_argument("--size", type=int, default=64, help="loadgen payload bytes (STAMP adds 48)")
    args = p.parse_args()
    sent, answered, elapsed = blast(args.port, args.seconds, rate_pps=args.rate, size=args.size)
    print(
        f"sent {sent} ({sent / elapsed:,.0f} pps), answered {answered} "
        f"({answered / elapsed:,.0f} pps) in {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
