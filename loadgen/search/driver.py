"""Runs a search: each trial is one `runner.execute` of a per-trial profile, fed to `Search`.

Owns the trial as run (`TrialRecord`: counts after the linger, the generator's health, the
verdict per goal), warmup (whole seconds sent but not counted), the pause between trials, the
latency trials after each search and the lab brought up once for all of them. A trial in which
loadgen was generator-limited (its self-check, socket drops, refused sends, fewer probes sent
than due) is handed to `Search` as invalid. The clock and sleeps live here, nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from loadgen.coordinator import Display, GeneratorView, WorkerHandle
from loadgen.errors import WorkerFailed
from loadgen.plan import RunPlan
from loadgen.profile import Profile
from loadgen.runner import execute
from loadgen.search.controller import GoalResult, Search, SearchConfig, StopReason, TrialResult
from loadgen.search.settings import SearchSettings
from loadgen.stats import Aggregator, Counts, RttStats, SecondReport
from loadgen.units import NS_PER_S

# A trial that sent fewer probes than due by more than this share (and 2 probes) is the
# generator's shortfall, not the device's.
SHORTFALL = 0.01


@dataclass(frozen=True, slots=True)
class Measured:
    """What one trial measured."""

    counts: Counts  # the counted seconds (after the warmup), outcomes after the linger
    achieved_pps: float
    limits: tuple[str, ...]  # why the generator was the limit; () when it was not
    rtt: RttStats  # the whole trial's, warmup included
    family: int  # 6 when every target is IPv6, else 4 (what `report` sizes the wire with)

    @property
    def valid(self) -> bool:
        return not self.limits

    @property
    def lost(self) -> int:
        """No reply by the linger, or an ICMP error instead of one: not carried."""
        return self.counts.lost + self.counts.errored

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.counts.sent if self.counts.sent else 1.0

    def verdict(self, loss_ratio: float) -> str:
        """For a goal of this loss ratio: "low-loss", "high-loss" or "invalid"."""
        if not self.valid:
            return "invalid"
        return "high-loss" if self.loss_ratio > loss_ratio else "low-loss"


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One trial as run: what was asked, what it measured, its verdict for every goal."""

    index: int
    kind: str  # "search" or "latency"
    size: int
    repeat: int
    goal: str  # the goal that asked for it ("" for latency trials)
    phase: int
    load_pps: float
    duration_ns: int
    warmup_ns: int
    measured: Measured
    started_ns: int  # since the search began
    verdicts: tuple[tuple[str, str], ...]  # (goal, "low-loss" | "high-loss" | "invalid")


@dataclass(frozen=True, slots=True)
class SearchRun:
    """One whole search (one size, one repetition) and the latency trials after it."""

    size: int
    repeat: int
    results: tuple[GoalResult, ...]
    stop: StopReason
    trials: int
    elapsed_ns: int


class Listener:
    """What the driver tells the screen. The default ignores everything."""

    def trial_started(self, record_index: int, load_pps: float, kind: str) -> None: ...
    def trial_done(self, record: TrialRecord, search: Search | None) -> None: ...
    def search_done(self, run: SearchRun) -> None: ...
    def trial_display(self) -> Display:
        return Display()


class _Collect(Display):
    """The coordinator's display for one trial: keeps the closed seconds, forwards the rest."""

    def __init__(self, inner: Display) -> None:
        self.inner = inner
        self.seconds: list[SecondReport] = []

    def started(self, plan: RunPlan, workers: tuple[WorkerHandle, ...]) -> None:
        self.inner.started(plan, workers)

    def second(self, report: SecondReport) -> None:
        self.seconds.append(report)
        self.inner.second(report)

    def refresh(self, aggregator: Aggregator, generator: GeneratorView) -> None:
        self.inner.refresh(aggregator, generator)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def stopped(self) -> None:
        self.inner.stopped()


class Interrupted(Exception):
    """CTRL-C during a trial: the search ends with what it has."""


def trial_profile(base: Profile, load_pps: float, duration_ns: int, size: int) -> Profile:
    return dataclasses.replace(
        base,
        rate_pps=load_pps,
        rate_per_target_pps=None,
        count=None,
        duration_ns=duration_ns,
        size=size,
        jsonl=None,
        lab=None,
        search=None,
        # One run's exports and verdicts, not a trial's: a search writes its own document.
        sla=None,
        metrics=None,
        metrics_textfile=None,
        report=None,
        csv=None,
    )


