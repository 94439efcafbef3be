"""A worker's clock offset to the coordinator, from the heartbeats over its stream.

Each Beat/Echo exchange gives NTP's four timestamps (RFC 5905 8): t1 the coordinator sent,
t2 the worker received, t3 the worker answered, t4 the coordinator received. The offset
(worker clock minus coordinator clock) is ((t2 - t1) + (t3 - t4)) / 2 and, whatever the two
one-way delays, lies within half the round trip (t4 - t1) - (t3 - t2) of it: the sample with the
least round trip bounds it best (the min-RTT filter). Pure: timestamps in, figures out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from loadgen.wire.messages import Frame

WINDOW = 64  # samples the filter picks from: 16 s of beats, short against clock drift


@dataclass(frozen=True, slots=True)
class ClockSample:
    offset_ns: int  # worker clock minus coordinator clock
    rtt_ns: int  # the round trip less the worker's own time between t2 and t3

    @property
    def bound_ns(self) -> int:
        """The true offset lies within offset_ns ± bound_ns."""
        return (self.rtt_ns + 1) // 2


def clock_sample(t1_ns: int, t2_ns: int, t3_ns: int, t4_ns: int) -> ClockSample:
    """One exchange's sample; t1/t4 on the coordinator's clock, t2/t3 on the worker's."""
    return ClockSample(((t2_ns - t1_ns) + (t3_ns - t4_ns)) // 2, (t4_ns - t1_ns) - (t3_ns - t2_ns))


class OffsetEstimator:
    """The best of the last `window` samples: the one with the least round trip."""

    def __init__(self, window: int = WINDOW) -> None:
        self._samples: deque[ClockSample] = deque(maxlen=window)
        self.count = 0  # samples taken in all

    def add(self, t1_ns: int, t2_ns: int, t3_ns: int, t4_ns: int) -> None:
        sample = clock_sample(t1_ns, t2_ns, t3_ns, t4_ns)
        if sample.rtt_ns < 0:
            return  # t3 before t2, or t4 before t1: not an exchange of ours, nothing to learn
        self._samples.append(sample)
        self.count += 1

    @property
    def best(self) -> ClockSample | None:
        return min(self._samples, key=lambda s: s.rtt_ns, default=None)


def to_coordinator_clock(frame: Frame, offset_ns: int) -> Frame:
    """A worker's frame with its send and frame times moved onto the coordinator's clock, so
    its probes land in the seconds the coordinator closes (round trips are differences on one
    clock and stay as they are)."""
    if offset_ns == 0:
        return frame
    records = frame.records.copy()
    records["tx_ns"] -= offset_ns
    bursts = frame.bursts.copy()
    bursts["start_ns"] -= offset_ns
    bursts["end_ns"] -= offset_ns
    return replace(
        frame,
        now_ns=frame.now_ns - offset_ns,
        resolved_before_ns=frame.resolved_before_ns - offset_ns,
        records=records,
        bursts=bursts,
    )


@dataclass(frozen=True, slots=True)
class WorkerClock:
    """What the run reports of one worker's clock: the offset applied to its frames (fixed
    when it started), the last estimate and its bound, and whether the bound passed the
    profile's `clock_limit`."""

    worker: int
    applied_ns: int
    offset_ns: int
    bound_ns: int
    samples: int
    flagged: bool
    host: str = ""  # where it runs, as its launcher names it ("": this host)


def worker_clock(
    worker: int, applied_ns: int, est: OffsetEstimator, limit_ns: int, host: str = ""
) -> WorkerClock:
    best = est.best
    if best is None:  # no exchange came back: nothing bounds it
        return WorkerClock(worker, applied_ns, applied_ns, -1, 0, flagged=True, host=host)
    flagged = best.bound_ns > limit_ns
    return WorkerClock(worker, applied_ns, best.offset_ns, best.bound_ns, est.count, flagged, host)
