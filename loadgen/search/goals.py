"""Search goals and the RFC 9971 load classification: is a load a lower or an upper bound?

Owns `Goal` (loss ratio, exceed ratio, final trial duration, duration sum, width), the
classification of one load from the durations of its trials (RFC 9971 section 4.7 and its
appendix A) and the conditional throughput at a load (appendix B). Pure: durations in, verdicts
out; every figure in nanoseconds or as a ratio.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from loadgen.errors import UsageError
from loadgen.units import bad_value

GOAL_HINT = 'write "ndr" (no loss) or "pdr:0.5%" (at most 0.5 % lost)'


class Bound(IntEnum):
    """What the trials at one load say about it, for one goal."""

    UNDECIDED = 0  # more trial time is needed at this load
    LOWER = 1  # the device met the goal here (even counting missing time as high-loss)
    UPPER = 2  # it did not (even counting missing time as low-loss)


@dataclass(frozen=True, slots=True)
class Goal:
    """One search goal (RFC 9971 section 4.6): the loss ratio a trial may have and still be
    low-loss, the share of trial time allowed to be high-loss, the trial duration that counts in
    full, the trial time a load needs before it is decided, and the relative width to stop at."""

    name: str  # "ndr", "pdr:0.5%"
    loss_ratio: float
    exceed_ratio: float
    final_ns: int  # final trial duration
    sum_ns: int  # goal duration sum
    width: float  # relative: (upper - lower) / upper

    def coarser(self, trial_ns: int, width: float) -> Goal:
        """The same goal for an early phase: shorter trials, one of which decides a load (the
        exceed ratio still weighs them against any longer ones), a wider width."""
        return Goal(self.name, self.loss_ratio, self.exceed_ratio, trial_ns, trial_ns, width)


def parse_goal(text: object, key: str) -> tuple[str, float]:
    """ "ndr" -> ("ndr", 0.0); "pdr:0.5%" or "pdr:0.005" -> ("pdr:0.5%", 0.005)."""
    if not isinstance(text, str):
        raise UsageError(bad_value(key, text, "not a goal", GOAL_HINT))
    kind, _, value = text.strip().lower().partition(":")
    if kind == "ndr" and not value:
        return "ndr", 0.0
    if kind == "pdr":
        ratio = parse_ratio(value or "0.5%", key)
        if 0 < ratio < 1:
            return f"pdr:{ratio * 100:g}%", ratio
    raise UsageError(bad_value(key, text, "unknown goal", GOAL_HINT))


def parse_ratio(value: object, key: str) -> float:
    """A ratio from 0 to 1: 0.005, "0.5%", "0.005"."""
    hint = 'write a share such as 0.5 or "50%"'
    text = str(value).strip()
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1].strip(), 0.01
    try:
        ratio = float(text) * scale
    except ValueError:
        raise UsageError(bad_value(key, value, "not a number", hint)) from None
    if isinstance(value, bool) or not 0 <= ratio <= 1:
        raise UsageError(bad_value(key, value, "out of range 0..1 (0..100%)", hint))
    return ratio


@dataclass(frozen=True, slots=True)
class Trial:
    """What classification needs of one valid trial: its duration and its loss ratio."""

    duration_ns: int
    loss_ratio: float


def classify(goal: Goal, trials: Iterable[Trial]) -> Bound:
    """RFC 9971 load classification. A trial is high-loss when its loss ratio exceeds the
    goal's. Full-length trials count as they are; short ones can only push a load up: their
    high-loss time counts after the part that their low-loss time balances at the exceed ratio.
    Time still missing to the duration sum counts as high-loss for the pessimistic verdict
    (lower bound) and as low-loss for the optimistic one (upper bound)."""
    sums = {(True, False): 0.0, (True, True): 0.0, (False, False): 0.0, (False, True): 0.0}
    for t in trials:  # keyed by (full-length, high-loss)
        sums[t.duration_ns >= goal.final_ns, t.loss_ratio > goal.loss_ratio] += t.duration_ns
    full_low, full_high = sums[True, False], sums[True, True]
    short_low, short_high = sums[False, False], sums[False, True]
    exceed = goal.exceed_ratio
    # With exceed ratio e, e / (1 - e) seconds of high-loss time are allowed per low-loss second.
    balancing = short_low * exceed / (1.0 - exceed) if exceed < 1 else float("inf")
    high_sum = full_high + max(0.0, short_high - balancing)
    full_sum = full_low + high_sum
    missing = max(0.0, goal.sum_ns - full_sum)
    scale = max(float(goal.sum_ns), full_sum)
    if (high_sum + missing) / scale <= exceed:
        return Bound.LOWER
    if high_sum / scale > exceed:
        return Bound.UPPER
    return Bound.UNDECIDED


def conditional_throughput(goal: Goal, load_pps: float, trials: Iterable[Trial]) -> float | None:
    """RFC 9971 appendix B: the load times the share delivered in the full-length trial at the
    exceed-ratio quantile (the worst trials that the exceed ratio forgives are skipped)."""
    full = sorted(
        (t for t in trials if t.duration_ns >= goal.final_ns),
        key=lambda t: t.loss_ratio,
        reverse=True,
    )
    if not full:
        return None
    total = sum(t.duration_ns for t in full)
    forgiven = goal.exceed_ratio * max(total, goal.sum_ns)
    skipped = 0.0
    for t in full:
        skipped += t.duration_ns
        if skipped > forgiven:
            return load_pps * (1.0 - t.loss_ratio)
    return load_pps * (1.0 - full[-1].loss_ratio)
