"""Memory over a run, the figures of `--soak`: each process's current RSS (VmRSS) 30 s into
sending and at the end of sending, its peak (VmHWM), and the growth between the two readings.

Pure: the sampler's readings in, figures out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadgen.bench.figures import Sample

EARLY_S = 30.0  # the baseline: RSS after 30 s of sending


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    pid: int
    role: str
    rss_early_bytes: int  # VmRSS at the early reading
    rss_end_bytes: int  # VmRSS at the end reading
    growth_bytes: int  # end - early
    peak_bytes: int  # VmHWM at the last look: the highest RSS, between readings too


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    early_s: float  # seconds into sending of the early reading
    end_s: float  # ... and of the end reading: the last one taken while still sending
    rss_early_bytes: int  # summed over the processes
    rss_end_bytes: int
    growth_bytes: int
    processes: tuple[ProcessMemory, ...]


def process_role(argv: Sequence[str], root: bool) -> str:
    """What a process of the tool's tree is, from its command line."""
    if root:
        return "main"
    text = " ".join(argv)
    if "spawn_main" in text:
        return "spawned"  # multiprocessing's spawn: loadgen's workers
    if "resource_tracker" in text:
        return "resource tracker"
    return os.path.basename(argv[0]) if argv else "?"


def sending_span(samples: Sequence[Sample]) -> tuple[int, int] | None:
    """Indices of the readings that bracket sending: the last before the first echo request
    arrived, and the last before the final ones did (still sending). None if nothing moved."""
    moved = [
        i for i in range(1, len(samples)) if samples[i].requests_in > samples[i - 1].requests_in
    ]
    if not moved:
        return None
    return moved[0] - 1, moved[-1] - 1


def memory_figures(
    samples: Sequence[Sample],
    peaks: Mapping[int, int],
    roles: Mapping[int, str],
    early_s: float = EARLY_S,
) -> MemoryFigures | None:
    """RSS early_s into sending against RSS at its end, per process present at both readings;
    None when sending did not last past early_s."""
    span = sending_span(samples)
    if span is None:
        return None
    first, last = span
    start_ns = samples[first].t_ns
    early = next(
        (i for i in range(first, last + 1) if samples[i].t_ns - start_ns >= early_s * 1e9), None
    )
    if early is None or early == last:
        return None
    rss_early, rss_end = dict(samples[early].rss), dict(samples[last].rss)
    processes = tuple(
        ProcessMemory(
            pid=pid,
            role=roles.get(pid, "?"),
            rss_early_bytes=rss_early[pid],
            rss_end_bytes=rss_end[pid],
            growth_bytes=rss_end[pid] - rss_early[pid],
            peak_bytes=peaks.get(pid, 0),
        )
        for pid in sorted(rss_early.keys() & rss_end.keys())
    )
    total_early = sum(p.rss_early_bytes for p in processes)
    total_end = sum(p.rss_end_bytes for p in processes)
    return MemoryFigures(
        early_s=round((samples[early].t_ns - start_ns) / 1e9, 3),
        end_s=round((samples[last].t_ns - start_ns) / 1e9, 3),
        rss_early_bytes=total_early,
        rss_end_bytes=total_end,
        growth_bytes=total_end - total_early,
        processes=processes,
    )
