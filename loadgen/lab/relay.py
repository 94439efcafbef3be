"""The delay relay: `python -m loadgen.lab.relay --config JSON`, run by the lab in a STAMP host's
namespace. It starts `loadgen reflect --stateful` on loopback, owns the public STAMP port on the
host's addresses and holds test packets `delay_fwd` and replies `delay_rev` from their kernel
receive stamps (one upstream socket per sender: each keeps its own session). Its control socket
answers "stats" (writing the per-packet record) and "stop". Decisions and records: `holds`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from loadgen.lab.control import die_with_parent, serve_control, write_json
from loadgen.lab.holds import Held, Holds, Sender, Way

PR_SET_TIMERSLACK = 29
TIMER_SLACK_NS = 1_000  # the default 50 us slack would show up in every hold
WAKE_EARLY_NS = 50_000  # select() sleeps to here, then the loop looks again
IDLE_WAIT_NS = 100_000_000
SO_TIMESTAMPNS = 35  # also the SCM type of its cmsg (struct timespec)
SNAP = 9216
BURST = 256  # datagrams read off one socket before the others get a turn
REFLECT_READY_S = 30.0  # python + numpy start-up of `loadgen reflect` on a busy machine
REFLECT_STOP_S = 10.0
UPSTREAM = "127.0.0.1"  # where the reflector listens: loopback of the host's namespace


@dataclass(frozen=True, slots=True)
class RelayConfig:
    port: int  # the public STAMP port, and the reflector's on loopback
    address: str  # the host's IPv4 address
    address6: str  # and its IPv6 one ("" for none)
    delay_fwd_ns: int
    delay_rev_ns: int
    control_path: str
    stats_path: str
    samples_path: str  # `Holds.per_packet`, written at each "stats"
    reflect_jsonl: str  # the reflector's per-second JSONL
    reflect_log: str  # its stdout and stderr
    die_with_parent: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RelayConfig:
        return cls(**json.loads(text))


def start_reflect(cfg: RelayConfig) -> subprocess.Popen[bytes]:
    """`loadgen reflect` on loopback, answering only this relay; waits until it serves."""
    cmd = [sys.executable, "-m", "loadgen", "reflect", "--bind", UPSTREAM]
    cmd += ["--port", str(cfg.port), "--workers", "1", "--stateful", "--plain"]
    cmd += ["--allow", f"{UPSTREAM}/32", "--jsonl", cfg.reflect_jsonl]
    with open(cfg.reflect_log, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (single-threaded here)
        )
    deadline = time.monotonic() + REFLECT_READY_S
    while time.monotonic() < deadline and proc.poll() is None:
        with open(cfg.reflect_log, "rb") as f:
            if b"pps" in f.read():  # its first per-second line: the worker's socket is bound
                return proc
        time.sleep(0.05)
    stop_reflect(proc)
    raise RuntimeError(f"loadgen reflect did not start; see {cfg.reflect_log}")


def stop_reflect(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # its summary goes to the log
    try:
        proc.wait(REFLECT_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(REFLECT_STOP_S)


def _stamped(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    return sock


def public_socket(version: int, address: str, port: int) -> socket.socket:
    sock = _stamped(socket.AF_INET if version == 4 else socket.AF_INET6)
    if version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    return sock


def read_stamped(sock: socket.socket) -> tuple[bytes, Any, int, bool] | None:
    """One datagram, its source, its kernel receive stamp (realtime ns) and whether the kernel
    gave one; None when nothing is queued."""
    try:
        data, anc, _, addr = sock.recvmsg(SNAP, socket.CMSG_SPACE(16))
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:  # an ICMP error queued for a connected socket: nothing to relay
        return b"", None, 0, False
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack_from("=qq", raw)
            return data, addr, sec * 1_000_000_000 + nsec, True
    return data, addr, time.time_ns(), False


class Relay:
    """The sockets around one `Holds`: public ones per IP version, upstream ones per sender."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.holds = Holds(cfg.delay_fwd_ns, cfg.delay_rev_ns)
        self.public = {4: public_socket(4, cfg.address, cfg.port)}
        if cfg.address6:
            self.public[6] = public_socket(6, cfg.address6, cfg.port)
        self.upstream: dict[Sender, socket.socket] = {}
        self.sender_of: dict[int, Sender] = {}  # upstream fileno -> its sender

    def sockets(self) -> list[socket.socket]:
        return [*self.public.values(), *self.upstream.values()]

    def on_readable(self, sock: socket.socket) -> None:
        version = next((v for v, s in self.public.items() if s is sock), 0)
        for _ in range(BURST):
            got = read_stamped(sock)
            if got is None:
                return
            data, addr, rx_ns, stamped = got
            if not data:
                continue
            if version:
                sender: Sender = (version, addr[0], addr[1])
                if self.holds.admit(sender):
                    self._open(sender)
                    self.holds.hold(Way.FWD, sender, data, rx_ns, stamped)
            else:
                self.holds.hold(Way.REV, self.sender_of[sock.fileno()], data, rx_ns, stamped)

    def _open(self, sender: Sender) -> None:
        if sender not in self.upstream:
            up = _stamped(socket.AF_INET)
            up.bind((UPSTREAM, 0))
            up.connect((UPSTREAM, self.cfg.port))
            self.upstream[sender] = up
            self.sender_of[up.fileno()] = sender

    def send_due(self) -> None:
        for held in self.holds.due(time.time_ns()):
            self._send(held)

    def _send(self, held: Held) -> None:
        version, address, port = held.sender
        sent_ns = time.time_ns()
        try:
            if held.way is Way.FWD:
                self.upstream[held.sender].send(held.payload)
            else:  # only ever to an admitted sender: a lab address
                self.public[version].sendto(held.payload, (address, port))
            ok = True
        except OSError:
            ok = False
        self.holds.sent(held, sent_ns, ok)

    def wait_s(self) -> float:
        due = self.holds.next_due_ns()
        wait_ns = IDLE_WAIT_NS if due is None else due - time.time_ns() - WAKE_EARLY_NS
        return max(0, min(wait_ns, IDLE_WAIT_NS)) / 1e9

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()


