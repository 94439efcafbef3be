"""Per-second, per-target accounting: the coordinator's buckets, the closing rule, the run totals.

Records go in with `Aggregator.add`; each second comes out exactly once, in order, when the
workers' watermark passes its end (`close_through`). Run totals keep bounded state: running
moments and a log-linear RTT histogram per target. Pure and vectorised: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from loadgen.records import RECORD_DTYPE, RecordFlag, RecordKind

NS_PER_S: Final = 1_000_000_000
TOTAL: Final = -1  # the `target` of the all-targets row
QUANTILES: Final = (0.5, 0.9, 0.99)
# Run-total percentiles come from 64 linear sub-buckets per octave; reporting a bucket's middle
# is within 1/128 (0.78 %) of the true order statistic; values below 128 ns are exact.
PERCENTILE_REL_ERROR: Final = 1 / 128
_SUB_BITS = 6
_MAX_RTT_NS = (1 << 37) - 1  # 137 s; longer RTTs share the top bucket; also a bit mask

_N_KINDS = len(RecordKind)
_REORD = _N_KINDS  # extra count column: RECEIVED/LATE records flagged REORDERED
_N_COLS = _N_KINDS + 1
_RX_BITS = int(RecordFlag.RX_KERNEL | RecordFlag.RX_HARDWARE)
_TX_BITS = int(RecordFlag.TX_KERNEL | RecordFlag.TX_HARDWARE)
_SOURCES = ((4, "hardware"), (2, "kernel"), (1, "user"))  # bits of a timestamp-source mask
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
    consecutive RTTs of one target in arrival order (RFC 3550 spirit), 0 below 2 samples."""

    count: int = 0
    min_ns: int = 0
    avg_ns: float = 0.0
    max_ns: int = 0
    mdev_ns: float = 0.0
    p50_ns: float = 0.0
    p90_ns: float = 0.0
    p99_ns: float = 0.0
    jitter_ns: float = 0.0


_NO_RTT = RttStats()


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
class SecondReport:
    """One second: only targets with a record in it (all that sent), plus the total row.
    `provisional` reports come from `open_preview` and may still change."""

    second: int
    start_ns: int
    per_target: tuple[TargetSecond, ...]
    total: TargetSecond
    generator: GeneratorSecond | None = None
    provisional: bool = False


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


def _bucket_index(rtt: _Arr) -> _Arr:
    """Log-linear bucket: exact below 128 ns, then 64 buckets per octave."""
    v = np.clip(rtt, 0, _MAX_RTT_NS).astype(np.int64)
    bits = np.frexp(v.astype(np.float64))[1].astype(np.int64)  # bit length, exact below 2**53
    shift = np.maximum(bits - _SUB_BITS - 1, 0)
    out: _Arr = (shift << _SUB_BITS) + (v >> shift)
    return out


N_BUCKETS: Final = int(_bucket_index(np.array([_MAX_RTT_NS]))[0]) + 1


def _bucket_middle(idx: _Arr) -> _Arr:
    shift = np.maximum((idx >> _SUB_BITS) - 1, 0)
    lower = (idx - (shift << _SUB_BITS)) << shift
    out: _Arr = lower + ((1 << shift) - 1) / 2
    return out


def _source(mask: int) -> str:
    names = [name for bit, name in _SOURCES if mask & bit]
    if not names:
        return "none"
    return names[0] if len(names) == 1 else f"mixed({'+'.join(names)})"


_SOURCE_NAMES = tuple(_source(mask) for mask in range(8))


def _hist_quantiles(hist: _Arr, rows: _Arr, run: _Table) -> _Arr:
    """QUANTILES of the histogram rows, each scanned only between its min and max buckets,
    interpolated like numpy's "linear" and clamped to the exact min and max."""
    n, mn, mx = run.n[rows][:, None], run.mn[rows], run.mx[rows]
    first = _bucket_index(mn)
    width = _bucket_index(mx) - first + 1
    ends = np.cumsum(width)
    begins = ends - width
    flat = np.repeat(rows * N_BUCKETS + first - begins, width) + np.arange(ends[-1])
    cum = np.cumsum(hist.reshape(-1)[flat])
    below = np.where(begins > 0, cum[begins - 1], 0)[:, None]  # samples of earlier rows
    pos = np.array(QUANTILES)[None, :] * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    mids = [  # the middle of the bucket holding order statistic `rank` of the row
        _bucket_middle(
            first[:, None] + np.searchsorted(cum, below + rank, "right") - begins[:, None]
        )
        for rank in (lo, np.minimum(lo + 1, n - 1))
    ]
    quant = mids[0] + (mids[1] - mids[0]) * (pos - lo)
    out: _Arr = np.clip(quant, mn[:, None], mx[:, None])
    return out


