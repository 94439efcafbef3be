"""Where the bench's counter readings fall: every 100 ms, at 100 us past a whole millisecond of
CLOCK_REALTIME. loadgen's workers send one batch per 1 ms tick, ticks on whole ms of the wall
clock, each batch at its turn a quarter tick past the mark (pacer.TickGrid); a reading between
one tick's batches and the next's sees whole ticks only, so a window holds exactly its ticks.

Pure: clock readings in, instants and verdicts out (measure.py owns the clocks and the sleeping).
"""

from __future__ import annotations

from dataclasses import dataclass

TICK_NS = 1_000_000
# Why not mid-tick: a batch's echo requests reach the responder's counter from ~100 us after
# the turn (the batch is built first) until, at 100k pps on 2 cores, most of a tick later, as
# the kernel answers them in the sender's context. Measured rate over the tick at 20k pps x2:
# nil from 900 us to 300 us past the mark, all of it from 350 to 700 us. Just before the turn
# is the one quiet place at any rate.
PHASE_NS = 100_000
SAMPLE_NS = 100_000_000
# A reading stands for its instant when the read lies within [instant - EARLY_NS, instant +
# LATE_NS] (from the mark to the workers' turn at 250 us) and took at most MAX_BRACKET_NS
# between its two clock readings (it was not preempted).
EARLY_NS = PHASE_NS
LATE_NS = 150_000
MAX_BRACKET_NS = 100_000


def first_instant_rt(now_rt_ns: int) -> int:
    """The first reading instant (realtime) at or after now_rt_ns: PHASE_NS past a whole ms."""
    return -(-(now_rt_ns - PHASE_NS) // TICK_NS) * TICK_NS + PHASE_NS


@dataclass(frozen=True, slots=True)
class ClockMap:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, read once: realtime instants become monotonic
    deadlines (both clocks run at the rate NTP slews them to; only a clock step breaks it)."""

    rt_minus_mono_ns: int

    @classmethod
    def from_readings(cls, mono_before_ns: int, rt_ns: int, mono_after_ns: int) -> ClockMap:
        """A realtime reading bracketed by two monotonic ones: taken at their midpoint."""
        return cls(rt_ns - (mono_before_ns + mono_after_ns) // 2)

    def to_mono(self, rt_ns: int) -> int:
        return rt_ns - self.rt_minus_mono_ns


def read_fits(instant_ns: int, before_ns: int, after_ns: int) -> bool:
    """A read bracketed by clock readings before_ns and after_ns stands for its instant."""
    return (
        after_ns - before_ns <= MAX_BRACKET_NS
        and before_ns >= instant_ns - EARLY_NS
        and after_ns <= instant_ns + LATE_NS
    )


def retry_instant(instant_ns: int, now_ns: int) -> int:
    """Where to read again after a read that did not fit: this instant while a whole read
    still fits before its quiet part ends, else the first later tick's instant not yet past."""
    if now_ns + MAX_BRACKET_NS <= instant_ns + LATE_NS:
        return instant_ns
    ticks = max(1, -(-(now_ns - instant_ns) // TICK_NS))
    return instant_ns + ticks * TICK_NS


def next_grid_instant(first_ns: int, now_ns: int) -> int:
    """The next instant of the 100 ms grid from first_ns, after now_ns: a sampler that fell
    behind skips grid points instead of reading in a burst, and never drifts off the grid."""
    steps = max(1, (now_ns - first_ns) // SAMPLE_NS + 1)
    return first_ns + steps * SAMPLE_NS
