"""The coordinator's CPU per probe with workers on TCP streams next to workers on pipes: the
same loopback run (127.0.1.0/30, two workers, 3 s) through each transport, alternated.

    python -m loadgen.bench.transport [RATE] [ROUNDS]     # default 20k pps, 2 rounds; root

Only the coordinator's own process CPU is counted (getrusage of this process), from spawning
the workers to the last closed second, over the probes sent.
"""

from __future__ import annotations

import resource
import sys

from loadgen.coordinator import Coordinator
from loadgen.profile import COMMAND_LINE, parse_profile
from loadgen.remote import Streams
from loadgen.runner import plan_run
from loadgen.units import parse_rate

SECONDS = 3
TARGETS = "127.0.1.0/30"  # two hosts, one per worker


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(rate_pps: float, streams: Streams | None) -> tuple[int, float]:
    """One run: probes sent and the coordinator's CPU seconds."""
    profile = parse_profile(
        {
            "targets": TARGETS,
            "rate": rate_pps,
            "count": int(rate_pps * SECONDS / 2),
            "workers": 2,
            "timeout": "1s",
            "delay": "1s",
        },
        source=COMMAND_LINE,
    )
    plan = plan_run(profile)[0]
    before = _cpu_s()
    outcome = Coordinator(plan, streams=streams).run()
    return outcome.summary.total.counts.sent, _cpu_s() - before


def main(argv: list[str]) -> int:
    rate = parse_rate(argv[0] if argv else "20k", key="RATE")
    rounds = int(argv[1]) if len(argv) > 1 else 2
    print(f"coordinator CPU per probe, {rate:.0f} pps, two workers, {SECONDS} s runs")
    for _ in range(rounds):
        for name, streams in (("pipes", None), ("tcp streams", Streams())):
            sent, cpu_s = measure(rate, streams)
            print(
                f"  {name:12} {sent:>9,} probes  {cpu_s:6.2f} s  {cpu_s / sent * 1e6:6.2f} µs/probe"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