def run_trial(
    base: Profile, load_pps: float, duration_ns: int, size: int, warmup_ns: int, shown: Display
) -> Measured:
    """One trial of `duration_ns` after `warmup_ns` at `load_pps`, through the runner."""
    collect = _Collect(shown)
    result = execute(
        trial_profile(base, load_pps, warmup_ns + duration_ns, size), display=lambda p: collect
    )
    outcome = result.outcome
    if outcome.failures:
        raise WorkerFailed(f"a trial failed: {outcome.failures[0]}")
    if outcome.interrupted:
        raise Interrupted
    first = warmup_ns // NS_PER_S
    counted = [r for r in collect.seconds if r.second >= first]
    counts = (
        sum((r.total.counts for r in counted), Counts()) if first else outcome.summary.total.counts
    )
    # The warmup's seconds too: probes it sent late land in the counted seconds.
    limits = [w for r in collect.seconds if r.generator is not None for w in r.generator.limits]
    drops = sum(w.rx_dropped for w in outcome.workers)
    refused = sum(w.send_errors for w in outcome.workers)
    if drops and not limits:
        limits.append(f"our sockets dropped {drops} packets")
    if refused and not limits:
        limits.append(f"the kernel refused {refused} sends")
    due = load_pps * duration_ns / NS_PER_S
    if due - counts.sent > max(2.0, SHORTFALL * due):
        limits.append(f"sent {counts.sent} of {due:.0f} probes due")
    achieved = counts.sent * NS_PER_S / duration_ns
    family = 6 if all(t.family == 6 for t in result.plan.targets) else 4
    return Measured(counts, achieved, tuple(limits), outcome.summary.total.rtt, family)


TrialRunner = Callable[[Profile, float, int, int, int, Display], Measured]


@contextlib.contextmanager
def lab_profile(profile: Profile) -> Iterator[Profile]:
    """The profile with its lab up for the whole search (targets: the lab's addresses)."""
    if profile.lab is None:
        yield profile
        return
    from loadgen.lab.run import lab_for_profile  # noqa: PLC0415 (only searches with a lab)

    with lab_for_profile(profile) as targets:
        addresses = tuple(t.address for t in targets)
        yield dataclasses.replace(profile, lab=None, targets=addresses)


class Driver:
    def __init__(
        self,
        profile: Profile,
        settings: SearchSettings,
        listener: Listener | None = None,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
        trial: TrialRunner | None = None,
    ) -> None:
        self.profile, self.settings = profile, settings
        self.trial = trial or run_trial
        self.listener = listener or Listener()
        self.clock_ns, self.sleep = clock_ns, sleep
        self.records: list[TrialRecord] = []
        self.runs: list[SearchRun] = []
        self.interrupted = False
        self.family = 4  # of the targets, as the last trial's plan had them
        self.failure: str | None = None  # a trial failed (a worker died): the search stopped
        self.t0_ns = clock_ns()

    def run(self) -> None:
        """Every size, every repetition; stops early (with what it has) on CTRL-C."""
        with lab_profile(self.profile) as base:
            try:
                for size in self.settings.sizes:
                    for rep in range(self.settings.repeat):
                        self._one_search(base, size, rep)
            except (Interrupted, KeyboardInterrupt):  # in a trial, or between two
                self.interrupted = True
            except WorkerFailed as exc:  # the results so far still stand
                self.failure = str(exc)

    def _trial(
        self,
        base: Profile,
        kind: str,
        size: int,
        rep: int,
        load: float,
        duration_ns: int,
        goal: str = "",
        phase: int = 0,
    ) -> TrialRecord:
        if self.records:
            self.sleep(self.settings.pause_ns / NS_PER_S)
        self.listener.trial_started(len(self.records), load, kind)
        started = self.clock_ns() - self.t0_ns
        warmup = self.settings.warmup_ns
        got = self.trial(base, load, duration_ns, size, warmup, self.listener.trial_display())
        self.family = got.family
        verdicts = tuple((g.name, got.verdict(g.loss_ratio)) for g in self.settings.goals)
        record = TrialRecord(
            len(self.records), kind, size, rep, goal, phase, load, duration_ns, warmup, got,
            started, verdicts,
        )  # fmt: skip
        self.records.append(record)
        return record

    def _one_search(self, base: Profile, size: int, rep: int) -> None:
        s = self.settings
        search = Search(
            SearchConfig(
                s.goals, s.min_rate_pps, s.max_rate_pps, s.initial_ns, s.max_trials, s.max_time_ns
            )
        )
        start = self.clock_ns()
        try:
            while (req := search.next_trial(self.clock_ns() - start)) is not None:
                name = s.goals[req.goal].name
                rec = self._trial(
                    base, "search", size, rep, req.load_pps, req.duration_ns, name, req.phase
                )
                search.record(
                    TrialResult(
                        req.load_pps,
                        req.duration_ns,
                        rec.measured.counts.sent,
                        rec.measured.lost,
                        rec.measured.valid,
                        rec.measured.achieved_pps,
                    )
                )
                self.listener.trial_done(rec, search)
        finally:
            run = SearchRun(
                size,
                rep,
                search.results(),
                search.stopped or StopReason.INTERRUPTED,
                len(search.trials),
                self.clock_ns() - start,
            )
            self.runs.append(run)
            self.listener.search_done(run)
        final_ns = max(g.final_ns for g in s.goals)
        for result in run.results:
            for pct in s.latency_at:
                if result.lower_pps is None:
                    break
                load = result.lower_pps * pct / 100
                rec = self._trial(base, "latency", size, rep, load, final_ns, result.goal.name)
                self.listener.trial_done(rec, None)
