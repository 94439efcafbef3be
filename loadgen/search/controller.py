"""The search controller: fed trial results, it says which trial to run next (sans-IO).

Owns the bounds of every goal and the choice of the next load and trial duration, after RFC 9971
(MLRsearch): all goals share every trial; each goal goes through phases of longer trials and
finer widths (short trials far from the answer, full-length ones near it), the last phase being
the goal itself; the maximum load is always tried; a load is re-measured until the exceed ratio
decides it. A trial loadgen could not generate (invalid) never counts as the device's loss: it
lowers the highest load the search asks for instead. No clock: elapsed time is passed in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from loadgen.search.goals import Bound, Goal, Trial, classify, conditional_throughput

# Invalid trials at one load before the search believes the generator cannot do that load:
# one may be a moment in which the machine was busy; more, when a valid trial at that load or
# above has shown that the generator can do it.
INVALID_TRIES, INVALID_TRIES_SHOWN = 2, 4
# After that, the search stays below what the generator achieved there, with this margin.
GENERATOR_MARGIN = 0.95
TRIAL_STEP_NS = 100_000_000  # early phases' trial durations, rounded to this


@dataclass(frozen=True, slots=True)
class SearchConfig:
    goals: tuple[Goal, ...]
    min_rate_pps: float
    max_rate_pps: float
    initial_ns: int  # the shortest trial (the first phase); the goals' final_ns the longest
    max_trials: int
    max_time_ns: int


@dataclass(frozen=True, slots=True)
class TrialRequest:
    load_pps: float
    duration_ns: int
    goal: int  # the goal (index) that asked for it
    phase: int  # that goal's phase; phases(goal) - 1 is the goal itself


@dataclass(frozen=True, slots=True)
class TrialResult:
    load_pps: float
    duration_ns: int
    sent: int
    lost: int  # no reply by the linger (an ICMP error instead of a reply counts as lost too)
    valid: bool  # False: loadgen itself could not generate it; says nothing of the device
    achieved_pps: float

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.sent if self.sent else 1.0


class StopReason(StrEnum):
    DONE = "done"
    MAX_TRIALS = "max trials reached"
    MAX_TIME = "max time reached"
    GENERATOR = "the generator cannot send even the minimum rate"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class GoalResult:
    goal: Goal
    lower_pps: float | None  # the relevant lower bound: the result; None: below min rate
    upper_pps: float | None  # the relevant upper bound; None: none up to the max tried
    conditional_pps: float | None  # conditional throughput at the lower bound
    generator_limited: bool  # the generator, not the device, bounds the answer: "at least"
    converged: bool  # the bounds are within the goal's width (or at min / max rate)

    @property
    def width(self) -> float | None:
        if self.lower_pps is None or self.upper_pps is None:
            return None
        return (self.upper_pps - self.lower_pps) / self.upper_pps


class Search:
    def __init__(self, config: SearchConfig) -> None:
        if not 0 < config.min_rate_pps <= config.max_rate_pps:
            raise ValueError("need 0 < min rate <= max rate")
        self.config = config
        self.trials: list[TrialResult] = []
        self.by_load: dict[float, list[Trial]] = defaultdict(list)
        self.invalid: dict[float, list[float]] = defaultdict(list)  # load -> achieved pps
        self.max_pps = config.max_rate_pps  # lowered when the generator cannot do a load
        self.capped = False
        self.phase = [0] * len(config.goals)
        self.stopped: StopReason | None = None

    # -- phases ---------------------------------------------------------------------------

    def phases(self, g: int) -> int:
        goal = self.config.goals[g]
        ratio = goal.final_ns / min(goal.final_ns, self.config.initial_ns)
        return 1 + math.ceil(math.log2(ratio) - 1e-9) if ratio > 1 else 1

    def phase_goal(self, g: int, k: int) -> Goal:
        """Goal `g` as phase `k` sees it: trials from the initial to the final duration
        (geometric steps), widths halving down to the goal's."""
        goal, last = self.config.goals[g], self.phases(g) - 1
        if k >= last:
            return goal
        ratio = (goal.final_ns / self.config.initial_ns) ** (k / last)
        trial_ns = round(self.config.initial_ns * ratio / TRIAL_STEP_NS) * TRIAL_STEP_NS
        return goal.coarser(trial_ns, goal.width * 2 ** (last - k))

    # -- the two calls ----------------------------------------------------------------------

    def record(self, result: TrialResult) -> None:
        self.trials.append(result)
        if result.valid:
            self.by_load[result.load_pps].append(Trial(result.duration_ns, result.loss_ratio))
            return
        seen = self.invalid[result.load_pps]
        seen.append(result.achieved_pps)
        shown = any(x >= result.load_pps for x in self.by_load)
        if len(seen) >= (INVALID_TRIES_SHOWN if shown else INVALID_TRIES):
            self.capped = True
            can = (result.load_pps if shown else min(result.load_pps, max(seen))) * GENERATOR_MARGIN
            self.max_pps = min(self.max_pps, can)

    def next_trial(self, elapsed_ns: int) -> TrialRequest | None:
        """The next trial to run, or None when the search is over (see `stopped`)."""
        if self.stopped is not None:
            return None
        if len(self.trials) >= self.config.max_trials:
            return self._stop(StopReason.MAX_TRIALS)
        if elapsed_ns >= self.config.max_time_ns:
            return self._stop(StopReason.MAX_TIME)
        if self.max_pps < self.config.min_rate_pps:
            return self._stop(StopReason.GENERATOR)
        while True:
            open_goals = [g for g in range(len(self.phase)) if self.phase[g] < self.phases(g)]
            if not open_goals:
                return self._stop(StopReason.DONE)
            g = min(open_goals, key=lambda i: (self.phase[i] / self.phases(i), i))
            goal = self.phase_goal(g, self.phase[g])
            load = self._next_load(goal)
            if load is None:
                self.phase[g] += 1
                continue
            return TrialRequest(load, goal.final_ns, g, self.phase[g])

    def _stop(self, reason: StopReason) -> TrialRequest | None:
        self.stopped = reason
        return None

    # -- bounds -------------------------------------------------------------------------

    def bounds(self, goal: Goal) -> tuple[float | None, float | None]:
        """(relevant lower bound, relevant upper bound) of `goal` from the valid trials: the
        lowest upper bound, and the highest lower bound below it."""
        cls = {load: classify(goal, trials) for load, trials in self.by_load.items()}
        upper = min((x for x, c in cls.items() if c is Bound.UPPER), default=None)
        lower = max(
            (x for x, c in cls.items() if c is Bound.LOWER and (upper is None or x < upper)),
            default=None,
        )
        return lower, upper

    def _undecided(self, goal: Goal, low: float, high: float) -> list[float]:
        return [
            x
            for x, trials in self.by_load.items()
            if low < x < high and x <= self.max_pps and classify(goal, trials) is Bound.UNDECIDED
        ]

    def _next_load(self, goal: Goal) -> float | None:
        """The load to measure next for this phase's goal; None when the phase is over."""
        cfg, top = self.config, self.max_pps
        lower, upper = self.bounds(goal)
        if upper is None:
            if lower is not None and lower >= top:
                return None  # even the highest load we can ask for meets the goal
            pending = self._undecided(goal, lower or 0.0, math.inf)
            if pending:
                return min(pending)
            if top not in self.by_load or lower is None:
                return top  # always try the maximum load itself
            below = max((x for x in self.by_load if x < lower), default=lower)
            step = max(goal.width * lower, 2 * (lower - below))
            return min(top, lower + step)
        if lower is None:
            if upper <= cfg.min_rate_pps:
                return None  # the device misses the goal even at the minimum rate
            pending = self._undecided(goal, 0.0, upper)
            if pending:
                return max(pending)
            above = min((x for x in self.by_load if x > upper), default=upper)
            step = max(goal.width * upper, 2 * (above - upper))
            # First guess: the rate the device forwarded at the upper bound.
            loss = max(t.loss_ratio for t in self.by_load[upper])
            guess = upper * (1 - loss) if above == upper else upper - step
            return max(cfg.min_rate_pps, min(guess, upper - step, top))
        if (upper - lower) / upper <= goal.width or lower >= top:
            return None
        pending = self._undecided(goal, lower, upper)
        middle = (lower + min(upper, top)) / 2 if upper <= top else (lower + top) / 2
        if pending:
            return min(pending, key=lambda x: abs(x - middle))
        if top <= lower:
            return None
        return (lower + upper) / 2 if upper <= top else min(top, (lower + upper) / 2)

    # -- results --------------------------------------------------------------------------

    def results(self) -> tuple[GoalResult, ...]:
        out = []
        for goal in self.config.goals:
            lower, upper = self.bounds(goal)
            cond = None
            if lower is not None:
                cond = conditional_throughput(goal, lower, self.by_load[lower])
            at_max = upper is None and lower is not None and lower >= self.max_pps
            at_min = lower is None and upper is not None and upper <= self.config.min_rate_pps
            narrow = (
                lower is not None and upper is not None and (upper - lower) / upper <= goal.width
            )
            limited = self.capped and not narrow and not at_min
            out.append(GoalResult(goal, lower, upper, cond, limited, narrow or at_max or at_min))
        return tuple(out)
