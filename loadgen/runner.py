"""One run, start to finish: resolve targets, plan, (lab up), coordinate, report, (lab down).

Owns the order of those steps and the exit code; knows nothing of sockets or of rendering
details. `cli` calls `run_profile`; tests call `execute` to get the outcome as a value.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from loadgen.coordinator import Coordinator, RunOutcome, default_cpus
from loadgen.errors import TargetError
from loadgen.output.display import make_display
from loadgen.output.report import JsonlWriter, summary_text
from loadgen.plan import RunPlan, make_plan
from loadgen.profile import Profile
from loadgen.stats import SecondReport
from loadgen.targets import Target, resolve_targets


@dataclass(frozen=True, slots=True)
class RunResult:
    plan: RunPlan
    outcome: RunOutcome
    warnings: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        total = self.outcome.summary.total.counts
        if self.outcome.failures or total.received + total.late == 0:
            return 1
        return 0


@contextlib.contextmanager
def _lab_for(profile: Profile) -> Iterator[tuple[Target, ...] | None]:
    """Bring the profile's lab up for the run and always tear it down afterwards."""
    if profile.lab is None:
        yield None
        return
    from loadgen.lab.run import lab_for_profile  # noqa: PLC0415 (only runs with a lab load it)

    with lab_for_profile(profile) as targets:
        yield targets


def plan_run(
    profile: Profile, lab_targets: tuple[Target, ...] | None = None
) -> tuple[RunPlan, list[str]]:
    warnings: list[str] = []
    if lab_targets is not None:
        targets: tuple[Target, ...] = lab_targets
    else:
        resolved = resolve_targets(
            profile.targets, max_targets=profile.max_targets, family=profile.family
        )
        warnings += [
            f"cannot resolve {spec!r} ({why}); it is left out" for spec, why in resolved.unresolved
        ]
        targets = resolved.targets
    if not targets:
        raise TargetError("no targets to probe: give at least one address, range or host name")
    plan = make_plan(
        profile,
        targets,
        cpus_available=default_cpus(),
        run_id=secrets.randbits(32),
        ident_base=secrets.randbits(16),
    )
    return plan, warnings


def execute(profile: Profile, *, plain: bool = True, quiet: bool = True) -> RunResult:
    """Run a profile and return the outcome (the JSONL export is written if the profile asks)."""
    with _lab_for(profile) as lab_targets:
        plan, warnings = plan_run(profile, lab_targets)
        for w in warnings:
            print(f"loadgen: warning: {w}", file=sys.stderr)
        display = make_display(plan, plain=plain, quiet=quiet)
        writer = JsonlWriter(profile.jsonl) if profile.jsonl else None
        names = [t.name for t in plan.targets]

        def on_second(report: SecondReport) -> None:
            if writer is not None:
                writer.write_second(report, names)

        try:
            outcome = Coordinator(plan, display=display, on_second=on_second).run()
            if writer is not None:
                writer.write_summary(outcome.summary, names, _extra(plan, outcome))
        finally:
            if writer is not None:
                writer.close()
    return RunResult(plan, outcome, tuple(warnings))


def _extra(plan: RunPlan, outcome: RunOutcome) -> dict[str, object]:
    return {
        "run_id": plan.run_id,
        "requested_pps": plan.rate_pps,
        "workers": len(plan.workers),
        "tx_path": plan.profile.tx_path,
        "tx_timestamps": plan.profile.tx_timestamps,
        "interrupted": outcome.interrupted,
        "failures": list(outcome.failures),
        "duration_s": (outcome.end_ns - outcome.start_ns) / 1e9,
        "send_errors": sum(w.send_errors for w in outcome.workers),
        "rx_dropped": sum(w.rx_dropped for w in outcome.workers),
        "generator_limited_seconds": list(outcome.limited_seconds),
    }


def run_profile(profile: Profile, *, plain: bool) -> int:
    result = execute(profile, plain=plain, quiet=False)
    names = [t.name for t in result.plan.targets]
    print(summary_text(result.outcome.summary, names))
    for failure in result.outcome.failures:
        print(f"loadgen: error: {failure}", file=sys.stderr)
    limited = result.outcome.limited_seconds
    if limited:
        shown = ", ".join(str(s) for s in limited[:10]) + (" ..." if len(limited) > 10 else "")
        print(
            f"WARNING: loadgen itself could not keep up in {len(limited)} second(s) ({shown}): "
            "loss in those seconds may be ours, not the network's; see generator_limits in "
            "the JSONL export, lower the rate or add workers",
        )
    if result.outcome.interrupted:
        print("loadgen: interrupted: the summary covers what was sent until then", file=sys.stderr)
    return result.exit_code
