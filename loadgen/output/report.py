"""The JSONL export of closed seconds and of the run's summary (the summary for people is
`summary`).

The export is one JSON object per line, flushed after every closed second, so a crash loses at
most the second being written. Schema version `JSONL_SCHEMA_VERSION` (4); every object has
`type` and `v`. One "run" object first (how the run was set up, see `RUN_HEADER_KEYS`); a
"second" object per target that sent in a closed second, then one "second_total" (target -1,
name "total") and an "sla_breach" per SLA clause that second failed (README, SLA verdicts); one
"summary" object at the end of the run:

| key | type | meaning |
|---|---|---|
| type | str | "run", "second", "second_total", "sla_breach" or "summary" |
| v | int | schema version (4; 3: no cos_*; 2: no run, rtt_hist, outages, SLA, refused, STAMP) |
| second | int | second index from the run's start ("second*" only) |
| t | float | unix time of the second's start, in seconds ("second*" only) |
| target, name | int, str | global target index and name; -1 and "total" for the all-targets row |
| family | int/null | IP version of the target, 4 or 6; the total row: the run's, null if mixed |
| sent | int | probes sent in this second (every figure is bucketed by send time) |
| received | int | good replies within timeout |
| late | int | good replies after timeout, within linger (not lost) |
| lost | int | nothing came back by linger |
| errored | int | no good reply, but an ICMP error or a damaged reply (not lost) |
| loss_pct | float | 100 * lost / sent (0 when nothing was sent) |
| duplicates, reordered, bitflips, corrupted, icmp_errors, stale | int | side events |
| refused | int | side event: received or late answers that refused (TCP RST: port closed) |
| unresolved | int | probes without an outcome because their worker ended early (died, failed) |
| unaccounted | int | sent - received - late - lost - errored - unresolved: not 0 is a bug |
| rtt_count | int | RTT samples (received replies) |
| rtt_{min,avg,max,mdev}_us | float/null | µs; null when rtt_count is 0 |
| rtt_{p50,p90,p99}_us | float/null | µs; exact per second, within rtt_pct_rel_error in "summary" |
| rtt_jitter_us | float/null | mean abs. difference of consecutive RTTs of a target, in µs |
| rtt_hist | list[int] | RTT counts; index k: (8·2^(k-1), 8·2^k] µs, 0: <= 8 µs; no trailing 0s |
| rx_ts, tx_ts | str | source of the RTT samples' stamps: hardware, kernel, user, mixed(a+b), none |
| lost_forward, lost_reverse | int | STAMP, stateful reflector: lost going there / coming back |
| owd_fwd_count, owd_rev_count, residence_count | int | STAMP one-way samples (good replies) |
| owd_fwd_min_us, owd_fwd_avg_us, owd_fwd_p50_us, owd_fwd_p99_us | float/null | T2 - T1 |
| owd_rev_min_us, owd_rev_avg_us, owd_rev_p50_us, owd_rev_p99_us | float/null | T4 - T3 |
| residence_min_us, residence_avg_us, residence_p50_us, residence_p99_us | float/null | T3 - T2 |
| owd_offset_us | float/null | reflector clock minus ours: (owd_fwd_min - owd_rev_min) / 2 |
| reflector_ttl_count, reflector_ttl_min, reflector_ttl_avg | int/null | STAMP: TTL at arrival |
| cos_count | int | STAMP replies whose DSCP/ECN were read (Class of Service TLV) |
| | | one-way delays need synchronised clocks; p50/p99 are null in "summary" |
| generator_limited | bool | "second_total" only: loadgen itself could not keep up in this second |
| generator_limits | list[str] | "second_total" only: why (which worker, how much) |
| generator | object | "second_total" only: requested_pps, achieved_pps and per worker: |
| | | requested_pps, achieved_pps, cpu_pct, send_errors, rx_drops, max_lag_ns, skipped_ns |

A "summary" object holds `t_start`, `seconds` (closed seconds covered), `targets` (a list of
objects with the per-target keys above, plus the outage keys below), `total`, `outage_min`,
`anomalies` (invalid_records, late_records, rtt_dropped, side_events_after_close),
`rtt_pct_rel_error`, `extra` (the caller's mapping) and, with an SLA, `sla` (the verdict per
clause: `sla_object`). Outage keys (`outages`): `outages`
(runs of >= outage_min lost probes in a row), `outage_longest_probes`, `outage_longest_ms`,
`outage_total_ms` and `loss_bursts` ({"1", "2", "3-9", "10+"}: runs of lost probes by length).
A STAMP target with the Class of Service TLV also has `cos_sent`, `cos_fwd` (at the
reflector), `cos_rev` (as the reply arrived): {"dscp", "ecn"} or null; `cos_rp`,
`cos_fwd_remarked`, `cos_rev_remarked` (bool/null), `cos_replies`, `cos_variants` (`cos`): in
its "summary" row always, in a "second" row only where its marking changed (the first too).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any

from loadgen.errors import UsageError
from loadgen.outages import BURST_CLASSES, Outages
from loadgen.sla import Clause, Reading, SlaVerdict
from loadgen.stats import (
    NS_PER_S,
    PERCENTILE_REL_ERROR,
    TOTAL,
    RunSummary,
    SecondReport,
    TargetStats,
)

JSONL_SCHEMA_VERSION = 4  # 2: family, unresolved; 3: the "run" object, rtt_hist, outages, SLA,
# refused, STAMP's loss directions and one-way figures; 4: cos_count, the summary's cos_* keys
# and "clocks"
# The "run" object: loadgen version, command line (argv) and profile source, kernel release,
# CPUs of the host and each worker's pinned CPU (null: not pinned), workers, targets, the
# requested total rate, count and duration (null: not set), timestamp settings, run id, and
# the unix time the run started.
RUN_HEADER_KEYS = (
    "loadgen",
    "command",
    "profile",
    "kernel",
    "cpus",
    "pinned",
    "workers",
    "targets",
    "requested_pps",
    "count",
    "duration_s",
    "timestamps",
    "tx_timestamps",
    "tx_path",
    "run_id",
    "t",
)
_COUNT_KEYS = (
    "sent",
    "received",
    "late",
    "lost",
    "errored",
    "duplicates",
    "reordered",
    "bitflips",
    "corrupted",
    "icmp_errors",
    "stale",
    "refused",
    "lost_forward",
    "lost_reverse",
    "owd_fwd_count",
    "owd_rev_count",
    "residence_count",
    "reflector_ttl_count",
    "cos_count",
)
# STAMP's one-way figures (`oneway.OneWay`): prefix in the JSONL and attribute of OneWay.
_ONE_WAY_KEYS = (("owd_fwd", "fwd"), ("owd_rev", "rev"), ("residence", "residence"))
_RTT_KEYS = ("min", "avg", "max", "mdev", "p50", "p90", "p99", "jitter")


def _name(names: Sequence[str], target: int) -> str:
    if target == TOTAL:
        return "total"
    return names[target] if 0 <= target < len(names) else f"#{target}"


_WRITE_FIXES = {
    errno.ENOSPC: "free some disk space or write the export to another disk",
    errno.EDQUOT: "your disk quota is used up: free some space or pick another path",
    errno.EFBIG: "the file grew too large for its file system: pick another path",
    errno.EROFS: "the file system is read-only: pick a writable path",
    errno.EPERM: "the file may not be written (see `lsattr`, `ls -l`): pick a writable path",
    errno.EACCES: "permission denied: pick a writable path",
    errno.EIO: "the disk reported an I/O error: check it, or pick another path",
    errno.EPIPE: "the reader of that pipe went away: keep it reading until loadgen ends",
}


def export_failure(path: str, err: OSError, lines: int) -> str:
    """One line: which export, what the kernel said, how much got out, what to do."""
    name = errno.errorcode.get(err.errno or 0, "error")
    fix = _WRITE_FIXES.get(err.errno or 0, "pick another path")
    return (
        f"writing the JSONL export {path!r} failed after {lines} lines: "
        f"{err.strerror or err} ({name}); {fix}"
    )


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _us(ns: float) -> float:
    return round(ns / 1e3, 3)


def _figures(
    ts: TargetStats, names: Sequence[str], families: Sequence[int], unresolved: int = 0
) -> dict[str, Any]:
    """The figures of one row; `unresolved` of its unaccounted probes have a known cause (a
    worker that ended early), the rest is a bug."""
    c, r = ts.counts, ts.rtt
    obj: dict[str, Any] = {"target": ts.target, "name": _name(names, ts.target)}
    if 0 <= ts.target < len(families):
        obj["family"] = families[ts.target]
    else:  # the all-targets row
        obj["family"] = families[0] if len(set(families)) == 1 else None
    obj.update((key, getattr(c, key)) for key in _COUNT_KEYS)
    obj["loss_pct"] = round(c.loss_pct, 6)
    obj["unresolved"] = unresolved
    obj["unaccounted"] = c.unaccounted - unresolved
    obj["rtt_count"] = r.count
    values = (r.min_ns, r.avg_ns, r.max_ns, r.mdev_ns, r.p50_ns, r.p90_ns, r.p99_ns, r.jitter_ns)
    for key, ns in zip(_RTT_KEYS, values, strict=True):
        obj[f"rtt_{key}_us"] = _us(ns) if r.count else None
    obj["rtt_hist"] = list(r.hist)
    obj["rx_ts"], obj["tx_ts"] = ts.rx_ts, ts.tx_ts
    for prefix, name in _ONE_WAY_KEYS:
        spread = getattr(ts.oneway, name)
        figures = (spread.min_ns, spread.avg_ns, spread.p50_ns, spread.p99_ns)
        for key, ns in zip(("min", "avg", "p50", "p99"), figures, strict=True):
            obj[f"{prefix}_{key}_us"] = _us(ns) if spread.count and ns is not None else None
    ttl = ts.oneway.ttl
    obj["reflector_ttl_min"] = ttl.min_ns if ttl.count else None
    obj["reflector_ttl_avg"] = round(ttl.avg_ns, 3) if ttl.count else None
    offset = ts.oneway.offset_ns
    obj["owd_offset_us"] = None if offset is None else _us(offset)
    if ts.cos is not None:  # a second's only where the marking changed; the summary's always
        obj.update(ts.cos.jsonl())
    return obj


def _outage_figures(o: Outages) -> dict[str, Any]:
    return {
        "outages": o.count,
        "outage_longest_probes": o.longest_probes,
        "outage_longest_ms": round(o.longest_ns / 1e6, 3),
        "outage_total_ms": round(o.total_ns / 1e6, 3),
        "loss_bursts": dict(zip(BURST_CLASSES, o.bursts, strict=True)),
    }


# A clause's values as exported: loss in percent (as loss_pct), times in µs (as rtt_*_us).
_SLA_UNITS = {Clause.MAX_LOSS: ("%", 100.0), Clause.MIN_RATE: ("pps", 1.0)}
_SLA_TIME = ("us", 1e-3)


def _sla_value(clause: Clause, value: float | None) -> float | None:
    scale = _SLA_UNITS.get(clause, _SLA_TIME)[1]
    return None if value is None else round(float(value) * scale, 6)


def _reading(r: Reading | None, names: Sequence[str]) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "target": r.target,
        "name": _name(names, r.target),
        "second": r.second,
        "value": _sla_value(r.clause, r.value),
        "generator_limited": r.generator_limited,
    }


def sla_object(verdict: SlaVerdict, names: Sequence[str]) -> dict[str, Any]:
    """The summary's "sla" object: the verdict, then per clause its limit and readings."""
    return {
        "passed": verdict.passed,
        "window": str(verdict.spec.window),
        "scope": str(verdict.spec.scope),
        "possibly_generator": verdict.possibly_generator,
        "clauses": [
            {
                "clause": str(c.clause),
                "passed": c.passed,
                "limit": _sla_value(c.clause, float(c.limit)),
                "unit": _SLA_UNITS.get(c.clause, _SLA_TIME)[0],
                "judged": c.judged,
                "failed": c.failed,
                "failed_generator_limited": c.failed_generator_limited,
                "worst": _reading(c.worst, names),
                "first_failure": _reading(c.first_failure, names),
            }
            for c in verdict.clauses
        ],
    }


