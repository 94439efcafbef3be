"""A synthetic JSONL export of any size in the writer's key order, for the report's tests and
its timing: `targets` targets with a row every second; target k with k % 3 == 0 loses every
probe of seconds [k, k + k % 4). Large files are written at ~10 µs a line (the RTT figures
of the few distinct RTT sets are computed once).

    python -m loadgen.bench.synthrun TARGETS SECONDS OUT.jsonl   # then: loadgen report OUT.jsonl
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.output.report import JSONL_SCHEMA_VERSION

T0 = 1_800_000_000.0
_BASE = np.random.default_rng(1).lognormal(np.log(200), 0.3, size=(64, 64))
_EDGES = 8.0 * 2.0 ** np.arange(40)


@functools.cache
def _rtt_figures(row: int, n: int, scale: int, hist: bool) -> dict[str, Any]:
    """The RTT keys of a row whose replies had RTTs _BASE[row, :n] * (1 + scale / 8) µs."""
    rtt = _BASE[row, :n] * (1 + scale / 8)
    quantiles = (("min", 0), ("avg", -1), ("max", 100), ("mdev", -2), ("p50", 50))
    out: dict[str, Any] = {}
    for key, q in (*quantiles, ("p90", 90), ("p99", 99), ("jitter", -3)):
        if n == 0:
            value = None
        elif q == -1:
            value = float(rtt.mean())
        elif q == -2:
            value = float(rtt.std())
        elif q == -3:
            value = float(np.abs(np.diff(rtt)).mean()) if n > 1 else 0.0
        else:
            value = float(np.percentile(rtt, q))
        out[f"rtt_{key}_us"] = None if value is None else round(value, 3)
    out |= {"rx_ts": "kernel", "tx_ts": "user"}
    if hist:
        h = np.bincount(np.searchsorted(_EDGES, rtt), minlength=40).tolist() if n else []
        while h and h[-1] == 0:
            h.pop()
        out["rtt_hist"] = h
    return out


def _counts(target: int, name: str, sent: int, lost: int) -> dict[str, Any]:
    return {
        "target": target,
        "name": name,
        "family": 4,
        "sent": sent,
        "received": sent - lost,
        "late": 0,
        "lost": lost,
        "errored": 0,
        "duplicates": 0,
        "reordered": 0,
        "bitflips": 0,
        "corrupted": 0,
        "icmp_errors": 0,
        "stale": 0,
        "loss_pct": round(100 * lost / sent, 6) if sent else 0.0,
        "unresolved": 0,
        "unaccounted": 0,
        "rtt_count": sent - lost,
    }


def _name(k: int) -> str:
    return f"198.18.{k // 250}.{k % 250 + 1}"


def _lost(k: int, second: int, pps: int) -> int:
    return pps if k % 3 == 0 and k <= second < k + k % 4 else 0


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _generator(second: int, pps: int, workers: int) -> dict[str, Any]:
    limited = second == 2
    return {
        "generator_limited": limited,
        "generator_limits": ["worker 0 fell behind"] if limited else [],
        "generator": {
            "requested_pps": float(pps),
            "achieved_pps": float(pps - (5 if limited else 0)),
            "workers": [
                {
                    "worker": w,
                    "requested_pps": pps / workers,
                    "achieved_pps": pps / workers,
                    "cpu_pct": 10.0 + w + second % 5,
                    "send_errors": second % 2,
                    "rx_drops": 0,
                    "max_lag_ns": 100_000 * (w + 1),
                    "skipped_ns": 0,
                }
                for w in range(workers)
            ],
        },
    }


def write_run(
    path: Path,
    targets: int,
    seconds: int,
    *,
    pps: int = 4,
    workers: int = 2,
    hist: bool = True,
    summary: bool = True,
    seed: int = 0,
) -> None:
    """Write the export; `pps` probes per target and second; `hist`: with rtt_hist keys;
    `summary`: end with the summary (else it ends like a run that died)."""
    v = {"v": JSONL_SCHEMA_VERSION}
    header = {
        "type": "run",
        **v,
        "loadgen": "synthetic",
        "command": ["loadgen", "run", "synthetic.toml"],
        "profile": "synthetic.toml",
        "kernel": "6.1.0-test",
        "cpus": 2,
        "pinned": [0, 1],
        "workers": workers,
        "targets": targets,
        "requested_pps": float(pps * targets),
    }
    lost_of = np.zeros(targets, dtype=np.int64)
    with path.open("w") as f:
        f.write(_dumps(header) + "\n")
        for s in range(seconds):
            lines, lost_total = [], 0
            for k in range(targets):
                lost = _lost(k, s, pps)
                lost_of[k] += lost
                lost_total += lost
                head = {"type": "second", **v, "second": s, "t": T0 + s}
                rtt = _rtt_figures((s + k + seed) % 64, pps - lost, k % 8, hist)
                lines.append(_dumps({**head, **_counts(k, _name(k), pps, lost), **rtt}))
            total = {"type": "second_total", **v, "second": s, "t": T0 + s}
            total |= _counts(-1, "total", pps * targets, lost_total)
            total |= _rtt_figures((s + seed) % 64, min(64, pps * targets - lost_total), 0, hist)
            lines.append(_dumps(total | _generator(s, pps * targets, workers)))
            f.write("\n".join(lines) + "\n")
        if not summary:
            return
        rows = []
        for k in range(targets):
            row = _counts(k, _name(k), pps * seconds, int(lost_of[k]))
            row |= _rtt_figures(k % 64, 64, k % 8, hist)
            burst = int(lost_of[k])
            row |= {
                "outages": 1 if burst else 0,
                "outage_longest_probes": burst,
                "outage_longest_ms": 1000.0 * burst / pps,
                "outage_total_ms": 1000.0 * burst / pps,
                "loss_bursts": [0, 0, 0, 1 if burst else 0],
            }
            rows.append(row)
        total_row = _counts(-1, "total", pps * targets * seconds, int(lost_of.sum()))
        total_row |= _rtt_figures(0, 64, 0, hist)
        end = {
            "type": "summary",
            **v,
            "t_start": T0,
            "seconds": seconds,
            "targets": rows,
            "total": total_row,
            "anomalies": {},
            "rtt_pct_rel_error": 0.008,
            "extra": {"duration_s": float(seconds), "workers": workers},
        }
        f.write(_dumps(end) + "\n")


if __name__ == "__main__":
    write_run(Path(sys.argv[3]), int(sys.argv[1]), int(sys.argv[2]))