def _ts_word(flags: _Arr) -> _Arr:
    """Per sample: its RecordFlag timestamp bits, plus one-hot RX (bits 8-10) and TX (bits
    11-13) source categories, so OR-ing words tells which sources a set of samples mixes."""
    f = flags.astype(np.uint16)
    rx = np.where(f & RecordFlag.RX_HARDWARE, 4, np.where(f & RecordFlag.RX_KERNEL, 2, 1))
    tx = np.where(f & RecordFlag.TX_HARDWARE, 4, np.where(f & RecordFlag.TX_KERNEL, 2, 1))
    return ((f & (_RX_BITS | _TX_BITS)) | (rx << 8) | (tx << 11)).astype(np.uint16)


class _Table:
    """Counts and RTT moments per row: rows 0..n-1 are targets, row n is the total."""

    def __init__(self, n_targets: int) -> None:
        rows = n_targets + 1
        self.counts = np.zeros((rows, _N_COLS), dtype=np.int64)
        self.n = np.zeros(rows, dtype=np.int64)
        self.mn = np.full(rows, np.iinfo(np.int64).max, dtype=np.int64)
        self.mx = np.full(rows, -1, dtype=np.int64)
        self.mean = np.zeros(rows)
        self.m2 = np.zeros(rows)  # sum of squared deviations from the mean
        self.absdiff = np.zeros(rows)  # sum of |consecutive RTT differences|
        self.ndiff = np.zeros(rows, dtype=np.int64)
        self.ts = np.zeros(rows, dtype=np.uint16)  # OR of _ts_word over samples
        self.quant = np.zeros((rows, len(QUANTILES)))

    def absorb(self, other: _Table) -> None:
        """Merge another table's rows (Chan et al. parallel variance; no samples kept)."""
        self.counts += other.counts
        total = self.n + other.n
        safe = np.maximum(total, 1)
        delta = other.mean - self.mean
        self.mean += delta * other.n / safe
        self.m2 += other.m2 + delta * delta * (self.n * other.n) / safe
        self.n = total
        np.minimum(self.mn, other.mn, out=self.mn)
        np.maximum(self.mx, other.mx, out=self.mx)
        self.absdiff += other.absdiff
        self.ndiff += other.ndiff
        self.ts |= other.ts

    def stats(self, rows: Sequence[int], targets: Sequence[int]) -> list[_StatArgs]:
        """Constructor arguments of TargetStats for the given rows."""
        arrays = (self.counts, self.n, self.mn, self.mx, self.mean, self.m2, self.absdiff)
        counts, n, mn, mx, mean, m2, absdiff = (a[rows].tolist() for a in arrays)
        ndiff, quant, ts = (a[rows].tolist() for a in (self.ndiff, self.quant, self.ts))
        out: list[_StatArgs] = []
        for r, t in enumerate(targets):
            rtt = _NO_RTT
            if n[r]:
                mdev = (max(m2[r], 0.0) / n[r]) ** 0.5
                jitter = absdiff[r] / ndiff[r] if ndiff[r] else 0.0
                p50, p90, p99 = quant[r]
                rtt = RttStats(n[r], mn[r], mean[r], mx[r], mdev, p50, p90, p99, jitter)
            w = ts[r]
            rx_ts, tx_ts = _SOURCE_NAMES[(w >> 8) & 7], _SOURCE_NAMES[(w >> 11) & 7]
            out.append((t, Counts(*counts[r]), rtt, w & _RX_BITS, w & _TX_BITS, rx_ts, tx_ts))
        return out


