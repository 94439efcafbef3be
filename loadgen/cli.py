"""The command line: the only place that prints errors and results and picks exit codes.

    loadgen run PROFILE.toml [--duration D] [--rate R] [--count N] [--jsonl FILE] ...
    loadgen ping TARGETS [-r RATE] [-s SIZE] [-t TTL] [-z TOS] [-c COUNT] [-d DELAY] [-w TIMEOUT]
                         [-I IFACE] [-S ADDR] ...
    loadgen search PROFILE.toml | TARGETS --max-rate RATE [--goal ndr] [--trial 10s] ...
    loadgen check PROFILE.toml
    loadgen report RUN.jsonl [-o report.html] [--png DIR] [--compare A.jsonl B.jsonl ...]
    loadgen lab up LAB.toml | status | down [PREFIX] [--all]
    loadgen reflect [--port P] [--bind ADDR] [--workers N] [--stateful] [--allow CIDR,...] ...
    loadgen --version

Exit codes (the README's table has them all): 0 ok; 1 nothing came back, the run failed (a
worker died, no permission) or an export could not be written; 2 bad profile, flags or
targets; 3 the run went fine but failed its SLA ([sla], --sla-*); 130 interrupted before the
run. 1 wins over 3: a run that failed is not judged good or bad by its SLA.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.text import Text

from loadgen import __version__
from loadgen.coordinator import Display
from loadgen.errors import LoadgenError, UsageError
from loadgen.output.display import make_display
from loadgen.output.summary import sla_lines, sla_rules, summary_view
from loadgen.plan import RunPlan, describe, path_label
from loadgen.profile import COMMAND_LINE, Profile, load_profile, parse_profile
from loadgen.reflect_cli import add_reflect_parser, cmd_reflect
from loadgen.runner import RunResult, across_hosts, execute, plan_run
from loadgen.search.settings import SEARCH_KEYS
from loadgen.targets import labels

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SLA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _ShowVersion(Exception):
    """--version was given: print it and stop, whatever else the command line says."""


class _VersionAction(argparse.Action):
    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _ShowVersion


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad flags get our one-line error."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message}; see '{self.prog} --help'")


_SLA_FLAGS = (
    ("max_loss", "PCT", 'most loss allowed: "0.1%%", "0%%"'),
    ("max_p99", "DUR", "highest p99 RTT allowed: 2ms"),
    ("max_rtt", "DUR", "highest RTT allowed"),
    ("max_jitter", "DUR", "highest jitter allowed"),
    ("min_rate", "RATE", "fewest probes really sent per second (whole seconds)"),
    ("window", "WIN", '"run" (default) or "second": judge over the run or every second'),
    ("scope", "SCOPE", '"total" (default) or "target": all targets together or each alone'),
)


def _common_run_flags(
    p: argparse.ArgumentParser, *, short: bool, without: tuple[str, ...] = ()
) -> None:
    def flag(long: str, letter: str, **kw: Any) -> None:
        names = [f"-{letter}", long] if short and letter else [long]
        if long not in without:
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
    flag("--report", "", metavar="FILE", help="write an HTML report with plots at the end")
    flag("--csv", "", metavar="FILE", help="write the per-second rows as CSV to FILE")
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
    flag("--icmp-socket", "", metavar="KIND", help="auto (default), raw or datagram")
    flag("--interface", "I", metavar="IFACE", help="send and receive on this interface only")
    flag("--source", "S", metavar="ADDR", help="send probes from this address of this host")
    family = p.add_mutually_exclusive_group()
    for version in (4, 6):
        names = [f"-{version}", f"--ipv{version}"] if short else [f"--ipv{version}"]
        family.add_argument(
            *names,
            action="store_const",
            const=f"ipv{version}",
            dest="family",
            help=f"IPv{version} only: host names give IPv{version} addresses (profile key family)",
        )
    kind = p.add_mutually_exclusive_group()
    for name, what in (("tcp", "half-open TCP SYN probes (root)"), ("tcp-connect", "TCP connects")):
        kind.add_argument(
            f"--{name}",
            metavar="PORTS",
            dest=name.replace("-", "_"),
            help=f"{what} to PORTS: 443, 80,443 or 8000-8010 (profile keys probe, port)",
        )
    kind.add_argument(
        "--stamp",
        nargs="?",
        const="862",
        metavar="PORT",
        help="STAMP test packets (RFC 8762) to a reflector (`loadgen reflect`) on PORT, 862 "
        'if none (profile probe = "stamp")',
    )
    kind.add_argument(
        "--udp",
        metavar="PORTS",
        help='UDP probes with loadgen\'s payload to an echo service on PORTS (probe = "udp")',
    )
    p.add_argument(
        "--suppress-rst",
        action="store_true",
        default=None,
        dest="suppress_rst",
        help="with --tcp: drop this host's RSTs to the SYN-ACKs (temporary nftables table)",
    )
    p.add_argument(
        "--no-stamp-cos",
        action="store_false",
        default=None,
        dest="stamp_cos",
        help="with --stamp: bare RFC 8762 packets, no Class of Service TLV (profile stamp_cos)",
    )
    p.add_argument("--plain", action="store_true", help="one plain line per second, no table")
    flag("--metrics", "", metavar="ADDR", help='serve Prometheus /metrics (":9464": loopback)')
    flag("--metrics-textfile", "", metavar="PATH", help="write the metrics to PATH every second")
    flag("--metrics-labels", "", metavar="MODE", help="total, target, top:N or auto (default)")
    if "--sla" in without:
        return
    sla = p.add_argument_group("SLA verdict (exit 3 if a clause fails; adds to the [sla] table)")
    for name, metavar, text in _SLA_FLAGS:
        sla.add_argument(
            f"--sla-{name.replace('_', '-')}", dest=f"sla_{name}", metavar=metavar, help=text
        )


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
    "report",
    "csv",
    "timestamps",
    "tx_timestamps",
    "tx_path",
    "icmp_socket",
    "interface",
    "source",
    "family",
    "top",
    "metrics",
    "metrics_textfile",
    "metrics_labels",
    "suppress_rst",
    "stamp_cos",
)


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="loadgen", description="High-rate multi-target network prober.")
    top.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a profile", description="Run a TOML profile.")
    run.add_argument("profile", help="the profile (see profiles/example.toml)")
    run.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run the workers on Ray nodes as the profile's [[placement]] tables say: "
        "HEAD:6379, ray://HEAD:10001 or auto (needs pip install 'loadgen[cluster]')",
    )
    _common_run_flags(run, short=False)

    ping = sub.add_parser(
        "ping",
        help="probe targets now (mping-style flags)",
        description="Probe TARGETS: IPs, CIDRs and host names, as comma lists or one per argument.",
    )
    ping.add_argument(
        "targets", nargs="+", help="e.g. 127.0.0.1,::1 127.0.0.8/30 localhost (fping style too)"
    )
    _common_run_flags(ping, short=True)

    search = sub.add_parser(
        "search",
        help="find the highest load the targets carry within a loss goal (RFC 9971)",
        description="Search PROFILE.toml's targets, or TARGETS (a comma list), for the "
        "highest load (total pps over all targets) within each goal.",
    )
    search.add_argument("what", metavar="PROFILE.toml|TARGETS")
    # A search sets each trial's load and length and writes its own JSON.
    _common_run_flags(search, short=True, without=_SEARCH_SETS)
    _search_flags(search)

    check = sub.add_parser("check", help="validate a profile and print the plan")
    check.add_argument("profile")

    report = sub.add_parser(
        "report",
        help="an HTML report with plots from a JSONL export",
        description="Write one self-contained HTML file (figures inlined) from RUN.jsonl.",
    )
    report.add_argument("jsonl", metavar="RUN.jsonl")
    report.add_argument("-o", "--output", metavar="FILE", help="default: RUN.html beside it")
    report.add_argument("--png", metavar="DIR", help="also write each figure as DIR/ID.png")
    report.add_argument(
        "--compare", nargs="+", metavar="JSONL", default=[], help="overlay these runs"
    )
    report.add_argument(
        "--worst", type=int, default=8, metavar="N", help="smoke graphs of the N worst targets"
    )

    lab = sub.add_parser("lab", help="network-namespace test hosts")
    labsub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    up = labsub.add_parser("up", help="build the lab of a profile's [lab] table")
    up.add_argument("profile")
    labsub.add_parser("status", help="list running labs")
    down = labsub.add_parser("down", help="tear a lab down")
    down.add_argument("prefix", nargs="?", help="the lab's prefix (see 'lab status')")
    down.add_argument("--all", action="store_true", help="remove every loadgen lab left behind")
    add_reflect_parser(sub)
    return top


# A search sets these itself per trial, or they belong to one run, not to a search of many.
_SEARCH_SETS = (
    "--rate",
    "--count",
    "--duration",
    "--jsonl",
    "--top",
    "--metrics",
    "--metrics-textfile",
    "--metrics-labels",
    "--sla",
    "--report",
    "--csv",
)


def _search_flags(p: argparse.ArgumentParser) -> None:
    """A flag per [search] key (`--goal` takes one goal and may repeat), then the presets."""
    for key, (_, _, text) in SEARCH_KEYS.items():
        if key != "preset":
            flag = "--goal" if key == "goals" else "--" + key.replace("_", "-")
            action = "append" if key == "goals" else "store"
            help_text = text.replace("%", "%%")  # argparse formats help with %
            p.add_argument(flag, dest=f"search_{key}", action=action, metavar="X", help=help_text)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument(
        "--rfc2544",
        dest="search_preset",
        action="store_const",
        const="rfc2544",
        help="RFC 2544: 60 s trials, each load decided by one, no loss allowed",
    )
    preset.add_argument(
        "--quick",
        dest="search_preset",
        action="store_const",
        const="quick",
        help="1 s trials, one per load, 2%% width, 2 minutes at most",
    )


# Flags that pick the probe kind and give its ports (profile keys probe and port).
_KIND_FLAGS = (
    ("tcp", "tcp-syn"),
    ("tcp_connect", "tcp-connect"),
    ("stamp", "stamp"),
    ("udp", "udp"),
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}
    sla = {k: getattr(args, f"sla_{k}", None) for k, _, _ in _SLA_FLAGS}
    if any(v is not None for v in sla.values()):
        given["sla"] = {k: v for k, v in sla.items() if v is not None}
    for flag, kind in _KIND_FLAGS:
        if getattr(args, flag, None) is not None:
            given |= {"probe": kind, "port": getattr(args, flag)}
    return given


def _is_profile(what: str) -> bool:
    return what.endswith(".toml") or os.path.isfile(what)


def profile_from_args(args: argparse.Namespace) -> Profile:
    if args.command == "search":
        if not _is_profile(args.what):
            return parse_profile({"targets": args.what, **_overrides(args)}, source=COMMAND_LINE)
        return load_profile(args.what, _overrides(args))
    if args.command == "ping":
        targets = ",".join(args.targets)
        return parse_profile({"targets": targets, **_overrides(args)}, source=COMMAND_LINE)
    return load_profile(args.profile, _overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _command(argv)
    except _ShowVersion:
        with contextlib.suppress(OSError):
            print(f"loadgen {__version__}", flush=True)
        return EXIT_OK
    except _StdoutFailed as exc:
        _drop_stdout()
        _say(f"error: {exc}")
        return EXIT_FAILED
    except LoadgenError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left, nothing more to say.
        _drop_stdout()
        return EXIT_FAILED


def _command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "lab":
        return _lab(args)
    if args.command == "report":
        return _report(args)
    if args.command == "reflect":
        return cmd_reflect(args)
    profile = profile_from_args(args)
    if args.command == "check":
        return _check(profile)
    if args.command == "search":
        return _search(args, profile, plain=args.plain or not sys.stdout.isatty())
    if profile.report is not None:  # before a lab comes up or a probe is sent
        from loadgen.output.exports import require_report  # noqa: PLC0415

        require_report()
    command = ["loadgen", *(sys.argv[1:] if argv is None else argv)]
    plain = args.plain or not sys.stdout.isatty()
    return _run(profile, plain=plain, command=command, cluster=getattr(args, "cluster", None))


def _say(text: str) -> None:
    print(f"loadgen: {text}", file=sys.stderr, flush=True)


class _StdoutFailed(LoadgenError):
    """Standard output cannot be written (disk full, a file made read-only)."""

    @classmethod
    def of(cls, exc: OSError) -> _StdoutFailed:
        name = errno.errorcode.get(exc.errno or 0, "error")
        return cls(
            f"writing to standard output failed: {exc.strerror or exc} ({name}); send it to "
            "a terminal or to a file on a disk with room"
        )


def _drop_stdout() -> None:
    # What is still buffered for stdout would fail again at exit, with a traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _check(profile: Profile) -> int:
    plan, warnings = plan_run(profile)
    for w in warnings:
        _say(f"warning: {w}")
    hosts = across_hosts(profile, plan)
    with _writing_stdout():
        print(describe(plan if hosts is None else hosts.plan))
        if hosts is not None:
            print(hosts.describe())
        if profile.sla is not None:
            print(sla_rules(profile.sla))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from loadgen.output.exports import require_report  # noqa: PLC0415

    require_report()
    from loadgen.output.htmlreport import write_report  # noqa: PLC0415

    if args.worst < 0:
        raise UsageError(f"--worst {args.worst}: give 0 or more targets")
    base = args.jsonl[: -len(".jsonl")] if args.jsonl.endswith(".jsonl") else args.jsonl
    out = args.output or f"{base}.html"
    written = write_report(
        args.jsonl, out, png_dir=args.png, compare=args.compare, worst=args.worst
    )
    with _writing_stdout():
        print(f"wrote {out}: {written.panels} figures, {written.size_bytes / 1e6:.1f} MB")
    return EXIT_OK


def _run(
    profile: Profile, *, plain: bool, command: Sequence[str] = (), cluster: str | None = None
) -> int:
    shown: list[Display] = []

    def display(plan: RunPlan) -> Display:
        shown.append(make_display(plan, plain=plain, quiet=False))
        return shown[-1]

    def export_failed(text: str) -> None:
        if not plain:  # on the live screen now; off it, the line after the summary says it
            shown[-1].note(f"{text}; the run goes on")

    result = execute(
        profile,
        display=display,
        warn=lambda text: _say(f"warning: {text}"),
        export_failed=export_failed,
        command=command,
        cluster=cluster,
    )
    _print_summary(result, profile)
    for failure in result.outcome.failures:
        _say(f"error: {failure}")
    if result.export_error:
        _say(f"error: {result.export_error}")
    if result.outcome.interrupted:
        _say("interrupted: the summary covers what was sent until then")
    return exit_code(result)


def _print_summary(result: RunResult, profile: Profile) -> None:
    names = labels(result.plan.targets)
    export = None if result.export_error else profile.jsonl
    view = summary_view(result.outcome.summary, names, top=profile.top, export=export)
    limited = result.outcome.limited_seconds
    with _writing_stdout():
        console = Console(highlight=False)
        console.print(view)
        console.print(f"probes: {path_label(result.plan)}")
        if limited:
            shown = ", ".join(map(str, limited[:10])) + (" ..." if len(limited) > 10 else "")
            console.print(  # as Text, so it wraps between words at the console's width
                Text(
                    f"WARNING: loadgen itself could not keep up in {len(limited)} second(s) "
                    f"({shown}): loss in those seconds may be ours, not the network's; see "
                    "generator_limits in the JSONL export, lower the rate or add workers"
                )
            )
        if result.sla is not None:  # last: what CI reads first
            for line in sla_lines(result.sla, names):
                console.print(Text(line))


@contextlib.contextmanager
def _writing_stdout() -> Iterator[None]:
    """Print and flush within: a failure becomes one line (a reader that left is not a
    failure: main ends quietly)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _StdoutFailed.of(exc) from None


