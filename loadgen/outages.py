"""Loss bursts and outages: runs of consecutive lost probes of one target, in sequence order.

The worker's `BurstFinder` owns the run state (only the worker sees each probe's outcome in
sequence order: its tracker resolves probes oldest first) and emits each burst once it ended,
as a `records.BURST_DTYPE` row; a run crosses seconds and frames freely. The coordinator's
`OutageTable` adds bursts up per target: the burst-length distribution, and the outages (bursts
of at least `outage_min` probes). Pure numpy; times are the probes' send times, passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.records import BURST_DTYPE

BURST_CLASSES: Final = ("1", "2", "3-9", "10+")  # the loss-burst distribution's keys
_CLASS_EDGES = np.array([2, 3, 10])  # a burst of length L is in class searchsorted(L, right)
_Arr = NDArray[Any]


class BurstFinder:
    """Finds loss bursts in one worker's probe outcomes, fed oldest probe first.

    A burst ends at the first probe of its target after it that was not lost (received, late
    or errored); it lasts from the send of its first lost probe to that probe's send, so a
    steady 10 ms interval makes a 3-probe burst 30 ms. A burst still open when the run ends
    (`flush`) lasts until its last lost probe's send. State: three int64 per target."""

    def __init__(self, targets: NDArray[np.uint32]) -> None:
        n = len(targets)
        self.targets = np.asarray(targets, dtype=np.uint32)
        self._len = np.zeros(n, dtype=np.int64)  # open run per local target: its length,
        self._start_ns = np.zeros(n, dtype=np.int64)  # its first probe's send
        self._last_ns = np.zeros(n, dtype=np.int64)  # and its last's
        self._open = 0  # targets with an open run
        self._out: list[_Arr] = []

    def feed(self, local: _Arr, lost: _Arr, tx_ns: _Arr) -> None:
        """Outcomes of probes in sequence order per target (as the tracker resolves them):
        their local target index, whether each was lost, and when it was sent."""
        if not self._open and not lost.any():
            return  # the usual batch: nothing lost, nothing open
        order = np.argsort(local, kind="stable")  # per target, still in sequence order
        loc, lo, tx = local[order], lost[order], tx_ns[order]
        first = np.ones(len(loc), dtype=bool)
        first[1:] = loc[1:] != loc[:-1]
        last = np.ones(len(loc), dtype=bool)
        last[:-1] = first[1:]
        prev_lost = np.zeros(len(loc), dtype=bool)
        prev_lost[1:] = lo[:-1]
        next_lost = np.zeros(len(loc), dtype=bool)
        next_lost[:-1] = lo[1:]
        starts = np.flatnonzero(lo & ~(prev_lost & ~first))
        ends = np.flatnonzero(lo & ~(next_lost & ~last))  # the same runs, in the same order
        tgt, length, start_ns = loc[starts], ends - starts + 1, tx[starts]
        # A run at a target's first probe here continues the run left open before, if any.
        carried = first[starts] & (self._len[tgt] > 0)
        ct = tgt[carried]
        length[carried] += self._len[ct]
        start_ns[carried] = self._start_ns[ct]
        self._len[ct] = 0
        # An open run whose target's first probe here was not lost ended at that probe.
        enders = np.flatnonzero(first & ~lo)
        enders = enders[self._len[loc[enders]] > 0]
        et = loc[enders]
        self._emit(et, self._len[et], self._start_ns[et], tx[enders])
        self._len[et] = 0
        # Runs that reach a target's last probe here stay open; the others ended.
        still = last[ends]
        done = ~still
        self._emit(tgt[done], length[done], start_ns[done], tx[ends[done] + 1])
        ot = tgt[still]
        self._len[ot], self._start_ns[ot], self._last_ns[ot] = (
            length[still],
            start_ns[still],
            tx[ends[still]],
        )
        self._open = int(np.count_nonzero(self._len))

    @property
    def open(self) -> bool:
        """Some target has a run of lost probes that has not ended yet."""
        return self._open > 0

    def flush(self) -> None:
        """The run is over: every open run ends at its last lost probe's send."""
        ot = np.flatnonzero(self._len)
        self._emit(ot, self._len[ot], self._start_ns[ot], self._last_ns[ot])
        self._len[ot] = 0
        self._open = 0

    def _emit(self, local: _Arr, length: _Arr, start_ns: _Arr, end_ns: _Arr) -> None:
        if len(local):
            out = np.zeros(len(local), dtype=BURST_DTYPE)
            out["target"], out["probes"] = self.targets[local], length
            out["start_ns"], out["end_ns"] = start_ns, end_ns
            self._out.append(out)

    def take(self) -> _Arr:
        """Every burst that ended since the last call."""
        out = np.concatenate(self._out) if self._out else np.zeros(0, dtype=BURST_DTYPE)
        self._out = []
        return out


