"""SLA verdicts: which clause of a run's service-level agreement failed, where, and by how much.

Owns the clauses (`SlaSpec`), how each is read off one window of figures (a target's or the
total's, over one closed second or the whole run: `Figures`, `judge`) and the fold of those
readings into one verdict per clause (`SlaJudge`, `evaluate`). Pure: it reads `stats` values
(closed seconds, the run summary) and decides; no clock, no I/O, no printing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from loadgen.stats import NS_PER_S, RunSummary, SecondReport, TargetStats


class Clause(StrEnum):
    """A clause, named as its profile key in [sla]."""

    MAX_LOSS = "max_loss"  # lost / sent (late and errored probes are not lost)
    MAX_P99 = "max_p99"  # 99th percentile RTT
    MAX_RTT = "max_rtt"  # largest RTT
    MAX_JITTER = "max_jitter"  # mean absolute difference of consecutive RTTs of a target
    MIN_RATE = "min_rate"  # probes really sent per second (whole seconds only)


class Window(StrEnum):
    RUN = "run"  # one reading per row over the whole run
    SECOND = "second"  # one reading per row and closed second


class Scope(StrEnum):
    TOTAL = "total"  # the all-targets row
    TARGET = "target"  # every target on its own


@dataclass(frozen=True, slots=True)
class SlaSpec:
    """The clauses a run must meet; a clause left None is not part of the agreement."""

    max_loss_ratio: Fraction | None = None  # exact, so 1 lost of 1000 meets "0.1%"
    max_p99_ns: int | None = None
    max_rtt_ns: int | None = None
    max_jitter_ns: int | None = None
    min_rate_pps: float | None = None
    window: Window = Window.RUN
    scope: Scope = Scope.TOTAL

    @property
    def limits(self) -> tuple[tuple[Clause, Fraction], ...]:
        """The clauses that are set, in Clause order, each with its limit."""
        values = (
            self.max_loss_ratio,
            self.max_p99_ns,
            self.max_rtt_ns,
            self.max_jitter_ns,
            self.min_rate_pps,
        )
        return tuple(
            (clause, Fraction(v)) for clause, v in zip(Clause, values, strict=True) if v is not None
        )


@dataclass(frozen=True, slots=True)
class Figures:
    """One window's figures: a target (or TOTAL) over one second (or the run, second None)."""

    target: int
    second: int | None
    sent: int
    lost: int
    rtt_count: int  # RTT samples: good replies within the timeout
    p99_ns: float
    max_ns: float
    jitter_ns: float
    rate_pps: float | None  # probes sent per whole second; None: no whole second to judge
    generator_limited: bool = False  # loadgen itself fell short in it (or, for the run, ever)

    @classmethod
    def of(
        cls,
        ts: TargetStats,
        second: int | None,
        rate_pps: float | None,
        generator_limited: bool = False,
    ) -> Figures:
        r = ts.rtt
        return cls(
            ts.target,
            second,
            ts.counts.sent,
            ts.counts.lost,
            r.count,
            r.p99_ns,
            r.max_ns,
            r.jitter_ns,
            rate_pps,
            generator_limited,
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One clause read on one window. `value` and `limit` are in the clause's own unit (a loss
    ratio, nanoseconds, probes per second); a None value means probes were sent and nothing
    came back in time, which no latency limit meets."""

    clause: Clause
    target: int
    second: int | None
    value: float | None
    limit: Fraction
    passed: bool
    generator_limited: bool


def _reading(clause: Clause, limit: Fraction, f: Figures) -> Reading | None:
    """The reading of `clause` on `f`, or None when the window has nothing to judge it on."""
    value: float | None
    if clause is Clause.MIN_RATE:  # a whole second that sent nothing is judged: rate 0
        if f.rate_pps is None:
            return None
        value, passed = f.rate_pps, f.rate_pps >= limit
    elif f.sent == 0:
        return None
    elif clause is Clause.MAX_LOSS:
        value, passed = f.lost / f.sent, Fraction(f.lost, f.sent) <= limit
    elif f.rtt_count == 0:
        value, passed = None, False
    else:
        figure = {
            Clause.MAX_P99: f.p99_ns,
            Clause.MAX_RTT: f.max_ns,
            Clause.MAX_JITTER: f.jitter_ns,
        }
        value = float(figure[clause])
        passed = value <= limit
    return Reading(clause, f.target, f.second, value, limit, passed, f.generator_limited)


def judge(spec: SlaSpec, figures: Figures) -> tuple[Reading, ...]:
    """Every clause of `spec` read on one window (those it has something to judge on)."""
    readings = (_reading(clause, limit, figures) for clause, limit in spec.limits)
    return tuple(r for r in readings if r is not None)


def _worse(a: Reading, b: Reading) -> bool:
    """Whether `a` is further from meeting its clause than `b` (no reply is the worst)."""
    if a.value is None or b.value is None:
        return a.value is None and b.value is not None
    return a.value < b.value if a.clause is Clause.MIN_RATE else a.value > b.value


@dataclass(frozen=True, slots=True)
class ClauseVerdict:
    """A clause over the whole run: how many windows it was judged on and failed, the worst
    reading (the value nearest to or furthest past the limit) and the first failure."""

    clause: Clause
    limit: Fraction
    judged: int = 0
    failed: int = 0
    failed_generator_limited: int = 0  # failures in seconds in which loadgen itself fell short
    worst: Reading | None = None
    first_failure: Reading | None = None

    @property
    def passed(self) -> bool:
        return self.failed == 0

    @property
    def possibly_generator(self) -> bool:
        """It failed in a second in which loadgen could not keep up: the failure may be ours."""
        return self.failed_generator_limited > 0

    def add(self, readings: Sequence[Reading]) -> ClauseVerdict:
        mine = [r for r in readings if r.clause is self.clause]
        if not mine:
            return self
        failed = [r for r in mine if not r.passed]
        worst = self.worst
        for r in mine:
            if worst is None or _worse(r, worst):
                worst = r
        return dataclasses.replace(
            self,
            judged=self.judged + len(mine),
            failed=self.failed + len(failed),
            failed_generator_limited=self.failed_generator_limited
            + sum(r.generator_limited for r in failed),
            worst=worst,
            first_failure=self.first_failure or (failed[0] if failed else None),
        )


@dataclass(frozen=True, slots=True)
class SlaVerdict:
    spec: SlaSpec
    clauses: tuple[ClauseVerdict, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.clauses)

    @property
    def possibly_generator(self) -> bool:
        return any(c.possibly_generator for c in self.clauses)


def rate_problem(spec: SlaSpec, rate_pps: float, rate_per_target_pps: float) -> str | None:
    """Why `min_rate` can never be met by a plan asking these rates, if it cannot."""
    if spec.min_rate_pps is None:
        return None
    per_target = spec.scope is Scope.TARGET
    asked = rate_per_target_pps if per_target else rate_pps
    if spec.min_rate_pps <= asked:
        return None
    return (
        f"key 'sla.min_rate' = {spec.min_rate_pps:g}: above the {asked:g} pps the run asks"
        f"{' per target' if per_target else ''}, so it can never pass; lower min_rate or raise "
        "the rate"
    )


def whole_second(second: int, send_ns: int | None, *, stopped: bool = False) -> bool:
    """Whether the timetable had probes due through all of `second`: not the run's last, cut
    short by the end of sending (`send_ns`, None: open-ended), nor one in which sending was
    stopped early. Only whole seconds measure an achieved rate."""
    return not stopped and (send_ns is None or (second + 1) * NS_PER_S <= send_ns)


class SlaJudge:
    """Judges a run second by second as its seconds close, then over the whole run.

    `second()` returns the failed readings of that second (window "second"; none for "run")
    and keeps, per row, the probes sent in whole seconds: the run's achieved rate is their
    mean. `verdict(summary)` adds the run's readings (window "run") and returns the verdict.
    """

    def __init__(self, spec: SlaSpec, n_targets: int = 0) -> None:
        """`n_targets`: the run's, so a target that sent nothing in a whole second fails
        min_rate with scope "target" (a second's report lists only targets that sent)."""
        self.spec = spec
        self.n_targets = n_targets
        self._clauses = [ClauseVerdict(clause, limit) for clause, limit in spec.limits]
        self._whole_sent: dict[int, int] = {}
        self._whole_seconds = 0
        self._limited = False

    def _rows(self, per_target: Sequence[TargetStats], total: TargetStats) -> list[TargetStats]:
        return list(per_target) if self.spec.scope is Scope.TARGET else [total]

    def second(self, report: SecondReport, *, whole: bool) -> tuple[Reading, ...]:
        limited = report.generator is not None and report.generator.limited
        self._limited |= limited
        rows = self._rows(report.per_target, report.total)
        if whole:
            self._whole_seconds += 1
            for ts in rows:
                self._whole_sent[ts.target] = self._whole_sent.get(ts.target, 0) + ts.counts.sent
        if self.spec.window is not Window.SECOND:
            return ()
        readings: list[Reading] = []
        for ts in rows:
            rate = float(ts.counts.sent) if whole else None
            readings += judge(self.spec, Figures.of(ts, report.second, rate, limited))
        if whole and self.spec.scope is Scope.TARGET and self.spec.min_rate_pps is not None:
            silent = set(range(self.n_targets)) - {ts.target for ts in rows}
            for t in sorted(silent):  # only min_rate judges a window that sent nothing
                nothing = Figures(t, report.second, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, limited)
                readings += judge(self.spec, nothing)
        self._clauses = [c.add(readings) for c in self._clauses]
        return tuple(r for r in readings if not r.passed)

    def verdict(self, summary: RunSummary) -> SlaVerdict:
        if self.spec.window is Window.RUN:
            readings: list[Reading] = []
            for ts in self._rows(summary.per_target, summary.total):
                n = self._whole_seconds
                rate = self._whole_sent.get(ts.target, 0) / n if n else None
                readings += judge(self.spec, Figures.of(ts, None, rate, self._limited))
            clauses = tuple(c.add(readings) for c in self._clauses)
        else:
            clauses = tuple(self._clauses)
        return SlaVerdict(self.spec, clauses)


def evaluate(
    spec: SlaSpec,
    seconds: Iterable[SecondReport],
    summary: RunSummary,
    send_ns: int | None = None,
    stopped_from: int | None = None,
) -> SlaVerdict:
    """The verdict on a finished run from its closed seconds and summary; `send_ns` is how long
    sending lasted by the plan (None: open-ended), `stopped_from` the second in which it was
    stopped early, if it was."""
    judge_ = SlaJudge(spec, len(summary.per_target))
    for report in seconds:
        stopped = stopped_from is not None and report.second >= stopped_from
        judge_.second(report, whole=whole_second(report.second, send_ns, stopped=stopped))
    return judge_.verdict(summary)
