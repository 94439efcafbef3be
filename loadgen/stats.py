"""Per-second, per-target accounting: the coordinator's buckets, the closing rule, the run totals.

Records go in with `Aggregator.add`; each second comes out exactly once, in order, when the
workers' watermark passes its end (`close_through`). Run totals keep bounded state: running
moments and a log-linear RTT histogram per target (that math lives in `moments`). Pure and
vectorised: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from loadgen import rtthist
from loadgen.cos import CosSeen, CosTally
from loadgen.moments import (
    N_BUCKETS,
    N_COLS,
    N_KINDS,
    PERCENTILE_REL_ERROR,
    REORD_COL,
    Bucket,
    Table,
    hist_quantiles,
)
from loadgen.oneway import NO_ONE_WAY, OneWay, OneWayBuckets
from loadgen.outages import Outages, OutageTable
from loadgen.wire.records import BURST_DTYPE, RECORD_DTYPE, RecordFlag, RecordKind

__all__ = [
    "NS_PER_S",
    "PERCENTILE_REL_ERROR",
    "TOTAL",
    "Aggregator",
    "Anomalies",
    "Counts",
    "GeneratorSecond",
    "RttStats",
    "RunSummary",
    "SecondReport",
    "TargetSecond",
    "TargetStats",
    "Unresolved",
    "WorkerSecond",
]

NS_PER_S: Final = 1_000_000_000
TOTAL: Final = -1  # the `target` of the all-targets row
_Arr = NDArray[Any]
_StatArgs = tuple[int, "Counts", "RttStats", int, int, str, str]


@dataclass(frozen=True, slots=True)
class Counts:
    """Probe outcomes (sent = received + late + lost + errored) and side events.
    Late and errored probes are not lost: `loss_pct` counts only probes nothing came back for."""

    sent: int = 0
    received: int = 0
    late: int = 0
    lost: int = 0
    errored: int = 0
    duplicates: int = 0
    bitflips: int = 0
    corrupted: int = 0
    icmp_errors: int = 0
    stale: int = 0
    refused: int = 0  # answers that were refusals (TCP RST: port closed), within received/late
    lost_forward: int = 0  # STAMP, stateful reflector: lost on the way there
    lost_reverse: int = 0  # STAMP, stateful reflector: lost on the way back
    owd_fwd_count: int = 0  # one-way samples (STAMP good replies), one per kind
    owd_rev_count: int = 0
    residence_count: int = 0
    reflector_ttl_count: int = 0
    cos_count: int = 0  # STAMP replies whose DSCP/ECN were tallied (`cos`)
    reordered: int = 0  # RECEIVED or LATE replies that overtook a later probe's reply

    @property
    def unaccounted(self) -> int:
        """Probes with no outcome (or too many): anything but 0 is a bug to show loudly."""
        return self.sent - self.received - self.late - self.lost - self.errored

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f) + getattr(other, f) for f in Counts.__slots__))


@dataclass(frozen=True, slots=True)
class RttStats:
    """RTT figures of RECEIVED replies (late ones are excluded). No samples: every field is 0.
    mdev is iputils' sqrt(mean(rtt^2) - mean(rtt)^2); jitter is the mean absolute difference of
    consecutive RTTs of one target in arrival order (RFC 3550 spirit), 0 below 2 samples.
    hist: the `rtthist` counts (bucket k: RTTs in (8·2^(k-1), 8·2^k] µs), trailing zeros
    trimmed."""

    count: int = 0
    min_ns: int = 0
    avg_ns: float = 0.0
    max_ns: int = 0
    mdev_ns: float = 0.0
    p50_ns: float = 0.0
    p90_ns: float = 0.0
    p99_ns: float = 0.0
    jitter_ns: float = 0.0
    hist: tuple[int, ...] = ()


_NO_RTT = RttStats()
_NO_OUTAGES: Final = Outages()


@dataclass(frozen=True, slots=True)
class TargetStats:
    """One target's (or, with target == TOTAL, all targets') figures. rx/tx_flags: RecordFlag
    bits OR-ed over the RTT samples; rx/tx_ts: "hardware", "kernel", "user", "mixed(a+b)" or
    "none" (no samples) — the timestamp source the RTT figures came from."""

    target: int
    counts: Counts
    rtt: RttStats
    rx_flags: int
    tx_flags: int
    rx_ts: str
    tx_ts: str
    oneway: OneWay = field(default=NO_ONE_WAY, kw_only=True)  # STAMP probes only
    # STAMP with the Class of Service TLV: DSCP/ECN per direction. Run totals: the most
    # frequent; a second: only where it changed from the last second that showed one.
    cos: CosSeen | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class TargetSecond(TargetStats):
    second: int  # index from the run's start_ns


@dataclass(frozen=True, slots=True)
class WorkerSecond:
    worker: int
    requested_pps: float  # what its timetable had due in this second
    achieved_pps: float  # probes it really sent in this second (SENT records)
    cpu_pct: float
    send_errors: int  # sends the kernel refused in this second
    rx_drops: int  # packets the kernel dropped at its socket in this second
    max_lag_ns: int = 0  # worst distance behind its timetable (pacing error)
    skipped_ns: int = 0  # timetable given up after falling too far behind


@dataclass(frozen=True, slots=True)
class GeneratorSecond:
    """How the generator itself did in a second; judged by `selfcheck`. A second with any
    `limits` was generator-limited: its loss may be loadgen's own, not the network's."""

    workers: tuple[WorkerSecond, ...]
    limits: tuple[str, ...] = ()
    stopped: bool = False  # sending was stopped early (CTRL-C, a worker lost) in or before it

    @property
    def limited(self) -> bool:
        return bool(self.limits)

    @property
    def requested_pps(self) -> float:
        return sum(w.requested_pps for w in self.workers)

    @property
    def achieved_pps(self) -> float:
        return sum(w.achieved_pps for w in self.workers)


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Probes a worker sent and never resolved because it ended without finishing (it died or
    failed): a known cause, reported as such, not an accounting bug."""

    worker: int
    cause: str  # "died" | "failed" | "lost its stream" | "went silent" (a worker over TCP)
    targets: frozenset[int]
    probes: int  # its targets' missing outcomes in the closed seconds

    def __str__(self) -> str:
        return f"worker {self.worker} {self.cause}"


