"""The coordinator's end of a run: the generator figures of its closed seconds add up to what the
workers' last frames counted, even when those frames came after the last second with records.

Frames and Done messages go through the coordinator's own handler and tick; no process runs.
"""

from __future__ import annotations

import multiprocessing
import select
import time
from collections.abc import Iterator

import numpy as np
import pytest

from loadgen.coordinator import EVERY_FRAME, FRAMES_PER_WAKE, Coordinator, WorkerHandle, _schedule
from loadgen.plan import RunPlan, make_plan
from loadgen.profile import parse_profile
from loadgen.selfcheck import GeneratorCheck
from loadgen.stats import Aggregator, SecondReport
from loadgen.targets import Target
from loadgen.wire.messages import Done, Frame, WorkerStats, encode
from loadgen.wire.records import RECORD_DTYPE, RecordKind

S = 1_000_000_000
PROBES_AT_S = (0.1, 0.6, 1.1, 1.6)  # the plan's timetable: 4 probes at 2 per second


def one_worker_plan() -> RunPlan:
    profile = parse_profile(
        {"targets": ["198.18.0.1"], "rate": 2, "count": 4}, source="selfcheck.toml"
    )
    target = Target(index=0, address="198.18.0.1", family=4, name="h0")
    return make_plan(profile, (target,), cpus_available=(0,), run_id=1, ident_base=100)


class Run:
    """A coordinator mid-run, its start a minute ago (every second of it has ended)."""

    def __init__(self, reader: multiprocessing.connection.Connection) -> None:
        self.seconds: list[SecondReport] = []
        plan = one_worker_plan()
        self.coord = c = Coordinator(plan, on_second=self.seconds.append)
        c.start_ns = time.time_ns() - 60 * S
        c.aggregator = Aggregator(1, c.start_ns, plan.profile.timeout_ns)
        c.check = GeneratorCheck([_schedule(w) for w in plan.workers], c.start_ns)
        never_started = multiprocessing.get_context("spawn").Process()
        self.worker = WorkerHandle(plan.workers[0], never_started, reader, reader)
        c.workers = (self.worker,)
        self.seq = 0

    def frame(self, at_s: float, mark_s: float, sent_at_s: tuple[float, ...], **stats: int) -> None:
        """A frame written `at_s` into the run whose probes were sent at `sent_at_s`."""
        records = np.zeros(2 * len(sent_at_s), dtype=RECORD_DTYPE)
        records["tx_ns"] = np.repeat([self.coord.start_ns + int(t * S) for t in sent_at_s], 2)
        records["kind"][1::2] = RecordKind.RECEIVED
        records["probes"][::2] = 1  # the SENT records
        records["rtt_ns"][1::2] = 1_000_000
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
    assert run.coord.limited_seconds == [1, 2]


def test_without_anything_unshown_no_second_is_added(run: Run) -> None:
    run.frame(1.9, 2.2, PROBES_AT_S, sent=4, rx_dropped=2, cpu_ns=5)
    run.coord._tick()
    run.frame(5.5, 5.5, (), sent=4, rx_dropped=2, cpu_ns=9)
    run.end()
    assert [s.second for s in run.seconds] == [0, 1]
    assert run.coord.aggregator is not None and run.coord.aggregator.closed_seconds == 2
    assert run.coord.limited_seconds == [1]


def test_the_last_second_with_records_takes_the_trailing_counters(run: Run) -> None:
    run.frame(1.9, 0.9, PROBES_AT_S, sent=4)
    run.coord._tick()
    assert run.seconds == []  # the watermark has not passed second 0's end
    run.frame(7.5, 7.5, (), sent=4, rx_dropped=5)
    run.end()
    assert [s.second for s in run.seconds] == [0, 1]
    assert run.drops() == [0, 5]
    assert run.coord.limited_seconds == [1]


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
