"""The generator self-check flags exactly the seconds in which loadgen could not keep up."""

from __future__ import annotations

from loadgen.messages import WorkerStats
from loadgen.selfcheck import GeneratorCheck, WorkerSchedule

S = 1_000_000_000


def feed(check: GeneratorCheck, worker: int, second: int, **stats: int) -> None:
    """A frame late in `second` carrying these cumulative counters."""
    check.on_frame(worker, second * S + 990_000_000, WorkerStats(**stats))


def test_due_per_second_follows_the_timetable() -> None:
    sched = WorkerSchedule(0, 1000.5, total=None)
    assert [sched.due_in(s) for s in range(4)] == [1001, 1000, 1001, 1000]
    assert sum(WorkerSchedule(0, 300.0, total=500).due_in(s) for s in range(5)) == 500
    assert WorkerSchedule(0, 300.0, total=500).due_in(1) == 200


def test_a_clean_second_is_not_limited() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 1000.0, None)], start_ns=0)
    feed(check, 0, 0, sent=1000, cpu_ns=200_000_000)
    verdict = check.second(0, {0: 1000})
    assert not verdict.limited
    assert verdict.requested_pps == verdict.achieved_pps == 1000
    assert abs(verdict.workers[0].cpu_pct - 20.0) < 1e-9


def test_one_tick_of_spill_is_tolerated_but_a_real_shortfall_is_not() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 100_000.0, None)], start_ns=0)
    assert not check.second(0, {0: 99_801}).limited
    verdict = check.second(1, {0: 90_000})
    assert verdict.limited
    assert "sent 90000 of 100000" in verdict.limits[0]


def test_drops_refusals_skips_and_lag_are_each_named_with_their_worker() -> None:
    check = GeneratorCheck(
        [WorkerSchedule(0, 1000.0, None), WorkerSchedule(1, 1000.0, None)], start_ns=0
    )
    feed(check, 0, 0, rx_dropped=5)
    feed(check, 1, 0, send_errors=2)
    feed(check, 0, 1, rx_dropped=5, skipped_ns=60_000_000)
    feed(check, 1, 1, send_errors=2, max_lag_ns=20_000_000)
    first = check.second(0, {0: 1000, 1: 1000})
    assert any("worker 0" in r and "dropped 5" in r for r in first.limits)
    assert any("worker 1" in r and "refused 2" in r for r in first.limits)
    second = check.second(1, {0: 1000, 1: 1000})
    # Counters are cumulative: second 1 is judged on what changed in it.
    assert not any("dropped" in r or "refused" in r for r in second.limits)
    assert any("gave up 60 ms" in r for r in second.limits)
    assert any("20 ms behind" in r for r in second.limits)


def test_after_a_stop_seconds_are_not_judged_on_rate() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 1000.0, None)], start_ns=0)
    check.on_stop(2 * S + 5)
    assert check.second(1, {0: 500}).limited
    assert not check.second(2, {0: 500}).limited


def test_memory_is_bounded_to_the_open_window() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 10.0, None)], start_ns=0)
    for s in range(1000):
        feed(check, 0, s, sent=10 * (s + 1))
        check.second(s, {0: 10})
    assert len(check._last[0]) <= 3
    assert len(check._lag[0]) <= 3
