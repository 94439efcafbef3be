"""A finished search as data: one result per goal and size, the JSON document and the plot.

Owns the result rows (median and spread over repetitions, bits per second on the wire, latency
at the result), the JSON export (`SCHEMA_VERSION`, keys documented in the README) and the PNG
plot of loss ratio against load (matplotlib, the optional `plots` extra).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadgen.search.controller import GoalResult
from loadgen.search.driver import SearchRun, TrialRecord
from loadgen.search.settings import SearchSettings
from loadgen.stats import RttStats
from loadgen.units import NS_PER_S

SCHEMA_VERSION = 1
# Per probe on an Ethernet wire beyond the ICMP payload: ICMP header 8, Ethernet header and FCS
# 18, preamble and start delimiter 8, inter-frame gap 12; plus the IP header of the family.
ICMP_HEADER, ETHERNET_L1 = 8, 18 + 8 + 12
IP_HEADER = {4: 20, 6: 40}


def wire_bits(size: int, family: int) -> int:
    return 8 * (size + ICMP_HEADER + IP_HEADER[family] + ETHERNET_L1)


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One goal at one size, over every repetition."""

    goal: GoalResult  # of the median repetition
    size: int
    rate_pps: float | None  # median of the repetitions' lower bounds
    spread_pps: float  # max - min of them
    repeats: tuple[float | None, ...]
    bits_per_s: float | None
    latency: RttStats  # at the result: the full-length trials at the lower bound
    trials: int
    time_ns: int
    stop: str

    @property
    def label(self) -> str:
        if self.rate_pps is None:
            limit = " (generator limit)" if self.goal.generator_limited else ""
            return "below min rate" + limit
        text = f"{self.rate_pps:,.0f} pps"
        return f"at least {text} (generator limit)" if self.goal.generator_limited else text


def result_rows(
    runs: Sequence[SearchRun], records: Sequence[TrialRecord], family: int
) -> list[ResultRow]:
    rows = []
    sizes = list(dict.fromkeys(r.size for r in runs))
    for size in sizes:
        mine = [r for r in runs if r.size == size]
        for g in range(len(mine[0].results)):
            lows = [r.results[g].lower_pps for r in mine]
            known = sorted(x for x in lows if x is not None)
            median = statistics.median_low(known) if known else None
            pick = next((r for r in mine if r.results[g].lower_pps == median), mine[0])
            result = pick.results[g]
            at = [
                t
                for t in records
                if t.kind == "search"
                and t.size == size
                and t.repeat == pick.repeat
                and t.load_pps == result.lower_pps
                and t.measured.valid
            ]
            full = [t for t in at if t.duration_ns >= result.goal.final_ns] or at
            latency = (
                max(full, key=lambda t: t.measured.rtt.count).measured.rtt if full else RttStats()
            )
            rows.append(
                ResultRow(
                    goal=result,
                    size=size,
                    rate_pps=median,
                    spread_pps=(known[-1] - known[0]) if known else 0.0,
                    repeats=tuple(lows),
                    bits_per_s=None if median is None else median * wire_bits(size, family),
                    latency=latency,
                    trials=sum(r.trials for r in mine),
                    time_ns=sum(r.elapsed_ns for r in mine),
                    stop=pick.stop.value,
                )
            )
    return rows


def _us(ns: float) -> float:
    return round(ns / 1000, 3)


def _rtt(rtt: RttStats) -> dict[str, float | None]:
    keys = {"min": rtt.min_ns, "p50": rtt.p50_ns, "p99": rtt.p99_ns, "max": rtt.max_ns}
    return {k: (_us(v) if rtt.count else None) for k, v in keys.items()}


def trial_json(t: TrialRecord) -> dict[str, Any]:
    c = t.measured.counts
    return {
        "index": t.index,
        "kind": t.kind,
        "size": t.size,
        "repeat": t.repeat,
        "goal": t.goal,
        "phase": t.phase,
        "t_s": round(t.started_ns / NS_PER_S, 3),
        "intended_pps": t.load_pps,
        "achieved_pps": round(t.measured.achieved_pps, 3),
        "duration_s": t.duration_ns / NS_PER_S,
        "warmup_s": t.warmup_ns / NS_PER_S,
        "sent": c.sent,
        "received": c.received,
        "late": c.late,
        "lost": c.lost,
        "errored": c.errored,
        "loss_ratio": t.measured.loss_ratio,
        "valid": t.measured.valid,
        "verdicts": dict(t.verdicts),
        "generator": {"limited": not t.measured.valid, "limits": list(t.measured.limits)},
        "rtt_us": _rtt(t.measured.rtt),
    }


