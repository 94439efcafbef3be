"""One bench step: what to run (loadgen at a rate and worker count, `ping -f`, `fping`, the
kernel floor of floor.c; loadgen and ping to the IPv4 or the IPv6 addresses), the command line
for it, and how its measurement becomes figures and a verdict (sound or broken).

A step is broken when the tool crashed, hung, or its own accounting does not add up; a slow
machine (low achieved rate, loss) is a result, never a failure.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadgen.bench.connect import connect_args
from loadgen.bench.figures import (
    Loss,
    ToolCounts,
    achieved_pps,
    loss_figures,
    pacing_error,
    parse_floor,
    parse_fping,
    parse_hping,
    parse_loadgen_jsonl,
    parse_ping,
    per_million,
    steady_cpu_per_million,
    steady_windows,
)
from loadgen.bench.measure import Measured
from loadgen.bench.memory import MemoryFigures, memory_figures

LOADGEN, PING, FPING, FLOOR = "loadgen", "ping -f", "fping", "floor"
HPING = "hping3 -S --flood"  # the SYN peer: as fast as it can, until the bench's SIGINT
SYN_PORT = 9  # closed on the responder: every SYN is answered by one RST
FLOOR_BATCH = 64  # the floor's packets per sendmmsg: loadgen's batch at 128k pps on 2 workers
# fping 5.x refuses to reuse a sequence number within 10 s (its seqmap has 65535 slots), so a
# count run at full speed is capped at 65535 probes in all: 1000 per target for 64 targets.
FPING_MAX_TOTAL = 65535
SHORT_RUN_S = 0.5
LINGER_S = 2.0  # loadgen's default linger (-d) after the last probe
TICK_PPS = 1000  # a loadgen worker at this rate or more sends one batch per 1 ms tick
RSS_BUDGET_BYTES = 400 << 20  # loadgen's processes together, at any rate asked of 2 workers


@dataclass(frozen=True, slots=True)
class Step:
    tool: str
    targets: int
    rate_pps: float | None = None  # loadgen: requested total rate; peers pace themselves
    workers: int | None = None
    duration_s: float = 0.0  # loadgen: sending time
    count: int = 0  # peers: probes per target
    tx_timestamps: bool = False  # loadgen and the floor: kernel TX stamps of every probe
    link_tx: bool = False  # loadgen: tx_path = "packet" (probes written to the link)
    program: str = ""  # the floor: its compiled binary
    overload: bool = False  # loadgen: asks far more than the machine can do (memory must hold)
    family: int = 4  # loadgen and ping: the IP version of the targets (the bench has both)
    probe: str = "icmp"  # loadgen: "tcp-syn" sends SYNs to SYN_PORT (counted by Tcp InSegs)
    connect_port: int = 0  # loadgen: TCP connect probes to this port (bench/connect.py)

    @property
    def label(self) -> str:
        stamps = (" txts" if self.tx_timestamps else "") + (" pkt" if self.link_tx else "")
        stamps += " overload" if self.overload else ""
        stamps += " v6" if self.family == 6 else ""
        stamps += " syn" if self.probe == "tcp-syn" and self.tool == LOADGEN else ""
        stamps += " connect" if self.connect_port else ""
        if self.tool == LOADGEN and self.rate_pps is not None:
            return f"loadgen {self.rate_pps / 1e3:g}k x{self.workers}{stamps}"
        if self.tool == FLOOR:
            return f"floor (C) x{self.workers}{stamps}"
        if self.tool == PING and self.family == 6:
            return "ping -6 -f"
        return self.tool

    @property
    def v4_twin(self) -> str:
        """An IPv6 step: the label of the same step to the IPv4 addresses; others: ""."""
        return dataclasses.replace(self, family=4).label if self.family == 6 else ""

    def argv(self, targets: Sequence[str], jsonl: Path) -> list[str]:
        if self.tool == LOADGEN:
            return [
                *(sys.executable, "-m", "loadgen", "ping", ",".join(targets)),
                *("-r", f"{self.rate_pps:.0f}", "--duration", f"{self.duration_s:g}s"),
                *("--workers", str(self.workers), "--plain", "--jsonl", str(jsonl)),
                *(("--tx-timestamps",) if self.tx_timestamps else ()),
                *(("--tx-path", "packet") if self.link_tx else ()),
                *(("--tcp", str(SYN_PORT)) if self.probe == "tcp-syn" else ()),
                *(connect_args(self.connect_port) if self.connect_port else ()),
            ]
        if self.tool == HPING:  # timeout's SIGINT makes hping3 print its statistics
            return [
                *("timeout", "-s", "INT", f"{self.duration_s:g}"),
                *("hping3", "-S", "-p", str(SYN_PORT), "--flood", targets[0]),
            ]
        if self.tool == FLOOR:
            return [
                *(self.program, f"{self.duration_s:g}", str(self.workers), str(FLOOR_BATCH)),
                *("1" if self.tx_timestamps else "0", *targets),
            ]
        if self.tool == PING:
            deadline = max(5, round(3 * self.count / 20_000))  # a bound, not the pace
            family = ["-6"] if self.family == 6 else []
            return [
                "ping",
                *family,
                "-f",
                "-q",
                "-c",
                str(self.count),
                "-w",
                str(deadline),
                targets[0],
            ]
        # -i 0: no gap between any two probes; -p: per-target period, well below what it
        # reaches; -t: the default timeout in count mode is the period, which would be 0.1 ms.
        return ["fping", "-q", "-c", str(self.count), "-i", "0", "-p", "0.1", "-t", "500", *targets]

    @property
    def tick_paced(self) -> bool:
        """Every worker sends in 1 ms ticks: its windows are timed by tick-aligned instants."""
        if self.tool != LOADGEN or self.rate_pps is None or not self.workers:
            return False
        return self.rate_pps / self.workers >= TICK_PPS

    def run_limit_s(self) -> float:
        """How long it may run after its first probe before the bench calls it hung."""
        if self.tool == LOADGEN:
            return self.duration_s + LINGER_S + 15.0
        if self.tool in (FLOOR, HPING):
            return self.duration_s + 15.0
        return 30.0 + self.count * self.targets / 10_000


def fping_count(per_target: int, targets: int) -> int:
    return max(1, min(per_target, FPING_MAX_TOTAL // targets))


@dataclass(frozen=True, slots=True)
class StepResult:
    label: str
    tool: str
    targets: int
    workers: int | None
    requested_pps: float | None
    achieved_pps: float | None  # echo requests reaching the responder, steady 100 ms windows
    pacing_p99: float | None  # p99 |window rate - reference| / reference, a fraction
    pacing_max: float | None  # ... and the largest over the windows
    pacing_reference: str  # "requested" rate, or the tool's own "achieved" mean (peers)
    windows: int
    windows_off_grid: int  # tick-paced steps: windows timed by their reads, not their instants
    sent: int
    answered: int
    loss: Loss | None
    cpu_s: float
    cpu_s_per_m: float | None  # whole run: start-up, sending, linger
    cpu_s_per_m_steady: float | None  # only the steady sending windows
    peak_rss_bytes: int
    processes: int
    wall_s: float
    exit_code: int | None
    problems: tuple[str, ...]  # non-empty: the step is broken
    notes: tuple[str, ...] = ()
    observer_cpu_s: float = 0.0  # the bench's own CPU while it watched (sampling cost)
    window_pps: tuple[int, ...] = ()  # every steady 100 ms window's rate, for the curious
    memory: MemoryFigures | None = None  # RSS 30 s into sending against its end (long runs)
    peak_rss_by_role: tuple[tuple[str, int], ...] = ()  # each process's VmHWM, largest first
    kernel_client: dict[str, int] = field(default_factory=dict)
    kernel_responder: dict[str, int] = field(default_factory=dict)
    family: int = 4  # the targets' IP version; the kernel_* counters are that family's
    v4_twin: str = ""  # an IPv6 step: the label of its IPv4 counterpart (Step.v4_twin)

    @property
    def broken(self) -> bool:
        return bool(self.problems)


def _tool_counts(
    step: Step, m: Measured, jsonl: Path, notes: list[str]
) -> tuple[ToolCounts | None, list[str]]:
    """The tool's own counts, and what is wrong with the run if anything is."""
    problems: list[str] = []
    if m.timed_out:
        problems.append(f"hung: stopped by the bench after {m.wall_s:.0f} s")
    if step.tool == LOADGEN:
        text = jsonl.read_text(errors="replace") if jsonl.exists() else ""
        totals = parse_loadgen_jsonl(text.splitlines())
        if m.exit_code not in (0, None):
            problems.append(f"loadgen exited {m.exit_code}: {_last_line(m.stderr)}")
        if totals is None:
            problems.append("no summary in the JSONL export")
            return None, problems
        if totals.unaccounted:
            problems.append(f"{totals.unaccounted} probes unaccounted")
        problems += [f"failure: {f}" for f in totals.failures]
        for n, what in (
            (totals.limited_seconds, "second(s) loadgen flagged as generator-limited"),
            (totals.send_errors, "send errors"),
            (totals.rx_dropped, "replies dropped at loadgen's sockets"),
        ):
            if n:
                notes.append(f"{n} {what}")
        return totals.counts, problems
    fine: tuple[int | None, ...] = (0, None) if step.tool == FLOOR else (0, 1, None)  # 1: loss
    fine += (124,) if step.tool == HPING else ()  # timeout's code once it ended hping3
    if m.exit_code not in fine:
        problems.append(f"{step.tool} exited {m.exit_code}: {_last_line(m.stderr)}")
    if step.tool == PING:
        counts = parse_ping(m.stdout)
    elif step.tool == FLOOR:
        counts = parse_floor(m.stdout)
    elif step.tool == HPING:
        counts = parse_hping(m.stdout + m.stderr)
    else:
        parsed = parse_fping(m.stderr + m.stdout)
        counts = parsed[0] if parsed else None
        if parsed and parsed[1] != step.targets:
            problems.append(f"fping reported {parsed[1]} of {step.targets} targets")
    if counts is None:
        problems.append(f"no {step.tool} summary in its output")
    return counts, problems


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def evaluate(step: Step, m: Measured, jsonl: Path) -> StepResult:
    notes: list[str] = []
    counts, problems = _tool_counts(step, m, jsonl, notes)
    windows = steady_windows(m.samples, tick_paced=step.tick_paced)
    achieved = achieved_pps(windows)
    reference = step.rate_pps or achieved
    pacing = pacing_error(windows, reference) if reference else None
    off_grid = sum(not w.on_grid for w in windows) if step.tick_paced else 0
    sent = counts.sent if counts else m.client.get("OutEchos", 0)
    if not windows:
        notes.append("too short for 100 ms windows: no rate or pacing figure")
    if off_grid:
        notes.append(
            f"{off_grid} window(s) timed by their reads: no read fitted its tick-aligned instant"
        )
    if not m.sampler_realtime:
        notes.append("the sampler could not run SCHED_FIFO: its readings may come late")
    by_role = rss_by_role(m)
    if by_role:
        text = ", ".join(f"{role} {b / 2**20:.0f}" for role, b in by_role)
        notes.append(f"peak RSS by process (MiB): {text}")
    if step.tool == LOADGEN and m.peak_rss_bytes > RSS_BUDGET_BYTES:
        notes.append(
            f"peak RSS {m.peak_rss_bytes / 2**20:.0f} MiB is over loadgen's budget of "
            f"{RSS_BUDGET_BYTES >> 20} MiB"
        )
    if m.wall_s < SHORT_RUN_S:
        notes.append(f"ran {m.wall_s:.2f} s: peak RSS is sampled every 100 ms and may be missed")
    return StepResult(
        label=step.label,
        tool=step.tool,
        targets=step.targets,
        workers=step.workers,
        requested_pps=step.rate_pps,
        achieved_pps=achieved,
        pacing_p99=pacing.p99 if pacing else None,
        pacing_max=pacing.max if pacing else None,
        pacing_reference="requested" if step.rate_pps else "achieved",
        windows=len(windows),
        windows_off_grid=off_grid,
        sent=sent,
        answered=counts.answered if counts else 0,
        # The loss split reads ICMP echo counters: SYN steps have their counts, not the split.
        loss=loss_figures(counts, m.client, m.responder)
        if counts and step.probe == "icmp"
        else None,
        cpu_s=m.cpu_s,
        cpu_s_per_m=per_million(m.cpu_s, sent),
        cpu_s_per_m_steady=steady_cpu_per_million(windows),
        peak_rss_bytes=m.peak_rss_bytes,
        processes=m.processes,
        wall_s=m.wall_s,
        exit_code=m.exit_code,
        problems=tuple(problems),
        notes=tuple(notes),
        window_pps=tuple(round(w.rate_pps) for w in windows),
        kernel_client=m.client,
        kernel_responder=m.responder,
        memory=memory_figures(m.samples, m.peaks, m.roles),
        peak_rss_by_role=by_role,
        family=step.family,
        v4_twin=step.v4_twin,
    )


def rss_by_role(m: Measured) -> tuple[tuple[str, int], ...]:
    """Each process's peak RSS with what it is (main, spawned: loadgen's workers), largest
    first."""
    rows = [(m.roles.get(pid, "?"), peak) for pid, peak in m.peaks.items()]
    return tuple(sorted(rows, key=lambda row: (-row[1], row[0])))
