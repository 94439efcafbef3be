"""A reflector's timing figures: how long it held each reply and how late its timer was.

`Spread` keeps a 10 µs histogram (for the median) and the mean change from one value to the
next (for the jitter a reflector added). Pure: values in, figures out; the reflector passes in
times it read.
"""

from __future__ import annotations

STEP_NS = 10_000  # histogram resolution: medians are the middle of a 10 µs bucket


class Spread:
    """Values in arrival order; `buckets` x STEP_NS is the histogram's range (later values
    share the last bucket; the mean step always uses the exact values)."""

    def __init__(self, buckets: int) -> None:
        self.hist = [0] * buckets
        self.count = 0
        self.last: int | None = None
        self.step_sum_ns = 0
        self.steps = 0

    def add(self, value_ns: int, n: int = 1) -> None:
        """`n` values equal to `value_ns` (a batch answered at one moment)."""
        if n <= 0:
            return
        self.hist[min(max(value_ns, 0) // STEP_NS, len(self.hist) - 1)] += n
        self.count += n
        if self.last is not None:
            self.step_sum_ns += abs(value_ns - self.last)
            self.steps += 1
        self.steps += n - 1  # the rest of the batch: steps of 0
        self.last = value_ns

    def add_many(self, values_ns: list[int]) -> None:
        for v in values_ns:
            self.add(v)

    def p50_ns(self) -> int:
        """Middle of the bucket holding the median; 0 with no values."""
        half, seen = (self.count + 1) // 2, 0
        for i, n in enumerate(self.hist):
            seen += n
            if half and seen >= half:
                return i * STEP_NS + STEP_NS // 2
        return 0

    def mean_step_ns(self) -> int:
        """Mean |difference| of consecutive values; 0 below two values."""
        return self.step_sum_ns // self.steps if self.steps else 0
