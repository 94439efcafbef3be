"""The worker process: one socket, one paced loop, one stream of record frames.
The plan gives a worker targets of one address family and one probe kind; its socket, codecs
and tracker addresses are that family's and that kind's (`kinds`: parameters, not a second
code path).

The loop is plumbing: it reads the clock, asks `turns.TurnPolicy` what this turn does (send a
batch, drain replies, ship a frame, or end), does that I/O and sleeps until the next turn;
with user-space RX stamps it drains replies as they come while it waits. Replies go through
recvmmsg batches, TX stamps from the error queue first if asked for, the vectorised decoder and
the tracker. The last frame follows the tracker's finish, then Done. Workers run at real-time
priority where allowed.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import select
import signal
import sys
import time
from multiprocessing.connection import Connection

import numpy as np
from numpy.typing import NDArray

from loadgen.errors import LoadgenError
from loadgen.kinds import BatchDecoder, QueuedDecoder, open_kind
from loadgen.lease import LEASE_NS
from loadgen.net.batchio import BatchIO
from loadgen.net.stream import StreamLink
from loadgen.net.tcpconnect import ConnectIO
from loadgen.tracker import Tracker, probes_of_tx_ids
from loadgen.turns import TurnPolicy
from loadgen.wire.batch import DecodedBatch
from loadgen.wire.family import family_of
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.messages import (
    Beat,
    Done,
    Echo,
    Failed,
    Frame,
    Hello,
    PlanMsg,
    Start,
    Stop,
    WorkerStats,
    decode,
    encode,
)
from loadgen.wire.records import RecordFlag

MAX_DRAIN_BATCHES = 64  # receive batches per turn before going back to the send schedule
REALTIME_PRIORITY = 1  # SCHED_FIFO, the lowest real-time priority
PR_SET_TIMERSLACK, TIMER_SLACK_NS = 29, 1000  # <linux/prctl.h>
WORKER_NICE = -5
LEASE_LAPSED = f"heard nothing from the coordinator for {LEASE_NS / 1e9:.0f} s: stopped"
Link = Connection | StreamLink  # a pipe end, or a TCP stream carrying the same messages


def stream_worker_main(plan_bytes: bytes, address: tuple[str, int]) -> None:
    """Process entry point of a worker whose coordinator is at `address` over TCP (one
    stream both ways, under a lease) instead of at the ends of two pipes."""
    try:
        link = StreamLink(address)
    except OSError as exc:
        sys.exit(f"cannot reach the coordinator at {address[0]} port {address[1]}: {exc}")
    worker_main(plan_bytes, link, link)


def worker_main(plan_bytes: bytes, data: Link, control: Link) -> None:
    """Process entry point. Never raises: fatal problems become a Failed message."""
    # The coordinator owns CTRL-C and tells workers to stop; a terminal's SIGINT goes to the
    # whole process group, so workers ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = -1
    try:
        plan = decode(plan_bytes)
        if not isinstance(plan, PlanMsg):
            raise LoadgenError(f"worker expected a plan, got {type(plan).__name__}")
        worker = plan.worker
        if plan.cpu >= 0:
            # Every thread, not just this one: imports may have started some (BLAS pools).
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(ProcessLookupError):  # a thread that has ended
                    os.sched_setaffinity(int(tid), {plan.cpu})
        note = _tune_process()
        Worker(plan, data, control, [note] if note else []).run()
    except LoadgenError as exc:
        _send_quietly(data, Failed(worker, str(exc)))
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the coordinator is gone (or its stream stalled for a lease); nobody to tell
    except Exception as exc:  # a bug: report it in one line rather than die silently
        _send_quietly(data, Failed(worker, f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        data.close()


def _tune_process() -> str | None:
    """A late turn is a pacing error. Where allowed (root, CAP_SYS_NICE) the worker runs at the
    lowest real-time priority, so the coordinator and other work sharing its CPU wait for the
    worker's turns, not the other way round (a worker sleeps most of each tick, and the kernel
    keeps 5% of every CPU for others should one never sleep). Otherwise it wakes on time (1 us
    timer slack instead of 50 us) and runs at nice -5 if it may; returns a note saying so."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        return None
    except OSError:
        pass
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICE)
    return (
        "workers may not run at real-time priority (needs root or CAP_SYS_NICE): other "
        "work on their CPUs can delay a batch past a tenth-of-a-second mark"
    )


