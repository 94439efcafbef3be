"""The pacer keeps an absolute timetable: exact long-run rate, capped bursts, honest skips."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.pacer import Pacer, TickGrid
from loadgen.plan import probes_within

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


def test_grid_points_sit_a_quarter_tick_after_the_marks() -> None:
    grid = TickGrid(origin_ns=1000 * MS)
    q = MS // 4
    assert grid.batch_end(1000 * MS) == 1000 * MS - 1  # nothing is due before the start
    assert grid.next_after(1000 * MS) == 1000 * MS + q
    assert grid.batch_end(1000 * MS + q) == 1001 * MS - 1
    assert grid.batch_end(1003 * MS + 900_000) == 1004 * MS - 1
    assert grid.next_after(1003 * MS + 900_000) == 1004 * MS + q
    # Point 99 (at 99.25 ms) is the last before the 100 ms mark: the two turns before it
    # (points 97 and 98) are light.
    light = [i for i in range(200) if grid.before_mark(1000 * MS + q + i * MS)]
    assert light == [97, 98, 197, 198]


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=2_000, max_value=300_000),
    lateness=st.lists(
        st.integers(min_value=0, max_value=3 * MS // 4 - 1), min_size=300, max_size=300
    ),
)
def test_late_turns_on_the_grid_keep_every_tenth_exact(rate: float, lateness: list[int]) -> None:
    """However late (under 3/4 tick) each turn runs, the probes sent in each 100 ms window
    are exactly those due in it, the first window included."""
    grid = TickGrid(origin_ns=0)
    pacer = Pacer(rate_pps=rate, start_ns=0, max_burst=10**9)
    per_window: dict[int, int] = {}
    point = 0  # the first turn runs at the start
    for late in lateness:
        sent_at = point + late
        count = pacer.due(grid.batch_end(sent_at)).count
        pacer.commit(count)
        per_window[sent_at // (100 * MS)] = per_window.get(sent_at // (100 * MS), 0) + count
        point = grid.next_after(sent_at)

    def due_before(t_ns: int) -> int:
        # Probes due on the nanosecond grid before t: k is due at the first whole ns at or past
        # k / rate, so those with k / rate <= t - 1 ns. Exact rational arithmetic: a float
        # product can land an ulp past a whole probe (rate 2000.0000000000002 once did).
        return math.floor(Fraction(t_ns - 1) * Fraction(rate) / 10**9) + 1

    assert per_window[0] == due_before(100 * MS)
    assert per_window[1] == due_before(200 * MS) - due_before(100 * MS)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=1e6),
    duration_ns=st.integers(min_value=1, max_value=3600 * 10**9),
)
def test_the_plan_counts_a_duration_as_the_pacer_sends_it(rate: float, duration_ns: int) -> None:
    """What the pacer has due by the last nanosecond of [0, duration) is the plan's count, and
    nothing more becomes due before the duration is over."""
    pacer = Pacer(rate_pps=rate, start_ns=0, max_burst=10**12, max_lag_ns=10**30)
    assert pacer.due(duration_ns - 1).count == probes_within(duration_ns, rate)
