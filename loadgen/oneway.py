"""STAMP's one-way figures per target: forward (T2-T1), reverse (T4-T3) and residence (T3-T2)
samples gathered per open second like RTTs (`moments.Bucket`), read out as min/avg/p50/p99,
and the clock offset they imply. Pure. One-way delays mean something only when both clocks
are synchronised: the offset estimate (half the difference of the minima: the path's fastest
probes are assumed symmetric) and a negative figure say when they are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from loadgen.moments import Bucket, Table
from loadgen.wire.records import ONE_WAY_KINDS, RecordKind


@dataclass(frozen=True, slots=True)
class Spread:
    """min/avg/p50/p99 of one figure's samples; p50/p99 None where not exact (run totals)."""

    count: int = 0
    min_ns: int = 0
    avg_ns: float = 0.0
    p50_ns: float | None = None
    p99_ns: float | None = None


_NONE = Spread()


@dataclass(frozen=True, slots=True)
class OneWay:
    fwd: Spread = _NONE
    rev: Spread = _NONE
    residence: Spread = _NONE
    ttl: Spread = _NONE  # TTL our probes arrived with at the reflector (a count, not ns)

    @property
    def offset_ns(self) -> float | None:
        """Reflector clock minus ours, estimated as half the asymmetry of the minima."""
        if not (self.fwd.count and self.rev.count):
            return None
        return (self.fwd.min_ns - self.rev.min_ns) / 2

    @property
    def negative(self) -> bool:
        """A one-way minimum below zero: the clocks are not synchronised (or stamped apart)."""
        return any(s.count and s.min_ns < 0 for s in (self.fwd, self.rev))


NO_ONE_WAY = OneWay()


def _spreads(tab: Table, rows: Sequence[int], exact: bool) -> list[Spread]:
    out = []
    for r in rows:
        n = int(tab.n[r])
        if not n:
            out.append(_NONE)
            continue
        p50, _, p99 = (float(q) for q in tab.quant[r]) if exact else (None, None, None)
        out.append(Spread(n, int(tab.mn[r]), float(tab.mean[r]), p50, p99))
    return out


@dataclass(slots=True)
class OneWayBuckets:
    """The open seconds' samples of the three figures, and their run totals (moments only)."""

    n_targets: int
    open: dict[int, dict[RecordKind, Bucket]] = field(default_factory=dict)
    run: dict[RecordKind, Table] = field(default_factory=dict)

    def add(
        self,
        second: int,
        kind: NDArray[np.int64],
        value: NDArray[np.int64],
        target: NDArray[np.uint32],
        flags: NDArray[np.uint8],
    ) -> None:
        for k in ONE_WAY_KINDS:
            take = kind == k
            if take.any():
                seconds = self.open.setdefault(second, {})
                bucket = seconds.get(k) or seconds.setdefault(k, Bucket(self.n_targets))
                bucket.add_samples(value[take], target[take], flags[take])

    def close(self, second: int, rows: Sequence[int]) -> list[OneWay]:
        """The figures of `rows` (targets, then n_targets for the total) for a closing second."""
        buckets = self.open.pop(second, {})
        if not buckets:
            return [NO_ONE_WAY] * len(rows)
        per_kind = []
        for k in ONE_WAY_KINDS:
            bucket = buckets.get(k)
            if bucket is None:
                per_kind.append([_NONE] * len(rows))
                continue
            tab, _, _ = bucket.table()
            self.run.setdefault(k, Table(self.n_targets)).absorb(tab)
            per_kind.append(_spreads(tab, rows, exact=True))
        return [OneWay(*figs) for figs in zip(*per_kind, strict=True)]

    def totals(self, rows: Sequence[int]) -> list[OneWay]:
        per_kind = [
            _spreads(self.run[k], rows, exact=False) if k in self.run else [_NONE] * len(rows)
            for k in ONE_WAY_KINDS
        ]
        return [OneWay(*figs) for figs in zip(*per_kind, strict=True)]
