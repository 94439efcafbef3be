"""`python -m loadgen.bench`: the ladder of loadgen rates and worker counts, IPv4 and IPv6,
plus the peers (`ping -f`, `ping -6 -f`, `fping`) in one run, in the bench's own namespaces;
then the far end (farend.py: `loadgen reflect`, the UDP and STAMP senders, irtt);
table on stdout, JSON on disk.
`--soak 10m` runs one long loadgen step instead, for memory over time.

Exit codes: 0 every step sound (however slow), 1 a step broken (crashed, hung, or probes
unaccounted), 2 bad flags or a missing tool, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from loadgen.bench import connect
from loadgen.bench.farend import FarConfig, FarStep, build_c, run_far_end
from loadgen.bench.measure import run_measured
from loadgen.bench.memory import EARLY_S
from loadgen.bench.output import machine_info, render_table, results_document, write_results
from loadgen.bench.steps import (
    FLOOR,
    FPING,
    HPING,
    LOADGEN,
    PING,
    Step,
    StepResult,
    evaluate,
    fping_count,
)
from loadgen.bench.topology import MAX_TARGETS, BenchNet, bench_net
from loadgen.errors import LoadgenError, PermissionProblem, UsageError
from loadgen.units import NS_PER_S, parse_duration_ns, parse_rate

DEFAULT_RATES = "50k,100k,200k,250k,300k"
DEFAULT_WORKERS = "1,2"
DEFAULT_TX_RATES = "100k,150k"  # loadgen with --tx-timestamps, on the most workers asked for
DEFAULT_PACKET_RATES = "200k,250k,300k"  # loadgen with --tx-path packet, ditto
DEFAULT_V6_RATES = "100k,250k"  # loadgen to the IPv6 addresses, on the most workers, ditto
DEFAULT_SYN_RATES = "100k"  # loadgen --tcp (SYN probes to a closed port), on the most workers
DEFAULT_CONNECT_RATES = "20k,60k"  # loadgen --tcp-connect on the most workers: 60k is its top
DEFAULT_STAMP_RATES = "10k,20k,40k,70k,100k,150k"  # the C echo's and loadgen reflect's ladder
FAR_SENDER_PPS = 20_000  # loadgen's ICMP, UDP and STAMP senders side by side (at most)
DEFAULT_OVERLOAD = "2M"  # far beyond any machine here, on the most workers: memory must hold
FLOOR_SOURCE = Path(__file__).with_name("floor.c")
SOAK_RATE, SOAK_WORKERS = "100k", "2"
PING_PPS_GUESS = 80_000  # ping -f's pace on the reference machine: sizes its count to the step
START_LIMIT_S = 30.0  # python, numpy and worker start-up on a busy 2-core machine


@dataclass(frozen=True, slots=True)
class Config:
    rates_pps: tuple[float, ...]
    workers: tuple[int, ...]
    duration_s: float
    targets: int
    ping_count: int
    fping_count: int  # per target
    peers: bool
    output: Path
    soak: bool = False  # one loadgen step of duration_s (rates_pps and workers hold one each)
    tx_rates_pps: tuple[float, ...] = ()
    packet_rates_pps: tuple[float, ...] = ()
    floor: bool = False
    overload_pps: tuple[float, ...] = ()
    v6_rates_pps: tuple[float, ...] = ()
    syn_rates_pps: tuple[float, ...] = ()
    connect_rates_pps: tuple[float, ...] = ()
    stamp_rates_pps: tuple[float, ...] = ()  # the far-end steps (farend.py); () skips them
    stamp_only: bool = False  # nothing but the far-end steps


def _with_v6(steps: list[Step], v6: list[Step]) -> list[Step]:
    """Each IPv6 step right after the IPv4 step of its rate and workers, so that the two run
    under the same load from the rest of the machine; the others after the last."""
    out, left = [], list(v6)
    for step in steps:
        out.append(step)
        twins = [s for s in left if (s.rate_pps, s.workers) == (step.rate_pps, step.workers)]
        out += twins
        left = [s for s in left if s not in twins]
    return out + left


def ladder(cfg: Config, floor_program: str | None = None) -> list[Step]:
    steps = []
    if cfg.peers:
        steps.append(Step(PING, 1, count=cfg.ping_count))
        if cfg.v6_rates_pps:
            steps.append(Step(PING, 1, count=cfg.ping_count, family=6))
        steps.append(Step(FPING, cfg.targets, count=fping_count(cfg.fping_count, cfg.targets)))
    most, n, secs = max(cfg.workers), cfg.targets, cfg.duration_s
    if floor_program:
        floors = [(w, False) for w in cfg.workers] + [(most, True)] * bool(cfg.tx_rates_pps)
        steps += [
            Step(FLOOR, n, workers=w, duration_s=secs, tx_timestamps=ts, program=floor_program)
            for w, ts in floors
        ]
    v6 = [
        Step(LOADGEN, n, rate_pps=r, workers=most, duration_s=secs, family=6)
        for r in cfg.v6_rates_pps
    ]
    steps += _with_v6(
        [
            Step(LOADGEN, n, rate_pps=r, workers=w, duration_s=secs)
            for w in cfg.workers
            for r in cfg.rates_pps
        ],
        v6,
    )
    # The same on the most workers, with kernel TX stamps and with probes written to the link.
    steps += [
        Step(LOADGEN, n, rate_pps=r, workers=most, duration_s=secs, tx_timestamps=True)
        for r in cfg.tx_rates_pps
    ]
    steps += [
        Step(LOADGEN, n, rate_pps=r, workers=most, duration_s=secs, link_tx=True)
        for r in cfg.packet_rates_pps
    ]
    # SYN probes, next to hping3 -S --flood when Debian's hping3 is installed (make sysdeps).
    if cfg.syn_rates_pps and cfg.peers and shutil.which("hping3"):
        steps.append(Step(HPING, 1, duration_s=min(secs, 5.0), probe="tcp-syn"))
    steps += [
        Step(LOADGEN, n, rate_pps=r, workers=most, duration_s=secs, probe="tcp-syn")
        for r in cfg.syn_rates_pps
    ]
    seconds = min(secs, connect.MAX_SECONDS)
    steps += [
        Step(
            LOADGEN,
            connect.TARGETS,
            rate_pps=r,
            workers=most,
            duration_s=seconds,
            connect_port=connect.PORT,
        )
        for r in cfg.connect_rates_pps
    ]
    steps += [
        Step(LOADGEN, n, rate_pps=r, workers=most, duration_s=secs, overload=True)
        for r in cfg.overload_pps
    ]
    return steps


def build_floor(workdir: Path) -> tuple[str | None, str]:
    """Compile floor.c with the system C compiler: (binary, "") or (None, why not)."""
    binary = workdir / "floor"
    why = build_c(FLOOR_SOURCE, binary, "the kernel floor")
    return (None, f"{why}: its steps are left out") if why else (str(binary), "")


class _Parser(argparse.ArgumentParser):
    """Bad flags become a UsageError (one line, exit 2) instead of argparse's own exit."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m loadgen.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 s steps: a smoke run")
    p.add_argument("--rates", help=f"loadgen rates (default {DEFAULT_RATES}; soak {SOAK_RATE})")
    p.add_argument(
        "--workers", help=f"worker counts (default {DEFAULT_WORKERS}; soak {SOAK_WORKERS})"
    )
    p.add_argument("--duration", help="sending time per loadgen step (default 10s, quick 2s)")
    p.add_argument(
        "--soak",
        metavar="DURATION",
        help=f"instead of the ladder, one loadgen step this long (e.g. 10m; over {EARLY_S:g}s): "
        f"RSS {EARLY_S:g} s into sending against its end",
    )
    p.add_argument("--targets", type=int, default=MAX_TARGETS, help="addresses (1..64)")
    p.add_argument("--ping-count", type=int, help="ping -f probes (default: duration's worth)")
    p.add_argument("--fping-count", type=int, default=1000, help="fping probes per target")
    p.add_argument("--no-peers", action="store_true", help="skip ping -f and fping")
    p.add_argument(
        "--tx-rates",
        help=f"loadgen rates with --tx-timestamps, on the most workers given (default "
        f"{DEFAULT_TX_RATES}; 'none' skips them)",
    )
    p.add_argument(
        "--packet-rates",
        help=f"loadgen rates with --tx-path packet, on the most workers given (default "
        f"{DEFAULT_PACKET_RATES}; 'none' skips them)",
    )
    p.add_argument(
        "--v6-rates",
        help=f"loadgen rates to the IPv6 addresses, on the most workers given, each right after "
        f"the IPv4 step of its rate (default {DEFAULT_V6_RATES}; 'none' skips them and ping -6)",
    )
    p.add_argument(
        "--syn-rates",
        help=f"loadgen --tcp rates (SYN probes to a closed port), on the most workers given, "
        f"after hping3 -S --flood if installed (default {DEFAULT_SYN_RATES}; 'none' skips them)",
    )
    p.add_argument(
        "--connect-rates",
        help=f"loadgen --tcp-connect rates to {connect.TARGETS} addresses, on the most workers "
        f"given, {connect.MAX_SECONDS:g} s at most (default {DEFAULT_CONNECT_RATES}; 'none' skips)",
    )
    p.add_argument(
        "--overload",
        help=f"loadgen rate far beyond the machine, on the most workers given, to show that "
        f"memory holds and the run says it is generator-limited (default {DEFAULT_OVERLOAD}; "
        f"'none' skips it)",
    )
    p.add_argument(
        "--stamp-rates",
        help=f"the ladder of the C echo and `loadgen reflect` against a C blaster, then the "
        f"UDP/STAMP senders and irtt (default {DEFAULT_STAMP_RATES}; 'none' skips them)",
    )
    p.add_argument("--stamp-only", action="store_true", help="run only the far-end steps")
    p.add_argument(
        "--no-floor", action="store_true", help="skip the kernel floor (floor.c, built with cc)"
    )
    p.add_argument("--output", default="bench-results.json", help="results file")
    return p


