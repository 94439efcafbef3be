"""A synthetic JSONL export of any size, in the writer's key order, for the report's tests
and its timing: `targets` targets, each with a row every second, a few with loss bursts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.output.report import JSONL_SCHEMA_VERSION

T0 = 1_800_000_000.0


def _row(
    kind: str,
    second: int | None,
    target: int,
    name: str,
    sent: int,
    lost: int,
    rtt_us: np.ndarray[Any, Any] | None,
    hist: bool,
) -> dict[str, Any]:
    row: dict[str, Any] = {"type": kind, "v": JSONL_SCHEMA_VERSION}
    if second is not None:
        row |= {"second": second, "t": T0 + second}
    received = sent - lost
    row |= {
        "target": target,
        "name": name,
        "family": 4,
        "sent": sent,
        "received": received,
        "late": 0,
        "lost": lost,
        "errored": 0,
        "loss_pct": round(100 * lost / sent, 6),
        "duplicates": 0,
        "reordered": 0,
        "bitflips": 0,
        "corrupted": 0,
        "icmp_errors": 0,
        "stale": 0,
        "unresolved": 0,
        "unaccounted": 0,
        "rtt_count": received,
    }
    have = rtt_us is not None and received > 0
    for key, q in (
        ("min", 0),
        ("avg", 50),
        ("max", 100),
        ("mdev", None),
        ("p50", 50),
        ("p90", 90),
        ("p99", 99),
        ("jitter", None),
    ):
        value = None
        if have and rtt_us is not None:
            value = float(np.std(rtt_us)) if q is None else float(np.percentile(rtt_us, q))
        row[f"rtt_{key}_us"] = None if value is None else round(value, 3)
    row |= {"rx_ts": "kernel", "tx_ts": "user"}
    if hist:
        edges = 8.0 * 2.0 ** np.arange(40)
        counts = (
            np.bincount(np.searchsorted(edges, rtt_us), minlength=40)
            if have and rtt_us is not None
            else [0]
        )
        h = [int(c) for c in counts]
        while h and h[-1] == 0:
            h.pop()
        row["rtt_hist"] = h
    return row


def write_run(
    path: Path,
    targets: int,
    seconds: int,
    *,
    pps: int = 4,
    workers: int = 2,
    hist: bool = True,
    summary: bool = True,
    seed: int = 1,
) -> None:
    """Target k loses every probe of seconds [k, k + k % 4) if k % 3 == 0; RTTs lognormal."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(np.log(200), 0.3, size=(64, pps))
    with path.open("w") as f:
        f.write(
            json.dumps(
                {
                    "type": "run",
                    "v": JSONL_SCHEMA_VERSION,
                    "loadgen": "test",
                    "command": ["loadgen", "run", "synthetic.toml"],
                    "profile": "synthetic.toml",
                    "kernel": "6.1.0-test",
                    "cpus": 2,
                    "pinned": [0, 1],
                    "workers": workers,
                    "targets": targets,
                    "requested_pps": pps * targets,
                }
            )
            + "\n"
        )
        sent_t = np.zeros(targets, dtype=np.int64)
        lost_t = np.zeros(targets, dtype=np.int64)
        all_rtt: list[np.ndarray[Any, Any]] = []
        for s in range(seconds):
            lines, tot_sent, tot_lost = [], 0, 0
            rtts = []
            for k in range(targets):
                lost = pps if k % 3 == 0 and k <= s < k + k % 4 else 0
                rtt = base[(s + k) % 64][: pps - lost] * (1 + k / max(targets, 1))
                lines.append(
                    json.dumps(
                        _row(
                            "second", s, k, f"198.18.{k // 250}.{k % 250 + 1}", pps, lost, rtt, hist
                        ),
                        separators=(",", ":"),
                    )
                )
                sent_t[k] += pps
                lost_t[k] += lost
                tot_sent, tot_lost = tot_sent + pps, tot_lost + lost
                rtts.append(rtt)
            rtt_all = np.concatenate(rtts)
            if targets <= 100:
                all_rtt.append(rtt_all)
            total = _row("second_total", s, -1, "total", tot_sent, tot_lost, rtt_all, hist)
            total |= {
                "generator_limited": s == 2,
                "generator_limits": ["worker 0"] if s == 2 else [],
                "generator": {
                    "requested_pps": pps * targets,
                    "achieved_pps": tot_sent - (5 if s == 2 else 0),
                    "workers": [
                        {
                            "requested_pps": pps * targets / workers,
                            "achieved_pps": 1.0,
                            "cpu_pct": 10.0 + w + s % 5,
                            "send_errors": s % 2,
                            "rx_drops": 0,
                            "max_lag_ns": 100_000 * (w + 1),
                            "skipped_ns": 0,
                        }
                        for w in range(workers)
                    ],
                },
            }
            lines.append(json.dumps(total, separators=(",", ":")))
            f.write("\n".join(lines) + "\n")
        if not summary:
            return
        rtt = np.concatenate(all_rtt) if all_rtt else None
        rows = [
            _row(
                "summary",
                None,
                k,
                f"198.18.{k // 250}.{k % 250 + 1}",
                int(sent_t[k]),
                int(lost_t[k]),
                base.ravel() * (1 + k / targets),
                hist,
            )
            for k in range(targets)
        ]
        for r in rows:
            del r["type"], r["v"]
            r |= {
                "outages": 1 if lost_t[r["target"]] else 0,
                "outage_longest_probes": int(lost_t[r["target"]]),
                "outage_longest_ms": 250.0 * int(lost_t[r["target"]]),
                "loss_bursts": [0, 0, 0, 0],
            }
        tot = _row("summary", None, -1, "total", int(sent_t.sum()), int(lost_t.sum()), rtt, hist)
        del tot["type"], tot["v"]
        f.write(
            json.dumps(
                {
                    "type": "summary",
                    "v": JSONL_SCHEMA_VERSION,
                    "t_start": T0,
                    "seconds": seconds,
                    "targets": rows,
                    "total": tot,
                    "anomalies": {},
                    "rtt_pct_rel_error": 0.008,
                    "extra": {
                        "duration_s": float(seconds),
                        "workers": workers,
                        "requested_pps": pps * targets,
                    },
                }
            )
            + "\n"
        )
