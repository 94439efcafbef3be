"""Memory over a run, the figures of `--soak`: each process's current RSS (VmRSS) and its
anonymous part (RssAnon) 30 s into sending, at the end of sending and every 30 s between, with
its peak (VmHWM). RssAnon is the leak signal: file pages (libraries) come and go as the kernel
reclaims them, so VmRSS can fall while anonymous memory climbs.

Pure: the sampler's readings in, figures out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadgen.bench.figures import Sample

EARLY_S = 30.0  # the baseline: RSS after 30 s of sending
VM, ANON = 0, 1  # positions in a Sample.rss entry's (VmRSS, RssAnon)


@dataclass(frozen=True, slots=True)
class Growth:
    """One memory figure over a run: early reading, end reading, their difference, and the
    readings every EARLY_S (MemoryFigures.track_s)."""

    early_bytes: int
    end_bytes: int
    growth_bytes: int
    track_bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    pid: int
    role: str
    rss: Growth  # VmRSS
    anon: Growth  # RssAnon
    peak_bytes: int  # VmHWM at the last look: the highest RSS, between readings too


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    early_s: float  # seconds into sending of the early reading
    end_s: float  # ... and of the end reading: the last one taken while still sending
    track_s: tuple[float, ...]  # ... and of the readings every EARLY_S
    rss: Growth  # summed over the processes
    anon: Growth
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
    readings = [{pid: (vm, anon) for pid, vm, anon in samples[i].rss} for i in track]
    end = {pid: (vm, anon) for pid, vm, anon in samples[last].rss}
    pids = sorted(readings[0].keys() & end.keys())

    def growth(what: int, of: Sequence[int]) -> Growth:
        early_b = sum(readings[0][p][what] for p in of)
        end_b = sum(end[p][what] for p in of)
        track_b = tuple(sum(r.get(p, (0, 0))[what] for p in of) for r in readings)
        return Growth(early_b, end_b, end_b - early_b, track_b)

    return MemoryFigures(
        early_s=round((samples[track[0]].t_ns - start_ns) / 1e9, 3),
        end_s=round((samples[last].t_ns - start_ns) / 1e9, 3),
        track_s=tuple(round((samples[i].t_ns - start_ns) / 1e9, 3) for i in track),
        rss=growth(VM, pids),
        anon=growth(ANON, pids),
        processes=tuple(
            ProcessMemory(
                pid=p,
                role=roles.get(p, "?"),
                rss=growth(VM, [p]),
                anon=growth(ANON, [p]),
                peak_bytes=peaks.get(p, 0),
            )
            for p in pids
        ),
    )