def _soak_s(a: argparse.Namespace) -> float | None:
    if a.soak is None:
        return None
    if a.duration or a.quick:
        raise UsageError("--soak DURATION is the step's length: drop --duration and --quick")
    soak_s = parse_duration_ns(a.soak, key="--soak") / NS_PER_S
    if soak_s <= EARLY_S:
        raise UsageError(
            f"--soak {a.soak}: give more than {EARLY_S:g}s (RSS is compared with "
            f"its reading {EARLY_S:g} s in), e.g. 10m"
        )
    return soak_s


def _extra_rates(text: str | None, default: str, key: str, wanted: bool) -> tuple[float, ...]:
    """The rates of an extra ladder (--tx-rates, --packet-rates, --v6-rates, --overload);
    'none' or a soak: none."""
    text = (text or default).strip() if wanted else "none"
    if text == "none":
        return ()
    return tuple(parse_rate(r.strip(), key=key) for r in text.split(",") if r.strip())


def parse_config(argv: Sequence[str] | None) -> Config:
    a = _parser().parse_args(argv)
    soak_s = _soak_s(a)
    if soak_s is None:
        duration = a.duration or ("2s" if a.quick else "10s")
        duration_s = parse_duration_ns(duration, key="--duration") / NS_PER_S
    else:
        duration_s = soak_s
    rates_text = a.rates or (DEFAULT_RATES if soak_s is None else SOAK_RATE)
    workers_text = a.workers or (DEFAULT_WORKERS if soak_s is None else SOAK_WORKERS)
    rates = tuple(parse_rate(r.strip(), key="--rates") for r in rates_text.split(",") if r.strip())
    tx_rates = _extra_rates(a.tx_rates, DEFAULT_TX_RATES, "--tx-rates", soak_s is None)
    packet_rates = _extra_rates(
        a.packet_rates, DEFAULT_PACKET_RATES, "--packet-rates", soak_s is None
    )
    overload = _extra_rates(a.overload, DEFAULT_OVERLOAD, "--overload", soak_s is None)
    v6_rates = _extra_rates(a.v6_rates, DEFAULT_V6_RATES, "--v6-rates", soak_s is None)
    syn_rates = _extra_rates(a.syn_rates, DEFAULT_SYN_RATES, "--syn-rates", soak_s is None)
    connect_rates = _extra_rates(
        a.connect_rates, DEFAULT_CONNECT_RATES, "--connect-rates", soak_s is None
    )
    stamp_rates = _extra_rates(a.stamp_rates, DEFAULT_STAMP_RATES, "--stamp-rates", soak_s is None)
    if a.stamp_only and not stamp_rates:
        raise UsageError("--stamp-only runs the far-end steps: drop --soak and --stamp-rates none")
    try:
        workers = tuple(int(w) for w in workers_text.split(",") if w.strip())
    except ValueError:
        raise UsageError(f"--workers {workers_text!r}: give counts like 1,2") from None
    if not rates or not workers or min(workers) < 1:
        raise UsageError("--rates and --workers need at least one positive value each")
    if soak_s is not None and (len(rates) > 1 or len(workers) > 1):
        raise UsageError("--soak runs one step: give one --rates value and one --workers count")
    if not 1 <= a.targets <= MAX_TARGETS:
        raise UsageError(f"--targets {a.targets}: the responder has 1..{MAX_TARGETS} addresses")
    for name in ("ping_count", "fping_count"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    return Config(
        rates_pps=rates,
        workers=workers,
        duration_s=duration_s,
        targets=a.targets,
        ping_count=a.ping_count or round(duration_s * PING_PPS_GUESS),
        fping_count=a.fping_count,
        peers=not a.no_peers and soak_s is None,
        output=Path(a.output),
        soak=soak_s is not None,
        tx_rates_pps=tx_rates,
        packet_rates_pps=packet_rates,
        floor=not a.no_floor and soak_s is None,
        overload_pps=overload,
        v6_rates_pps=v6_rates,
        syn_rates_pps=syn_rates,
        connect_rates_pps=connect_rates,
        stamp_rates_pps=stamp_rates,
        stamp_only=a.stamp_only,
    )


def _check_tools(cfg: Config) -> None:
    if os.geteuid() != 0:
        raise PermissionProblem("the bench builds network namespaces and raw sockets: run as root")
    for tool in ("ip", *(("ping", "fping") if cfg.peers and not cfg.stamp_only else ())):
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} not found: run `make sysdeps` (or pass --no-peers)")


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_step(net: BenchNet, step: Step) -> StepResult:
    load1, cpu0 = os.getloadavg()[0], _own_cpu_s()
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-") as tmp:
        jsonl = Path(tmp) / "run.jsonl"
        argv = step.argv(net.family_targets(step.family)[: step.targets], jsonl)
        listening = connect.responder_listener(net, Path(tmp)) if step.connect_port else None
        with listening or contextlib.nullcontext({}) as responder_tcp:
            m = run_measured(
                net,
                argv,
                start_s=START_LIMIT_S,
                run_s=step.run_limit_s(),
                workdir=Path(tmp),
                family=step.family,
                probe=step.probe,
            )
        result = evaluate(step, m, jsonl)
        if step.connect_port:
            result = connect.connect_figures(result, jsonl, responder_tcp)
    return dataclasses.replace(
        result,
        notes=(*result.notes, f"load average before: {load1:.2f}"),
        observer_cpu_s=round(_own_cpu_s() - cpu0, 3),
    )


