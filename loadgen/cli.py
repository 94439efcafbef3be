"""The command line: the only place that prints errors and picks exit codes.

    loadgen run PROFILE.toml [--duration D] [--rate R] [--count N] [--jsonl FILE] ...
    loadgen ping TARGETS [-r RATE] [-s SIZE] [-t TTL] [-z TOS] [-c COUNT] [-d DELAY] [-w TIMEOUT]
    loadgen check PROFILE.toml
    loadgen lab up LAB.toml | status | down [PREFIX] [--all]

Exit codes: 0 ok, 1 nothing received or the run failed, 2 bad profile, flags or targets.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from loadgen.coordinator import default_cpus
from loadgen.errors import LoadgenError, UsageError
from loadgen.plan import describe, make_plan
from loadgen.profile import COMMAND_LINE, Profile, load_profile, parse_profile
from loadgen.runner import run_profile
from loadgen.targets import resolve_targets

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad flags get our one-line error."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _common_run_flags(p: argparse.ArgumentParser, *, short: bool) -> None:
    def flag(long: str, letter: str, **kw: Any) -> None:
        names = [f"-{letter}", long] if short and letter else [long]
        p.add_argument(*names, **kw)

    flag("--rate", "r", metavar="RATE", help="total probes per second: 20000, 100k, 2.5M")
    flag("--size", "s", metavar="BYTES", help="ICMP payload bytes (>= 28)")
    flag("--ttl", "t", metavar="TTL", help="IP time to live")
    flag("--tos", "z", metavar="TOS", help="IP type-of-service byte")
    flag("--count", "c", metavar="N", help="probes per target, then stop")
    flag("--delay", "d", metavar="DUR", help="linger before a probe is lost and a second closes")
    flag("--timeout", "w", metavar="DUR", help="replies later than this count as late")
    flag("--duration", "", metavar="DUR", help="how long to send: 30s, 2m")
    flag("--workers", "", metavar="N", help="worker processes (default: one per CPU)")
    flag("--jsonl", "", metavar="FILE", help="write per-second JSON lines to FILE")
    flag("--timestamps", "", metavar="MODE", help="auto, software, hardware or user")
    flag("--top", "", metavar="N", help="rows in the live table")
    p.add_argument(
        "--tx-timestamps",
        action="store_true",
        default=None,
        dest="tx_timestamps",
        help="send times from kernel TX timestamps (error queue) instead of user space",
    )
    flag("--tx-path", "", metavar="PATH", help='"ip" (default) or "packet": see tx_path')
    p.add_argument("--plain", action="store_true", help="one plain line per second, no table")


_FLAG_KEYS = (
    "rate",
    "size",
    "ttl",
    "tos",
    "count",
    "delay",
    "timeout",
    "duration",
    "workers",
    "jsonl",
    "timestamps",
    "tx_timestamps",
    "tx_path",
    "top",
)


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="loadgen", description="High-rate multi-target network prober.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a profile", description="Run a TOML profile.")
    run.add_argument("profile", help="the profile (see profiles/example.toml)")
    _common_run_flags(run, short=False)

    ping = sub.add_parser(
        "ping",
        help="probe targets now (mping-style flags)",
        description="Probe TARGETS: a comma list of IPs, CIDRs and host names.",
    )
    ping.add_argument("targets", help="e.g. 127.0.0.1,127.0.0.8/30,localhost")
    _common_run_flags(ping, short=True)

    check = sub.add_parser("check", help="validate a profile and print the plan")
    check.add_argument("profile")

    lab = sub.add_parser("lab", help="network-namespace test hosts")
    labsub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    up = labsub.add_parser("up", help="build the lab of a profile's [lab] table")
    up.add_argument("profile")
    labsub.add_parser("status", help="list running labs")
    down = labsub.add_parser("down", help="tear a lab down")
    down.add_argument("prefix", nargs="?", help="the lab's prefix (see 'lab status')")
    down.add_argument("--all", action="store_true", help="remove every loadgen lab left behind")
    return top


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}


def profile_from_args(args: argparse.Namespace) -> Profile:
    if args.command == "ping":
        return parse_profile({"targets": args.targets, **_overrides(args)}, source=COMMAND_LINE)
    return load_profile(args.profile, _overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "lab":
            return _lab(args)
        profile = profile_from_args(args)
        if args.command == "check":
            return _check(profile)
        return run_profile(profile, plain=args.plain or not sys.stdout.isatty())
    except LoadgenError as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left, nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _check(profile: Profile) -> int:
    resolved = resolve_targets(
        profile.targets, max_targets=profile.max_targets, family=profile.family
    )
    for spec, reason in resolved.unresolved:
        print(f"loadgen: warning: cannot resolve {spec!r} ({reason}); it is left out")
    plan = make_plan(
        profile,
        resolved.targets,
        cpus_available=default_cpus(),
        run_id=secrets.randbits(32),
        ident_base=os.getpid(),
    )
    print(describe(plan))
    return EXIT_OK


def _lab(args: argparse.Namespace) -> int:
    # The lab package is loaded only for lab commands: a plain run never imports it.
    from loadgen.lab import commands  # noqa: PLC0415

    if args.lab_command == "up":
        return commands.cmd_up(args.profile)
    if args.lab_command == "status":
        return commands.cmd_status()
    return commands.cmd_down(args.prefix, all_labs=args.all)