class _Bucket:
    """An open second: counts by (target, kind) and its RTT samples in arrival order."""

    __slots__ = ("counts", "samples")

    def __init__(self, n_targets: int) -> None:
        self.counts = np.zeros((n_targets, _N_COLS), dtype=np.int64)
        self.samples: list[_Arr] = []

    def table(self) -> tuple[_Table, _Arr, _Arr]:
        """Exact figures of this second, plus (target, histogram bucket) of every sample."""
        n = len(self.counts)
        tab = _Table(n)
        tab.counts[:n] = self.counts
        tab.counts[n] = self.counts.sum(axis=0)
        smp = np.concatenate(self.samples) if self.samples else np.zeros(0, RECORD_DTYPE)
        t = smp["target"].astype(np.int64)
        rtt = smp["rtt_ns"]
        tab.n = np.bincount(t, minlength=n + 1)
        tab.n[n] = len(t)
        # Values sorted by (target, rtt), then all values sorted: every row is one slice.
        if n < 1 << 26 and (len(rtt) == 0 or int(rtt.max()) <= _MAX_RTT_NS):
            by_target = np.sort((t << 37) | rtt) & _MAX_RTT_NS  # one key: 4x faster than lexsort
        else:
            by_target = rtt[np.lexsort((rtt, t))]
        vals = np.concatenate([by_target, by_target if n == 1 else np.sort(rtt)])
        starts = np.concatenate([[0], np.cumsum(tab.n[:n])])
        has = np.flatnonzero(tab.n)
        first, last = starts[has], starts[has] + tab.n[has] - 1
        tab.mn[has], tab.mx[has] = vals[first], vals[last]
        pos = first[:, None] + np.array(QUANTILES)[None, :] * (tab.n[has] - 1)[:, None]
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, last[:, None])
        tab.quant[has] = vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)  # numpy's "linear"
        sums = np.bincount(t, weights=rtt, minlength=n + 1)
        sums[n] = float(rtt.sum())
        tab.mean[has] = sums[has] / tab.n[has]
        dev = rtt - tab.mean[t]
        tab.m2[:] = np.bincount(t, weights=dev * dev, minlength=n + 1)
        tab.m2[n] = float(np.sum((rtt - tab.mean[n]) ** 2))
        arrival = np.argsort(t, kind="stable")
        ta, ra = t[arrival], rtt[arrival]
        same = ta[1:] == ta[:-1]
        diffs = np.abs(np.diff(ra))[same].astype(np.float64)
        tab.absdiff[:] = np.bincount(ta[1:][same], weights=diffs, minlength=n + 1)
        tab.absdiff[n] = tab.absdiff[:n].sum()
        tab.ndiff = np.maximum(tab.n - 1, 0)
        tab.ndiff[n] = tab.ndiff[:n].sum()
        targets = has[:-1]  # `has` ends with the total row whenever there are samples
        if len(targets):
            words = _ts_word(smp["flags"])[arrival]
            tab.ts[targets] = np.bitwise_or.reduceat(words, starts[targets])
        tab.ts[n] = np.bitwise_or.reduce(tab.ts[:n])
        return tab, t, _bucket_index(rtt)


