"""Workers on TCP streams, the coordinator's side: where it listens, who starts the workers
(`Launcher`: here, or on Ray nodes through `cluster`), and `StreamWorkers`, the part of
`coordinator.Coordinator` that claims each connection for its worker, beats every stream, holds
each lease, samples each clock (16 exchanges before the start, then one per beat), starts each
worker on the run's origin by its own clock and names a worker whose stream closed or went
silent. The coordinator's event loop drives it; the pipes' path never touches it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from loadgen.clockoffset import OffsetEstimator, WorkerClock, worker_clock
from loadgen.lease import LEASE_NS, BeatClock, Lease
from loadgen.net.stream import StreamPeer, listen
from loadgen.wire.messages import Beat, Failed, Hello, ProtocolError, Start, Stop, decode
from loadgen.worker import stream_worker_main

if TYPE_CHECKING:
    from loadgen.coordinator import Display, WorkerHandle
    from loadgen.plan import RunPlan
    from loadgen.stats import Aggregator

CLOCK_SAMPLES = 16  # ping-pong exchanges with each stream worker before the start


class Launcher:
    """Starts stream workers that connect back to `address`; the local one spawns processes
    here (returned, for their sentinels and the reaping). Others place them on other hosts."""

    def start(
        self, address: tuple[str, int], plans: Sequence[tuple[int, bytes]]
    ) -> dict[int, BaseProcess]:
        """`plans`: each worker's index and encoded PlanMsg."""
        ctx = multiprocessing.get_context("spawn")
        procs: dict[int, BaseProcess] = {}
        for index, plan_bytes in plans:
            proc = ctx.Process(
                target=stream_worker_main,
                args=(plan_bytes, address),
                name=f"loadgen-worker-{index}",
                daemon=True,
            )
            proc.start()
            procs[index] = proc
        return procs

    def host(self, index: int) -> str:
        """Where worker `index` runs, for messages ("": here)."""
        return ""

    def close(self) -> None:
        """The run is over: whatever the launcher placed elsewhere is let go."""


@dataclass(frozen=True, slots=True)
class Streams:
    """Workers reach the coordinator over TCP: it listens on `host`:`port` (0: any free one)
    and tells workers to connect to `advertise` (default: the listening address)."""

    host: str = "127.0.0.1"
    port: int = 0
    advertise: str | None = None
    launcher: Launcher = field(default_factory=Launcher)