def result_json(row: ResultRow, records: Sequence[TrialRecord]) -> dict[str, Any]:
    g = row.goal
    latency_at = [
        {
            "load_pps": t.load_pps,
            "rtt_us": _rtt(t.measured.rtt),
            "loss_ratio": t.measured.loss_ratio,
        }
        for t in records
        if t.kind == "latency" and t.size == row.size and t.goal == g.goal.name
    ]
    return {
        "goal": g.goal.name,
        "loss_ratio": g.goal.loss_ratio,
        "exceed_ratio": g.goal.exceed_ratio,
        "size": row.size,
        "rate_pps": row.rate_pps,
        "bits_per_s": row.bits_per_s,
        "lower_pps": g.lower_pps,
        "upper_pps": g.upper_pps,
        "conditional_pps": g.conditional_pps,
        "generator_limited": g.generator_limited,
        "converged": g.converged,
        "result": row.label,
        "repeats_pps": list(row.repeats),
        "spread_pps": row.spread_pps,
        "rtt_us": _rtt(row.latency),
        "latency_at": latency_at,
        "trials": row.trials,
        "time_s": round(row.time_ns / NS_PER_S, 3),
        "stop": row.stop,
    }


def document(
    settings: SearchSettings,
    targets: Sequence[str],
    rows: Sequence[ResultRow],
    records: Sequence[TrialRecord],
    *,
    interrupted: bool,
) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "type": "search",
        "targets": list(targets),
        "interrupted": interrupted,
        "settings": {
            "goals": [g.name for g in settings.goals],
            "min_rate_pps": settings.min_rate_pps,
            "max_rate_pps": settings.max_rate_pps,
            "trial_s": settings.goals[0].final_ns / NS_PER_S,
            "initial_trial_s": settings.initial_ns / NS_PER_S,
            "sum_s": settings.goals[0].sum_ns / NS_PER_S,
            "exceed": settings.goals[0].exceed_ratio,
            "width": settings.goals[0].width,
            "warmup_s": settings.warmup_ns / NS_PER_S,
            "pause_s": settings.pause_ns / NS_PER_S,
            "preset": settings.preset,
        },
        "trials": [trial_json(t) for t in records],
        "results": [result_json(r, records) for r in rows],
    }


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def write_plot(path: str, rows: Sequence[ResultRow], records: Sequence[TrialRecord]) -> str | None:
    """Loss ratio against load, every search trial on it; None, or one line why not."""
    try:
        import matplotlib  # noqa: PLC0415 (an optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'loadgen[plots]')"
    fig, ax = plt.subplots(figsize=(8, 5))
    for valid, marker, label in ((True, "o", "trial"), (False, "x", "generator-limited")):
        chosen = [t for t in records if t.kind == "search" and t.measured.valid is valid]
        if chosen:
            ax.scatter(
                [t.load_pps for t in chosen],
                [max(t.measured.loss_ratio, 1e-7) for t in chosen],
                s=[12 + 4 * t.duration_ns / NS_PER_S for t in chosen],
                marker=marker,
                label=label,
                alpha=0.7,
            )
    for ratio in sorted({r.goal.goal.loss_ratio for r in rows} - {0.0}):
        ax.axhline(ratio, linestyle=":", linewidth=1, color="grey")  # a goal's loss ratio
    for row in rows:
        if row.rate_pps is not None:
            ax.axvline(row.rate_pps, linestyle="--", linewidth=1, color="grey")
            ax.annotate(f"{row.goal.goal.name} {row.size} B", (row.rate_pps, 1e-6), rotation=90)
    ax.set_yscale("log")
    ax.set_xlabel("load (probes/s, total)")
    ax.set_ylabel("loss ratio (0 shown at 1e-7)")
    ax.set_title("loadgen search: loss ratio against load")
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