class Aggregator:
    """Merges worker records into per-second, per-target figures and run totals.

    A record belongs to the second of its `tx_ns` (relative to `start_ns`). Memory: the open
    seconds (n_targets x 11 counters each, plus their RTT samples) and, for the run totals,
    one 2048-bucket histogram per target (16 KiB of address space; pages never touched are
    never allocated). `timeout_ns` bounds a plausible RECEIVED RTT; `max_ahead_ns` how far
    past the last watermark (or the start) a record's tx_ns may lie before it is invalid.
    """

    def __init__(
        self, n_targets: int, start_ns: int, timeout_ns: int, *, max_ahead_ns: int = 3600 * NS_PER_S
    ) -> None:
        if n_targets < 1:
            raise ValueError("an aggregator needs at least one target")
        self.n_targets = n_targets
        self.start_ns = start_ns
        self.timeout_ns = timeout_ns
        self.max_ahead_ns = max_ahead_ns
        self._next = 0  # first second not yet closed
        self._watermark_ns = start_ns
        self._open: dict[int, _Bucket] = {}
        self._run = _Table(n_targets)
        self._hist = np.zeros((n_targets + 1, N_BUCKETS), dtype=np.int64)
        self._anomalies = Anomalies()
        self._summary: RunSummary | None = None
        self._quant_n = np.zeros(n_targets + 1, dtype=np.int64)  # run.n when quant was computed

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
        ok = (records["target"] < self.n_targets) & (kind < _N_KINDS)
        ok &= (tx >= self.start_ns) & (tx <= limit)
        invalid = len(records) - int(np.count_nonzero(ok))
        if invalid:
            records = records[ok]
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
        reply = (kind == RecordKind.RECEIVED) | (kind == RecordKind.LATE)
        reordered = reply & ((flags & RecordFlag.REORDERED) != 0)
        sample = (kind == RecordKind.RECEIVED) & ~bad_rtt
        cells = records["target"].astype(np.int64) * _N_COLS
        lo, hi = int(sec.min()), int(sec.max())
        for s in [lo] if lo == hi else np.unique(sec).tolist():
            sel = slice(None) if lo == hi else sec == s
            bucket = self._open.get(s)
            if bucket is None:
                bucket = self._open[s] = _Bucket(self.n_targets)
            idx = np.concatenate([cells[sel] + kind[sel], cells[sel][reordered[sel]] + _REORD])
            flat = bucket.counts.reshape(-1)
            if len(flat) <= 8 * len(idx):
                flat += np.bincount(idx, minlength=len(flat))
            else:
                np.add.at(flat, idx, 1)
            taken = records[sel][sample[sel]]
            if len(taken):
                bucket.samples.append(taken)

    def _add_after_close(self, records: _Arr) -> tuple[int, int]:
        """Outcomes for a closed second are a watermark bug: counted, dropped. Side events
        (a STALE reply always comes after its second closed) go to the run totals only."""
        side = records[records["kind"] > RecordKind.ERRORED]
        idx = side["target"].astype(np.int64) * _N_COLS + side["kind"]
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
        return [self._close_next() for _ in range(self._next, last + 1)]

    def close_all(self) -> list[SecondReport]:
        """End of run: close every second that has a record, and the empty ones between."""
        last = max(self._open, default=self._next - 1)
        return [self._close_next() for _ in range(self._next, last + 1)]

    def _close_next(self) -> SecondReport:
        s = self._next
        self._next += 1
        bucket = self._open.pop(s, None)
        if bucket is None:
            return self._report(s, _Table(self.n_targets), np.zeros(0, dtype=np.int64))
        tab, t, idx = bucket.table()
        self._run.absorb(tab)
        np.add.at(self._hist.reshape(-1), t * N_BUCKETS + idx, 1)
        self._hist[self.n_targets] += np.bincount(idx, minlength=N_BUCKETS)
        self._summary = None
        return self._report(s, tab, np.flatnonzero(bucket.counts.any(axis=1)))

    def _report(self, s: int, tab: _Table, active: _Arr, provisional: bool = False) -> SecondReport:
        rows = [*active.tolist(), self.n_targets]
        per = [TargetSecond(*args, second=s) for args in tab.stats(rows, [*rows[:-1], TOTAL])]
        start = self.start_ns + s * NS_PER_S
        return SecondReport(s, start, tuple(per[:-1]), per[-1], provisional=provisional)

    def open_preview(self, now_ns: int) -> list[SecondReport]:
        """Provisional figures of open seconds that have begun by now_ns (nothing changes)."""
        out = []
        for s in sorted(self._open):
            if self.start_ns + s * NS_PER_S <= now_ns:
                bucket = self._open[s]
                active = np.flatnonzero(bucket.counts.any(axis=1))
                out.append(self._report(s, bucket.table()[0], active, provisional=True))
        return out

    def cumulative(self) -> RunSummary:
        """Run totals over closed seconds; percentiles from histograms (PERCENTILE_REL_ERROR)."""
        if self._summary is None:
            run = self._run
            dirty = np.flatnonzero(run.n != self._quant_n)  # rows with new samples
            for chunk in np.array_split(dirty, len(dirty) // 1024 + 1) if len(dirty) else ():
                run.quant[chunk] = _hist_quantiles(self._hist, chunk, run)
            self._quant_n = run.n.copy()
            rows = list(range(self.n_targets + 1))
            stats = [TargetStats(*args) for args in run.stats(rows, [*rows[:-1], TOTAL])]
            total = stats.pop()
            self._summary = RunSummary(
                self.start_ns, self._next, tuple(stats), total, self._anomalies
            )
        return self._summary
