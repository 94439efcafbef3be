"""The reflector: a process inside a lab host's namespace that answers our probes itself.

`python -m loadgen.lab.reflector --config JSON` (started by the lab via `ip netns exec`). It
reads requests in batches (recvmmsg), decides their fate with `impair.Decider`, answers with
sendmmsg when nothing needs holding back (an echo request without our magic is counted foreign
and left unanswered: it would move the truth), counts every action and times how long it held each
reply (from the request's kernel receive stamp). A unix SEQPACKET socket answers "stats"
(counters as JSON) and "stop"; SIGTERM stops it; counters go to a file at exit. One reflector
serves one IP version (`ReflectorConfig.version`): a lab host runs one for each.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from loadgen.lab.control import die_with_parent, serve_control, write_json
from loadgen.lab.impair import Action, Decider, ReflectorConfig, ReflectorCounts
from loadgen.lab.mmsg import RecvBatch, SendBatch, open_raw_socket
from loadgen.lab.spread import Spread
from loadgen.lab.wire import error_for, make_replies, parse_batch, parse_batch6

BATCH = 256
SNAP = 9216  # jumbo frames; a longer request arrives truncated and is counted malformed
PR_SET_TIMERSLACK = 29
SO_MEMINFO = 55
TIMER_SLACK_NS = 1_000  # the default 50 us slack would show up in every delayed reply
IDLE_WAIT_NS = 100_000_000
# Waking this much before a delayed message is due, and polling the rest, hides most of the
# wake-up latency of a busy box; it costs at most this much spinning per delayed message.
WAKE_EARLY_NS = 50_000
# On a stop, requests still on their way in (sent just before it) are read for this long.
STOP_GRACE_S = 0.02
LATE_BUCKETS = 1_000  # lateness histogram: 0 .. 10 ms in 10 µs steps
HOLD_BUCKETS = 10_000  # hold-time histogram: 0 .. 100 ms


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message that could not go out at once: delayed, or held back for reordering."""

    msg: bytes  # the ICMP message; the kernel adds the IP header
    dst: bytes  # 4- or 16-byte destination: the request's source
    copies: int  # 2 for a duplicated reply
    reorder: bool
    kind: str  # the counter each datagram sent adds to
    ordinal: int = -1  # for echo replies: the request's place in arrival order
    arrived_ns: int = 0  # when its request arrived (monotonic)
    delay_ns: int = 0  # the delay drawn for it