class StreamWorkers:
    """Mixed into `Coordinator`: its workers on streams (`streams` set), on its event loop."""

    if TYPE_CHECKING:  # what it uses of the coordinator
        plan: RunPlan
        workers: tuple[WorkerHandle, ...]
        aggregator: Aggregator | None
        display: Display
        start_ns: int
        _wake: asyncio.Event | None

        def _handle(self, h: WorkerHandle, msg: object) -> None: ...
        def _gone(self, h: WorkerHandle, what: str, cause: str) -> None: ...
        def _tell(self, h: WorkerHandle, msg: Start | Stop | Beat) -> None: ...
        def _on_data(self, h: WorkerHandle, limit: int = ...) -> None: ...

    def _init_streams(self, streams: Streams | None) -> None:
        self.streams = streams
        self._listener: socket.socket | None = None
        self._unclaimed: set[StreamPeer] = set()  # connected, not yet said which worker

    def _open_streams(
        self, streams: Streams, plans: Sequence[tuple[int, bytes]]
    ) -> dict[int, BaseProcess]:
        """Listen, and have the launcher start the workers (`plans`: index, encoded plan)."""
        self._listener = listen(streams.host, streams.port)
        host, port = self._listener.getsockname()[:2]
        return streams.launcher.start((streams.advertise or host, port), plans)

    def _ready(self, h: WorkerHandle) -> bool:
        """Said hello, and over a stream its clock is sampled."""
        return h.hello is not None and (h.clock is None or h.clock.count >= CLOCK_SAMPLES)

    def _sample_clock(self, h: WorkerHandle) -> None:
        """Before the start, beats go back and forth one at a time (a waiting worker answers
        at once: the least round trips of the run); after it, `_beat`'s timer samples on."""
        if h.clock is not None and self.aggregator is None and h.clock.count < CLOCK_SAMPLES:
            self._tell(h, Beat(0, time.time_ns()))

    def _start(self, h: WorkerHandle) -> None:
        """Start at the run's origin as the worker's clock shows it; its frames are moved onto
        ours by the same offset."""
        best = None if h.clock is None else h.clock.best
        h.offset_ns = 0 if best is None else best.offset_ns
        self._tell(h, Start(self.start_ns + h.offset_ns))
        clock = self.clocks(h)
        if clock and clock[0].flagged:
            c = clock[0]
            self.display.note(
                f"worker {h.plan.index}: clock offset {c.offset_ns / 1e3:+.0f} µs known only to "
                f"± {c.bound_ns / 1e3:.0f} µs, past clock_limit: its seconds may be off as much"
            )

    def clocks(self, *only: WorkerHandle) -> tuple[WorkerClock, ...]:
        """The stream workers' clocks (of `only`, if given)."""
        limit = self.plan.profile.clock_limit_ns
        launcher = self.streams.launcher if self.streams else Launcher()
        return tuple(
            worker_clock(h.plan.index, h.offset_ns, h.clock, limit, launcher.host(h.plan.index))
            for h in only or self.workers
            if h.clock is not None
        )

    def _on_connect(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        for _ in range(len(self.workers)):
            try:
                sock, _addr = self._listener.accept()
            except OSError:  # EAGAIN: none left; ECONNABORTED: gone already
                return
            peer = StreamPeer(sock)
            self._unclaimed.add(peer)
            loop.add_reader(peer.fileno(), self._on_unclaimed, peer)

    def _on_unclaimed(self, peer: StreamPeer) -> None:
        """A new stream says which worker it is with its first message (Hello or Failed);
        one that says nothing we know of is closed."""
        loop = asyncio.get_running_loop()
        try:
            msgs = [decode(p) for p in peer.read()]
        except ProtocolError:
            msgs, peer.closed = [], True
        if msgs:
            index = msgs[0].worker if isinstance(msgs[0], Hello | Failed) else -1
            h = next((h for h in self.workers if h.plan.index == index), None)
            if h is None or h.stream is not None or not h.live:
                peer.closed = True
            else:
                self._unclaimed.discard(peer)
                loop.remove_reader(peer.fileno())
                h.stream, h.lease = peer, Lease(time.monotonic_ns())
                h.clock = OffsetEstimator()
                loop.add_reader(peer.fileno(), self._on_data, h)
                for msg in msgs:
                    self._handle(h, msg)
                self._after_read(h)
                return
        if peer.closed:
            self._unclaimed.discard(peer)
            loop.remove_reader(peer.fileno())
            peer.close()

    def _on_stream(self, h: WorkerHandle) -> None:
        assert h.stream is not None and h.lease is not None
        try:
            payloads = h.stream.read()
            h.read_ns = time.time_ns()
            if payloads:
                h.lease.heard(time.monotonic_ns())
            for payload in payloads:
                self._handle(h, decode(payload))
        except ProtocolError as exc:
            h.failure = f"sent a message this coordinator cannot read ({exc})"
            h.stream.closed = True
        self._after_read(h)

    def _after_read(self, h: WorkerHandle) -> None:
        if h.stream is not None and h.stream.closed:
            self._drop_stream(h, "its stream closed before it said done (killed, or reset)")
        if self._wake is not None and not h.live:
            self._wake.set()

    def _drop_stream(self, h: WorkerHandle, what: str, cause: str = "lost its stream") -> None:
        assert h.stream is not None
        if h.stream.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(h.stream.fileno())
        h.stream.close()
        h.stream.closed = True
        if h.live:
            self._gone(h, what, cause)
        h.exited = True
        if self._wake is not None:
            self._wake.set()

    async def _beat(self) -> None:
        """Heartbeats to every stream, and the coordinator's side of each lease."""
        clock = BeatClock(time.monotonic_ns())
        while True:
            now = time.monotonic_ns()
            seq = clock.due(now)
            for h in self.workers:
                if h.stream is None or h.lease is None or not h.live:
                    continue
                if h.lease.expired(now):
                    silent = f"sent nothing for {LEASE_NS / 1e9:.0f} s (host down or link cut)"
                    self._drop_stream(h, silent, "went silent")
                elif seq is not None:
                    self._tell(h, Beat(seq, time.time_ns()))
                    if h.stream.closed:
                        self._drop_stream(h, "its stream stopped taking heartbeats")
            await asyncio.sleep(clock.wait_ns(time.monotonic_ns()) / 1e9)

    def _close_streams(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
        peers = [h.stream for h in self.workers if h.stream is not None] + [*self._unclaimed]
        for peer in peers:
            if peer.fileno() >= 0:
                loop.remove_reader(peer.fileno())
                peer.close()
        self._unclaimed.clear()
        if self.streams is not None:
            self.streams.launcher.close()
