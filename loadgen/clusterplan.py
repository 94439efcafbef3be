"""A run across hosts: each `[[placement]]` planned as a one-box run of its own targets and
rate (`plan.make_plan`), then joined into one `RunPlan` whose target and worker numbers are the
run's, with the Ray node of every worker beside it. Pure: the caller resolves the placements'
targets to addresses; the agent on each node pins its workers to that node's CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from loadgen.errors import ProfileError
from loadgen.icmppath import IcmpPath
from loadgen.placement import Placement
from loadgen.plan import RunPlan, WorkerPlan, make_plan
from loadgen.profile import Profile
from loadgen.targets import Target
from loadgen.units import format_rate


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    plan: RunPlan  # the run's targets and workers, as one box would hold them
    nodes: tuple[str, ...]  # nodes[w]: the node of worker w

    def describe(self) -> str:
        """One line per node for `loadgen check`."""
        lines = [f"hosts: {len(set(self.nodes))} (Ray nodes; workers connect back over TCP)"]
        for node in dict.fromkeys(self.nodes):
            ws = [w for w in self.plan.workers if self.nodes[w.index] == node]
            n = sum(len(w.targets) for w in ws)
            rate = sum(w.rate_pps for w in ws)
            lines.append(
                f"  {node}: workers {[w.index for w in ws]}, {n} targets, {format_rate(rate)}"
            )
        return "\n".join(lines)


def place(
    profile: Profile,
    targets: Sequence[Target],
    placed: Sequence[tuple[Placement, tuple[str, ...]]],
    *,
    run_id: int,
    ident_base: int,
    icmp_path: IcmpPath = IcmpPath.RAW,
) -> ClusterPlan:
    """`placed`: each placement with its targets' addresses. Every target is in exactly one."""
    by_address = {t.address: t for t in targets}
    owner: dict[str, int] = {}
    for i, (p, addresses) in enumerate(placed):
        for a in addresses:
            if a not in by_address:
                raise ProfileError(
                    f"{profile.source}: placement {i} ({p.node}) names {a}, not one of the "
                    "profile's targets: add it to targets or leave it out"
                )
            if owner.setdefault(a, i) != i:
                raise ProfileError(f"{profile.source}: {a} is in placements {owner[a]} and {i}")
    left = [t.address for t in targets if t.address not in owner]
    if left:
        raise ProfileError(f"{profile.source}: {left[0]} is in no [[placement]]: give it one")
    workers: list[WorkerPlan] = []
    nodes: list[str] = []
    for p, addresses in placed:
        mine = [by_address[a] for a in dict.fromkeys(addresses)]
        local = [replace(t, index=k) for k, t in enumerate(mine)]
        rate = p.rate_pps or profile.rate_pps * len(mine) / len(targets)
        sub = make_plan(
            replace(profile, rate_pps=rate, workers=p.workers, cpus=None),
            local,
            cpus_available=range(p.workers),  # the node's agent pins them on its own CPUs
            run_id=run_id,
            ident_base=(ident_base + len(workers)) & 0xFFFF,
            icmp_path=icmp_path,
        )
        for w in sub.workers:
            mapped = tuple(mine[t.index] for t in w.targets)
            workers.append(replace(w, index=len(workers), targets=mapped))
            nodes.append(p.node)
    plan = RunPlan(
        run_id=run_id,
        targets=tuple(targets),
        workers=tuple(workers),
        rate_pps=sum(w.rate_pps for w in workers),
        profile=profile,
        icmp_path=icmp_path,
    )
    return ClusterPlan(plan, tuple(nodes))
