"""One run, start to finish: resolve targets, plan, (lab up), coordinate, export, (lab down).

Owns the order of those steps and returns what happened as a value (`RunResult`); it prints
nothing and picks no exit code (that is `cli`). `plan_run` is the one way a plan is made, for
`loadgen run` and `loadgen check` alike.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from loadgen.connlimits import check_connect_capacity
from loadgen.coordinator import Coordinator, Display, RunOutcome, default_cpus
from loadgen.errors import TargetError
from loadgen.net.linkpath import check_interface
from loadgen.net.rstguard import suppressing_rsts
from loadgen.net.sockets import check_source
from loadgen.net.tcpconnect import local_limits
from loadgen.output.report import JsonlWriter
from loadgen.plan import RunPlan, make_plan, source_port_blocks
from loadgen.profile import Profile
from loadgen.stats import SecondReport
from loadgen.targets import Target, resolve_targets
from loadgen.wire.probekind import ProbeKind


@dataclass(frozen=True, slots=True)
class RunResult:
    plan: RunPlan
    outcome: RunOutcome
    warnings: tuple[str, ...]  # targets left out, before the run
    export_error: str | None = None  # the JSONL export failed: one line naming file and fix

    @property
    def replies(self) -> int:
        """Good replies, in time or late: 0 means nothing came back at all."""
        total = self.outcome.summary.total.counts
        return total.received + total.late


@contextlib.contextmanager
def _lab_for(profile: Profile) -> Iterator[tuple[Target, ...] | None]:
    """Bring the profile's lab up for the run and always tear it down afterwards."""
    if profile.lab is None:
        yield None
        return
    from loadgen.lab.run import lab_for_profile  # noqa: PLC0415 (only runs with a lab load it)

    with lab_for_profile(profile) as targets:
        yield targets


@contextlib.contextmanager
def _rst_guard(plan: RunPlan) -> Iterator[None]:
    """With suppress_rst, this host's RSTs from the SYN probes' ports are dropped meanwhile."""
    if not plan.profile.suppress_rst:
        yield
        return
    with suppressing_rsts(source_port_blocks(plan)):
        yield


def plan_run(
    profile: Profile,
    lab_targets: tuple[Target, ...] | None = None,
    *,
    run_id: int | None = None,
    ident_base: int | None = None,
) -> tuple[RunPlan, list[str]]:
    """Resolve the targets, check the interface and source address against this host, and
    make the plan; returns it with warnings about targets left out. The run id and identifier
    base are random unless given."""
    warnings: list[str] = []
    if lab_targets is not None:
        targets: tuple[Target, ...] = lab_targets
    elif profile.lab is not None and not profile.targets:
        raise TargetError(
            f"{profile.source}: the targets are the hosts of its [lab], known once the lab is "
            "up: `loadgen run` it, or give targets"
        )
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
    if profile.source_address is not None:
        check_source(profile.source_address)
    if profile.interface is not None:
        check_interface(profile.interface, [t.address for t in targets])
    plan = make_plan(
        profile,
        targets,
        cpus_available=default_cpus(),
        run_id=secrets.randbits(32) if run_id is None else run_id,
        ident_base=secrets.randbits(16) if ident_base is None else ident_base,
    )
    if profile.probe is ProbeKind.TCP_CONNECT:
        limits = local_limits()
        for w in plan.workers:
            check_connect_capacity(
                worker_rate_pps=w.rate_pps,
                target_rate_pps=w.rate_per_target_pps,
                timeout_ns=profile.timeout_ns,
                limits=limits,
            )
    return plan, warnings


def execute(
    profile: Profile,
    *,
    display: Callable[[RunPlan], Display] = lambda plan: Display(),
    warn: Callable[[str], None] = lambda text: None,
    export_failed: Callable[[str], None] = lambda text: None,
) -> RunResult:
    """Run a profile and return the outcome. `display(plan)` makes what shows the run, `warn`
    hears about targets left out before it starts, `export_failed` the moment the JSONL
    export fails (the run goes on; the failure is in the result as well)."""
    with _lab_for(profile) as lab_targets:
        plan, warnings = plan_run(profile, lab_targets)
        for w in warnings:
            warn(w)
        shown = display(plan)
        families = [t.family for t in plan.targets]
        writer = JsonlWriter(profile.jsonl, families) if profile.jsonl else None
        names = [t.name for t in plan.targets]

        def on_second(report: SecondReport) -> None:
            if writer is not None and writer.error is None:
                writer.write_second(report, names)
                if writer.error is not None:
                    export_failed(writer.error)

        try:
            with _rst_guard(plan):
                outcome = Coordinator(plan, display=shown, on_second=on_second).run()
            if writer is not None:
                writer.write_summary(outcome.summary, names, _extra(plan, outcome))
        finally:
            if writer is not None:
                writer.close()
    error = writer.error if writer is not None else None
    return RunResult(plan, outcome, tuple(warnings), error)


def _extra(plan: RunPlan, outcome: RunOutcome) -> dict[str, object]:
    return {
        "run_id": plan.run_id,
        "requested_pps": plan.rate_pps,
        "workers": len(plan.workers),
        "tx_path": plan.profile.tx_path,
        "tx_timestamps": plan.profile.tx_timestamps,
        "probe": str(plan.profile.probe),
        "suppress_rst": plan.profile.suppress_rst,
        "interface": plan.profile.interface,
        "source": plan.profile.source_address,
        "interrupted": outcome.interrupted,
        "failures": list(outcome.failures),
        "duration_s": (outcome.end_ns - outcome.start_ns) / 1e9,
        "send_errors": sum(w.send_errors for w in outcome.workers),
        "rx_dropped": sum(w.rx_dropped for w in outcome.workers),
        "generator_limited_seconds": list(outcome.limited_seconds),
    }
