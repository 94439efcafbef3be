"""What the bench shows and keeps: the results table (plain text, one row per step), the
results document (JSON, with the machine it ran on) and the machine description itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy

import loadgen
from loadgen.bench.memory import EARLY_S, Growth
from loadgen.bench.steps import StepResult

RESULTS_SCHEMA = 1
V6_CPU_TARGET = 1.10  # the goal: IPv6 costs at most 10% more CPU per probe than IPv4
_COLUMNS = (
    ("step", "<", 25),
    ("tgts", ">", 4),
    ("req pps", ">", 8),
    ("achieved", ">", 8),
    ("pace p99/max", ">", 13),
    ("wire loss", ">", 9),
    ("self loss c/r", ">", 13),
    ("CPU-s/1M", ">", 11),
    ("RSS MiB", ">", 7),
    ("status", "<", 6),
)
FOOTNOTES = (
    "achieved: echo requests/s reaching the responder, over steady 100 ms windows",
    "pace p99/max: p99 and max over steady 100 ms windows of |achieved - requested| / "
    "requested (* peers set no rate: vs their own mean)",
    "windows: between counter readings at 100 us past a whole ms of CLOCK_REALTIME, between "
    "one of loadgen's 1 ms ticks' batches and the next's, so each holds whole ticks; "
    "loadgen's are timed by those instants, the peers' by the reads",
    "wire loss: sent - responder InEchos; self loss c/r: client InEchoReps / responder "
    "OutEchoReps - replies the tool counted",
    "v6 steps (to 2001:2:0:1::1-40): the same figures from /proc/net/snmp6 (Icmp6InEchos, "
    "Icmp6OutEchoReplies, Icmp6InEchoReplies, Icmp6OutEchos)",
    "syn steps (loadgen --tcp, hping3 -S --flood) to port 9, closed on the responder: SYNs "
    "it took in (Tcp InSegs; each answered by one RST) stand for echo requests; no loss split "
    "(hping3 --flood counts no replies)",
    "CPU-s/1M: user+sys of the whole process tree per 1M probes sent, whole run / steady "
    "sending only",
    "RSS MiB: sum over the tool's processes of each one's peak RSS (VmHWM); each process's "
    "in the notes; loadgen's budget is 400 MiB at any rate asked of 2 workers (the overload "
    "step asks far more than the machine can do)",
    "memory (runs past 30 s): each process's VmRSS and its anonymous part RssAnon (the leak "
    "signal: file pages come and go with reclaim) 30 s into sending and at the last reading "
    "while sending, the growth between, and its peak (VmHWM)",
)


def _k(pps: float | None) -> str:
    if pps is None:
        return "-"
    return f"{pps / 1e3:.1f}k" if pps >= 1e3 else f"{pps:.0f}"


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pace(r: StepResult) -> str:
    if r.pacing_p99 is None or r.pacing_max is None:
        return "-"
    star = "*" if r.pacing_reference == "achieved" else ""
    return f"{100 * r.pacing_p99:.2f}/{100 * r.pacing_max:.2f}%{star}"


def _growth(g: Growth) -> str:
    mib = g.early_bytes / 2**20, g.end_bytes / 2**20
    return f"{mib[0]:6.1f} -> {mib[1]:6.1f} MiB {g.growth_bytes / 1024:+7.0f} KiB"


def memory_lines(r: StepResult) -> list[str]:
    """The memory section of a step that sent long enough: one line per process, a total,
    and the totals every 30 s when there are several."""
    mem = r.memory
    if mem is None:
        return []
    out = [f"{r.label}: memory at {mem.early_s:.0f} s -> at {mem.end_s:.0f} s of sending:"]
    rows = [(f"pid {p.pid:<7} {p.role:<16}", p.rss, p.anon, p.peak_bytes) for p in mem.processes]
    for name, rss, anon, peak in [*rows, (f"{'all':<28}", mem.rss, mem.anon, None)]:
        line = f"  {name} VmRSS {_growth(rss)}   RssAnon {_growth(anon)}"
        out.append(line + ("" if peak is None else f"   peak {peak / 2**20:.1f} MiB"))
    if len(mem.track_s) > 1:
        vm_track = " ".join(f"{b / 2**20:.1f}" for b in mem.rss.track_bytes)
        anon_track = " ".join(f"{b / 2**20:.1f}" for b in mem.anon.track_bytes)
        out.append(f"  all, every {EARLY_S:g} s (MiB): VmRSS {vm_track}; RssAnon {anon_track}")
    return out


def table_row(r: StepResult) -> tuple[str, ...]:
    pace = _pace(r)
    loss = r.loss
    return (
        r.label,
        str(r.targets),
        _k(r.requested_pps),
        _k(r.achieved_pps),
        pace,
        "-" if loss is None else str(loss.wire_requests),
        "-" if loss is None else f"{loss.self_client}/{loss.self_responder}",
        f"{_opt(r.cpu_s_per_m, '.1f')}/{_opt(r.cpu_s_per_m_steady, '.1f')}",
        f"{r.peak_rss_bytes / 2**20:.0f}",
        "BROKEN" if r.broken else "ok",
    )


def _ratio(v6: float | None, v4: float | None) -> float | None:
    return None if v6 is None or not v4 else v6 / v4


@dataclasses.dataclass(frozen=True, slots=True)
class FamilyPair:
    """An IPv6 step and its IPv4 twin from the same run: CPU per probe of each (whole run,
    steady sending) and IPv6's as a multiple of IPv4's."""

    v6_label: str
    v4_label: str
    cpu_s_per_m: tuple[float | None, float | None]  # (v4, v6), whole run
    cpu_s_per_m_steady: tuple[float | None, float | None]  # (v4, v6), steady sending
    achieved_pps: tuple[float | None, float | None]  # (v4, v6)
    ratio: float | None  # v6 / v4, whole run
    ratio_steady: float | None


def family_pairs(results: Sequence[StepResult]) -> list[FamilyPair]:
    """Every IPv6 step whose IPv4 twin ran too (its last run, if it ran more than once)."""
    by_label = {r.label: r for r in results if r.family == 4}
    out = []
    for r6 in results:
        r4 = by_label.get(r6.v4_twin) if r6.family == 6 else None
        if r4 is None:
            continue
        out.append(
            FamilyPair(
                v6_label=r6.label,
                v4_label=r4.label,
                cpu_s_per_m=(r4.cpu_s_per_m, r6.cpu_s_per_m),
                cpu_s_per_m_steady=(r4.cpu_s_per_m_steady, r6.cpu_s_per_m_steady),
                achieved_pps=(r4.achieved_pps, r6.achieved_pps),
                ratio=_ratio(r6.cpu_s_per_m, r4.cpu_s_per_m),
                ratio_steady=_ratio(r6.cpu_s_per_m_steady, r4.cpu_s_per_m_steady),
            )
        )
    return out


def family_lines(results: Sequence[StepResult]) -> list[str]:
    """IPv6 against IPv4 at the same settings: CPU per probe and its ratio (target <= 1.10)."""
    pairs = family_pairs(results)
    if not pairs:
        return []
    out = [f"IPv6 against IPv4, CPU-s/1M whole run/steady (target: v6/v4 <= {V6_CPU_TARGET:.2f}):"]
    for p in pairs:
        v4, v6 = (
            f"{_opt(w, '.1f')}/{_opt(s, '.1f')}"
            for w, s in zip(p.cpu_s_per_m, p.cpu_s_per_m_steady, strict=True)
        )
        ratio = f"{_opt(p.ratio, '.2f')}/{_opt(p.ratio_steady, '.2f')}"
        out.append(
            f"  {p.v4_label}: v4 {v4}, v6 {v6}: v6/v4 {ratio} "
            f"(achieved v4 {_k(p.achieved_pps[0])}, v6 {_k(p.achieved_pps[1])})"
        )
    return out


def render_table(results: Sequence[StepResult]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            format(c, f"{align}{width}")
            for c, (_, align, width) in zip(cells, _COLUMNS, strict=True)
        ).rstrip()

    out = [line([name for name, _, _ in _COLUMNS])]
    out += [line(table_row(r)) for r in results]
    for r in results:
        out += [f"{r.label}: BROKEN: {p}" for p in r.problems]
        out += [f"{r.label}: note: {n}" for n in r.notes]
        out += memory_lines(r)
    if pairs := family_lines(results):
        out += ["", *pairs]
    out += ["", *FOOTNOTES]
    return "\n".join(out)


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _source_revision() -> str:
    """The git commit loadgen ran from, "+changes" if its tree differs; "unknown" elsewhere."""
    repo = Path(loadgen.__file__).resolve().parent.parent
    rev = _git(repo, "rev-parse", "--short", "HEAD")
    if not rev:
        return "unknown"
    return rev + ("+changes" if _git(repo, "status", "--porcelain", "--", "loadgen") else "")


def machine_info() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "loadgen": loadgen.__version__,
        "loadgen_revision": _source_revision(),
        "ping": _first_line(["ping", "-V"]),
        "fping": _first_line(["fping", "-v"]),
        "load_average_at_start": list(os.getloadavg()),
    }


def results_document(
    results: Sequence[StepResult],
    *,
    machine: Mapping[str, Any],
    config: Mapping[str, Any],
    started: str,
    wall_s: float,
) -> dict[str, Any]:
    return {
        "schema": RESULTS_SCHEMA,
        "started": started,
        "wall_s": round(wall_s, 3),
        "machine": dict(machine),
        "config": dict(config),
        "method": list(FOOTNOTES),
        "ok": not any(r.broken for r in results),
        "broken": [r.label for r in results if r.broken],
        "steps": [dataclasses.asdict(r) for r in results],
        "v6_vs_v4": [dataclasses.asdict(p) for p in family_pairs(results)],
    }


def write_results(path: Path, document: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
