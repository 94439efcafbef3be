"""SLA verdicts, pure: every clause at, below and above its limit, both windows, both scopes,
whole seconds for the rate, generator-limited seconds; then the [sla] table and flags, the
JSONL records and summary lines, and the exit code a verdict gives."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.cli import EXIT_FAILED, EXIT_OK, EXIT_SLA, EXIT_USAGE, exit_code, main
from loadgen.coordinator import RunOutcome
from loadgen.errors import ProfileError
from loadgen.output.report import JSONL_SCHEMA_VERSION, JsonlWriter
from loadgen.output.summary import sla_lines, sla_rules
from loadgen.plan import RunPlan
from loadgen.profile import COMMAND_LINE, load_profile, parse_profile
from loadgen.runner import RunResult
from loadgen.selfcheck import GeneratorCheck, WorkerSchedule
from loadgen.sla import (
    Clause,
    Figures,
    Scope,
    SlaJudge,
    SlaSpec,
    SlaVerdict,
    Window,
    evaluate,
    judge,
    whole_second,
)
from loadgen.stats import (
    TOTAL,
    Anomalies,
    Counts,
    GeneratorSecond,
    RttStats,
    RunSummary,
    SecondReport,
    TargetSecond,
    TargetStats,
)
from loadgen.units import parse_percent

S = 1_000_000_000
MS = 1_000_000
NAMES = ("alpha", "bravo")


def stats(
    target: int,
    sent: int,
    lost: int = 0,
    *,
    p99: float = MS,
    rtt_max: int = 2 * MS,
    jitter: float = 0.1 * MS,
    second: int | None = None,
) -> TargetStats:
    """A row: `sent` probes, `lost` of them lost, the rest received with these RTT figures."""
    received = sent - lost
    rtt = RttStats(received, 1, p99 / 2, rtt_max, 0.0, p99 / 2, p99, p99, jitter)
    if not received:
        rtt = RttStats()
    args = (target, Counts(sent=sent, received=received, lost=lost), rtt, 0, 0, "kernel", "user")
    return TargetStats(*args) if second is None else TargetSecond(*args, second=second)


def second(
    s: int,
    rows: list[tuple[int, int]],
    *,
    limited: bool = False,
    stopped: bool = False,
    p99: float = MS,
) -> SecondReport:
    """Second `s` with (sent, lost) for targets 0, 1, ... and their sum as the total."""
    per = [stats(t, sent, lost, second=s, p99=p99) for t, (sent, lost) in enumerate(rows)]
    sent, lost = sum(r[0] for r in rows), sum(r[1] for r in rows)
    total = stats(TOTAL, sent, lost, second=s, p99=p99)
    gen = GeneratorSecond((), ("worker 0: fell behind",) if limited else (), stopped=stopped)
    assert isinstance(total, TargetSecond) and all(isinstance(p, TargetSecond) for p in per)
    return SecondReport(s, s * S, tuple(per), total, gen)  # type: ignore[arg-type]


def summary(rows: list[tuple[int, int]], n_seconds: int = 1, p99: float = MS) -> RunSummary:
    per = tuple(stats(t, sent, lost, p99=p99) for t, (sent, lost) in enumerate(rows))
    total = stats(TOTAL, sum(r[0] for r in rows), sum(r[1] for r in rows), p99=p99)
    return RunSummary(0, n_seconds, per, total, Anomalies())


def figures(sent: int = 1000, lost: int = 0, **kw: object) -> Figures:
    base: dict[str, object] = {
        "target": TOTAL,
        "second": None,
        "sent": sent,
        "lost": lost,
        "rtt_count": sent - lost,
        "p99_ns": float(MS),
        "max_ns": 2.0 * MS,
        "jitter_ns": 0.1 * MS,
        "rate_pps": 1000.0,
    }
    return Figures(**{**base, **kw})  # type: ignore[arg-type]


def one(spec: SlaSpec, f: Figures) -> bool:
    (reading,) = judge(spec, f)
    return reading.passed


# --- each clause, at its limit and on either side -----------------------------------------


def test_loss_at_the_limit_passes_one_more_fails() -> None:
    spec = SlaSpec(max_loss_ratio=Fraction(1, 1000))  # "0.1%"
    assert one(spec, figures(1000, 1))
    assert not one(spec, figures(1000, 2))
    assert one(spec, figures(2001, 2))  # 0.09995 %
    assert one(SlaSpec(max_loss_ratio=Fraction(0)), figures(1000, 0))
    assert not one(SlaSpec(max_loss_ratio=Fraction(0)), figures(10**9, 1))


@pytest.mark.parametrize(
    ("clause", "field", "figure"),
    [
        (Clause.MAX_P99, "max_p99_ns", "p99_ns"),
        (Clause.MAX_RTT, "max_rtt_ns", "max_ns"),
        (Clause.MAX_JITTER, "max_jitter_ns", "jitter_ns"),
    ],
)
def test_latency_clauses_pass_at_the_limit_fail_a_nanosecond_above(
    clause: Clause, field: str, figure: str
) -> None:
    spec = SlaSpec(**{field: 2 * MS})  # type: ignore[arg-type]
    assert spec.limits == ((clause, Fraction(2 * MS)),)
    for value, passes in ((2.0 * MS, True), (2.0 * MS + 1, False), (0.0, True)):
        changes: dict[str, Any] = {figure: value}
        assert one(spec, dataclasses.replace(figures(), **changes)) == passes


def test_no_reply_fails_every_latency_clause_and_nothing_sent_is_not_judged() -> None:
    spec = SlaSpec(max_p99_ns=10 * S, max_rtt_ns=10 * S, max_jitter_ns=10 * S)
    readings = judge(spec, figures(1000, 1000, rtt_count=0))
    assert [(r.clause, r.value, r.passed) for r in readings] == [
        (Clause.MAX_P99, None, False),
        (Clause.MAX_RTT, None, False),
        (Clause.MAX_JITTER, None, False),
    ]
    assert judge(SlaSpec(max_loss_ratio=Fraction(0), max_p99_ns=1), figures(0, 0)) == ()


def test_min_rate_at_the_limit_passes_and_is_judged_on_whole_seconds_only() -> None:
    spec = SlaSpec(min_rate_pps=1000.0)
    assert one(spec, figures(rate_pps=1000.0))
    assert not one(spec, figures(rate_pps=999.0))
    assert judge(spec, figures(rate_pps=None)) == ()


def test_whole_seconds_end_with_the_timetable_or_a_stop() -> None:
    assert [whole_second(s, 5 * S) for s in range(6)] == [True] * 5 + [False]
    assert [whole_second(s, 2 * S + 1) for s in range(3)] == [True, True, False]
    assert whole_second(10**6, None)
    assert not whole_second(0, None, stopped=True)


# --- windows and scopes --------------------------------------------------------------------


def test_window_second_names_each_failing_second_and_target() -> None:
    spec = SlaSpec(max_loss_ratio=Fraction(1, 100), window=Window.SECOND, scope=Scope.TARGET)
    judge_ = SlaJudge(spec)
    assert judge_.second(second(0, [(100, 0), (100, 1)]), whole=True) == ()
    breaches = judge_.second(second(1, [(100, 5), (100, 2)]), whole=True)
    assert [(b.target, b.second, b.value) for b in breaches] == [(0, 1, 0.05), (1, 1, 0.02)]
    assert judge_.second(second(2, [(100, 0), (100, 3)]), whole=True)[0].target == 1
    (loss,) = judge_.verdict(summary([(300, 5), (300, 6)], 3)).clauses
    assert (loss.passed, loss.judged, loss.failed) == (False, 6, 3)
    assert loss.first_failure is not None and loss.first_failure.second == 1
    assert loss.worst is not None and (loss.worst.target, loss.worst.value) == (0, 0.05)


def test_window_second_total_scope_judges_the_sum_of_targets() -> None:
    spec = SlaSpec(max_loss_ratio=Fraction(1, 100), window=Window.SECOND)
    # Target 1 loses 2 %, but over both targets the second loses 1 %: it passes.
    reports = [second(0, [(100, 0), (100, 2)])]
    verdict = evaluate(spec, reports, summary([(100, 0), (100, 2)]), send_ns=S)
    assert verdict.passed and verdict.clauses[0].judged == 1
    scoped = SlaSpec(max_loss_ratio=Fraction(1, 100), window=Window.SECOND, scope=Scope.TARGET)
    assert not evaluate(scoped, reports, summary([(100, 0), (100, 2)]), send_ns=S).passed


def test_window_run_judges_the_totals_not_the_worst_second() -> None:
    spec = SlaSpec(max_loss_ratio=Fraction(1, 100))
    reports = [second(0, [(100, 3)]), second(1, [(100, 0)]), second(2, [(100, 0)])]
    verdict = evaluate(spec, reports, summary([(300, 3)], 3), send_ns=3 * S)
    (loss,) = verdict.clauses
    assert verdict.passed and loss.judged == 1
    assert loss.worst is not None and (loss.worst.second, loss.worst.value) == (None, 0.01)
    per_second = SlaSpec(max_loss_ratio=Fraction(1, 100), window=Window.SECOND)
    assert not evaluate(per_second, reports, summary([(300, 3)], 3), send_ns=3 * S).passed


def test_run_rate_is_the_mean_of_whole_seconds_per_target_or_in_total() -> None:
    # 2.5 s of sending at 1000 pps per target: second 2 is half a second and not judged.
    reports = [
        second(0, [(1000, 0), (1000, 0)]),
        second(1, [(1000, 0), (900, 0)]),
        second(2, [(500, 0), (500, 0)]),
    ]
    run = summary([(2500, 0), (2400, 0)], 3)
    per_target = SlaSpec(min_rate_pps=960.0, scope=Scope.TARGET)
    (rate,) = evaluate(per_target, reports, run, send_ns=2_500 * MS).clauses
    assert (rate.judged, rate.failed) == (2, 1)
    assert rate.worst is not None and (rate.worst.target, rate.worst.value) == (1, 950.0)
    in_total = SlaSpec(min_rate_pps=1950.0)
    (total,) = evaluate(in_total, reports, run, send_ns=2_500 * MS).clauses
    assert total.passed and total.worst is not None and total.worst.value == 1950.0
    each = SlaSpec(min_rate_pps=1000.0, window=Window.SECOND, scope=Scope.TARGET)
    (sec,) = evaluate(each, reports, run, send_ns=2_500 * MS).clauses
    assert (sec.judged, sec.failed) == (4, 1)


def test_a_run_without_a_whole_second_has_no_rate_to_judge() -> None:
    spec = SlaSpec(min_rate_pps=1000.0)
    verdict = evaluate(spec, [second(0, [(500, 0)])], summary([(500, 0)]), send_ns=S // 2)
    assert verdict.passed and verdict.clauses[0].judged == 0
    assert sla_lines(verdict, NAMES)[1] == "  PASS min_rate >= 1k pps: nothing to judge"


def test_a_whole_second_that_sent_nothing_fails_min_rate() -> None:
    # Second 1 is whole, but nothing went out (in total), or nothing to target 1 (per target).
    reports = [second(0, [(100, 0), (100, 0)]), second(1, [(100, 0)])]
    run = summary([(200, 0), (100, 0)], 2)
    per_second = SlaSpec(min_rate_pps=90.0, window=Window.SECOND, scope=Scope.TARGET)
    (rate,) = evaluate(per_second, reports, run, send_ns=10 * S).clauses
    assert (rate.judged, rate.failed) == (4, 1)
    assert rate.first_failure is not None
    assert (rate.first_failure.target, rate.first_failure.second) == (1, 1)
    assert rate.first_failure.value == 0.0
    per_run = SlaSpec(min_rate_pps=90.0, scope=Scope.TARGET)
    (mean,) = evaluate(per_run, reports, run, send_ns=10 * S).clauses
    assert mean.worst is not None and (mean.worst.target, mean.worst.value) == (1, 50.0)
    empty = [second(0, [(100, 0), (100, 0)]), second(1, [(0, 0), (0, 0)])]
    total = SlaSpec(min_rate_pps=90.0, window=Window.SECOND)
    (rate,) = evaluate(total, empty, run, send_ns=10 * S).clauses
    assert (rate.judged, rate.failed) == (2, 1)


def test_stopped_seconds_do_not_fail_min_rate() -> None:
    spec = SlaSpec(min_rate_pps=1000.0, window=Window.SECOND)
    reports = [second(0, [(1000, 0)]), second(1, [(300, 0)], stopped=True)]
    verdict = evaluate(spec, reports, summary([(1300, 0)], 2), stopped_from=1)
    assert verdict.passed and verdict.clauses[0].judged == 1


def test_the_self_check_marks_seconds_from_a_stop_on() -> None:
    check = GeneratorCheck([WorkerSchedule(0, 1000.0, None)], start_ns=0)
    assert not check.second(0, {0: 1000}).stopped
    check.on_stop(2 * S + S // 2)
    assert not check.second(1, {0: 1000}).stopped
    assert check.second(2, {0: 500}).stopped and check.second(3, {0: 0}).stopped


def test_generator_limited_seconds_fail_min_rate_and_say_it_may_be_ours() -> None:
    spec = SlaSpec(min_rate_pps=1000.0, max_loss_ratio=Fraction(0), window=Window.SECOND)
    reports = [second(0, [(1000, 0)]), second(1, [(700, 1)], limited=True)]
    verdict = evaluate(spec, reports, summary([(1700, 1)], 2), send_ns=10 * S)
    loss, rate = verdict.clauses
    assert not rate.passed and rate.failed_generator_limited == 1 and rate.possibly_generator
    assert not loss.passed and loss.possibly_generator and verdict.possibly_generator
    text = "\n".join(sla_lines(verdict, NAMES))
    assert "FAIL min_rate >= 1k pps: 700 pps (total, second 1); failed 1 of 2" in text
    assert "1 of these failures came in seconds in which loadgen itself could not keep up" in text
    clean = evaluate(spec, reports[:1], summary([(1000, 0)]), send_ns=10 * S)
    assert clean.passed and not clean.possibly_generator


def test_the_streaming_judge_and_evaluate_agree() -> None:
    spec = SlaSpec(max_p99_ns=MS, window=Window.SECOND, scope=Scope.TARGET)
    reports = [second(s, [(10, 0), (10, 0)], p99=(s + 1) * MS / 2) for s in range(4)]
    run = summary([(40, 0), (40, 0)], 4, p99=MS)
    judge_ = SlaJudge(spec)
    breaches = [b for r in reports for b in judge_.second(r, whole=True)]
    assert judge_.verdict(run) == evaluate(spec, reports, run)
    assert [(b.second, b.target) for b in breaches] == [(2, 0), (2, 1), (3, 0), (3, 1)]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 100_000),  # the limit in thousandths of a percent
)
def test_loss_verdict_is_exact_integer_arithmetic(sent: int, lost: int, milli_pct: int) -> None:
    lost = min(lost, sent)
    spec = SlaSpec(max_loss_ratio=Fraction(milli_pct, 100_000))
    assert one(spec, figures(sent, lost)) == (lost * 100_000 <= milli_pct * sent)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3 * MS)), min_size=1, max_size=8))
def test_per_second_counts_and_worst_follow_the_seconds(rows: list[tuple[int, int]]) -> None:
    spec = SlaSpec(max_p99_ns=MS, window=Window.SECOND)
    reports = [second(s, [(sent, 0)], p99=p99) for s, (sent, p99) in enumerate(rows)]
    (p99,) = evaluate(spec, reports, summary([(1, 0)], len(rows))).clauses
    judged = [(s, v) for s, (sent, v) in enumerate(rows) if sent]
    assert p99.judged == len(judged)
    assert p99.failed == sum(v > MS for _, v in judged)
    if judged:
        worst = max(v for _, v in judged)
        assert p99.worst is not None and p99.worst.value == worst
        first = next((s for s, v in judged if v > MS), None)
        assert (p99.first_failure.second if p99.first_failure else None) == first


# --- profile table, flags, JSONL, summary lines, exit codes -------------------------------


def test_sla_table_parses_with_the_unit_parsers() -> None:
    table = {
        "max_loss": "0.1%",
        "max_p99": "2ms",
        "max_rtt": 0.5,
        "max_jitter": "250us",
        "min_rate": "1.9k",
        "window": "second",
        "scope": "target",
    }
    spec = parse_profile({"targets": "127.0.0.1", "sla": table}, source="t").sla
    assert spec == SlaSpec(
        Fraction(1, 1000), 2 * MS, S // 2, 250_000, 1900.0, Window.SECOND, Scope.TARGET
    )
    assert parse_profile({"targets": "127.0.0.1"}, source="t").sla is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_loss": 0.5}, "key 'sla.max_loss' = 0.5: ambiguous without a percent sign; write"),
        ({"max_loss": "0.1"}, "ambiguous without a percent sign"),
        ({"max_loss": "120%"}, "out of range 0%..100%"),
        ({"max_p99": "2xs"}, "key 'sla.max_p99' = \"2xs\": unknown duration unit"),
        ({"min_rate": "-5"}, "key 'sla.min_rate' = \"-5\": must be more than 0"),
        ({"max_p99": "2ms", "window": "minute"}, "key 'sla.window' = \"minute\": unknown value"),
        ({"max_p99": "2ms", "scope": "targets"}, 'did you mean "target"?'),
        ({"max_p99x": "2ms"}, "key 'sla.max_p99x' = \"2ms\": unknown key; did you mean 'max_p99'?"),
        ({"window": "second"}, "no clause to judge the run by; add a clause such as max_loss"),
        ("0.1%", "key 'sla' = \"0.1%\": expected a table"),
    ],
)
def test_bad_sla_values_are_one_line(table: object, message: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile({"targets": "127.0.0.1", "sla": table}, source="p.toml")
    text = str(err.value)
    assert message in text and text.startswith("p.toml: ") and "\n" not in text


def test_flags_add_to_the_file_table_and_a_bad_flag_names_the_command_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.toml"
    path.write_text('targets = ["127.0.0.1"]\n[sla]\nmax_loss = "1%"\nwindow = "second"\n')
    spec = load_profile(str(path), {"sla": {"max_p99": "2ms"}}).sla
    assert spec == SlaSpec(Fraction(1, 100), 2 * MS, window=Window.SECOND)
    assert load_profile(str(path), {"sla": {"max_loss": "0%"}}).sla == SlaSpec(
        Fraction(0), window=Window.SECOND
    )
    with pytest.raises(ProfileError, match=f"^{COMMAND_LINE}: key 'sla.max_p99' = \"2q\""):
        load_profile(str(path), {"sla": {"max_p99": "2q"}})
    path.write_text('targets = ["127.0.0.1"]\n[sla]\nmax_loss = "1"\n')
    with pytest.raises(ProfileError, match=rf"^{path}: key 'sla.max_loss' = \"1\""):
        load_profile(str(path), {"sla": {"max_p99": "2ms"}})


def test_bad_sla_flag_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "127.0.0.1", "--sla-max-loss", "0.1"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("loadgen: error: command line: key 'sla.max_loss' = \"0.1\"")
    assert main(["ping", "127.0.0.1", "--sla-window", "second"]) == EXIT_USAGE
    assert "no clause to judge the run by" in capsys.readouterr().err


def test_a_min_rate_above_the_rate_asked_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ping", "127.0.0.1", "-r", "100", "--sla-min-rate", "101"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == (
        "loadgen: error: command line: key 'sla.min_rate' = 101: above the 100 pps the run "
        "asks, so it can never pass; lower min_rate or raise the rate"
    )
    args = ["127.0.0.1,127.0.0.2", "-r", "100", "--sla-min-rate", "60", "--sla-scope", "target"]
    assert main(["ping", *args]) == EXIT_USAGE
    assert "above the 50 pps the run asks per target" in capsys.readouterr().err


@given(st.decimals(0, 100, places=4))
def test_percent_reads_back_exactly(pct: Decimal) -> None:
    assert parse_percent(f"{pct}%", key="k") == Fraction(pct) / 100


def test_check_prints_the_clauses_a_run_will_be_judged_by(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text('targets = ["127.0.0.1"]\nrate = 500\n[sla]\nmax_loss = "0.1%"\n')
    assert main(["check", str(path)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1] == (
        "sla: max_loss <= 0.1%; judged over the run for all targets together"
    )
    spec = SlaSpec(max_p99_ns=2 * MS, min_rate_pps=450.0, window=Window.SECOND)
    assert sla_rules(spec) == (
        "sla: max_p99 <= 2ms, min_rate >= 450 pps; judged over every second for all targets "
        "together"
    )


def _verdict(passed: bool) -> SlaVerdict:
    spec = SlaSpec(max_loss_ratio=Fraction(0), window=Window.SECOND, scope=Scope.TARGET)
    lost = 0 if passed else 1
    return evaluate(spec, [second(0, [(10, 0), (10, lost)])], summary([(10, 0), (10, lost)]))


def test_jsonl_has_a_breach_per_failed_clause_and_second_and_the_verdict(tmp_path: Path) -> None:
    verdict = _verdict(passed=False)
    report = second(0, [(10, 0), (10, 1)])
    breaches = SlaJudge(verdict.spec).second(report, whole=True)
    path = tmp_path / "out.jsonl"
    with JsonlWriter(str(path), [4, 4]) as out:
        out.write_second(report, NAMES, breaches)
        out.write_summary(summary([(10, 0), (10, 1)]), NAMES, sla=verdict)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    (breach,) = [r for r in rows if r["type"] == "sla_breach"]
    assert breach == {
        "type": "sla_breach",
        "v": JSONL_SCHEMA_VERSION,
        "second": 0,
        "t": 0.0,
        "clause": "max_loss",
        "target": 1,
        "name": "bravo",
        "value": 10.0,
        "limit": 0.0,
        "unit": "%",
        "generator_limited": False,
    }
    sla = rows[-1]["sla"]
    assert (sla["passed"], sla["window"], sla["scope"]) == (False, "second", "target")
    (clause,) = sla["clauses"]
    assert (clause["clause"], clause["judged"], clause["failed"]) == ("max_loss", 2, 1)
    assert clause["first_failure"] == {
        "target": 1,
        "name": "bravo",
        "second": 0,
        "value": 10.0,
        "generator_limited": False,
    }


def test_summary_lines_say_pass_or_fail_per_clause_with_the_value_and_where() -> None:
    assert sla_lines(_verdict(passed=False), NAMES) == [
        "SLA: FAIL (1 of 1 clauses), judged over every second for every target",
        "  FAIL max_loss <= 0%: 10% (bravo, second 0); failed 1 of 2",
    ]
    spec = SlaSpec(max_p99_ns=2 * MS, min_rate_pps=5.0)
    verdict = evaluate(spec, [second(0, [(10, 0)], p99=1.5 * MS)], summary([(10, 0)], p99=MS))
    assert sla_lines(verdict, NAMES) == [
        "SLA: PASS, judged over the run for all targets together",
        "  PASS max_p99 <= 2ms: worst 1 ms (total, the run)",
        "  PASS min_rate >= 5 pps: worst 10 pps (total, the run)",
    ]


def _result(verdict: SlaVerdict | None, *, failures: tuple[str, ...] = ()) -> RunResult:
    outcome = RunOutcome(summary([(10, 0)]), failures, False, (), 0, 0, ())
    plan = RunPlan(0, (), (), 10.0, parse_profile({"targets": "127.0.0.1"}, source="t"))
    return RunResult(plan, outcome, (), None, verdict)


def test_exit_code_3_on_a_failed_sla_and_a_failed_run_wins() -> None:
    assert exit_code(_result(None)) == EXIT_OK
    assert exit_code(_result(_verdict(passed=True))) == EXIT_OK
    assert exit_code(_result(_verdict(passed=False))) == EXIT_SLA == 3
    assert exit_code(_result(_verdict(passed=False), failures=("worker 0 died",))) == EXIT_FAILED