def run_ladder(
    cfg: Config, progress: Callable[[str], None], results: list[StepResult]
) -> list[StepResult]:
    """Run every step, appending to `results` as they finish (so CTRL-C keeps what is done)."""
    if cfg.stamp_only:
        return results
    with tempfile.TemporaryDirectory(prefix="loadgen-floor-") as tmp:
        program, why = build_floor(Path(tmp)) if cfg.floor else (None, "")
        if why:
            progress(f"note: {why}")
        return _run_steps(cfg, ladder(cfg, program), progress, results)


def _run_steps(
    cfg: Config, steps: list[Step], progress: Callable[[str], None], results: list[StepResult]
) -> list[StepResult]:
    with bench_net(cfg.targets) as net:
        for i, step in enumerate(steps, 1):
            progress(f"[{i}/{len(steps)}] {step.label} ...")
            results.append(run_step(net, step))
            progress(render_table(results[-1:]).splitlines()[1])
            time.sleep(0.5)  # let the previous tool's exit settle before the next one starts
    return results


def run_far_steps(
    cfg: Config, progress: Callable[[str], None], steps: list[FarStep]
) -> list[FarStep]:
    """The far-end steps (farend.py), seconds each: rungs of cfg.duration_s / 5, at least 1 s."""
    if not cfg.stamp_rates_pps:
        return steps
    seconds = max(1.0, min(cfg.duration_s / 5, 3.0))
    far = FarConfig(cfg.stamp_rates_pps, seconds, FAR_SENDER_PPS, max(3.0, seconds))
    return run_far_end(far, progress, steps)