def breach_rows(
    report: SecondReport, names: Sequence[str], breaches: Sequence[Reading]
) -> list[dict[str, Any]]:
    """One "sla_breach" object per SLA clause this second failed (window "second")."""
    head = {"v": JSONL_SCHEMA_VERSION, "second": report.second, "t": report.start_ns / NS_PER_S}
    return [
        {
            "type": "sla_breach",
            **head,
            "clause": str(b.clause),
            "target": b.target,
            "name": _name(names, b.target),
            "value": _sla_value(b.clause, b.value),
            "limit": _sla_value(b.clause, float(b.limit)),
            "unit": _SLA_UNITS.get(b.clause, _SLA_TIME)[0],
            "generator_limited": b.generator_limited,
        }
        for b in breaches
    ]


def second_rows(
    report: SecondReport, names: Sequence[str], families: Sequence[int]
) -> list[dict[str, Any]]:
    """The objects of one closed second: a "second" per target in it, then "second_total"."""
    head = {"v": JSONL_SCHEMA_VERSION, "second": report.second, "t": report.start_ns / NS_PER_S}
    fam = families
    rows = [
        {"type": "second", **head, **_figures(ts, names, fam, report.explained(ts)[0])}
        for ts in report.per_target
    ]
    total = {
        "type": "second_total",
        **head,
        **_figures(report.total, names, fam, report.explained(report.total)[0]),
    }
    gen = report.generator
    if gen is not None:
        total["generator_limited"] = gen.limited
        total["generator_limits"] = list(gen.limits)
        total["generator"] = {
            "requested_pps": gen.requested_pps,
            "achieved_pps": gen.achieved_pps,
            "workers": [dataclasses.asdict(w) for w in gen.workers],
        }
    rows.append(total)
    return rows


