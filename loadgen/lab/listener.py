"""The lab's TCP listener: a process inside a lab host's namespace that accepts and closes.

`python -m loadgen.lab.listener --ports 80,8080 --backlog N --stats PATH` (started by the lab
via `ip netns exec`). One dual-stack socket per port (IPv4 arrives v4-mapped), a listen backlog
of N, accepted connections closed at once (an orderly close: a RST would look like a closed
port's refusal to the lab's counters). It prints "ready PID" once every socket listens, stops
on SIGTERM and writes how many it accepted to PATH at exit. `--defer-accept S` (the bench)
leaves a handshake without data a request the client's RST removes: nothing to accept.
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
import sys

PR_SET_PDEATHSIG = 1
POLL_S = 0.2  # how soon a SIGTERM is noticed between connections
ACCEPT_BURST = 256  # connections taken off one queue before the others get a turn


def listen(port: int, backlog: int, defer_s: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if defer_s:  # a handshake without data stays a request: no accept needed for a RST-closer
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_s)
    sock.bind(("::", port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    """Accept and close what is queued (up to a burst); returns how many."""
    taken = 0
    while taken < ACCEPT_BURST:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionAbortedError:  # reset by the peer while it was queued
            continue
        conn.close()
        taken += 1
    return taken


def serve(ports: list[int], backlog: int, stats_path: str, defer_s: int = 0) -> int:
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    socks = [listen(p, backlog, defer_s) for p in ports]
    accepted = 0
    with select.epoll() as ep, contextlib.ExitStack() as stack:
        for s in socks:
            stack.enter_context(s)
            ep.register(s.fileno(), select.EPOLLIN)
        by_fd = {s.fileno(): s for s in socks}
        print(f"ready {os.getpid()}", flush=True)
        while not stop:
            try:
                events = ep.poll(POLL_S)
            except InterruptedError:
                continue
            for fd, _ in events:
                accepted += drain(by_fd[fd])
    with open(stats_path, "w", encoding="ascii") as f:
        json.dump({"accepted": accepted}, f)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loadgen.lab.listener")
    ap.add_argument("--ports", required=True)
    ap.add_argument("--backlog", type=int, default=4096)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--die-with-parent", action="store_true")
    ap.add_argument("--defer-accept", type=int, default=0, metavar="S", help="TCP_DEFER_ACCEPT")
    args = ap.parse_args(argv)
    if args.die_with_parent:  # the lab's owner gone: so is its listener
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    ports = [int(p) for p in args.ports.split(",")]
    return serve(ports, args.backlog, args.stats, args.defer_accept)


if __name__ == "__main__":
    sys.exit(main())