@dataclass(frozen=True, slots=True)
class Outages:
    """One target's (or every target's) outages: bursts of at least outage_min lost probes.
    `bursts`: how many loss bursts of each BURST_CLASSES length, outages or not."""

    count: int = 0
    longest_probes: int = 0
    longest_ns: int = 0
    total_ns: int = 0
    bursts: tuple[int, ...] = (0, 0, 0, 0)


class OutageTable:
    """Bursts added up per target (the coordinator's side): bounded state, 8 int64 each."""

    def __init__(self, n_targets: int, outage_min: int = 3) -> None:
        if outage_min < 1:
            raise ValueError("outage_min is at least 1 probe")
        self.n_targets = n_targets
        self.outage_min = outage_min
        self._bursts = np.zeros((n_targets, len(BURST_CLASSES)), dtype=np.int64)
        self._count = np.zeros(n_targets, dtype=np.int64)
        self._longest = np.zeros(n_targets, dtype=np.int64)
        self._longest_ns = np.zeros(n_targets, dtype=np.int64)
        self._total_ns = np.zeros(n_targets, dtype=np.int64)
        self._pending: list[_Arr] = []  # bursts not yet in a closed second

    def add(self, bursts: _Arr) -> int:
        """Queue bursts until `settle` (the seconds they lie in close); returns how many were
        invalid (target out of range, no probes) and left out."""
        ok = (bursts["target"] < self.n_targets) & (bursts["probes"] > 0)
        if len(bursts):
            self._pending.append(bursts[ok])
        return len(bursts) - int(np.count_nonzero(ok))

    def settle(self, before_ns: int | None) -> bool:
        """Count the queued bursts that ended before `before_ns` (None: all of them): like
        every other run figure, outages come only from closed seconds. True if any were."""
        if not self._pending:
            return False
        queued = np.concatenate(self._pending)
        due = np.ones(len(queued), dtype=bool)
        if before_ns is not None:
            due = queued["end_ns"] < before_ns
        rest = queued[~due]
        self._pending = [rest] if len(rest) else []
        b = queued[due]
        t = b["target"].astype(np.int64)
        length = b["probes"].astype(np.int64)
        span = np.maximum(b["end_ns"] - b["start_ns"], 0)
        np.add.at(self._bursts, (t, np.searchsorted(_CLASS_EDGES, length, "right")), 1)
        out = length >= self.outage_min
        t, length, span = t[out], length[out], span[out]
        np.add.at(self._count, t, 1)
        np.add.at(self._total_ns, t, span)
        # The longest in probes; of equally long ones, the longest in time.
        key = self._longest.copy()
        np.maximum.at(key, t, length)
        self._longest_ns[key > self._longest] = 0
        self._longest = key
        tie = length == key[t]
        np.maximum.at(self._longest_ns, t[tie], span[tie])
        return len(b) > 0

    def rows(self) -> tuple[tuple[Outages, ...], Outages]:
        """Per target, and the total (counts and times added; the longest is the longest
        of any target, in probes and then in time)."""
        cols = (self._count, self._longest, self._longest_ns, self._total_ns)
        count, longest, longest_ns, total_ns = (c.tolist() for c in cols)
        bursts = self._bursts.tolist()
        per = tuple(
            Outages(count[i], longest[i], longest_ns[i], total_ns[i], (*bursts[i],))
            for i in range(self.n_targets)
        )
        top = int(self._longest.max(initial=0))
        top_ns = int(self._longest_ns[self._longest == top].max()) if top else 0
        sums = (*self._bursts.sum(axis=0).tolist(),)
        return per, Outages(int(self._count.sum()), top, top_ns, int(self._total_ns.sum()), sums)
