"""The coordinator's end of a run: the generator figures of its closed seconds add up to what the
workers' last frames counted, even when those frames came after the last second with records.

Frames and Done messages go through the coordinator's own handler and tick; no process runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import select
import time
from collections.abc import Iterator

import numpy as np
import pytest

from loadgen.coordinator import EVERY_FRAME, FRAMES_PER_WAKE, Coordinator, Display, WorkerHandle
from loadgen.output.summary import summary_text
from loadgen.plan import RunPlan, make_plan
from loadgen.profile import parse_profile
from loadgen.stats import SecondReport
from loadgen.targets import Target
from loadgen.wire.messages import Done, Failed, Frame, Hello, WorkerStats, encode
from loadgen.wire.records import RECORD_DTYPE, RecordKind

S = 1_000_000_000
PROBES_AT_S = (0.1, 0.6, 1.1, 1.6)  # the plan's timetable: 4 probes at 2 per second


def one_worker_plan() -> RunPlan:
    profile = parse_profile(
        {"targets": ["198.18.0.1"], "rate": 2, "count": 4}, source="selfcheck.toml"
    )
    target = Target(index=0, address="198.18.0.1", family=4, name="h0")
    return make_plan(profile, (target,), cpus_available=(0,), run_id=1, ident_base=100)


class Notes(Display):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


class Run:
    """A coordinator mid-run, its start a minute ago (every second of it has ended)."""

    def __init__(self, reader: multiprocessing.connection.Connection) -> None:
        self.seconds: list[SecondReport] = []
        plan = one_worker_plan()
        self.display = Notes()
        self.coord = c = Coordinator(plan, display=self.display, on_second=self.seconds.append)
        never_started = multiprocessing.get_context("spawn").Process()
        self.worker = WorkerHandle(plan.workers[0], never_started, reader, reader)
        c.workers = (self.worker,)
        c._begin(time.time_ns() - 60 * S)
        self.seq = 0

    def frame(
        self,
        at_s: float,
        mark_s: float,
        sent_at_s: tuple[float, ...],
        *,
        answered: bool = True,
        **stats: int,
    ) -> None:
        """A frame written `at_s` into the run whose probes were sent at `sent_at_s` (and,
        if `answered`, resolved in it)."""
        per = 2 if answered else 1
        records = np.zeros(per * len(sent_at_s), dtype=RECORD_DTYPE)
        records["tx_ns"] = np.repeat([self.coord.start_ns + int(t * S) for t in sent_at_s], per)
        if answered:
            records["kind"][1::2] = RecordKind.RECEIVED
            records["rtt_ns"][1::2] = 1_000_000
        records["probes"][::per] = 1  # the SENT records
        now, mark = (self.coord.start_ns + int(t * S) for t in (at_s, mark_s))
        self.coord._handle(
            self.worker, Frame(0, self.seq, now, mark, records, WorkerStats(**stats))
        )
        self.seq += 1

    def end(self) -> None:
        """The worker's Done, then the ticks the coordinator's loop makes on its way out."""
        self.coord._handle(self.worker, Done(0, "count reached"))
        self.coord._tick()
        self.coord._tick(final=True)

    def limited(self) -> list[int]:
        assert self.coord.closer is not None
        return self.coord.closer.limited_seconds

    def drops(self) -> list[int]:
        return [s.generator.workers[0].rx_drops for s in self.seconds if s.generator]


@pytest.fixture
def run() -> Iterator[Run]:
    reader, writer = multiprocessing.Pipe(duplex=False)
    yield Run(reader)
    reader.close()
    writer.close()


def test_drops_counted_after_every_second_closed_get_a_last_second(run: Run) -> None:
    run.frame(1.9, 2.2, PROBES_AT_S, sent=4, rx_dropped=2)
    run.coord._tick()
    assert run.drops() == [0, 2]  # both seconds closed while the worker still ran
    # Stalled, it learns of more drops (and refusals) seconds after its last probe's second.
    run.frame(5.5, 5.5, (), sent=4, rx_dropped=9, send_errors=1)
    run.end()
    assert [s.second for s in run.seconds] == [0, 1, 2]
    assert run.drops() == [0, 2, 7]
    last = run.seconds[-1].generator
    assert last is not None and last.workers[0].send_errors == 1
    assert any("dropped 7" in r for r in last.limits)
    assert sum(run.drops()) == run.worker.stats.rx_dropped
    assert run.limited() == [1, 2]


def test_without_anything_unshown_no_second_is_added(run: Run) -> None:
    run.frame(1.9, 2.2, PROBES_AT_S, sent=4, rx_dropped=2, cpu_ns=5)
    run.coord._tick()
    run.frame(5.5, 5.5, (), sent=4, rx_dropped=2, cpu_ns=9)
    run.end()
    assert [s.second for s in run.seconds] == [0, 1]
    assert run.coord.aggregator is not None and run.coord.aggregator.closed_seconds == 2
    assert run.limited() == [1]


def test_the_last_second_with_records_takes_the_trailing_counters(run: Run) -> None:
    run.frame(1.9, 0.9, PROBES_AT_S, sent=4)
    run.coord._tick()
    assert run.seconds == []  # the watermark has not passed second 0's end
    run.frame(7.5, 7.5, (), sent=4, rx_dropped=5)
    run.end()
    assert [s.second for s in run.seconds] == [0, 1]
    assert run.drops() == [0, 5]
    assert run.limited() == [1]


def test_a_worker_that_fails_mid_run_leaves_its_probes_in_flight_unresolved(run: Run) -> None:
    run.frame(0.9, 0.9, PROBES_AT_S[:2], sent=2)
    run.frame(1.7, 0.9, PROBES_AT_S[2:], answered=False, sent=4)
    run.coord._handle(run.worker, Failed(0, "internal error: boom"))
    run.coord._tick(final=True)
    assert run.coord.aggregator is not None
    summary = run.coord.aggregator.cumulative()
    assert summary.total.counts.unaccounted == 2
    assert [(u.worker, u.cause, u.probes) for u in summary.unresolved] == [(0, "failed", 2)]
    text = summary_text(summary, ("h0",))
    assert "2 probes unresolved: worker 0 failed" in text and "bug" not in text
    assert run.display.notes == ["worker 0 failed: internal error: boom"]


def test_the_workers_setup_notes_are_shown_once_each(run: Run) -> None:
    notes = ("no real-time priority", "tx_timestamps needs kernel RX timestamps")

    async def hello() -> None:
        run.coord._wake = asyncio.Event()
        run.coord._handle(run.worker, Hello(0, 1, 0, "kernel", "user-space", notes))
        await run.coord._await_hellos()

    asyncio.run(hello())
    assert run.display.notes == list(notes)


def test_a_busy_pipe_is_read_a_few_frames_a_turn_and_whole_once_its_worker_exited() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    run = Run(reader)
    run.worker.readable.register(reader.fileno(), select.POLLIN)
    for seq in range(3 * FRAMES_PER_WAKE):
        frame = Frame(
            0, seq, run.coord.start_ns, 0, np.zeros(0, RECORD_DTYPE), WorkerStats(sent=seq)
        )
        writer.send_bytes(encode(frame))
    run.coord._on_data(run.worker)  # the loop's callback: the rest waits for the next turn
    assert run.worker.stats.sent == FRAMES_PER_WAKE - 1
    run.coord._on_data(run.worker, limit=EVERY_FRAME)
    assert run.worker.stats.sent == 3 * FRAMES_PER_WAKE - 1
    assert not run.worker.readable.poll(0)
    writer.close()
    reader.close()
