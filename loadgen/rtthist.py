"""The coarse RTT histogram every second, target and run summary carries (`rtt_hist`).

Buckets are logarithmic with upper bounds 8 µs x 2^k, k = 0 .. up to the first bound at or
above the linger: bucket k counts RTTs in (8·2^(k-1), 8·2^k] µs, bucket 0 every RTT <= 8 µs.
A fixed, small number of fixed-width counts per row, so rows merge by adding; the JSONL carries
them with trailing zeros trimmed and Prometheus reads its `le` bounds off `upper_bounds_s`.
Pure numpy, no clock.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

BASE_NS: Final = 8_000  # upper bound of bucket 0
_Arr = NDArray[Any]


def n_buckets(linger_ns: int) -> int:
    """Buckets up to the first upper bound at or above `linger_ns` (the longest RTT any reply
    of the run can have): 19 for the default 2 s linger."""
    top = max(1, -(-linger_ns // BASE_NS))  # ceil(linger / 8 µs): the last bound's multiple
    return (top - 1).bit_length() + 1


def index(rtt_ns: _Arr, buckets: int) -> _Arr:
    """Bucket of each RTT: the k with 8·2^(k-1) < rtt_µs <= 8·2^k, so k is the bit length of
    ceil(rtt / 8 µs) - 1 (exact in integers); RTTs past the last bound share the last bucket."""
    m = np.maximum(np.asarray(rtt_ns, dtype=np.int64) - 1, 0) // BASE_NS
    # Bit length of m: frexp's exponent is exact for m < 2**53 (m < 2**37 here for any RTT).
    bits = np.frexp(m.astype(np.float64))[1].astype(np.int64)
    out: _Arr = np.minimum(bits, buckets - 1)
    return out


def upper_bounds_ns(buckets: int) -> list[int]:
    return [BASE_NS << k for k in range(buckets)]


def trimmed(counts: _Arr) -> list[list[int]]:
    """Each row of a 2-D count array as a list without its trailing zeros ([] for none)."""
    if counts.size == 0:
        return [[] for _ in range(len(counts))]
    nonzero = counts != 0
    width = np.where(nonzero.any(axis=1), counts.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)
    rows: list[list[int]] = counts.tolist()
    return [row[:w] for row, w in zip(rows, width.tolist(), strict=True)]


def per_row(rows: _Arr, idx: _Arr, n_rows: int, buckets: int) -> _Arr:
    """Counts per (row, bucket) of samples in `rows` with bucket `idx`."""
    flat = np.bincount(rows * buckets + idx, minlength=n_rows * buckets)
    out: _Arr = flat.reshape(n_rows, buckets).astype(np.int64)
    return out
