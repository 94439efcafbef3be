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
    track_bytes: tuple[int, ...]  # VmRSS at every EARLY_S of sending (MemoryFigures.track_s)


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    early_s: float  # seconds into sending of the early reading
    end_s: float  # ... and of the end reading: the last one taken while still sending
    rss_early_bytes: int  # summed over the processes
    rss_end_bytes: int
    growth_bytes: int
    processes: tuple[ProcessMemory, ...]
    track_s: tuple[float, ...]  # when the track readings were taken: every EARLY_S of sending
    track_bytes: tuple[int, ...]  # summed VmRSS at each: flat, a warm-up, or a steady climb


def _track(samples: Sequence[Sample], first: int, last: int, every_s: float) -> list[int]:
    """Indices of the first readings at or past each multiple of every_s into sending (a
    multiple passed in a gap between readings is skipped, not repeated)."""
    start_ns, every_ns = samples[first].t_ns, every_s * 1e9
    out, mark = [], 1
    for i in range(first, last + 1):
        since_ns = samples[i].t_ns - start_ns
        if since_ns >= mark * every_ns:
            out.append(i)
            mark = int(since_ns // every_ns) + 1
    return out


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
    """RSS early_s into sending against RSS at its end, per process present at both readings,
    and a reading every early_s between; None when sending did not last past early_s."""
    span = sending_span(samples)
    if span is None:
        return None
    first, last = span
    start_ns = samples[first].t_ns
    track = _track(samples, first, last, early_s)
    if not track or track[0] == last:
        return None
    early = track[0]
    rss_early, rss_end = dict(samples[early].rss), dict(samples[last].rss)
    rss_track = [dict(samples[i].rss) for i in track]
    processes = tuple(
        ProcessMemory(
            pid=pid,
            role=roles.get(pid, "?"),
            rss_early_bytes=rss_early[pid],
            rss_end_bytes=rss_end[pid],
            growth_bytes=rss_end[pid] - rss_early[pid],
            peak_bytes=peaks.get(pid, 0),
            track_bytes=tuple(r.get(pid, 0) for r in rss_track),
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
        track_s=tuple(round((samples[i].t_ns - start_ns) / 1e9, 3) for i in track),
        track_bytes=tuple(sum(p.track_bytes[k] for p in processes) for k in range(len(track))),
    )