def _send_quietly(conn: Link, msg: Failed) -> None:
    with contextlib.suppress(OSError):
        conn.send_bytes(encode(msg))


class Worker:
    def __init__(
        self, plan: PlanMsg, data: Link, control: Link, notes: list[str] | None = None
    ) -> None:
        self.plan = plan
        self.data = data
        self.control = control
        # Over a stream the coordinator may vanish without the stream closing (host down, link
        # cut): what it sends (heartbeats) holds the stream's lease. A pipe closes when it goes.
        self.lease = control.lease if isinstance(control, StreamLink) else None
        self.probe = probe = plan.settings
        versions = {t.family for t in plan.targets}
        if len(versions) != 1:
            raise LoadgenError(f"a worker's targets are of one family, got {sorted(versions)}")
        self.family = fam = family_of(versions.pop())
        # Everything that depends on what a probe is: socket, builder, decoder, destinations.
        self.kind = kind = open_kind(plan, fam)
        self.io, self.sock = kind.io, kind.io.socket
        self.global_index = np.array([t.index for t in plan.targets], dtype=np.uint32)
        self.tracker = Tracker(
            targets=self.global_index,
            addresses=kind.addresses,
            rate_pps=plan.rate_pps,
            timeout_ns=probe.timeout_ns,
            linger_ns=probe.linger_ns,
        )
        self.poller = select.poll()
        for io in (self.io, kind.errors):
            if io is not None:
                self.poller.register(io.fileno(), select.POLLIN)
        # Connection.poll() builds a selector per call: ~100 us, every frame. One poll object.
        self.control_poller = select.poll()
        self.control_poller.register(control.fileno(), select.POLLIN)
        # Kernel RX stamps say when a reply came, whenever it is read: no need to wake for it.
        self.wake_for_replies = self.sock.rx_scm == 0
        self.tx_flag = RecordFlag.NONE
        self.tx_first_k = 0  # probes sent before TX stamps were enabled: OPT_ID 0 is this one
        self.notes: list[str] = list(notes or [])
        if probe.tx_timestamps:
            self._enable_tx_stamps()
        self.frame_seq = 0
        self.send_errors = 0
        self.last_errno = 0
        self.rx_packets = 0
        self.rx_dropped = 0
        self.rx_truncated = 0
        self.malformed = 0

    def _enable_tx_stamps(self) -> None:
        if self.sock.rx_scm == 0:
            self.notes.append(
                "tx_timestamps needs kernel RX timestamps to pair with (timestamps is "
                '"user"): send times are user-space'
            )
            return
        self.tx_flag = self.io.enable_tx_timestamps()
        self.tx_first_k = self.tracker.sent

    def _hello(self) -> Hello:
        if self.io.tx_stamps_live:
            word = "hardware" if self.tx_flag is RecordFlag.TX_HARDWARE else "kernel-software"
            tx_source = f"{word} (SO_TIMESTAMPING error queue, matched by OPT_ID)"
        else:
            tx_source = "user-space (per batch)"
        if self.kind.tx_path:
            tx_source += f", {self.kind.tx_path}"
        return Hello(
            worker=self.plan.worker,
            pid=os.getpid(),
            cpu=self.plan.cpu,
            rx_source=self.sock.rx_source,
            tx_source=tx_source,
            notes=(*self.io.notes, *self.kind.notes, *self.notes),
        )

    def run(self) -> None:
        if self.lease is not None:  # setting up took what it took: the wait starts at hello
            self.lease.heard(time.monotonic_ns())
        self.data.send_bytes(encode(self._hello()))
        start_ns = self._wait_for_start()
        if start_ns is None:
            return
        # All workers start on the run's common origin so second 0 is the same for everyone.
        # The origin is mapped onto the monotonic clock, not taken from the wake-up, so the send
        # grid sits exactly on the coordinator's whole milliseconds whatever the wake latency.
        start_mono = time.monotonic_ns() + (start_ns - time.time_ns())
        while (delay_ns := start_mono - time.monotonic_ns()) > 0:
            time.sleep(delay_ns / 1e9)
        plan = self.plan
        policy = TurnPolicy(
            start_ns=start_mono,
            rate_pps=plan.rate_pps,
            probes=plan.probes,
            duration_ns=plan.duration_ns,
            linger_ns=plan.settings.linger_ns,
            max_batch=self.tracker.max_batch,
            rx_batch=self.io.batch,
            kernel_rx_stamps=not self.wake_for_replies,
        )
        try:
            while True:
                turn = policy.turn(time.monotonic_ns(), unresolved=self.tracker.unresolved())
                if turn.end:
                    break
                if turn.send:
                    policy.sent(self._send(turn.send), time.monotonic_ns())
                if turn.receive or (turn.send and self.kind.receive_with_sends):
                    self._receive()
                if turn.ship:
                    self._ship(policy)
                    if self._stop_asked():
                        policy.stop()
                self._sleep_until(policy.wake_ns())
            self.tracker.finish()
            self._ship(policy, final=True)
            lapsed = self.lease is not None and self.lease.expired(time.monotonic_ns())
            reason = LEASE_LAPSED if lapsed else policy.done_reason()
            self.data.send_bytes(encode(Done(plan.worker, reason)))
        finally:
            self.kind.close()

    def _sleep_until(self, wake_ns: int) -> None:
        """Wait for the next turn; with user-space RX stamps, drain replies as they come."""
        while (left_ns := wake_ns - time.monotonic_ns()) > 0:
            if not self.wake_for_replies:
                time.sleep(left_ns / 1e9)
                return
            # POLLERR (a failed send's pending error) also wakes us: receiving clears it.
            if self.poller.poll(max(1, math.ceil(left_ns / 1e6))):
                self._receive()

    def _wait_for_start(self) -> int | None:
        """Block until the coordinator says when to start (or to stop before starting)."""
        while True:
            try:
                msg = decode(self.control.recv_bytes())
            except (EOFError, TimeoutError):  # a stream's blocking read times out at a lease
                return None
            if isinstance(msg, Beat):
                self._echo(msg, time.time_ns())
            if isinstance(msg, Start):
                return msg.start_ns
            if isinstance(msg, Stop):
                self.data.send_bytes(encode(Done(self.plan.worker, "stopped before start")))
                return None

    def _send(self, count: int) -> int:
        """Send `count` probes in one batch; returns how many the kernel took."""
        local, seq = self.tracker.plan_batch(count)
        packets = self.kind.builder.build(local, seq, time.time_ns())
        # The send time is read after the batch is built, right before the one sendmmsg, so
        # build cost never shows up as latency.
        tx_rt = time.time_ns()
        if self.kind.restamp is not None:
            self.kind.restamp(packets, tx_rt)
        # OPT_ID of the batch's first packet: sends since TX stamps were enabled.
        first_id = self.tracker.sent - self.tx_first_k
        result = self.io.send(packets, self.kind.destinations[local], first_id)
        self.tracker.on_sent(result.sent, tx_rt)
        if result.sent < count:
            # The kernel refused the rest (ENOBUFS/EAGAIN): they were never sent, the pacer
            # retries them next turn, and the refusals are reported as generator trouble.
            self.send_errors += count - result.sent
            self.last_errno = result.errno
        return result.sent

    def _receive(self) -> None:
        self._drain(self.io, self.kind.decoder)
        if self.kind.errors is not None and self.kind.error_decoder is not None:
            self._drain(self.kind.errors, self.kind.error_decoder)
        if self.kind.queued_errors is not None:
            self._track_queued_errors(self.kind.queued_errors)

    def _track_queued_errors(self, decoder: QueuedDecoder) -> None:
        """ICMP errors a datagram socket (ICMP or UDP probes) got on its error queue, tracked
        like those a raw socket reads as packets (their arrival time is not used)."""
        assert isinstance(self.io, BatchIO)  # only datagram sockets queue them
        errors = self.io.read_icmp_errors()
        if not errors:
            return
        dec = decoder.decode_queued(errors)
        self.malformed += int(np.count_nonzero(dec.status == DecodeStatus.MALFORMED))
        self._track(dec, np.full(dec.n, time.time_ns(), np.int64), 0)

    def _drain(self, io: BatchIO | ConnectIO, decoder: BatchDecoder) -> None:
        for _ in range(MAX_DRAIN_BATCHES):
            got = io.recv()
            # A software TX stamp is queued before its packet leaves, so once the replies are
            # in hand, the stamps of their probes are in the error queue: read them first.
            if io.tx_stamps_enabled:
                self._read_tx_stamps()
            if got.n == 0:
                return
            self.rx_packets += got.n
            if io is self.io:
                self.rx_dropped = got.dropped_total
            self.rx_truncated += got.truncated
            dec = decoder.decode(got.data, got.lengths, got.n)
            self.malformed += int(np.count_nonzero(dec.status == DecodeStatus.MALFORMED))
            self._track(dec, got.rx_ns[: got.n], got.rx_flags[: got.n])
            if self.kind.extras is not None:
                self.kind.extras.on_replies(dec, got.rx_ns[: got.n], got.rx_flags[: got.n])
            if got.n < io.batch:
                return

    def _track(
        self, dec: DecodedBatch, rx_ns: NDArray[np.int64], rx_flags: NDArray[np.uint8] | int
    ) -> None:
        self.tracker.on_replies(
            status=dec.status,
            target=dec.target,
            seq=dec.seq,
            seq16_only=dec.seq16_only,
            quoted_dst=dec.quoted_dst,
            payload_tx_ns=dec.tx_ns,
            rx_ns=rx_ns,
            rx_flags=rx_flags,
            probe_k32=dec.probe_k32,
            refused=dec.refused,
        )

    def _read_tx_stamps(self) -> None:
        for _ in range(MAX_DRAIN_BATCHES):
            stamps = self.io.read_tx_timestamps()
            if stamps.n:
                k = probes_of_tx_ids(stamps.ids, self.tx_first_k, self.tracker.sent)
                self.tracker.on_tx_stamps(k, stamps.tx_ns, stamps.tx_flags)
            if not stamps.more:
                return

    def _ship(self, policy: TurnPolicy, *, final: bool = False) -> None:
        # SO_RXQ_OVFL only rides on packets queued after a drop: read the counter itself too.
        self.rx_dropped = max(self.rx_dropped, self.io.kernel_drops())
        now_rt = time.time_ns()
        self.tracker.expire(now_rt)
        tr = self.tracker
        stats = WorkerStats(
            sent=tr.sent,
            # Refusals of a partial sendmmsg surface at the next receive: one count for both.
            send_errors=self.send_errors + self.io.pending_send_errors,
            last_send_errno=self.last_errno,
            rx_packets=self.rx_packets,
            rx_dropped=self.rx_dropped,
            rx_truncated=self.rx_truncated,
            foreign=tr.foreign - self.malformed,
            malformed=self.malformed,
            unattributed=tr.unattributed,
            evicted=tr.evicted,
            cpu_ns=time.process_time_ns(),
            max_lag_ns=policy.take_max_lag(),
            skipped_ns=policy.pacer.skipped_ns,
        )
        mark = now_rt if final else tr.resolved_before(now_rt)
        records = tr.take_records()
        if self.kind.extras is not None:
            records = self.kind.extras.take(records)
        frame = Frame(
            self.plan.worker, self.frame_seq, now_rt, mark, records, stats, tr.take_bursts()
        )
        self.frame_seq += 1
        self.data.send_bytes(encode(frame))

    def _stop_asked(self) -> bool:
        """Whether the coordinator said stop (or is gone) since the last look."""
        while self.control_poller.poll(0):
            try:
                msg = decode(self.control.recv_bytes())
            except (EOFError, TimeoutError):
                return True  # the coordinator is gone: wind down
            if isinstance(msg, Beat):
                self._echo(msg, time.time_ns())
            if isinstance(msg, Stop):
                return True
        return self.lease is not None and self.lease.expired(time.monotonic_ns())

    def _echo(self, beat: Beat, received_ns: int) -> None:
        """Answer with the clock sample's other timestamps (the stream renewed its lease)."""
        echo = Echo(self.plan.worker, beat.seq, beat.sent_ns, received_ns, time.time_ns())
        self.data.send_bytes(encode(echo))
