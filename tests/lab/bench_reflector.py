"""Reflector throughput: offer 1 s of echo requests at each rate, report what it answered.

    cd tests && ../.venv/bin/python -m lab.bench_reflector 20000 80000 160000

Three reflectors: plain (sendmmsg fast path), dup+reorder+bitflip (per-reply path) and
delay+jitter (timer queue). Root only; lab addresses only; bounded (about 1.5 s per rate).
"""

from __future__ import annotations

import secrets
import sys
import time

from loadgen.lab import lab_up, parse_lab_spec

from .blast import blast

HOSTS = [
    {"name": "plain", "reflector": True},
    {"name": "mixed", "duplicate": 0.05, "reorder": 0.05, "bitflip": 0.01},
    {"name": "delayed", "delay_ms": 1, "jitter_ms": 0.5},
]


def main(argv: list[str]) -> int:
    rates = [float(a) for a in argv] or [20_000.0, 80_000.0, 160_000.0]
    spec = parse_lab_spec({"prefix": "lgb" + secrets.token_hex(2), "hosts": HOSTS}, source="bench")
    with lab_up(spec) as lab:
        for host in lab.hosts:
            for rate in rates:
                before = lab.truth([host])[host.address]
                sent, took = blast(host.address, rate, 1.0)
                time.sleep(0.3)
                after = lab.truth([host])[host.address]
                assert before.reflector is not None and after.reflector is not None
                seen = after.reflector.requests_seen - before.reflector.requests_seen
                missed = after.responder_missed - before.responder_missed
                print(
                    f"{host.name:8} offered {rate:>8.0f}/s: sent {sent / took:>8.0f}/s, "
                    f"answered {seen / took:>8.0f}/s, missed at the socket {missed}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