class JsonlWriter:
    """Writes the JSONL export; `with JsonlWriter(path) as out: out.write_second(...)`.

    A path that cannot be opened raises UsageError before the run starts. A write that fails
    later (disk full, file made read-only) never stops the run: the first failure is kept in
    `error` (one line naming the file and the fix), and nothing more is written."""

    def __init__(self, path: str, families: Sequence[int] = ()) -> None:
        """`families`: each target's IP version (4 or 6), by global index."""
        self.path = path
        self.families = tuple(families)
        self.error: str | None = None
        self.lines = 0
        try:
            self._file: IO[str] = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self._identity = _identity(os.fstat(self._file.fileno()))
        except OSError as e:
            raise UsageError(
                f"cannot write the JSONL export {path!r}: {e.strerror}; pick a writable path"
            ) from e

    def _failed(self, err: OSError) -> None:
        if self.error is None:
            self.error = export_failure(self.path, err, self.lines)

    def _write(self, objects: Sequence[Mapping[str, Any]]) -> None:
        if self.error is not None:
            return
        text = "".join(
            json.dumps(o, separators=(",", ":"), allow_nan=False) + "\n" for o in objects
        )
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as e:
            self._failed(e)
        else:
            self.lines += len(objects)

    def write_run(self, header: Mapping[str, Any]) -> None:
        """The "run" object, first: `header` holds RUN_HEADER_KEYS."""
        self._write([{"type": "run", "v": JSONL_SCHEMA_VERSION, **header}])

    def write_second(
        self, report: SecondReport, names: Sequence[str], breaches: Sequence[Reading] = ()
    ) -> None:
        """One "second" object per target in the report, then its "second_total", then one
        "sla_breach" per SLA clause it failed (window "second")."""
        rows = second_rows(report, names, self.families)
        self._write(rows + breach_rows(report, names, breaches))

    def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Objects made already (by `second_rows`, shared with the CSV export)."""
        self._write(rows)

    def write_summary(
        self,
        summary: RunSummary,
        names: Sequence[str],
        extra: Mapping[str, Any] | None = None,
        sla: SlaVerdict | None = None,
    ) -> None:
        def row(ts: TargetStats, o: Outages) -> dict[str, Any]:
            obj = _figures(ts, names, self.families, summary.explained(ts)[0])
            obj.update(_outage_figures(o))
            return obj

        outages = summary.outages or (Outages(),) * len(summary.per_target)
        a = summary.anomalies
        self._write(
            [
                {
                    "type": "summary",
                    "v": JSONL_SCHEMA_VERSION,
                    "t_start": summary.start_ns / NS_PER_S,
                    "seconds": summary.seconds,
                    "targets": [
                        row(ts, o) for ts, o in zip(summary.per_target, outages, strict=True)
                    ],
                    "total": row(summary.total, summary.outages_total),
                    "outage_min": summary.outage_min,
                    "anomalies": {
                        "invalid_records": a.invalid_records,
                        "late_records": a.late_records,
                        "rtt_dropped": a.rtt_dropped,
                        "side_events_after_close": a.side_events_after_close,
                    },
                    "rtt_pct_rel_error": PERCENTILE_REL_ERROR,
                    "extra": dict(extra or {}),
                    **({} if sla is None else {"sla": sla_object(sla, names)}),
                }
            ]
        )

    def close(self) -> None:
        """Close the file; a file removed or replaced during the run is a failure too, as what
        was written went with it."""
        try:
            self._file.close()
        except OSError as e:
            self._failed(e)
        if self.error is None:
            try:
                now = _identity(os.stat(self.path))
            except OSError:
                now = None
            if now != self._identity:
                self.error = (
                    f"the JSONL export {self.path!r} was removed or replaced during the run "
                    f"(its {self.lines} lines went with it); leave the file alone until "
                    "loadgen ends"
                )

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