class Reflector:
    """The per-batch logic around one raw socket. Time comes in as `now_ns`, except when a
    batch's answers are ready: that is read from `clock` (so tests can pass a fake)."""

    def __init__(
        self,
        cfg: ReflectorConfig,
        sock: socket.socket,
        now_ns: int,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.cfg, self.sock, self.clock = cfg, sock, clock
        self.decider = Decider(cfg, now_ns)
        self.version = cfg.version
        self.rx = RecvBatch(BATCH, SNAP, cfg.version)
        self.tx = SendBatch(2 * BATCH, cfg.version)
        # IPv6: an error quotes the request's IPv6 header, rebuilt with this destination.
        self.local = socket.inet_pton(socket.AF_INET6, cfg.address) if cfg.version == 6 else b""
        self.counts: dict[str, int] = asdict(ReflectorCounts())
        self.queue: list[tuple[int, int, Outgoing]] = []  # (due_ns, order, message) heap
        self.order = 0
        self.top_ordinal = -1  # the latest request (arrival order) answered with a reply so far
        self.held: tuple[int, Outgoing] | None = None  # (deadline_ns, reply held back)
        self.late = Spread(LATE_BUCKETS)  # how late delayed messages went out
        # How long each echo reply was held, from its request's arrival to its sending: what
        # this host added to the round trip (duplicates and errors aside).
        self.hold = Spread(HOLD_BUCKETS)
        # The hold less the delay drawn: this process's own part (waiting for a CPU, a late
        # timer), which a busy machine makes longer. Medians do not add, so it is kept whole.
        self.overhead = Spread(HOLD_BUCKETS)

    def snapshot(self, socket_drops: int = 0) -> ReflectorCounts:
        """The counts now; `socket_drops` is the raw socket's drop counter, read by the caller."""
        pending = len(self.queue) + (self.held is not None)
        timing = {
            "socket_drops": socket_drops,
            "late_ns_p50": self.late.p50_ns(),
            "hold_ns_p50": self.hold.p50_ns(),
            "hold_step_ns": self.hold.mean_step_ns(),
            "overhead_ns_p50": self.overhead.p50_ns(),
        }
        return ReflectorCounts.from_dict({**self.counts, "pending": pending, **timing})

    def on_readable(self, now_ns: int) -> int:
        """Receive and answer one batch; returns how many datagrams were read."""
        n = self.rx.recv(self.sock)
        if n == 0:
            return 0
        buf, c = self.rx.buf, self.counts
        parse = parse_batch if self.version == 4 else parse_batch6
        batch = parse(buf, self.rx.lengths(n), self.rx.truncated(n))
        c["malformed"] += batch.malformed
        c["foreign"] += batch.foreign
        c["requests_seen"] += len(batch.rows)
        if len(batch.rows) == 0:
            return n
        stamps = self.rx.stamps_ns(n)[batch.rows]
        # Arrival times on this loop's clock (monotonic); now_ns where the kernel gave none.
        arrived = np.where(stamps > 0, stamps - (time.time_ns() - time.monotonic_ns()), now_ns)
        first = self.decider.seen
        d = self.decider.decide(len(batch.rows), now_ns)
        c["dropped"] += int(np.count_nonzero(d.action == Action.DROP))
        c["rate_limited"] += int(np.count_nonzero(d.action == Action.RATE_LIMITED))
        sel = d.action == Action.REPLY
        rows, skipped = make_replies(
            buf, batch, sel, d.bitflip, d.flip_unit, d.corrupt, self.version
        )
        c["replies"] += len(rows)
        c["bitflip_skipped"] += skipped
        c["bitflipped"] += int(np.count_nonzero(d.bitflip)) - skipped
        c["corrupted"] += int(np.count_nonzero(d.corrupt))
        if self.version == 6:
            # The kernel writes every ICMPv6 checksum, and a receiver's kernel drops a bad one
            # unseen: a reply picked for corruption is held back for good, as good as lost.
            sel = sel & ~d.corrupt
            rows = batch.rows[sel]
        sources = self._sources(batch.rows)
        c["duplicated"] += int(np.count_nonzero(d.duplicate))
        # Delays count from when the answers are ready, the moment an undelayed batch goes
        # out: a delayed reply then leaves exactly `delay` later than it would have.
        ready_ns = self.clock()
        for i in np.flatnonzero(
            (d.action == Action.UNREACHABLE) | (d.action == Action.TIME_EXCEEDED)
        ):
            row, end = int(batch.rows[i]), int(batch.end[i])
            unreachable = d.action[i] == Action.UNREACHABLE
            dst = sources[i].tobytes()
            msg = self._error(unreachable, buf[row, :end].tobytes(), dst)
            kind = "unreachable_sent" if unreachable else "time_exceeded_sent"
            self._later(ready_ns, int(d.delay_ns[i]), Outgoing(msg, dst, 1, False, kind))
        off, end = batch.icmp_off[sel], batch.end[sel]
        copies = 1 + d.duplicate[sel].astype(np.int64)
        slow = self.cfg.delay_ns > 0 or self.cfg.jitter_ns > 0 or self.held is not None
        if not slow and not d.reorder.any():
            base = (buf.ctypes.data + rows.astype(np.uint64) * SNAP + off.astype(np.uint64)).repeat(
                copies
            )
            sent, failed = self.tx.send(
                self.sock, base, (end - off).repeat(copies), sources[sel].repeat(copies, axis=0)
            )
            c["replies_sent"] += sent
            c["send_errors"] += failed
            held = (self.clock() - arrived[sel]).tolist()
            self.hold.add_many(held)
            self.overhead.add_many(held)
            if len(rows):  # nothing is held or queued: these went out after all earlier ones
                self.top_ordinal = first + int(np.flatnonzero(sel)[-1])
            return n
        reorder, delay = d.reorder[sel], d.delay_ns[sel]
        ordinals = (first + np.flatnonzero(sel)).tolist()
        arrivals = arrived[sel].tolist()
        dsts = sources[sel]
        for j, row in enumerate(rows.tolist()):
            msg = buf[row, int(off[j]) : int(end[j])].tobytes()
            dst = dsts[j].tobytes()
            out = Outgoing(
                msg,
                dst,
                int(copies[j]),
                bool(reorder[j]),
                "replies_sent",
                ordinals[j],
                arrivals[j],
                int(delay[j]),
            )
            self._later(ready_ns, int(delay[j]), out)
        return n

    def _sources(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        """The source address of each of the last batch's `rows` (4 or 16 bytes a row)."""
        if self.version == 4:
            out: npt.NDArray[np.uint8] = self.rx.buf[rows, 12:16]
        else:
            out = self.rx.names["addr"][rows]
        return out

    def _error(self, unreachable: bool, request: bytes, src: bytes) -> bytes:
        return error_for(self.version, unreachable, request, src, self.local)

    def _later(self, now_ns: int, delay_ns: int, out: Outgoing) -> None:
        """Send now, or queue until now + delay."""
        if delay_ns <= 0:
            self._emit(out, now_ns)
            return
        self.counts["delayed"] += 1
        self.counts["delay_ns_max"] = max(self.counts["delay_ns_max"], delay_ns)
        self.order += 1
        heapq.heappush(self.queue, (now_ns + delay_ns, self.order, out))

    def _send(self, out: Outgoing) -> None:
        if out.ordinal >= 0:
            if out.ordinal < self.top_ordinal:
                self.counts["out_of_order"] += 1
            self.top_ordinal = max(self.top_ordinal, out.ordinal)
        if out.arrived_ns:
            held_ns = self.clock() - out.arrived_ns
            self.hold.add(held_ns)
            self.overhead.add(held_ns - out.delay_ns)
        family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        dst = (socket.inet_ntop(family, out.dst), 0)
        for _ in range(out.copies):
            try:
                self.sock.sendto(out.msg, dst)
                self.counts[out.kind] += 1
            except OSError:
                self.counts["send_errors"] += 1

    def _emit(self, out: Outgoing, now_ns: int) -> None:
        if out.reorder and self.held is None:
            self.held = (now_ns + self.cfg.reorder_hold_ns, out)
            return
        self._send(out)
        if self.held is not None and out.kind == "replies_sent":
            held, self.held = self.held[1], None
            self._send(held)
            self.counts["reordered"] += 1

    def on_timer(self, now_ns: int) -> None:
        """Send what is due; let a held reply with no successor in time go out alone."""
        while self.queue and self.queue[0][0] <= now_ns:
            due_ns, _, out = heapq.heappop(self.queue)
            late_ns = now_ns - due_ns
            self.counts["late_ns_max"] = max(self.counts["late_ns_max"], late_ns)
            self.late.add(late_ns)
            self._emit(out, now_ns)
        if self.held is not None and self.held[0] <= now_ns:
            held, self.held = self.held[1], None
            self._send(held)
            self.counts["reorder_flushed"] += 1

    def next_deadline_ns(self) -> int | None:
        deadlines = [self.queue[0][0]] if self.queue else []
        if self.held is not None:
            deadlines.append(self.held[0])
        return min(deadlines, default=None)

    def stop(self) -> None:
        self.counts["unsent_at_exit"] = len(self.queue) + (self.held is not None)
        self.queue.clear()
        self.held = None


def _socket_drops(sock: socket.socket) -> int:
    """The kernel's drop counter of `sock` (SO_MEMINFO's SK_MEMINFO_DROPS)."""
    info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    return int(struct.unpack_from("=9I", info)[8])


def _answer(refl: Reflector, cmd: bytes) -> dict[str, Any]:
    """A control request's answer: "stats" (also written to the stats file) or an error."""
    if cmd != b"stats":
        return {"error": f"unknown command {cmd!r}"}
    counts = asdict(refl.snapshot(_socket_drops(refl.sock)))
    if refl.cfg.stats_path:
        write_json(refl.cfg.stats_path, counts)
    return {"pid": os.getpid(), **counts}


def run(cfg: ReflectorConfig) -> ReflectorCounts:
    """Serve until SIGTERM/SIGINT or "stop"; returns the final counters."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sock = open_raw_socket(cfg.version)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if cfg.control_path:
        if os.path.exists(cfg.control_path):
            os.unlink(cfg.control_path)
        listener.bind(cfg.control_path)
        listener.listen(8)
    # select() sleeps to the microsecond (poll() only to the millisecond): a due reply waits
    # in the kernel, not in a spinning loop that takes a core from everyone else.
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    # A signal writes to this pipe, so it ends a select() at once (else select() would be
    # resumed until its timeout: up to the next delayed reply's due time).
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    watched: list[socket.socket | int] = [sock, listener, wake_r]
    refl = Reflector(cfg, sock, time.monotonic_ns())
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    try:
        while not stopping:
            now_ns = time.monotonic_ns()
            deadline = refl.next_deadline_ns()
            wait_ns = (
                IDLE_WAIT_NS if deadline is None else max(0, deadline - now_ns - WAKE_EARLY_NS)
            )
            ready, _, _ = select.select(watched, [], [], wait_ns / 1e9)
            # Drain the socket fully: a burst larger than one batch must not wait for select().
            # Before any "stats" is answered: a reflector kept off its CPU wakes to a backlog,
            # and counts that left it out would say it saw fewer requests than it has queued.
            while refl.on_readable(time.monotonic_ns()) == BATCH:
                refl.on_timer(time.monotonic_ns())
            refl.on_timer(time.monotonic_ns())
            if listener in ready and not serve_control(listener, partial(_answer, refl)):
                stopping = True
        # A stop can overtake requests sent just before it: they still count.
        while select.select([sock], [], [], STOP_GRACE_S)[0]:
            refl.on_readable(time.monotonic_ns())
    finally:
        refl.stop()
        drops = _socket_drops(sock)
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w):
            os.close(fd)
        sock.close()
        listener.close()
        if cfg.control_path and os.path.exists(cfg.control_path):
            os.unlink(cfg.control_path)
    final = refl.snapshot(drops)
    if cfg.stats_path:
        write_json(cfg.stats_path, asdict(final))
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.lab.reflector")
    parser.add_argument("--config", required=True, help="ReflectorConfig as JSON")
    args = parser.parse_args(argv)
    try:
        cfg = ReflectorConfig.from_json(args.config)
    except (ValueError, TypeError) as exc:
        print(f"reflector: bad --config ({exc}); pass the JSON the lab writes", file=sys.stderr)
        return 2
    if cfg.die_with_parent and not die_with_parent():
        return 0  # the lab's owner is gone already
    try:
        final = run(cfg)
    except PermissionError:
        print("reflector: raw sockets need root or CAP_NET_RAW; run as root", file=sys.stderr)
        return 1
    # Nobody may be reading stdout any more; the stats file has the counters then.
    with contextlib.suppress(BrokenPipeError, ValueError):
        print(json.dumps(asdict(final)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
