"""`loadgen reflect`: the STAMP session-reflector's processes. The parent checks the port, starts
one pinned worker per CPU (each its own SO_REUSEPORT socket, recvmmsg/sendmmsg batches, kernel
RX stamps for T2), merges what they ship every `SHIP_NS` into the live table and the per-second
JSONL, and stops them on SIGINT/SIGTERM or after a duration. Decisions are `reflect_core`'s;
worker -> parent frames are raw arrays: int64 totals (`TOTALS`), then `SESSION_DTYPE` rows.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import numpy as np
from numpy.typing import NDArray

from loadgen.errors import LoadgenError, UsageError, WorkerFailed
from loadgen.net.udp import UdpBatch, check_port_free, open_reflector_socket
from loadgen.output.reflect_view import ReflectSecond, SecondBuilder, jsonl_record
from loadgen.reflect_core import SESSION_DTYPE, TOTALS, Reflector, ReflectorConfig
from loadgen.wire.stamp_reflect import plain_rows, sender_view, write_replies

SHIP_NS = 500_000_000  # a worker's frame; the parent's second is built from the newest ones
EXPIRE_NS = 1_000_000_000
BATCH_ROWS = 256  # datagrams per recvmmsg: a backlog is drained in few calls
POLL_S = 0.05  # how long a worker waits for a datagram before checking the stop event
READY, FAILED = b"+", b"!"


@dataclass(frozen=True, slots=True)
class ReflectOptions:
    bind: str
    workers: int
    config: ReflectorConfig
    jsonl: str | None = None
    duration_s: float | None = None  # None: until interrupted


def _frame(reflector: Reflector, send_failed: int) -> bytes:
    totals = dict(reflector.totals, send_failed=send_failed)
    head = np.array([totals[name] for name in TOTALS], np.int64)
    return head.tobytes() + reflector.snapshot().tobytes()


def read_frame(data: bytes) -> tuple[dict[str, int], NDArray[np.void]]:
    width = 8 * len(TOTALS)
    head = np.frombuffer(data[:width], np.int64)
    return dict(zip(TOTALS, map(int, head), strict=True)), np.frombuffer(
        data[width:], SESSION_DTYPE
    )


def worker_main(
    index: int, cpu: int | None, options: ReflectOptions, conn: Connection, stop: Event
) -> None:
    """One reflector worker: until `stop`, receive a batch, decide and reflect each datagram,
    send the replies in one sendmmsg; ship counters every SHIP_NS."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        sock = open_reflector_socket(options.bind, options.config.port)
    except (LoadgenError, OSError) as exc:
        conn.send_bytes(FAILED + str(exc).encode())
        return
    conn.send_bytes(READY)
    reflector = Reflector(options.config)
    batch = UdpBatch(sock, rows=BATCH_ROWS)
    send_failed = 0
    next_ship = next_expire = time.monotonic_ns()
    with sock:
        while not stop.is_set():
            n = batch.receive()  # a busy socket is read without a select per batch
            if not n and select.select([sock], [], [], POLL_S)[0]:
                n = batch.receive()
            now_ns = time.monotonic_ns()
            if n:
                send_failed += _serve(batch, reflector, n, now_ns)
            if now_ns >= next_ship:
                conn.send_bytes(_frame(reflector, send_failed))
                next_ship = now_ns + SHIP_NS
            if now_ns >= next_expire:
                reflector.expire(now_ns)
                next_expire = now_ns + EXPIRE_NS
        # What arrived before the stop is answered and counted, not left in the queue.
        while n := batch.receive():
            send_failed += _serve(batch, reflector, n, time.monotonic_ns())
        conn.send_bytes(_frame(reflector, send_failed))


def _serve(batch: UdpBatch, reflector: Reflector, n: int, now_ns: int) -> int:
    """Reflect one received batch; the replies the kernel refused. A batch of plain test
    packets only (the usual one) is answered column-wise, any other one datagram at a time."""
    rx_ns, ttl, tos = batch.rows_of(n)
    # T3: when the replies are built, just before the one sendmmsg that sends them all.
    tx_ns = time.time_ns()
    data, lengths, whole = batch.received(n)
    if whole and plain_rows(data, lengths).all():
        addr, port = batch.source_columns(n)
        ssid = sender_view(data)["ssid"].astype(np.int64)
        answered, seq = reflector.decide_batch(addr, port, ssid, now_ns)
        rows = np.flatnonzero(answered)
        if not len(rows):
            return 0
        every = len(rows) == n  # else only the answered rows' columns
        reply_tos = write_replies(
            batch.out,
            data if every else data[rows],
            lengths if every else lengths[rows],
            reflector_seq=seq,
            rx_ns=rx_ns if every else rx_ns[rows],
            tx_ns=tx_ns,
            ttl=ttl if every else ttl[rows],
            tos=tos if every else tos[rows],
            clock=reflector.config.clock,
            permitted_dscp=reflector.config.permitted_dscp,
        )
        return batch.send_written(rows, lengths[rows], reply_tos)[1]
    replies: list[tuple[int, bytes, int]] = []
    addrs, ports = batch.sources(n)
    rx, ttls, toss = rx_ns.tolist(), ttl.tolist(), tos.tolist()
    for i, datagram in enumerate(batch.datagrams(n)):
        if datagram is None:
            reflector.malformed(addrs[i], ports[i], now_ns)
            continue
        reply = reflector.handle(
            datagram,
            addrs[i],
            ports[i],
            rx_ns=rx[i] or tx_ns,
            tx_ns=tx_ns,
            ttl=max(ttls[i], 0),
            tos=max(toss[i], 0),
            now_ns=now_ns,
        )
        if reply is not None:
            replies.append((i, reply.reply, reply.tos))
    if not replies:
        return 0
    _, failed = batch.send(replies)
    return failed


