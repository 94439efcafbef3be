"""The clock-offset estimator on synthetic exchanges: known offsets, known one-way delays."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from loadgen.clockoffset import (
    OffsetEstimator,
    clock_sample,
    to_coordinator_clock,
    worker_clock,
)
from loadgen.wire.messages import Frame, WorkerStats
from loadgen.wire.records import BURST_DTYPE, RECORD_DTYPE


def exchange(t1: int, offset: int, out_ns: int, turn_ns: int, back_ns: int) -> tuple[int, ...]:
    """The four timestamps of one Beat/Echo: coordinator sends at t1 (its clock), the worker's
    clock reads `offset` more than the coordinator's."""
    t2 = t1 + out_ns + offset
    t3 = t2 + turn_ns
    t4 = t3 - offset + back_ns
    return t1, t2, t3, t4


@given(
    offset=st.integers(-(10**12), 10**12),
    out_ns=st.integers(0, 10**8),
    back_ns=st.integers(0, 10**8),
    turn_ns=st.integers(0, 10**7),
)
def test_the_true_offset_lies_within_the_bound_whatever_the_delays(
    offset: int, out_ns: int, back_ns: int, turn_ns: int
) -> None:
    s = clock_sample(*exchange(10**18, offset, out_ns, turn_ns, back_ns))
    assert s.rtt_ns == out_ns + back_ns  # the worker's own turn is not the network's
    assert abs(s.offset_ns - offset) <= s.bound_ns


def test_symmetric_delays_give_the_offset_exactly() -> None:
    s = clock_sample(*exchange(10**18, -123_456_789, 40_000, 7_000, 40_000))
    assert (s.offset_ns, s.rtt_ns, s.bound_ns) == (-123_456_789, 80_000, 40_000)


def test_the_least_round_trip_wins() -> None:
    est = OffsetEstimator(window=8)
    offset = 5_000_000
    # Queueing on the way out makes a sample look ahead by half its extra delay.
    for i, (out_ns, back_ns) in enumerate([(900_000, 50_000), (30_000, 20_000), (400_000, 0)]):
        est.add(*exchange(10**18 + i * 10**9, offset, out_ns, 1_000, back_ns))
    best = est.best
    assert best is not None
    assert best.rtt_ns == 50_000
    assert best.offset_ns == offset + 5_000
    assert est.count == 3


def test_the_filter_forgets_past_its_window() -> None:
    est = OffsetEstimator(window=2)
    est.add(*exchange(0, 100, 10, 0, 10))  # the best round trip, then pushed out
    est.add(*exchange(10**9, 7_000, 1_000, 0, 1_000))
    est.add(*exchange(2 * 10**9, 7_000, 500, 0, 700))
    best = est.best
    assert best is not None and best.rtt_ns == 1_200 and abs(best.offset_ns - 7_000) <= 600


def test_an_impossible_exchange_is_not_a_sample() -> None:
    est = OffsetEstimator()
    est.add(1_000, 2_000, 2_000, 900)  # back before it was sent
    assert est.best is None and est.count == 0


def test_a_worker_clock_is_flagged_past_the_limit_or_unmeasured() -> None:
    est = OffsetEstimator()
    assert worker_clock(3, 0, est, 1_000).flagged
    est.add(*exchange(10**18, 2_500, 1_500, 100, 1_500))
    ok, bad = worker_clock(3, 2_500, est, 1_500), worker_clock(3, 2_500, est, 1_499)
    assert (ok.offset_ns, ok.bound_ns, ok.flagged, bad.flagged) == (2_500, 1_500, False, True)


def test_frames_move_onto_the_coordinator_clock_and_rtts_stay() -> None:
    records = np.zeros(2, dtype=RECORD_DTYPE)
    records["tx_ns"], records["rtt_ns"] = [5_000, 6_000], [70, 80]
    bursts = np.zeros(1, dtype=BURST_DTYPE)
    bursts["start_ns"], bursts["end_ns"] = 5_000, 6_000
    frame = Frame(1, 0, 9_000, 4_000, records, WorkerStats(), bursts)
    moved = to_coordinator_clock(frame, 1_000)
    assert list(moved.records["tx_ns"]) == [4_000, 5_000]
    assert list(moved.records["rtt_ns"]) == [70, 80]
    assert (moved.now_ns, moved.resolved_before_ns) == (8_000, 3_000)
    assert (int(moved.bursts["start_ns"][0]), int(moved.bursts["end_ns"][0])) == (4_000, 5_000)
    assert list(frame.records["tx_ns"]) == [5_000, 6_000]  # the frame received is left as it is
