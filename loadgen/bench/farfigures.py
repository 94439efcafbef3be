"""The far-end bench's arithmetic (pure): a rung of a far end's rate ladder (what the C blaster
sent and got back, the far end's CPU), the search for the highest rate a far end holds, the
outputs of the C blaster and echo, of loadgen's per-second JSONL and of irtt's JSON, and the
one line each far-end step shows: ratios to the C echo floor and to ICMP, never a time limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

HOLD_FRACTION = 0.999  # what must come back of a rung for the far end to hold its rate
PACE_FRACTION = 0.95  # ... and the blaster must have sent this share of the rate asked
REFINE_STEP_PPS = 1000.0  # bisection between a held and a failed rung stops at this width

_BLAST_RE = re.compile(r"^sent (\d+) received (\d+) seconds ([0-9.]+)$", re.MULTILINE)
_ECHO_RE = re.compile(r"^echoed (\d+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Blast:
    """The C blaster's line: what it sent, what came back, how long it sent."""

    sent: int
    received: int
    sending_s: float


def parse_blast(text: str) -> Blast | None:
    m = _BLAST_RE.search(text)
    return None if m is None else Blast(int(m[1]), int(m[2]), float(m[3]))


def parse_echo(text: str) -> int | None:
    """The C echo's last line: datagrams it sent back."""
    m = _ECHO_RE.search(text)
    return None if m is None else int(m[1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


@dataclass(frozen=True, slots=True)
class Rung:
    """One rate of a far end's ladder: the blaster's counts and the far end's CPU meanwhile."""

    rate_pps: float
    sent: int
    received: int
    sending_s: float
    far_cpu_s: float | None  # the far end's process tree, user + system, over the rung
    rcvbuf_drops: int | None = None  # the namespace's Udp RcvbufErrors over the rung

    @property
    def back(self) -> float:
        """The share of what was sent that came back (reflected/sent)."""
        return self.received / self.sent if self.sent else 0.0

    @property
    def sent_pps(self) -> float:
        return self.sent / self.sending_s if self.sending_s > 0 else 0.0

    @property
    def cpu_us_per_packet(self) -> float | None:
        """The far end's CPU per packet it answered."""
        if self.far_cpu_s is None or not self.received:
            return None
        return self.far_cpu_s * 1e6 / self.received

    @property
    def held(self) -> bool:
        return (
            self.sent > 0
            and self.back >= HOLD_FRACTION
            and self.sent_pps >= PACE_FRACTION * self.rate_pps
        )


def search_ladder(
    rates_pps: Sequence[float], measure: Callable[[float], Rung], refine: int = 2
) -> tuple[Rung, ...]:
    """Every rung run, in order: the rates ascending until the first not held, then up to
    `refine` bisections between the highest held and that one (never narrower than
    REFINE_STEP_PPS). At most len(rates_pps) + refine measurements."""
    rungs: list[Rung] = []
    for rate in sorted(set(rates_pps)):
        rungs.append(measure(rate))
        if not rungs[-1].held:
            break
    held = [r.rate_pps for r in rungs if r.held]
    failed = [r.rate_pps for r in rungs if not r.held]
    if not held or not failed:
        return tuple(rungs)
    lo, hi = max(held), min(failed)
    for _ in range(refine):
        mid = round((lo + hi) / 2 / REFINE_STEP_PPS) * REFINE_STEP_PPS
        if hi - lo <= REFINE_STEP_PPS or not lo < mid < hi:
            break
        rungs.append(measure(mid))
        lo, hi = (mid, hi) if rungs[-1].held else (lo, mid)
    return tuple(rungs)


def best_held(rungs: Iterable[Rung]) -> Rung | None:
    """The highest held rung below the lowest failed one (a noisy machine may let a higher
    rung pass after a lower one failed: that is no ceiling)."""
    rungs = list(rungs)
    ceiling = min((r.rate_pps for r in rungs if not r.held), default=float("inf"))
    held = [r for r in rungs if r.held and r.rate_pps < ceiling]
    return max(held, key=lambda r: r.rate_pps, default=None)


def _k(pps: float | None) -> str:
    if pps is None:
        return "-"
    return f"{pps / 1e3:.1f}k" if pps >= 1e3 else f"{pps:.0f}"


def fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def rung_line(name: str, r: Rung) -> str:
    return (
        f"{name} {_k(r.rate_pps)}: sent {r.sent:,} ({_k(r.sent_pps)}/s), back "
        f"{100 * r.back:.3f}%, far-end CPU {fmt(r.cpu_us_per_packet, '.2f')} us/pkt, "
        f"UDP receive-buffer drops {fmt(r.rcvbuf_drops, 'd')}: {'held' if r.held else 'not held'}"
    )


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def ceiling_line(
    name: str,
    rungs: Sequence[Rung],
    floor: Sequence[Rung],
    rss_bytes: tuple[int | None, int | None] = (None, None),
) -> str:
    """The highest rate held, its CPU per packet and the far end's peak RSS, as multiples of
    the C echo's (floor, whose peak RSS is rss_bytes[1]); the echo itself: its figures."""
    best, base = best_held(rungs), best_held(floor)
    if best is None:
        return f"{name}: held none of its ladder (>= {100 * HOLD_FRACTION:.1f}% back)"
    held = f"{name}: holds {_k(best.rate_pps)} pps (>= {100 * HOLD_FRACTION:.1f}% back)"
    cpu_us, rss = fmt(best.cpu_us_per_packet, ".2f"), _mib(rss_bytes[0])
    if rungs is floor or base is None:
        return f"{held}; CPU {cpu_us} us/pkt; peak RSS {rss} MiB"
    return (
        f"{held} = {fmt(_ratio(best.rate_pps, base.rate_pps), '.2f')}x the C echo's "
        f"{_k(base.rate_pps)}; CPU {cpu_us} us/pkt = "
        f"{fmt(_ratio(best.cpu_us_per_packet, base.cpu_us_per_packet), '.1f')}x the echo's; "
        f"peak RSS {rss} MiB = {fmt(_ratio(*rss_bytes), '.0f')}x the echo's"
    )


@dataclass(frozen=True, slots=True)
class SenderRun:
    """One loadgen ping run against a far end: its counts and CPU."""

    kind: str  # "icmp", "udp", "stamp"
    rate_pps: float
    sent: int
    answered: int
    cpu_s: float  # whole run, process tree (wait4)
    worker_cpu_us: float | None  # the workers' CPU per probe while sending (their seconds)
    lost_forward: int = 0
    lost_reverse: int = 0

    @property
    def back(self) -> float:
        return self.answered / self.sent if self.sent else 0.0

    @property
    def cpu_us(self) -> float | None:
        return self.cpu_s * 1e6 / self.sent if self.sent else None


def worker_cpu_us_per_probe(lines: Iterable[str]) -> float | None:
    """The workers' CPU per probe sent over loadgen's closed seconds but the first (start-up),
    from the per-second self-check (`generator` of "second_total": cpu_pct, achieved_pps)."""
    cpu_s = probes = 0.0
    for line in lines:
        if '"second_total"' not in line:
            continue
        obj = json.loads(line)
        gen = obj.get("generator") or {}
        if int(obj.get("second", 0)) == 0 or not gen.get("achieved_pps"):
            continue
        cpu_s += sum(float(w.get("cpu_pct", 0.0)) for w in gen.get("workers", ())) / 100
        probes += float(gen["achieved_pps"])
    return cpu_s * 1e6 / probes if probes else None


def sender_line(run: SenderRun, icmp: SenderRun | None) -> str:
    base = icmp if icmp is not None and run.kind != "icmp" else None
    vs = ""
    if base is not None:
        ratio = _ratio(run.worker_cpu_us, base.worker_cpu_us)
        vs = f" = {fmt(ratio, '.2f')}x ICMP's"
    split = f", lost fwd/rev {run.lost_forward}/{run.lost_reverse}" if run.kind == "stamp" else ""
    return (
        f"loadgen {run.kind} {_k(run.rate_pps)} x1: sent {run.sent:,}, back {100 * run.back:.3f}%"
        f"{split}; workers' CPU {fmt(run.worker_cpu_us, '.2f')} us/probe{vs} (whole run "
        f"{fmt(run.cpu_us, '.1f')})"
    )


@dataclass(frozen=True, slots=True)
class Irtt:
    """What irtt's client said (its JSON, `-o FILE.json`): sent, received, loss by direction,
    the interval asked and the time it sent for."""

    interval_ns: int
    duration_ns: int
    sent: int
    received: int
    server_received: int
    upstream_loss_pct: float
    downstream_loss_pct: float
    rtt_median_ns: int | None

    @property
    def sent_pps(self) -> float:
        return self.sent * 1e9 / self.duration_ns if self.duration_ns else 0.0

    @property
    def loss_pct(self) -> float:
        return 100 * (1 - self.received / self.sent) if self.sent else 0.0


def parse_irtt(text: str) -> Irtt | None:
    """irtt 0.9's client JSON: its `stats` and `config.params`; None if it is not that."""
    try:
        doc: Any = json.loads(text)
        stats, params = doc["stats"], doc["config"]["params"]
        return Irtt(
            interval_ns=int(params["interval"]),
            duration_ns=int(params["duration"]),
            sent=int(stats["packets_sent"]),
            received=int(stats["packets_received"]),
            server_received=int(stats.get("server_packets_received", 0)),
            upstream_loss_pct=float(stats.get("upstream_loss_percent", 0.0)),
            downstream_loss_pct=float(stats.get("downstream_loss_percent", 0.0)),
            rtt_median_ns=(stats.get("rtt") or {}).get("median"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def irtt_line(i: Irtt, client_cpu_s: float, server_cpu_s: float | None, stamp: SenderRun) -> str:
    """irtt's pair next to loadgen's STAMP pair of the same run: rate and CPU as ratios."""
    client_us = client_cpu_s * 1e6 / i.sent if i.sent else None
    server_us = (server_cpu_s or 0.0) * 1e6 / i.server_received if i.server_received else None
    return (
        f"irtt -i {i.interval_ns / 1e3:g}us: {_k(i.sent_pps)} pps = "
        f"{fmt(_ratio(i.sent_pps, stamp.rate_pps), '.2f')}x loadgen stamp's, loss "
        f"{i.loss_pct:.3f}% (up {i.upstream_loss_pct:.3f}%, down {i.downstream_loss_pct:.3f}%), "
        f"client CPU {fmt(client_us, '.1f')} us/pkt = "
        f"{fmt(_ratio(client_us, stamp.cpu_us), '.2f')}x loadgen stamp's whole run, server "
        f"{fmt(server_us, '.1f')} us/pkt"
    )