class ReflectorRun:
    """The parent: start workers, merge their frames, build seconds, stop them."""

    def __init__(self, options: ReflectOptions) -> None:
        self.options = options
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = self._ctx.Event()
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._latest: list[bytes] = []
        self._builder = SecondBuilder()
        self.started_ns = time.monotonic_ns()
        self.last: ReflectSecond | None = None

    def start(self) -> None:
        check_port_free(self.options.bind, self.options.config.port)
        cpus = sorted(os.sched_getaffinity(0))
        for index in range(self.options.workers):
            parent_end, child_end = self._ctx.Pipe(duplex=False)
            cpu = cpus[index % len(cpus)] if self.options.workers <= len(cpus) else None
            proc = self._ctx.Process(
                target=worker_main,
                args=(index, cpu, self.options, child_end, self._stop),
                name=f"loadgen-reflect-{index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self._procs.append(proc)
            self._conns.append(parent_end)
        self._latest = [b""] * len(self._conns)
        for index, conn in enumerate(self._conns):
            try:
                first = conn.recv_bytes() if conn.poll(30) else FAILED + b"did not start in 30 s"
            except (EOFError, OSError):
                first = FAILED + b"exited before it was ready"
            if first.startswith(FAILED):
                self.stop()
                raise WorkerFailed(f"reflector worker {index}: {first[1:].decode()}")
        self.started_ns = time.monotonic_ns()

    def collect(self) -> None:
        for index, conn in enumerate(self._conns):
            with contextlib.suppress(EOFError, OSError):
                while conn.poll():
                    self._latest[index] = conn.recv_bytes()

    def second(self, number: int, span_s: float) -> ReflectSecond:
        self.collect()
        frames = [read_frame(data) for data in self._latest if data]
        self.last = self._builder.build(
            number, [rows for _, rows in frames], [totals for totals, _ in frames], span_s
        )
        return self.last

    def dead(self) -> list[str]:
        return [
            f"reflector worker {i} exited ({p.exitcode})"
            for i, p in enumerate(self._procs)
            if p.exitcode is not None and not self._stop.is_set()
        ]

    def stop(self) -> None:
        """Stop the workers, reading their last frames while they finish (a worker blocked
        on a full pipe would otherwise never exit)."""
        self._stop.set()
        deadline = time.monotonic() + 5.0
        while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:
            self.collect()
            time.sleep(0.02)
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)
        self.collect()


def run_reflector(
    options: ReflectOptions, show: Callable[[ReflectSecond], None], stopping: Callable[[], bool]
) -> tuple[ReflectSecond, float]:
    """Run until `stopping()` or the duration; call `show` every second. Returns the last
    second (the summary's figures) and the elapsed seconds."""
    try:
        jsonl = open(options.jsonl, "a", encoding="utf-8") if options.jsonl else None  # noqa: SIM115
    except OSError as exc:
        raise UsageError(
            f"cannot write --jsonl {options.jsonl}: {exc.strerror}: pick a writable path"
        ) from None
    run = ReflectorRun(options)
    try:
        run.start()
    except BaseException:
        if jsonl is not None:
            jsonl.close()
        raise
    number, tick_ns = 0, run.started_ns
    try:
        while not stopping():
            if options.duration_s is not None and number >= options.duration_s:
                break
            time.sleep(max(tick_ns + 1_000_000_000 - time.monotonic_ns(), 0) / 1e9)
            now_ns = time.monotonic_ns()
            number += 1
            view = run.second(number, (now_ns - tick_ns) / 1e9)
            tick_ns = now_ns
            show(view)
            if jsonl is not None:
                jsonl.write(json.dumps(jsonl_record(view, time.time())) + "\n")
                jsonl.flush()
            if failures := run.dead():
                raise WorkerFailed("; ".join(failures))
    finally:
        run.stop()
        if jsonl is not None:
            jsonl.close()
    final = run.second(number, 0.0)
    return final, (time.monotonic_ns() - run.started_ns) / 1e9
