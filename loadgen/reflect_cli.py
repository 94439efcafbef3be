"""`loadgen reflect [--port P] [--bind ADDR] [--workers N] [--stateful] [--allow CIDR,...]
[--max-rate-per-sender R] [--jsonl FILE] [--duration D] [--ptp] [--plain]`: its flags, the
warnings it prints at start, the live table (rich Live, one owner, auto_refresh off) or a plain
line per second, and the summary. Returns an exit code; errors are raised for `cli` to print.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from typing import Any

from rich.console import Console
from rich.live import Live

from loadgen.cos import dscp_name
from loadgen.errors import UsageError
from loadgen.output.reflect_view import ReflectSecond, plain_line, render, summary
from loadgen.reflect import ReflectOptions, run_reflector
from loadgen.reflect_core import DEFAULT_MAX_RATE_PPS, ReflectorConfig, parse_allow
from loadgen.units import format_rate, parse_duration_ns, parse_rate
from loadgen.wire.stamp import STAMP_PORT, ReflectorClock, TimestampFormat


def add_reflect_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reflect",
        help="answer STAMP test packets (RFC 8762/8972 session-reflector)",
        description="A STAMP session-reflector: one worker per CPU, batched, kernel-stamped.",
    )
    p.add_argument("--port", type=int, default=STAMP_PORT, help="UDP port (default 862)")
    p.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback)"
    )
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    p.add_argument(
        "--stateful",
        action="store_true",
        help="own sequence per session (RFC 8762 4.3): senders tell forward from reverse loss",
    )
    p.add_argument("--allow", help="answer only these senders: CIDR,... (default: anyone)")
    p.add_argument(
        "--max-rate-per-sender",
        default=str(DEFAULT_MAX_RATE_PPS),
        help=f"replies a second to one sender, per worker (default {DEFAULT_MAX_RATE_PPS})",
    )
    p.add_argument("--jsonl", help="append one JSON line per second to FILE")
    p.add_argument("--duration", help="stop after this long (default: at CTRL-C)")
    p.add_argument(
        "--permit-dscp",
        metavar="DSCP,...",
        help="DSCPs a reply may carry when a sender asks (RFC 8972 Class of Service); others "
        "get the DSCP they came with and RP = 1 (default: every one)",
    )
    p.add_argument("--ptp", action="store_true", help="PTP timestamps (default NTP)")
    p.add_argument("--plain", action="store_true", help="one line per second, no live table")


def parse_dscps(text: str | None) -> frozenset[int] | None:
    """--permit-dscp "0,10,46" (numbers or names: be, ef, cs1, af41); None: every DSCP."""
    if text is None:
        return None
    names = {str(d): d for d in range(64)} | {dscp_name(d): d for d in range(64)}
    out = set()
    for word in filter(None, (w.strip().lower() for w in text.split(","))):
        value = names.get(word)
        if value is None:
            raise UsageError(
                f"--permit-dscp {text!r}: {word!r} is no DSCP; give 0-63 or names like ef, cs1"
            )
        out.add(value)
    return frozenset(out)


def options_from_args(args: argparse.Namespace) -> ReflectOptions:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a UDP port: use 1..65535")
    try:
        ipaddress.ip_address(args.bind)
    except ValueError:
        raise UsageError(
            f"--bind {args.bind!r} is not an IP address: give one like 127.0.0.1"
        ) from None
    cpus = len(os.sched_getaffinity(0))
    workers = cpus if args.workers is None else args.workers
    if not 1 <= workers <= 256:
        raise UsageError(f"--workers {workers}: use 1..256")
    try:
        allow = parse_allow(args.allow)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    fmt = TimestampFormat.PTP if args.ptp else TimestampFormat.NTP
    config = ReflectorConfig(
        permitted_dscp=parse_dscps(args.permit_dscp),
        allow=allow,
        max_rate_pps=parse_rate(args.max_rate_per_sender, key="--max-rate-per-sender"),
        stateful=args.stateful,
        port=args.port,
        clock=ReflectorClock(fmt=fmt),
    )
    duration = (
        None if args.duration is None else parse_duration_ns(args.duration, key="--duration") / 1e9
    )
    return ReflectOptions(args.bind, workers, config, args.jsonl, duration)


def cmd_reflect(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    config = options.config
    err = Console(stderr=True, highlight=False)
    mode = "stateful" if config.stateful else "stateless"
    err.print(
        f"loadgen reflect: {mode} STAMP reflector on {options.bind} port {config.port}, "
        f"{options.workers} worker(s), at most {format_rate(config.max_rate_pps)} per sender"
    )
    if not config.allow:
        err.print("loadgen: warning: no --allow: this reflector answers anyone who can reach it")
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    plain = args.plain or not sys.stdout.isatty()
    console = Console(highlight=False)
    header = f"loadgen reflect {options.bind}:{config.port} ({mode})"
    try:
        with (
            Live(console=console, auto_refresh=False, transient=False)
            if not plain
            else _NoLive() as live
        ):

            def show(view: ReflectSecond) -> None:
                if plain:
                    print(plain_line(view), flush=True)
                else:
                    live.update(render(view, header=header), refresh=True)

            final, elapsed = run_reflector(options, show, lambda: stop["now"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    console.print(summary(final, elapsed_s=elapsed))
    return 0


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: object, **kwargs: object) -> None:
        return None
