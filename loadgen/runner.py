"""One run, start to finish: resolve targets, plan, (lab up), coordinate, export, (lab down).

Owns the order of those steps and returns what happened as a value (`RunResult`); it prints
nothing and picks no exit code (that is `cli`). `plan_run` is the one way a plan is made, for
`loadgen run` and `loadgen check` alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from loadgen.clusterplan import ClusterPlan, place
from loadgen.connlimits import check_connect_capacity
from loadgen.coordinator import Coordinator, Display, RunOutcome, default_cpus
from loadgen.errors import ProfileError, TargetError, UsageError
from loadgen.icmppath import IcmpPath, settle
from loadgen.net.linkpath import check_interface
from loadgen.net.privilege import read_privileges
from loadgen.net.rstguard import suppressing_rsts
from loadgen.net.sockets import check_source, socket_refusal
from loadgen.net.tcpconnect import local_limits
from loadgen.output.exports import Exports
from loadgen.output.prometheus import MetricsDisplay, MetricsExporter
from loadgen.plan import RunPlan, make_plan, source_port_blocks
from loadgen.profile import Profile
from loadgen.remote import Streams
from loadgen.sla import SlaJudge, SlaVerdict, rate_problem, whole_second
from loadgen.stats import SecondReport
from loadgen.targets import Target, resolve_targets
from loadgen.wire.probekind import ProbeKind


@dataclass(frozen=True, slots=True)
class RunResult:
    plan: RunPlan
    outcome: RunOutcome
    warnings: tuple[str, ...]  # targets left out, before the run
    export_error: str | None = None  # the JSONL export failed: one line naming file and fix
    sla: SlaVerdict | None = None  # the verdict on the profile's [sla] clauses, if it has any

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
        # Only ICMP probes have a choice of socket (TCP SYN needs a raw socket; TCP connect,
        # UDP and STAMP run as anyone).
        icmp_path=settle(profile.icmp_socket, read_privileges(), socket_refusal)
        if profile.probe is ProbeKind.ICMP
        else IcmpPath.RAW,
    )
    if profile.sla is not None:
        problem = rate_problem(profile.sla, plan.rate_pps, plan.rate_per_target_pps)
        if problem:
            raise ProfileError(f"{profile.source}: {problem}")
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


CLUSTER_HINT = "--cluster needs Ray: pip install 'loadgen[cluster]'"


def across_hosts(profile: Profile, plan: RunPlan) -> ClusterPlan | None:
    """The plan split over the profile's [[placement]] nodes; None without placements."""
    if not profile.placements:
        return None
    placed = []
    for p in profile.placements:
        resolved = resolve_targets(p.targets, max_targets=profile.max_targets, family="auto")
        if resolved.unresolved:
            spec, why = resolved.unresolved[0]
            raise TargetError(
                f"{profile.source}: placement {p.node}: cannot resolve {spec!r} ({why})"
            )
        placed.append((p, tuple(t.address for t in resolved.targets)))
    return place(
        profile,
        plan.targets,
        placed,
        run_id=plan.run_id,
        ident_base=plan.workers[0].ident,
        icmp_path=plan.icmp_path,
    )


def _on_cluster(profile: Profile, plan: RunPlan, address: str) -> tuple[RunPlan, Streams]:
    """The plan across hosts and the streams its workers connect back on (ray loads here)."""
    if profile.suppress_rst:
        raise ProfileError(
            f"{profile.source}: suppress_rst drops RSTs on this host only, not on the Ray "
            "nodes: leave it off with --cluster (or drop the RSTs on each node yourself)"
        )
    hosts = across_hosts(profile, plan)
    if hosts is None:
        raise ProfileError(
            f"{profile.source}: --cluster places workers by [[placement]] tables: give one per "
            "node (node, targets, rate)"
        )
    try:
        from loadgen import cluster  # noqa: PLC0415 (the one-box path never loads ray)
    except ImportError as exc:
        raise UsageError(CLUSTER_HINT) from exc
    host = cluster.connect(address)
    return hosts.plan, Streams(host=host, launcher=cluster.RayLauncher(hosts.nodes))


def execute(
    profile: Profile,
    *,
    display: Callable[[RunPlan], Display] = lambda plan: Display(),
    warn: Callable[[str], None] = lambda text: None,
    export_failed: Callable[[str], None] = lambda text: None,
    command: Sequence[str] = (),
    cluster: str | None = None,
) -> RunResult:
    """Run a profile and return the outcome. `display(plan)` makes what shows the run, `warn`
    hears about targets left out before it starts, `export_failed` the moment an export
    fails (the run goes on; the failure is in the result as well). `command`: the command
    line, for the JSONL's "run" header. `cluster`: a Ray cluster's address (or "auto") whose
    nodes run the workers, as the profile's placements say."""
    with _lab_for(profile) as lab_targets:
        plan, warnings = plan_run(profile, lab_targets)
        streams = None
        if cluster is not None:
            plan, streams = _on_cluster(profile, plan, cluster)
        for w in warnings:
            warn(w)
        shown = display(plan)
        exports = Exports(plan, command)
        try:
            exporter = _metrics(profile, plan)
        except BaseException:
            exports.close()
            raise
        if exporter is not None:
            shown = MetricsDisplay(shown, exporter)
            if exporter.address is not None:
                shown.note(f"metrics at http://{exporter.address}/metrics")
        names = [t.name for t in plan.targets]
        judge = None if profile.sla is None else SlaJudge(profile.sla, len(plan.targets))

        def on_second(report: SecondReport) -> None:
            breaches = () if judge is None else judge.second(report, whole=_whole(plan, report))
            before = exports.error  # an export that failed is skipped, the others go on
            exports.second(report, names, breaches)
            if exports.error is not None and exports.error != before:
                export_failed(exports.error)

        try:
            with _rst_guard(plan):
                coordinator = Coordinator(plan, display=shown, on_second=on_second, streams=streams)
                outcome = coordinator.run()
            verdict = None if judge is None else judge.verdict(outcome.summary)
            exports.summary(outcome.summary, names, _extra(plan, outcome), verdict)
        finally:
            exports.close()
            if exporter is not None:
                exporter.close()
    return RunResult(plan, outcome, tuple(warnings), exports.error, verdict)


def _whole(plan: RunPlan, report: SecondReport) -> bool:
    """Whether the plan had probes due through all of this second and sending went on."""
    stopped = report.generator is not None and report.generator.stopped
    return whole_second(report.second, plan.send_ns, stopped=stopped)


def _metrics(profile: Profile, plan: RunPlan) -> MetricsExporter | None:
    """The Prometheus endpoint and/or textfile the profile asks for, serving before the run."""
    if profile.metrics is None and profile.metrics_textfile is None:
        return None
    return MetricsExporter(
        profile.metrics,
        profile.metrics_textfile,
        profile.metrics_labels,
        [t.name for t in plan.targets],
    )


def _extra(plan: RunPlan, outcome: RunOutcome) -> dict[str, object]:
    return {
        "run_id": plan.run_id,
        "requested_pps": plan.rate_pps,
        "workers": len(plan.workers),
        "tx_path": plan.profile.tx_path,
        "icmp_socket": str(plan.icmp_path),
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
        "clocks": [dataclasses.asdict(c) for c in outcome.clocks],
    }
