"""The coordinator: spawns the workers, merges their frames, closes seconds, stops cleanly.

Owns the worker processes (spawn start method, one CPU each), their pipes and sentinels, the
`stats.Aggregator` and the run's clock origin. With `Streams` the workers connect back over TCP
instead (`launch` starts them, here or on other hosts), are held to a lease by heartbeats and
named when their stream closes or goes silent. Its event loop (uvloop) reacts to frames, to
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

from loadgen.clockoffset import OffsetEstimator, WorkerClock, to_coordinator_clock
from loadgen.closing import SecondCloser
from loadgen.errors import LoadgenError, WorkerFailed
from loadgen.lease import Lease
from loadgen.net.stream import StreamPeer
from loadgen.plan import RunPlan, WorkerPlan
from loadgen.remote import Streams, StreamWorkers
from loadgen.selfcheck import GeneratorCheck, WorkerSchedule
from loadgen.stats import Aggregator, RunSummary, SecondReport
from loadgen.wire.messages import (
    Beat,
    Done,
    Echo,
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
# A stream worker's process that exited before its stream was claimed: what it sent (a Failed
# message) may still be on its way.
STREAM_GRACE_S = 0.5


@dataclass(slots=True)
class WorkerHandle:
    plan: WorkerPlan
    process: BaseProcess | None  # None: started elsewhere (another host)
    data: Connection | None  # the pipes; None for a worker on a stream
    control: Connection | None
    stream: StreamPeer | None = None  # its TCP stream, once it said who it is
    lease: Lease | None = None
    clock: OffsetEstimator | None = None  # a stream worker's clock offset to ours
    offset_ns: int = 0  # the offset applied to its frames, fixed at the start
    read_ns: int = 0  # when its stream was last read: an Echo's t4
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
    clocks: tuple[WorkerClock, ...] = ()  # stream workers' clock offsets


@dataclass(frozen=True, slots=True)
class RunOutcome:
    summary: RunSummary
    failures: tuple[str, ...]
    interrupted: bool
    workers: tuple[WorkerStats, ...]
    start_ns: int
    end_ns: int
    limited_seconds: tuple[int, ...]  # seconds in which loadgen itself could not keep up
    clocks: tuple[WorkerClock, ...] = ()  # stream workers' clock offsets


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


class Coordinator(StreamWorkers):
    def __init__(
        self,
        plan: RunPlan,
        *,
        display: Display | None = None,
        on_second: Callable[[SecondReport], None] | None = None,
        streams: Streams | None = None,
    ) -> None:
        self.plan = plan
        self._init_streams(streams)
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
        sending = contextlib.ExitStack()  # what holds while the workers send
        sending.callback(self._close_streams)
        try:
            self._spawn_all()
        except BaseException:
            sending.close()  # a listener, and whatever a launcher placed before it failed
            raise
        for h in self.workers:
            if h.data is not None:
                watch_connection(loop, h.data, self._on_data, h)
                h.readable.register(h.data.fileno(), select.POLLIN)
            if h.process is not None:
                loop.add_reader(h.process.sentinel, self._on_exit, h)
        if self._listener is not None:
            loop.add_reader(self._listener.fileno(), self._on_connect)
            beats = loop.create_task(self._beat())
            sending.callback(beats.cancel)
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
                self._start(h)
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
                if h.data is not None:
                    loop.remove_reader(h.data.fileno())
                if h.process is not None:
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
            clocks=self.clocks(),
        )

    def _begin(self, start_ns: int) -> None:
        """The run's origin is set: the merging, the self-check and the closing start."""
        self.start_ns = start_ns
        self.aggregator = Aggregator(
            n_targets=len(self.plan.targets),
            start_ns=start_ns,
            timeout_ns=self.plan.profile.timeout_ns,
            linger_ns=self.plan.profile.delay_ns,
            outage_min=self.plan.profile.outage_min,
        )
        self.check = GeneratorCheck([_schedule(h.plan) for h in self.workers], start_ns)
        targets = {h.plan.index: [t.index for t in h.plan.targets] for h in self.workers}
        self.closer = SecondCloser(self.aggregator, self.check, targets)

    def _spawn_all(self) -> None:
        if self.streams is not None:
            self._launch(self.streams)
            return
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
        while not all(self._ready(h) or not h.live for h in self.workers):
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
        missing = [h.plan.index for h in self.workers if not self._ready(h)]
        if missing:
            where = "the machine is not overloaded"
            if self._listener is not None:
                host, port = self._listener.getsockname()[:2]
                where = f"they reach {host} port {port} (TCP) and their hosts are not overloaded"
            raise WorkerFailed(
                f"workers {missing} did not start within {HELLO_TIMEOUT_S:.0f} s: check that "
                f"{where}, and run again"
            )
        # Every worker takes the same fallbacks on the same machine: each note once.
        notes = dict.fromkeys(n for h in self.workers if h.hello for n in h.hello.notes)
        for note in notes:
            self.display.note(note)

    def _reap(self) -> None:
        for h in self.workers:
            if h.process is not None:
                h.process.join(timeout=2)
                if h.process.is_alive():
                    h.process.kill()
                    h.process.join(timeout=2)
            for conn in (h.data, h.control):
                if conn is not None:
                    conn.close()

    # -- events ----------------------------------------------------------------------------

    def _on_data(self, h: WorkerHandle, limit: int = FRAMES_PER_WAKE) -> None:
        if h.data is None:
            self._on_stream(h)
            return
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
            msg = to_coordinator_clock(msg, h.offset_ns)
            if self.aggregator is not None:
                self.aggregator.add(msg.records)
                if len(msg.bursts):
                    self.aggregator.add_bursts(msg.bursts)
            h.watermark_ns = max(h.watermark_ns, msg.resolved_before_ns)
            h.stats = msg.stats
            if self.check is not None:
                self.check.on_frame(h.plan.index, msg.now_ns, msg.stats)
        elif isinstance(msg, Echo):
            if h.clock is not None:  # it renewed the lease too (`_on_stream`)
                h.clock.add(msg.beat_ns, msg.received_ns, msg.sent_ns, h.read_ns)
                self._sample_clock(h)
        elif isinstance(msg, Hello):
            h.hello = msg
            self._sample_clock(h)
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
        assert h.process is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(h.process.sentinel)
        if h.data is None:  # a stream worker: its stream, not its process, says how it ended
            if h.stream is None:
                loop.call_later(STREAM_GRACE_S, self._exited_unclaimed, h)
            return
        self._on_data(h, limit=EVERY_FRAME)  # whatever it wrote before it went
        self._exited(h)

    def _exited(self, h: WorkerHandle) -> None:
        assert h.process is not None
        h.process.join(timeout=1)
        h.exited = True
        if h.done is None and h.failure is None:
            code = h.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            self._gone(h, f"died unexpectedly (pid {h.process.pid}, {how})", "died")
        if self._wake is not None:
            self._wake.set()

    def _exited_unclaimed(self, h: WorkerHandle) -> None:
        if h.stream is None:
            self._exited(h)

    def _gone(self, h: WorkerHandle, what: str, cause: str) -> None:
        """A worker ended without saying done: named, its open probes unresolved, and the
        run stops."""
        host = self.streams.launcher.host(h.plan.index) if self.streams else ""
        where = f"(on {host}) " if host else ""
        h.failure = (
            f"{where}{what}; its probes still waiting for an outcome are reported as unresolved"
        )
        if self.aggregator is not None:  # before the start, _await_hellos reports it
            self._lost(h, cause)
            self.display.note(f"worker {h.plan.index} {h.failure}")
            if h.data is not None or self.plan.profile.host_lost == "stop":
                self._stop_all(f"a worker {cause}")

    def _on_interrupt(self) -> None:
        if self.interrupted:
            self.aborted = True  # second CTRL-C: quit now
            for h in self.workers:
                if h.process is not None and h.process.is_alive():
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

    def _tell(self, h: WorkerHandle, msg: Start | Stop | Beat) -> None:
        if h.stream is not None:
            h.stream.send_bytes(encode(msg))  # a stream that takes nothing more is `closed`
            return
        with contextlib.suppress(OSError):
            if h.control is not None:
                h.control.send_bytes(encode(msg))

    def _launch(self, streams: Streams) -> None:
        plans = [(wp.index, encode(_plan_message(wp))) for wp in self.plan.workers]
        procs = self._open_streams(streams, plans)
        self.workers = tuple(
            WorkerHandle(wp, procs.get(wp.index), None, None) for wp in self.plan.workers
        )

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
            clocks=self.clocks(),
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