def exit_code(result: RunResult) -> int:
    """1 if a worker failed, the export could not be written or nothing came back; else 3 if
    the SLA failed; else 0."""
    if result.outcome.failures or result.export_error or result.replies == 0:
        return EXIT_FAILED
    if result.sla is not None and not result.sla.passed:
        return EXIT_SLA
    return EXIT_OK


def _search(args: argparse.Namespace, profile: Profile, *, plain: bool) -> int:
    """`loadgen search`: the [search] table and flags, the driver, the results and files."""
    from loadgen.output.searchview import SearchScreen, results_table  # noqa: PLC0415
    from loadgen.search import report  # noqa: PLC0415
    from loadgen.search.driver import Driver  # noqa: PLC0415
    from loadgen.search.settings import parse_search_table, search_settings  # noqa: PLC0415

    flags = {k: getattr(args, f"search_{k}") for k in SEARCH_KEYS}
    given = {**(profile.search or {}), **parse_search_table(flags, "search")}
    settings = search_settings(given, profile.size)
    output = settings.output or time.strftime("search-%Y%m%d-%H%M%S.json")
    screen = SearchScreen(plain=plain)
    driver = Driver(profile, settings, screen)
    try:
        driver.run()
    finally:
        screen.close()
    rows = report.result_rows(driver.runs, driver.records, driver.family)
    doc = report.document(
        settings, profile.targets, rows, driver.records, interrupted=driver.interrupted
    )
    with _writing_stdout():
        Console(highlight=False).print(results_table(rows))
    try:
        report.write_json(output, doc)
        why_not = report.write_plot(output.removesuffix(".json") + ".png", rows, driver.records)
    except OSError as exc:
        _say(f"error: cannot write {output}: {exc.strerror or exc}; give --output a writable path")
        return EXIT_FAILED
    _say(f"wrote {output}" + (f"; {why_not}" if why_not else " and its .png plot"))
    if driver.interrupted:
        _say("interrupted: the results cover the trials run until then")
    if driver.failure:
        _say(f"error: {driver.failure}; the results cover the trials before it")
        return EXIT_FAILED
    return EXIT_OK


def _lab(args: argparse.Namespace) -> int:
    # The lab package is loaded only for lab commands: a plain run never imports it.
    from loadgen.lab import commands  # noqa: PLC0415

    if args.lab_command == "up":
        return commands.cmd_up(args.profile)
    if args.lab_command == "status":
        return commands.cmd_status()
    return commands.cmd_down(args.prefix, all_labs=args.all)
