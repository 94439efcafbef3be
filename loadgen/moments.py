"""The numbers behind `stats`: counts and RTT moments per row, and log-linear RTT histograms.

A `Table` holds one row per target plus a total row and merges another without keeping samples;
a `Bucket` turns an open second's samples into an exact Table; `hist_quantiles` reads run-total
percentiles off per-row histograms. `stats` turns rows into its public dataclasses. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from loadgen import rtthist
from loadgen.wire.records import RecordFlag, RecordKind

QUANTILES: Final = (0.5, 0.9, 0.99)
# Run-total percentiles come from 64 linear sub-buckets per octave; reporting a bucket's middle
# is within 1/128 (0.78 %) of the true order statistic; values below 128 ns are exact.
PERCENTILE_REL_ERROR: Final = 1 / 128
_SUB_BITS = 6
_MAX_RTT_NS = (1 << 37) - 1  # 137 s; longer RTTs share the top bucket; also a bit mask

# Count columns: one per RecordKind (in Counts' field order), then REORD_COL.
N_KINDS: Final = len(RecordKind)
REORD_COL: Final = N_KINDS  # RECEIVED/LATE records flagged REORDERED
N_COLS: Final = N_KINDS + 1
_RX_BITS = int(RecordFlag.RX_KERNEL | RecordFlag.RX_HARDWARE)
_TX_BITS = int(RecordFlag.TX_KERNEL | RecordFlag.TX_HARDWARE)
_SOURCES = ((4, "hardware"), (2, "kernel"), (1, "user"))  # bits of a timestamp-source mask
_Arr = NDArray[Any]


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


def hist_quantiles(hist: _Arr, rows: _Arr, run: Table) -> _Arr:
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


_TS_WORDS = _ts_word(np.arange(256)).tolist()  # the word of every flags byte
SAMPLE_BYTES = 13  # an open second's RTT sample: int64 RTT, uint32 target, uint8 flags


class Table:
    """Counts, RTT moments and the coarse RTT histogram (`rtthist`, `hist_buckets` counts)
    per row: rows 0..n-1 are targets, row n is the total."""

    def __init__(self, n_targets: int, hist_buckets: int = 1) -> None:
        rows = n_targets + 1
        self.rtt_hist = np.zeros((rows, hist_buckets), dtype=np.int64)
        self.counts = np.zeros((rows, N_COLS), dtype=np.int64)
        self.n = np.zeros(rows, dtype=np.int64)
        self.mn = np.full(rows, np.iinfo(np.int64).max, dtype=np.int64)
        self.mx = np.full(rows, -1, dtype=np.int64)
        self.mean = np.zeros(rows)
        self.m2 = np.zeros(rows)  # sum of squared deviations from the mean
        self.absdiff = np.zeros(rows)  # sum of |consecutive RTT differences|
        self.ndiff = np.zeros(rows, dtype=np.int64)
        self.ts = np.zeros(rows, dtype=np.uint16)  # OR of _ts_word over samples
        self.quant = np.zeros((rows, len(QUANTILES)))

    def absorb(self, other: Table) -> None:
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
        self.rtt_hist += other.rtt_hist

    def sources(self, rows: Sequence[int]) -> tuple[list[int], list[int], list[str], list[str]]:
        """Per row: its RX and TX RecordFlag timestamp bits, and the names of its RX and TX
        timestamp sources ("hardware", "kernel", "user", "mixed(a+b)" or "none")."""
        ts = self.ts[rows].astype(np.int64)
        names = np.array(_SOURCE_NAMES, dtype=object)
        rx_ts: list[str] = names[(ts >> 8) & 7].tolist()
        tx_ts: list[str] = names[(ts >> 11) & 7].tolist()
        return (ts & _RX_BITS).tolist(), (ts & _TX_BITS).tolist(), rx_ts, tx_ts


class Bucket:
    """An open second: counts by (target, kind) and its RTT samples in arrival order, held as
    three narrow columns (SAMPLE_BYTES each: RTT, target, flags), not as whole records."""

    __slots__ = ("counts", "flags", "hist_buckets", "rtt", "target")

    def __init__(self, n_targets: int, hist_buckets: int = 1) -> None:
        self.counts = np.zeros((n_targets, N_COLS), dtype=np.int64)
        self.hist_buckets = hist_buckets
        self.rtt: list[_Arr] = []
        self.target: list[_Arr] = []
        self.flags: list[_Arr] = []

    def add_samples(self, rtt_ns: _Arr, target: _Arr, flags: _Arr) -> None:
        if len(rtt_ns):
            self.rtt.append(rtt_ns.astype(np.int64))
            self.target.append(target.astype(np.uint32))
            self.flags.append(flags.astype(np.uint8))

    def table(self) -> tuple[Table, _Arr, _Arr]:
        """Exact figures of this second, plus (target, histogram bucket) of every sample.
        Closing a second is the coordinator's largest piece of work: one sort of the samples
        by (target, rtt), partitions for the total row, and linear passes otherwise."""
        n = len(self.counts)
        tab = Table(n, self.hist_buckets)
        tab.counts[:n] = self.counts
        tab.counts[n] = self.counts.sum(axis=0)
        rtt = np.concatenate(self.rtt) if self.rtt else np.zeros(0, np.int64)
        t = np.concatenate(self.target).astype(np.int64) if self.target else np.zeros(0, np.int64)
        flags = np.concatenate(self.flags) if self.flags else np.zeros(0, np.uint8)
        self.rtt, self.target, self.flags = [], [], []
        tab.n = np.bincount(t, minlength=n + 1)
        tab.n[n] = len(t)
        starts = np.concatenate([[0], np.cumsum(tab.n[:n])])
        has = np.flatnonzero(tab.n[:n])
        if len(has):
            self._per_target(tab, t, rtt, starts, has)
            self._total_row(tab, rtt)
            self._jitter(tab, t, rtt, starts, has)
            for f in np.flatnonzero(np.bincount(flags, minlength=256)).tolist():
                seen = np.bincount(t[flags == f], minlength=n) > 0
                tab.ts[:n][seen] |= _TS_WORDS[f]
            tab.ts[n] = np.bitwise_or.reduce(tab.ts[:n])
            tab.rtt_hist[:] = rtthist.per_row(
                t, rtthist.index(rtt, self.hist_buckets), n + 1, self.hist_buckets
            )
            tab.rtt_hist[n] = tab.rtt_hist[:n].sum(axis=0)
        return tab, t, _bucket_index(rtt)

    @staticmethod
    def _per_target(tab: Table, t: _Arr, rtt: _Arr, starts: _Arr, has: _Arr) -> None:
        """Min, max, quantiles, mean and m2 of every target's samples."""
        n = len(tab.n) - 1
        if n < 1 << 26 and int(rtt.max()) <= _MAX_RTT_NS and int(rtt.min()) >= 0:
            by_target = (t << 37) | rtt  # one key, sorted in place: 4x faster than lexsort
            by_target.sort()
            by_target &= _MAX_RTT_NS
        else:
            by_target = rtt[np.lexsort((rtt, t))]
        first, last = starts[has], starts[has] + tab.n[has] - 1
        tab.mn[has], tab.mx[has] = by_target[first], by_target[last]
        pos = first[:, None] + np.array(QUANTILES)[None, :] * (tab.n[has] - 1)[:, None]
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, last[:, None])
        tab.quant[has] = by_target[lo] + (by_target[hi] - by_target[lo]) * (pos - lo)
        del by_target
        sums = np.bincount(t, weights=rtt, minlength=n + 1)
        tab.mean[has] = sums[has] / tab.n[has]
        dev = rtt - tab.mean[t]
        tab.m2[:] = np.bincount(t, weights=dev * dev, minlength=n + 1)

    @staticmethod
    def _total_row(tab: Table, rtt: _Arr) -> None:
        """The all-targets row: order statistics by partition, not a second full sort."""
        n, count = len(tab.n) - 1, len(rtt)
        tab.mn[n], tab.mx[n] = int(rtt.min()), int(rtt.max())
        pos = np.array(QUANTILES) * (count - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, count - 1)
        part = np.partition(rtt, np.unique(np.concatenate([lo, hi])))
        tab.quant[n] = part[lo] + (part[hi] - part[lo]) * (pos - lo)  # numpy's "linear"
        del part
        tab.mean[n] = float(rtt.sum()) / count
        tab.m2[n] = float(np.sum((rtt - tab.mean[n]) ** 2))

    @staticmethod
    def _jitter(tab: Table, t: _Arr, rtt: _Arr, starts: _Arr, has: _Arr) -> None:
        """Sum of |consecutive RTT differences| per target, in arrival order: a stable sort by
        target keeps arrival order within each target (a radix sort for 16-bit targets)."""
        n = len(tab.n) - 1
        keys = t.astype(np.uint16) if n <= 1 << 16 else t
        ra = rtt[np.argsort(keys, kind="stable")]
        diffs = np.zeros(len(ra), dtype=np.float64)
        np.abs(np.diff(ra), out=diffs[:-1], casting="unsafe")
        ends = starts[1:][starts[1:] > 0] - 1  # each target's last sample: no pair across
        diffs[ends] = 0.0
        tab.absdiff[has] = np.add.reduceat(diffs, starts[has])
        tab.absdiff[n] = tab.absdiff[:n].sum()
        tab.ndiff = np.maximum(tab.n - 1, 0)
        tab.ndiff[n] = tab.ndiff[:n].sum()
