"""The generator self-check flags exactly the seconds in which loadgen could not keep up."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.selfcheck import LAG_LIMIT_NS, GeneratorCheck, WorkerSchedule
from loadgen.wire.messages import WorkerStats

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


def test_counters_learned_after_the_last_second_are_carried_into_it() -> None:
    check = GeneratorCheck(
        [WorkerSchedule(0, 1000.0, total=2000), WorkerSchedule(1, 1000.0, total=2000)], start_ns=0
    )
    feed(check, 0, 0, rx_dropped=3)
    feed(check, 1, 0, send_errors=1)
    feed(check, 0, 1, rx_dropped=3)
    # A stalled worker reads its socket's drop counter long after its last closed second.
    feed(check, 0, 7, rx_dropped=20_003, send_errors=4, skipped_ns=5_000_000)
    feed(check, 1, 9, send_errors=6, max_lag_ns=30_000_000)
    assert check.unshown()
    first = check.second(0, {0: 1000, 1: 1000})
    last = check.second(1, {0: 1000, 1: 1000}, final=True)
    assert not check.unshown()
    w0, w1 = last.workers
    assert (w0.rx_drops, w0.send_errors, w0.skipped_ns) == (20_000, 4, 5_000_000)
    assert (w1.send_errors, w1.max_lag_ns) == (5, 30_000_000)
    assert any("worker 0" in r and "dropped 20000" in r for r in last.limits)
    assert any("worker 1" in r and "30 ms behind" in r for r in last.limits)
    seconds = (first, last)
    assert sum(s.workers[0].rx_drops for s in seconds) == 20_003
    assert sum(s.workers[1].send_errors for s in seconds) == 6
    # A second that is not the last leaves later frames' counters to later seconds.
    assert first.workers[0].rx_drops == 3 and first.workers[1].send_errors == 1


def test_a_frame_for_an_already_closed_second_counts_in_the_next() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 1000.0, None)], start_ns=0)
    feed(check, 0, 0, rx_dropped=2)
    assert check.second(0, {0: 1000}).workers[0].rx_drops == 2
    feed(check, 0, 0, rx_dropped=9, max_lag_ns=40_000_000)  # in the pipe while 0 closed
    feed(check, 0, 1, rx_dropped=10)
    row = check.second(1, {0: 1000}).workers[0]
    assert (row.rx_drops, row.max_lag_ns) == (8, 40_000_000)


def test_cpu_stays_in_the_second_its_frames_came_in() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 1000.0, None)], start_ns=0)
    feed(check, 0, 0, cpu_ns=300_000_000)
    feed(check, 0, 6, cpu_ns=900_000_000, rx_dropped=1)
    last = check.second(0, {0: 1000}, final=True).workers[0]
    assert abs(last.cpu_pct - 30.0) < 1e-9
    assert last.rx_drops == 1


def test_only_what_a_verdict_needs_is_unshown() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 1000.0, None)], start_ns=0)
    feed(check, 0, 0, cpu_ns=5, max_lag_ns=LAG_LIMIT_NS)
    assert not check.unshown()  # CPU and a tolerable lag need no second of their own
    feed(check, 0, 1, max_lag_ns=LAG_LIMIT_NS + 1)
    assert check.unshown()


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 50), st.integers(0, 50)), max_size=40
    ),
    closed=st.integers(1, 10),
)
def test_the_seconds_add_up_to_the_last_frame_however_frames_fall(
    frames: list[tuple[int, int, int]], closed: int
) -> None:
    check = GeneratorCheck([WorkerSchedule(0, 100.0, None)], start_ns=0)
    drops = errors = 0
    verdicts = []
    for i in range(closed):
        for second, more_drops, more_errors in frames[i::closed]:
            drops, errors = drops + more_drops, errors + more_errors
            feed(check, 0, second, rx_dropped=drops, send_errors=errors)
        verdicts.append(check.second(i, {0: 100}, final=i == closed - 1))
    assert sum(v.workers[0].rx_drops for v in verdicts) == drops
    assert sum(v.workers[0].send_errors for v in verdicts) == errors
    assert not check.unshown()


def test_memory_is_bounded_to_the_open_window() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 10.0, None)], start_ns=0)
    for s in range(1000):
        feed(check, 0, s, sent=10 * (s + 1), max_lag_ns=s)
        check.second(s, {0: 10})
    assert len(check._seen[0].by_second) <= 3
    assert len(check._seen[0].lag_ns) <= 3
