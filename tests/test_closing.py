"""Closing seconds and judging the generator (`closing.SecondCloser`), and the probes of a worker
that ended early, reported as unresolved with their cause rather than as a bug."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.closing import SecondCloser
from loadgen.output.report import JsonlWriter
from loadgen.output.summary import summary_text
from loadgen.output.ui import plain_line
from loadgen.selfcheck import GeneratorCheck, WorkerSchedule
from loadgen.stats import Aggregator
from loadgen.wire.messages import WorkerStats
from loadgen.wire.records import RECORD_DTYPE, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
NAMES = ("alpha", "beta", "gamma")


def records(sent_at_s: list[float], target: int, *, answered: bool = True) -> NDArray[Any]:
    """A SENT record per probe, and a RECEIVED one if `answered`."""
    per = 2 if answered else 1
    out = np.zeros(per * len(sent_at_s), dtype=RECORD_DTYPE)
    out["tx_ns"] = np.repeat([START + int(t * S) for t in sent_at_s], per)
    out["target"] = target
    out["probes"][::per] = 1  # the SENT records, one a probe
    if answered:
        out["kind"][1::2] = RecordKind.RECEIVED
        out["rtt_ns"][1::2] = 1000
    return out


def closer(rate_pps: float = 2.0, total: int | None = None) -> SecondCloser:
    """Two workers: worker 0 probes targets 0 and 2, worker 1 target 1."""
    agg = Aggregator(3, START, S)
    check = GeneratorCheck(
        [WorkerSchedule(0, rate_pps, total), WorkerSchedule(1, rate_pps / 2, total)], START
    )
    return SecondCloser(agg, check, {0: [0, 2], 1: [1]})


def test_a_second_closes_once_the_clock_and_every_live_watermark_passed_it() -> None:
    c = closer()
    c.aggregator.add(records([0.1, 0.6, 1.1], 0))
    assert c.close(START + 5 * S, [START + 2 * S, START + 1 * S]) != []
    assert c.aggregator.closed_seconds == 1  # the slower worker holds second 1
    assert c.close(START + S + S // 2, [START + 9 * S, START + 9 * S]) == []  # the clock does
    assert [r.second for r in c.close(START + 9 * S, [START + 9 * S] * 2)] == list(range(1, 9))


def test_when_no_worker_is_live_every_second_with_records_closes() -> None:
    c = closer()
    c.aggregator.add(records([0.1, 3.5], 1))
    assert [r.second for r in c.close(START, [])] == [0, 1, 2, 3]


def test_a_last_second_is_added_for_counters_no_closed_second_shows() -> None:
    c = closer()
    c.aggregator.add(records([0.1], 0))
    c.check.on_frame(0, START + 400 * S // 1000, WorkerStats(sent=1))
    assert [r.second for r in c.close(START + 2 * S, [START + 2 * S] * 2)] == [0, 1]
    c.check.on_frame(0, START + 5 * S, WorkerStats(sent=1, rx_dropped=3))
    (last,) = c.close(START + 6 * S, [], final=True)
    assert last.second == 2 and last.generator is not None
    assert last.generator.workers[0].rx_drops == 3
    assert c.limited_seconds == [1, 2]  # second 1: nothing sent of the 2 due; 2: the drops
    assert c.close(START + 7 * S, [], final=True) == []  # nothing left to show


def test_each_second_is_judged_on_what_each_worker_sent_in_it() -> None:
    c = closer(rate_pps=2.0, total=4)
    c.aggregator.add(records([0.1, 0.6], 0))  # worker 0: its 2 due probes, one per target
    c.aggregator.add(records([0.2], 2))
    c.aggregator.add(records([0.3], 1))  # worker 1: its 1 due probe
    (report,) = c.close(START + S, [START + S] * 2)
    assert c.sent_by_worker(report) == {0: 3, 1: 1}
    assert report.generator is not None
    assert [w.achieved_pps for w in report.generator.workers] == [3.0, 1.0]
    assert [w.requested_pps for w in report.generator.workers] == [2.0, 1.0]
    assert c.limited_seconds == []


def test_a_worker_short_of_its_timetable_marks_its_second_limited() -> None:
    c = closer(rate_pps=1000.0)
    c.aggregator.add(records([i / 1000 for i in range(990)], 0))
    c.aggregator.add(records([i / 500 for i in range(500)], 1))
    (report,) = c.close(START + S, [START + S] * 2)
    assert report.generator is not None and report.generator.limited
    assert report.generator.limits == ("worker 0: sent 990 of 1000 probes due",)
    assert c.limited_seconds == [0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.floats(0, 9.99)), max_size=60),
    st.lists(st.integers(0, 12), min_size=1, max_size=8),
)
def test_every_second_closes_once_in_order_and_no_probe_is_lost(
    probes: list[tuple[int, float]], ticks_s: list[int]
) -> None:
    c = closer()
    for target, at_s in probes:
        c.aggregator.add(records([at_s], target))
    closed = []
    for t in sorted(ticks_s):
        closed += c.close(START + t * S, [START + t * S, START + (t + 1) * S])
    closed += c.close(START + 20 * S, [], final=True)
    assert [r.second for r in closed] == list(range(len(closed)))
    assert sum(r.total.counts.sent for r in closed) == len(probes)
    assert all(r.generator is not None for r in closed)


def test_a_dead_workers_missing_outcomes_are_unresolved_not_a_bug() -> None:
    agg = Aggregator(3, START, S)
    agg.add(records([0.1, 0.2, 0.3], 1))
    agg.add(records([0.4, 0.5], 1, answered=False))  # sent, then the worker was killed
    agg.add(records([0.1, 0.2], 0))
    agg.close_all()
    assert "a bug, please report it" in summary_text(agg.cumulative(), NAMES)  # nobody said why yet
    agg.worker_lost(1, "died", [1])
    summary = agg.cumulative()
    (lost,) = summary.unresolved
    assert (lost.worker, lost.probes, str(lost)) == (1, 2, "worker 1 died")
    text = summary_text(summary, NAMES)
    assert "a bug, please report it" not in text
    assert text.count("2 probes unresolved: worker 1 died") == 2  # beta and the total
    assert summary.explained(summary.per_target[0]) == (0, "")


def test_an_unexplained_difference_beside_a_dead_worker_is_still_a_bug() -> None:
    agg = Aggregator(3, START, S)
    agg.add(records([0.4, 0.5], 1, answered=False))
    agg.add(records([0.1], 0, answered=False))  # worker 0 is alive: this one is a bug
    agg.close_all()
    agg.worker_lost(1, "failed", [1])
    text = summary_text(agg.cumulative(), NAMES)
    assert "2 probes unresolved: worker 1 failed" in text
    assert text.count("WARNING: +1 probes unaccounted for") == 2  # alpha and the total


@pytest.mark.parametrize("extra_outcomes", [1, 3])
def test_outcomes_without_probes_are_never_explained_by_a_death(extra_outcomes: int) -> None:
    agg = Aggregator(3, START, S)
    rows = np.zeros(extra_outcomes, dtype=RECORD_DTYPE)
    rows["tx_ns"], rows["target"], rows["kind"] = START + S // 10, 1, RecordKind.LOST
    agg.add(rows)
    agg.close_all()
    agg.worker_lost(1, "died", [1])
    summary = agg.cumulative()
    assert summary.unresolved[0].probes == 0
    assert f"WARNING: {-extra_outcomes:+} probes unaccounted" in summary_text(summary, NAMES)


def test_seconds_closed_after_a_death_say_unresolved_in_the_export_and_the_plain_line(
    tmp_path: Path,
) -> None:
    agg = Aggregator(3, START, S)
    agg.add(records([0.1, 0.2], 0))
    agg.add(records([0.3], 1))
    agg.add(records([0.4, 0.5], 1, answered=False))  # in flight when worker 1 was killed
    agg.add(records([1.1], 0, answered=False))  # worker 0 lives: a real hole
    agg.worker_lost(1, "died", [1])
    first, second = agg.close_all()
    assert first.explained(first.total) == (2, "worker 1 died")
    assert "unresolved=2 (worker 1 died)" in plain_line(first)
    assert "UNACCOUNTED" not in plain_line(first) and "UNACCOUNTED=1" in plain_line(second)
    path = tmp_path / "run.jsonl"
    with JsonlWriter(str(path)) as out:
        for report in (first, second):
            out.write_second(report, NAMES)
        out.write_summary(agg.cumulative(), NAMES)
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    by = {(o["type"], o.get("second"), o.get("target")): o for o in objs}
    beta = by[("second", 0, 1)]
    assert (beta["sent"], beta["unresolved"], beta["unaccounted"]) == (3, 2, 0)
    assert (
        by[("second_total", 0, -1)]["unresolved"],
        by[("second_total", 1, -1)]["unaccounted"],
    ) == (2, 1)
    summary = objs[-1]
    assert (summary["total"]["unresolved"], summary["total"]["unaccounted"]) == (2, 1)
    assert [t["unresolved"] for t in summary["targets"]] == [0, 2, 0]