def _sigterm_handler(owner_pid: int) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner_pid:  # a forked helper (pyroute2 forks one per netns socket)
            os._exit(128 + signum)  # must not unwind into the bench's teardown
        raise KeyboardInterrupt

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    results: list[StepResult] = []
    far: list[FarStep] = []
    code = 0
    try:
        cfg = parse_config(argv)
        _check_tools(cfg)
        machine = machine_info()
        # Tear the namespaces down on `kill` too.
        signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
        run_ladder(cfg, lambda s: print(s, flush=True), results)
        run_far_steps(cfg, lambda s: print(s, flush=True), far)
    except LoadgenError as exc:
        print(f"loadgen bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("loadgen bench: interrupted; the namespaces are removed", file=sys.stderr)
        code = 130
    config: dict[str, Any] = {**dataclasses.asdict(cfg), "output": str(cfg.output)}
    document = results_document(
        results, machine=machine, config=config, started=started, wall_s=time.monotonic() - t0
    )
    document["interrupted"] = code == 130
    document["far_end"] = [dataclasses.asdict(s) for s in far]
    document["ok"] = document["ok"] and not any(s.problems for s in far)
    write_results(cfg.output, document)
    if results:
        print()
        print(render_table(results))
    if far:
        print("\nfar end (loopback, lgsb namespace; C blaster of 44-byte STAMP packets):")
        print("\n".join(s.line for s in far))
    print(f"\nresults: {cfg.output}")
    if code:
        return code
    return 1 if not document["ok"] else 0
