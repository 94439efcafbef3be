"""The pacer keeps an absolute timetable: exact long-run rate, capped bursts, honest skips."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.pacer import Pacer

MS = 1_000_000


def run(pacer: Pacer, ticks_ns: list[int]) -> list[int]:
    out = []
    for now in ticks_ns:
        due = pacer.due(now)
        pacer.commit(due.count)
        out.append(due.count)
    return out


def test_exact_rate_over_one_second_of_1ms_ticks() -> None:
    pacer = Pacer(rate_pps=100_000, start_ns=0)
    counts = run(pacer, [i * MS for i in range(1000)])
    # Probes due at t = 0, 10 µs, ... 999.99 ms: exactly 100 000 by t = 999 ms + the first.
    assert sum(counts) == 99_901
    assert max(counts) <= 101
    assert pacer.sent == 99_901


def test_small_stall_is_caught_up_within_burst_cap() -> None:
    pacer = Pacer(rate_pps=10_000, start_ns=0, max_burst=50)
    assert pacer.due(0).count == 1
    pacer.commit(1)
    due = pacer.due(10 * MS)  # 100 probes behind, cap 50
    assert due.count == 50
    assert due.lag_ns >= 9 * MS
    pacer.commit(50)
    assert pacer.due(10 * MS).count == 50


def test_long_stall_rebases_and_counts_skipped_time() -> None:
    pacer = Pacer(rate_pps=1000, start_ns=0, max_lag_ns=50 * MS)
    pacer.commit(pacer.due(0).count)
    due = pacer.due(500 * MS)
    assert due.count == 1
    assert pacer.skipped_ns >= 450 * MS
    pacer.commit(1)
    # After the rebase the timetable runs from 500 ms again at 1 per ms.
    assert pacer.due(510 * MS).count == 10


def test_total_is_never_exceeded() -> None:
    pacer = Pacer(rate_pps=1e6, start_ns=0, total=123)
    counts = run(pacer, [i * MS for i in range(10)])
    assert sum(counts) == 123
    assert pacer.finished


def test_partial_send_is_retried() -> None:
    pacer = Pacer(rate_pps=1000, start_ns=0)
    due = pacer.due(9 * MS)
    assert due.count == 10
    pacer.commit(4)  # the kernel took only 4
    assert pacer.due(9 * MS).count == 6


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1, max_value=500_000),
    steps=st.lists(st.integers(min_value=0, max_value=3 * MS), min_size=1, max_size=200),
)
def test_never_ahead_of_schedule(rate: float, steps: list[int]) -> None:
    pacer = Pacer(rate_pps=rate, start_ns=0, max_burst=10**9, max_lag_ns=10**18)
    now = 0
    for step in steps:
        now += step
        pacer.commit(pacer.due(now).count)
        # Never more than the timetable allows, and never more than one interval behind.
        assert pacer.sent == int(now * rate / 1e9) + 1
