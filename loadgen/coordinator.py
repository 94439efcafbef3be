"""The coordinator: spawns the workers, merges their frames, closes seconds, stops cleanly.

Owns the worker processes (spawn start method, one CPU each), their pipes and sentinels, the
`stats.Aggregator` and the run's clock origin. Its event loop (uvloop) reacts to frames, to
worker exits and to SIGINT/SIGTERM, and on a timer closes every second that all live workers
have passed, hands closed seconds to the exports and a snapshot to the display.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import multiprocessing
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import uvloop

from loadgen.closing import SecondCloser
from loadgen.errors import LoadgenError, WorkerFailed
from loadgen.plan import RunPlan, WorkerPlan
from loadgen.selfcheck import GeneratorCheck, WorkerSchedule
from loadgen.stats import Aggregator, RunSummary, SecondReport
from loadgen.wire.messages import (
    Done,
    Failed,
    Frame,
    Hello,
    PlanMsg,
    ProtocolError,
    Start,
    Stop,
    TargetSpec,
    WorkerStats,
    decode,
    encode,
)
from loadgen.worker import REALTIME_PRIORITY, worker_main

HELLO_TIMEOUT_S = 20.0
START_MARGIN_NS = 100_000_000  # workers begin together this long after the last Hello
F_SETPIPE_SZ = 1031
# A worker waits when its pipe is full: 4 MiB hold ~300 ms of frames at 500k pps per worker,
# longer than closing a second takes the coordinator at that rate. Past fs.pipe-max-size (1 MiB
# by default) only root may go; others get what the system allows.
PIPE_BYTES = (4 << 20, 1 << 20)
FRAMES_PER_WAKE = 8  # frames read per readable pipe before the loop gets a turn
EVERY_FRAME = 1 << 30  # a worker that exited: read all it left in the pipe


@dataclass(slots=True)
class WorkerHandle:
    plan: WorkerPlan
    process: BaseProcess
    data: Connection
    control: Connection
    hello: Hello | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    watermark_ns: int = 0
    done: str | None = None
    failure: str | None = None
    exited: bool = False
    cpu_pct: float = 0.0
    last_cpu_ns: int = 0
    last_wall_ns: int = 0
    readable: select.poll = field(default_factory=select.poll)  # POLLIN on `data`, once watched

    @property
    def live(self) -> bool:
        return self.done is None and self.failure is None and not self.exited


@dataclass(frozen=True, slots=True)
class GeneratorView:
    """What the generator itself did, for the display and the exports."""

    elapsed_ns: int
    requested_pps: float
    achieved_pps: float
    workers: tuple[WorkerHandle, ...]
    interrupted: bool


@dataclass(frozen=True, slots=True)
class RunOutcome:
    summary: RunSummary
    failures: tuple[str, ...]
    interrupted: bool
    workers: tuple[WorkerStats, ...]
    start_ns: int
    end_ns: int
    limited_seconds: tuple[int, ...]  # seconds in which loadgen itself could not keep up


class Display:
    """What the coordinator reports to. The default does nothing (used by tests)."""

    def started(self, plan: RunPlan, workers: tuple[WorkerHandle, ...]) -> None: ...
    def second(self, report: SecondReport) -> None: ...
    def refresh(self, aggregator: Aggregator, generator: GeneratorView) -> None: ...
    def note(self, text: str) -> None: ...
    def stopped(self) -> None: ...


def _plan_message(wp: WorkerPlan) -> PlanMsg:
    return PlanMsg(
        worker=wp.index,
        cpu=-1 if wp.cpu is None else wp.cpu,
        ident=wp.ident,
        run_id=wp.run_id,
        targets=tuple(
            TargetSpec(t.index, t.address, t.family, wp.ports[i] if wp.ports else 0)
            for i, t in enumerate(wp.targets)
        ),
        rate_pps=wp.rate_pps,
        probes=wp.probes,
        duration_ns=wp.duration_ns,
        settings=wp.settings,
    )


class Coordinator:
    def __init__(
        self,
        plan: RunPlan,
        *,
        display: Display | None = None,
        on_second: Callable[[SecondReport], None] | None = None,
    ) -> None:
        self.plan = plan
        self.display = display or Display()
        self.on_second = on_second
        self.workers: tuple[WorkerHandle, ...] = ()
        self.aggregator: Aggregator | None = None
        self.check: GeneratorCheck | None = None
        self.closer: SecondCloser | None = None
        self.start_ns = 0
        self.interrupted = False
        self.aborted = False
        self._wake: asyncio.Event | None = None
        self._last_sent = 0
        self._last_tick_ns = 0
        self._achieved_pps = 0.0

    def run(self) -> RunOutcome:
        return uvloop.run(self._main())

    # -- lifecycle -------------------------------------------------------------------------

    async def _main(self) -> RunOutcome:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._spawn_all()
        sending = contextlib.ExitStack()  # what holds while the workers send
        for h in self.workers:
            watch_connection(loop, h.data, self._on_data, h)
            h.readable.register(h.data.fileno(), select.POLLIN)
            loop.add_reader(h.process.sentinel, self._on_exit, h)
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, self._on_interrupt)
        try:
            await self._await_hellos()
            # What the imports and the start-up built lives as long as the run: out of the
            # collector's reach, a full collection walks only what the run makes (tens of ms
            # less in the tick it falls on).
            gc.freeze()
            # On a whole millisecond of the wall clock: every worker's 1 ms send grid then sits
            # on whole milliseconds, so an outside observer knows when batches leave.
            self._begin(-(-(time.time_ns() + START_MARGIN_NS) // 1_000_000) * 1_000_000)
            for h in self.workers:
                self._tell(h, Start(self.start_ns))
            self.display.started(self.plan, self.workers)
            # Workers run SCHED_FIFO where allowed, and once asked for more than they can do
            # they never sleep: at normal priority the coordinator then gets only what
            # real-time throttling and other work leave, its pipes fill and the workers wait on
            # them (100 ms windows at a fraction of the rate). At the workers' own priority it
            # runs whenever a worker sleeps or waits and never preempts one; a worker waking on
            # its CPU waits for it at most as long as it works at once (a tick: tens of ms).
            sending.enter_context(realtime(REALTIME_PRIORITY))
            period = 1.0 / max(0.5, self.plan.profile.refresh_hz)
            while any(h.live for h in self.workers) and not self.aborted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=period)
                self._wake.clear()
                self._tick()
            self._tick(final=True)
        finally:
            sending.close()
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
            for h in self.workers:
                loop.remove_reader(h.data.fileno())
                loop.remove_reader(h.process.sentinel)
            self._reap()
            self.display.stopped()
        assert self.aggregator is not None
        return RunOutcome(
            summary=self.aggregator.cumulative(),
            failures=tuple(
                f"worker {h.plan.index}: {h.failure}" for h in self.workers if h.failure
            ),
            interrupted=self.interrupted,
            workers=tuple(h.stats for h in self.workers),
            start_ns=self.start_ns,
            end_ns=time.time_ns(),
            limited_seconds=tuple(self.closer.limited_seconds if self.closer else ()),
        )

    def _begin(self, start_ns: int) -> None:
        """The run's origin is set: the merging, the self-check and the closing start."""
        self.start_ns = start_ns
        self.aggregator = Aggregator(
            n_targets=len(self.plan.targets),
            start_ns=start_ns,
            timeout_ns=self.plan.profile.timeout_ns,
        )
        self.check = GeneratorCheck([_schedule(h.plan) for h in self.workers], start_ns)
        targets = {h.plan.index: [t.index for t in h.plan.targets] for h in self.workers}
        self.closer = SecondCloser(self.aggregator, self.check, targets)

    def _spawn_all(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        handles = []
        for wp in self.plan.workers:
            data_r, data_w = ctx.Pipe(duplex=False)
            ctrl_r, ctrl_w = ctx.Pipe(duplex=False)
            for size in PIPE_BYTES:  # a larger pipe is a luxury, not a need
                with contextlib.suppress(OSError):
                    fcntl.fcntl(data_w.fileno(), F_SETPIPE_SZ, size)
                    break
            proc = ctx.Process(
                target=worker_main,
                args=(encode(_plan_message(wp)), data_w, ctrl_r),
                name=f"loadgen-worker-{wp.index}",
                daemon=True,
            )
            proc.start()
            data_w.close()
            ctrl_r.close()
            handles.append(WorkerHandle(wp, proc, data_r, ctrl_w))
        self.workers = tuple(handles)

    async def _await_hellos(self) -> None:
        assert self._wake is not None
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while not all(h.hello or not h.live for h in self.workers):
            if self.aborted or time.monotonic() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.2)
            self._wake.clear()
        failures = [h.failure for h in self.workers if h.failure]
        if failures:
            # Every worker hits the same setup problem (permissions, a socket option): one line.
            raise (
                LoadgenError(failures[0])
                if len(set(failures)) == 1
                else WorkerFailed("; ".join(sorted(set(failures))))
            )
        if self.aborted:
            raise WorkerFailed("interrupted while the workers were starting")
        missing = [h.plan.index for h in self.workers if h.hello is None]
        if missing:
            raise WorkerFailed(
                f"workers {missing} did not start within {HELLO_TIMEOUT_S:.0f} s: "
                "check that the machine is not overloaded and run again"
            )
        # Every worker takes the same fallbacks on the same machine: each note once.
        notes = dict.fromkeys(n for h in self.workers if h.hello for n in h.hello.notes)
        for note in notes:
            self.display.note(note)

    def _reap(self) -> None:
        for h in self.workers:
            h.process.join(timeout=2)
            if h.process.is_alive():
                h.process.kill()
                h.process.join(timeout=2)
            h.data.close()
            h.control.close()

    # -- events ----------------------------------------------------------------------------

    def _on_data(self, h: WorkerHandle, limit: int = FRAMES_PER_WAKE) -> None:
        try:
            # Called when the pipe is readable: one frame at least, then what else is there,
            # up to `limit` (one poll object per pipe: Connection.poll builds a selector per
            # call). The limit hands the loop back so seconds keep closing: a coordinator that
            # cannot keep up leaves frames in the pipe, whose full buffer stops the worker,
            # instead of holding ever more open seconds.
            self._handle(h, decode(h.data.recv_bytes()))
            for _ in range(limit - 1):
                if not h.readable.poll(0):
                    break
                self._handle(h, decode(h.data.recv_bytes()))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(h.data.fileno())
        except ProtocolError as exc:
            h.failure = f"sent a message this coordinator cannot read ({exc})"
        if self._wake is not None and not h.live:
            self._wake.set()

    def _handle(self, h: WorkerHandle, msg: object) -> None:
        if isinstance(msg, Frame):
            if self.aggregator is not None:
                self.aggregator.add(msg.records)
            h.watermark_ns = max(h.watermark_ns, msg.resolved_before_ns)
            h.stats = msg.stats
            if self.check is not None:
                self.check.on_frame(h.plan.index, msg.now_ns, msg.stats)
        elif isinstance(msg, Hello):
            h.hello = msg
            if self._wake is not None:
                self._wake.set()
        elif isinstance(msg, Done):
            h.done = msg.reason
        elif isinstance(msg, Failed):
            h.failure = msg.message
            if self.aggregator is not None:
                self._lost(h, "failed")
                self.display.note(f"worker {h.plan.index} failed: {msg.message}")
                self._stop_all("a worker failed")

    def _on_exit(self, h: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(h.process.sentinel)
        self._on_data(h, limit=EVERY_FRAME)  # whatever it wrote before it went
        h.process.join(timeout=1)
        h.exited = True
        if h.done is None and h.failure is None:
            code = h.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            pid = h.process.pid
            h.failure = (
                f"died unexpectedly (pid {pid}, {how}); its probes still waiting for an "
                "outcome are reported as unresolved"
            )
            if self.aggregator is not None:  # before the start, _await_hellos reports it
                self._lost(h, "died")
                self.display.note(f"worker {h.plan.index} {h.failure}")
                self._stop_all("a worker died")
        if self._wake is not None:
            self._wake.set()

    def _on_interrupt(self) -> None:
        if self.interrupted:
            self.aborted = True  # second CTRL-C: quit now
            for h in self.workers:
                if h.process.is_alive():
                    h.process.kill()
        else:
            self.interrupted = True
            self.display.note(
                "stopping: waiting for the last replies (press CTRL-C again to quit at once)"
            )
            self._stop_all("interrupted")
        if self._wake is not None:
            self._wake.set()

    def _lost(self, h: WorkerHandle, cause: str) -> None:
        assert self.aggregator is not None
        self.aggregator.worker_lost(h.plan.index, cause, [t.index for t in h.plan.targets])

    def _stop_all(self, reason: str) -> None:
        if self.check is not None:
            self.check.on_stop(time.time_ns())
        for h in self.workers:
            if h.live:
                self._tell(h, Stop(reason))

    def _tell(self, h: WorkerHandle, msg: Start | Stop) -> None:
        with contextlib.suppress(OSError):
            h.control.send_bytes(encode(msg))

    # -- closing seconds -------------------------------------------------------------------

    def _tick(self, *, final: bool = False) -> None:
        agg, closer = self.aggregator, self.closer
        if agg is None or closer is None:
            return
        now = time.time_ns()
        live = [h.watermark_ns for h in self.workers if h.live]
        for report in closer.close(now, live, final=final):
            if self.on_second is not None:
                self.on_second(report)
            self.display.second(report)
        self._measure(now)
        self.display.refresh(agg, self.generator_view(now))

    def _measure(self, now: int) -> None:
        sent = sum(h.stats.sent for h in self.workers)
        if self._last_tick_ns:
            dt = now - self._last_tick_ns
            if dt > 0:
                self._achieved_pps = (sent - self._last_sent) * 1e9 / dt
        self._last_sent, self._last_tick_ns = sent, now
        for h in self.workers:
            if h.last_wall_ns and now > h.last_wall_ns:
                h.cpu_pct = 100.0 * (h.stats.cpu_ns - h.last_cpu_ns) / (now - h.last_wall_ns)
            h.last_cpu_ns, h.last_wall_ns = h.stats.cpu_ns, now

    def generator_view(self, now: int) -> GeneratorView:
        return GeneratorView(
            elapsed_ns=max(0, now - self.start_ns),
            requested_pps=self.plan.rate_pps,
            achieved_pps=self._achieved_pps,
            workers=self.workers,
            interrupted=self.interrupted,
        )


@contextlib.contextmanager
def realtime(priority: int) -> Iterator[bool]:
    """Run the calling thread SCHED_FIFO at `priority` inside the block; what it forks starts
    at normal priority (SCHED_RESET_ON_FORK), so what it starts sets its own scheduling.
    Yields whether that was permitted; where it is not, nothing changes."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    flags = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    try:
        os.sched_setscheduler(0, flags, os.sched_param(priority))
    except OSError:  # EPERM without CAP_SYS_NICE, or an RT limit (RLIMIT_RTPRIO, cgroups)
        granted = False
    else:
        granted = True
    try:
        yield granted
    finally:
        if granted:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, policy, param)


def watch_connection(
    loop: asyncio.AbstractEventLoop,
    conn: Connection,
    callback: Callable[[WorkerHandle], None],
    handle: WorkerHandle,
) -> None:
    """Call back when `conn` is readable, keeping it readable frame by frame."""
    loop.add_reader(conn.fileno(), callback, handle)
    # uvloop makes a watched fd non-blocking, but Connection.recv_bytes needs a blocking pipe to
    # read a frame larger than what has arrived so far: workers write whole frames, so a
    # blocking read of one never waits long.
    os.set_blocking(conn.fileno(), True)


def _schedule(wp: WorkerPlan) -> WorkerSchedule:
    """The worker's timetable, as its pacer will run it (its total is the plan's)."""
    return WorkerSchedule(wp.index, wp.rate_pps, wp.probes)


def default_cpus() -> list[int]:
    """CPUs this process may run on (respects taskset/cgroups)."""
    return sorted(os.sched_getaffinity(0))