def _explain(unresolved: Sequence[Unresolved], target: int, unaccounted: int) -> tuple[int, str]:
    """How many of a row's unaccounted probes a worker that ended early explains, and which
    ("worker 0 died"); whatever else is unaccounted is a bug. Only missing outcomes are
    explained: an outcome without its probe never is."""
    if target == TOTAL:
        lost = [u for u in unresolved if u.probes > 0]
        return sum(u.probes for u in lost), ", ".join(map(str, lost))
    lost = [u for u in unresolved if target in u.targets]
    if not lost or unaccounted <= 0:
        return 0, ""
    return unaccounted, str(lost[0])


@dataclass(frozen=True, slots=True)
class SecondReport:
    """One closed second: only targets with a record in it (all that sent), plus the total row.
    `unresolved`: workers that had ended when it closed, with the outcomes they owe it."""

    second: int
    start_ns: int
    per_target: tuple[TargetSecond, ...]
    total: TargetSecond
    generator: GeneratorSecond | None = None
    unresolved: tuple[Unresolved, ...] = ()

    def explained(self, ts: TargetSecond) -> tuple[int, str]:
        return _explain(self.unresolved, ts.target, ts.counts.unaccounted)


@dataclass(frozen=True, slots=True)
class Anomalies:
    invalid_records: int = 0  # target >= n_targets, unknown kind, tx_ns before start or far ahead
    late_records: int = 0  # SENT/outcome records for an already closed second: not merged
    rtt_dropped: int = 0  # RECEIVED with rtt < 0 or > timeout: counted received, no RTT sample
    side_events_after_close: int = 0  # expected (STALE): in the run totals, in no second

    def warnings(self) -> tuple[str, ...]:
        out = []
        if self.invalid_records:
            out.append(f"{self.invalid_records} invalid records ignored (bad target, kind or time)")
        if self.late_records:
            out.append(f"{self.late_records} records arrived after their second closed, ignored")
        if self.rtt_dropped:
            out.append(f"{self.rtt_dropped} replies had an impossible RTT, kept out of RTT stats")
        return tuple(f"BUG: {w}; please report it" for w in out)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Totals over every closed second (open seconds are never counted as final)."""

    start_ns: int
    seconds: int
    per_target: tuple[TargetStats, ...]  # every target, indexed by target
    total: TargetStats
    anomalies: Anomalies
    unresolved: tuple[Unresolved, ...] = ()  # workers that ended with probes unresolved
    outages: tuple[Outages, ...] = ()  # every target's, indexed by target
    outages_total: Outages = _NO_OUTAGES
    outage_min: int = 3  # lost probes in a row that make an outage

    def explained(self, ts: TargetStats) -> tuple[int, str]:
        return _explain(self.unresolved, ts.target, ts.counts.unaccounted)


def _stat_args(tab: Table, rows: Sequence[int], targets: Sequence[int]) -> list[_StatArgs]:
    """Constructor arguments of TargetStats for the given rows of a table."""
    arrays = (tab.counts, tab.n, tab.mn, tab.mx, tab.mean, tab.m2, tab.absdiff)
    counts, n, mn, mx, mean, m2, absdiff = (a[rows].tolist() for a in arrays)
    ndiff, quant = tab.ndiff[rows].tolist(), tab.quant[rows].tolist()
    hist = rtthist.trimmed(tab.rtt_hist[rows])
    rx_flags, tx_flags, rx_ts, tx_ts = tab.sources(rows)
    out: list[_StatArgs] = []
    for r, t in enumerate(targets):
        rtt = _NO_RTT
        if n[r]:
            mdev = (max(m2[r], 0.0) / n[r]) ** 0.5
            jitter = absdiff[r] / ndiff[r] if ndiff[r] else 0.0
            p50, p90, p99 = quant[r]
            rtt = RttStats(n[r], mn[r], mean[r], mx[r], mdev, p50, p90, p99, jitter, (*hist[r],))
        out.append((t, Counts(*counts[r]), rtt, rx_flags[r], tx_flags[r], rx_ts[r], tx_ts[r]))
    return out


class Aggregator:
    """Merges worker records into per-second, per-target figures and run totals.

    A record belongs to the second of its `tx_ns` (relative to `start_ns`). Memory: the open
    seconds (n_targets x 11 counters each, plus 13 bytes per RTT sample: moments.SAMPLE_BYTES;
    closing one takes about 3x that again for a moment) and, for the run totals,
    one 2048-bucket histogram per target (16 KiB of address space; pages never touched are
    never allocated), plus the coarse `rtthist` counts per row (19 at a 2 s linger).
    `timeout_ns` bounds a plausible RECEIVED RTT; `linger_ns` (default: the timeout) the
    histogram's last bucket; `max_ahead_ns` how far past the last watermark (or the start) a
    record's tx_ns may lie before it is invalid.
    """

    def __init__(
        self,
        n_targets: int,
        start_ns: int,
        timeout_ns: int,
        *,
        linger_ns: int | None = None,
        outage_min: int = 3,
        max_ahead_ns: int = 3600 * NS_PER_S,
    ) -> None:
        if n_targets < 1:
            raise ValueError("an aggregator needs at least one target")
        self.n_targets = n_targets
        self.start_ns = start_ns
        self.timeout_ns = timeout_ns
        self.max_ahead_ns = max_ahead_ns
        self.hist_buckets = rtthist.n_buckets(timeout_ns if linger_ns is None else linger_ns)
        self._next = 0  # first second not yet closed
        self._watermark_ns = start_ns
        self._open: dict[int, Bucket] = {}
        self._run = Table(n_targets, self.hist_buckets)
        self._hist = np.zeros((n_targets + 1, N_BUCKETS), dtype=np.int64)
        self._anomalies = Anomalies()
        self._summary: RunSummary | None = None
        self._quant_n = np.zeros(n_targets + 1, dtype=np.int64)  # run.n when quant was computed
        self._lost_workers: dict[int, tuple[str, frozenset[int]]] = {}
        self._outages = OutageTable(n_targets, outage_min)
        self._oneway = OneWayBuckets(n_targets)
        self._cos = CosTally()

    @property
    def closed_seconds(self) -> int:
        return self._next

    def add(self, records: _Arr) -> None:
        if records.dtype != RECORD_DTYPE:
            raise TypeError(f"records must have records.RECORD_DTYPE, not {records.dtype}")
        if len(records) == 0:
            return
        tx, kind = records["tx_ns"], records["kind"]
        limit = max(self._watermark_ns, self.start_ns) + self.max_ahead_ns
        ok = (records["target"] < self.n_targets) & (kind < N_KINDS)
        ok &= (tx >= self.start_ns) & (tx <= limit)
        invalid = len(records) - int(np.count_nonzero(ok))
        if invalid:
            records = records[ok]
        tallied = records[records["kind"] == RecordKind.COS]
        if len(tallied):  # the run tally keeps a record whose second has closed, too
            second = (tallied["tx_ns"] - self.start_ns) // NS_PER_S
            second = np.where(second >= self._next, second, -1)
            self._cos.add(second, tallied["target"], tallied["rtt_ns"], tallied["probes"])
            self._summary = None
        sec = (records["tx_ns"] - self.start_ns) // NS_PER_S
        closed = sec < self._next
        late = side_late = 0
        if closed.any():
            late, side_late = self._add_after_close(records[closed])
            records, sec = records[~closed], sec[~closed]
        rtt = records["rtt_ns"]
        bad_rtt = (records["kind"] == RecordKind.RECEIVED) & ((rtt < 0) | (rtt > self.timeout_ns))
        self._count_anomalies(invalid, late, int(np.count_nonzero(bad_rtt)), side_late)
        if len(records) == 0:
            return
        kind, flags = records["kind"].astype(np.int64), records["flags"]
        # A SENT record stands for `probes` probes, a COS record for `probes` replies; every
        # other record for one event.
        weighted = (kind == RecordKind.SENT) | (kind == RecordKind.COS)
        count = np.where(weighted, records["probes"], 1).astype(np.int64)
        reply = (kind == RecordKind.RECEIVED) | (kind == RecordKind.LATE)
        reordered = reply & ((flags & RecordFlag.REORDERED) != 0)
        sample = (kind == RecordKind.RECEIVED) & ~bad_rtt
        cells = records["target"].astype(np.int64) * N_COLS
        oneway = bool((kind >= RecordKind.OWD_FWD).any())
        lo, hi = int(sec.min()), int(sec.max())
        for s in [lo] if lo == hi else np.unique(sec).tolist():
            sel = slice(None) if lo == hi else sec == s
            bucket = self._open.get(s)
            if bucket is None:
                bucket = self._open[s] = Bucket(self.n_targets, self.hist_buckets)
            idx = np.concatenate([cells[sel] + kind[sel], cells[sel][reordered[sel]] + REORD_COL])
            weight = np.concatenate([count[sel], np.ones(len(idx) - len(count[sel]), np.int64)])
            flat = bucket.counts.reshape(-1)
            if len(flat) <= 8 * len(idx):  # exact: float64 counts are whole up to 2**53
                flat += np.bincount(idx, weights=weight, minlength=len(flat)).astype(np.int64)
            else:
                np.add.at(flat, idx, weight)
            taken = sample & sel if lo != hi else sample
            bucket.add_samples(rtt[taken], records["target"][taken], flags[taken])
            if oneway:
                self._oneway.add(s, kind[sel], rtt[sel], records["target"][sel], flags[sel])

    def add_bursts(self, bursts: _Arr) -> None:
        """Loss bursts a worker found (`outages`); counted once the seconds they end in close."""
        if bursts.dtype != BURST_DTYPE:
            raise TypeError(f"bursts must have records.BURST_DTYPE, not {bursts.dtype}")
        invalid = self._outages.add(bursts)
        if invalid:
            self._count_anomalies(invalid, 0, 0, 0)

    def _add_after_close(self, records: _Arr) -> tuple[int, int]:
        """Outcomes for a closed second are a watermark bug: counted, dropped. Side events
        (a STALE reply always comes after its second closed) go to the run totals only."""
        side = records[records["kind"] > RecordKind.ERRORED]
        idx = side["target"].astype(np.int64) * N_COLS + side["kind"]
        np.add.at(self._run.counts.reshape(-1), idx, 1)
        np.add.at(self._run.counts[self.n_targets], side["kind"].astype(np.int64), 1)
        self._summary = None
        return len(records) - len(side), len(side)

    def _count_anomalies(self, invalid: int, late: int, dropped: int, side_late: int) -> None:
        if invalid or late or dropped or side_late:
            a = self._anomalies
            self._anomalies = Anomalies(
                a.invalid_records + invalid,
                a.late_records + late,
                a.rtt_dropped + dropped,
                a.side_events_after_close + side_late,
            )
            self._summary = None

    def close_through(self, watermark_ns: int) -> list[SecondReport]:
        """Close, in order, every open second whose end is <= watermark_ns."""
        self._watermark_ns = max(self._watermark_ns, watermark_ns)
        last = (watermark_ns - self.start_ns) // NS_PER_S - 1
        reports = [self._close_next() for _ in range(self._next, last + 1)]
        if self._outages.settle(self.start_ns + self._next * NS_PER_S):
            self._summary = None
        return reports

    def close_all(self) -> list[SecondReport]:
        """End of run: close every second that has a record, and the empty ones between."""
        last = max(self._open, default=self._next - 1)
        reports = [self._close_next() for _ in range(self._next, last + 1)]
        self._outages.settle(None)
        self._summary = None
        return reports

    def _close_next(self) -> SecondReport:
        s = self._next
        self._next += 1
        bucket = self._open.pop(s, None)
        if bucket is None:
            return self._report(
                s, Table(self.n_targets, self.hist_buckets), np.zeros(0, dtype=np.int64)
            )
        tab, t, idx = bucket.table()
        self._run.absorb(tab)
        np.add.at(self._hist.reshape(-1), t * N_BUCKETS + idx, 1)
        self._hist[self.n_targets] += np.bincount(idx, minlength=N_BUCKETS)
        self._summary = None
        return self._report(s, tab, np.flatnonzero(bucket.counts.any(axis=1)))

    def _report(self, s: int, tab: Table, active: _Arr) -> SecondReport:
        rows = [*active.tolist(), self.n_targets]
        args = _stat_args(tab, rows, [*rows[:-1], TOTAL])
        ow = self._oneway.close(s, rows)
        marks = self._cos.close(s, rows)
        per = [
            TargetSecond(*a, second=s, oneway=o, cos=m)
            for a, o, m in zip(args, ow, marks, strict=True)
        ]
        start = self.start_ns + s * NS_PER_S
        return SecondReport(s, start, tuple(per[:-1]), per[-1], unresolved=self._unresolved(per))

    def worker_lost(self, worker: int, cause: str, targets: Sequence[int]) -> None:
        """A worker ended without resolving all its probes (`cause`: "died", "failed"): what
        its targets lack from now on is reported as unresolved (`RunSummary.unresolved`)."""
        self._lost_workers[worker] = (cause, frozenset(targets))
        self._summary = None

    def _unresolved(self, rows: Sequence[TargetStats]) -> tuple[Unresolved, ...]:
        """What each ended worker owes `rows` (a second's active targets, or every target)."""
        out = []
        for worker, (cause, targets) in sorted(self._lost_workers.items()):
            missing = sum(max(0, r.counts.unaccounted) for r in rows if r.target in targets)
            out.append(Unresolved(worker, cause, targets, missing))
        return tuple(out)

    @property
    def open_seconds(self) -> int:
        """Seconds holding records but not closed yet: what the aggregator keeps in memory."""
        return len(self._open)

    def cumulative(self) -> RunSummary:
        """Run totals over closed seconds; percentiles from histograms (PERCENTILE_REL_ERROR)."""
        if self._summary is None:
            run = self._run
            dirty = np.flatnonzero(run.n != self._quant_n)  # rows with new samples
            for chunk in np.array_split(dirty, len(dirty) // 1024 + 1) if len(dirty) else ():
                run.quant[chunk] = hist_quantiles(self._hist, chunk, run)
            self._quant_n = run.n.copy()
            rows = list(range(self.n_targets + 1))
            args = _stat_args(run, rows, [*rows[:-1], TOTAL])
            ow = self._oneway.totals(rows)
            stats = [
                TargetStats(*a, oneway=o, cos=self._cos.seen(r))
                for a, o, r in zip(args, ow, rows, strict=True)
            ]
            total = stats.pop()
            outages, outages_total = self._outages.rows()
            self._summary = RunSummary(
                self.start_ns,
                self._next,
                tuple(stats),
                total,
                self._anomalies,
                self._unresolved(stats),
                outages,
                outages_total,
                self._outages.outage_min,
            )
        return self._summary