def _answer(relay: Relay, cmd: bytes) -> dict[str, Any]:
    """A control request's answer: "stats" (and the per-packet record written) or an error."""
    if cmd != b"stats":
        return {"error": f"unknown command {cmd!r}"}
    write_json(relay.cfg.samples_path, relay.holds.per_packet())
    summary = relay.holds.summary()
    return {"pid": os.getpid(), "samples_path": relay.cfg.samples_path, **summary}


def run(cfg: RelayConfig) -> dict[str, Any]:
    """Serve until SIGTERM/SIGINT or "stop"; returns what the relay did."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    reflect = start_reflect(cfg)
    relay: Relay | None = None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wake_r, wake_w = os.pipe()  # a signal ends a select() at once
    try:
        relay = Relay(cfg)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cfg.control_path)
        listener.bind(cfg.control_path)
        listener.listen(8)
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        print(f"ready {os.getpid()}", flush=True)
        while not stopping and reflect.poll() is None:
            watched: list[Any] = [*relay.sockets(), listener, wake_r]
            ready, _, _ = select.select(watched, [], [], relay.wait_s())
            for sock in ready:
                if isinstance(sock, socket.socket) and sock is not listener:
                    relay.on_readable(sock)
            relay.send_due()
            if listener in ready and not serve_control(listener, partial(_answer, relay)):
                stopping = True
    finally:
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w):
            os.close(fd)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cfg.control_path)
        stop_reflect(reflect)
        if relay is not None:
            relay.close()
    assert relay is not None  # else its error went up from the try
    final = {**relay.holds.summary(), "reflect_exit": reflect.returncode}
    write_json(cfg.stats_path, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.lab.relay")
    parser.add_argument("--config", required=True, help="RelayConfig as JSON")
    args = parser.parse_args(argv)
    try:
        cfg = RelayConfig.from_json(args.config)
    except (ValueError, TypeError) as exc:
        print(f"relay: bad --config ({exc}); pass the JSON the lab writes", file=sys.stderr)
        return 2
    if cfg.die_with_parent and not die_with_parent():
        return 0  # the lab's owner is gone already
    try:
        final = run(cfg)
    except (OSError, RuntimeError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(BrokenPipeError, ValueError):
        print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
