"""How a run is split across workers: which worker probes which targets (of one address family
each, so a worker owns one socket), on which CPU, with which ICMP identifier, at what rate and
how many probes in all. The one owner of the probe
total (a duration is the half-open interval [0, duration)) and of the copy of the profile's
probe settings that workers get. Pure: the caller supplies the CPUs it may use, the run id and
the identifier base. `describe` renders the plan for `loadgen check`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from loadgen.errors import ProfileError, TargetError
from loadgen.icmppath import LABELS, IcmpPath, check_tx_path
from loadgen.profile import Profile
from loadgen.targets import Target
from loadgen.units import NS_PER_S, bad_value, format_duration, format_rate
from loadgen.wire.messages import ProbeSettings
from loadgen.wire.probekind import IMPLEMENTED, ProbeKind
from loadgen.wire.tcp import PORT_BLOCK, PORT_BLOCKS, port_base

_SHOWN_TARGETS = 5
_NO_PAYLOAD = (ProbeKind.TCP_SYN, ProbeKind.TCP_CONNECT)  # `size` does not apply to them


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    index: int
    cpu: int | None  # None: not pinned (no CPU list was available)
    ident: int  # ICMP identifier, unique per worker; the BPF filter demultiplexes on it
    run_id: int
    targets: tuple[Target, ...]  # never empty, one family; each target has exactly one worker
    rate_pps: float  # this worker's total: the per-target rate times len(targets)
    probes: int | None  # what it sends in all (count and duration); None: until stopped
    duration_ns: int | None  # its deadline, which only cuts a generator behind its timetable
    settings: ProbeSettings
    ports: tuple[int, ...] = ()  # targets[i] is probed on ports[i]; () for a kind without ports

    @property
    def rate_per_target_pps(self) -> float:
        return self.rate_pps / len(self.targets)

    @property
    def family(self) -> int:
        """The address family (4 or 6) of every target of this worker: its socket's."""
        return self.targets[0].family


@dataclass(frozen=True, slots=True)
class RunPlan:
    run_id: int
    targets: tuple[Target, ...]
    workers: tuple[WorkerPlan, ...]
    rate_pps: float  # effective total, after the per-target cap
    profile: Profile
    icmp_path: IcmpPath = IcmpPath.RAW  # the socket kind every worker opens

    @property
    def rate_per_target_pps(self) -> float:
        return self.rate_pps / len(self.targets)

    @property
    def send_ns(self) -> int | None:
        """How long sending lasts: the duration, or count probes at the per-target rate,
        whichever is shorter; None when the run goes on until interrupted."""
        limits = [] if self.profile.duration_ns is None else [self.profile.duration_ns]
        if self.profile.count is not None:
            limits.append(round(self.profile.count * NS_PER_S / self.rate_per_target_pps))
        return min(limits) if limits else None

    @property
    def probes(self) -> int | None:
        """Probes the run sends in all; None when it goes on until interrupted."""
        totals = [w.probes for w in self.workers]
        return None if None in totals else sum(t or 0 for t in totals)


def probes_within(duration_ns: int, rate_pps: float) -> int:
    """Probes a timetable of rate_pps puts in the half-open [0, duration): probe k is due at
    k / rate, so those with k / rate < duration. 2k pps for 5 s is 10,000 (probe 10,000 is due
    at 5 s, the first instant after). Counted as the pacer counts what is due at the last
    nanosecond of the interval, with the same float arithmetic, so the two always agree (and a
    product a hair off a whole number, 0.1 pps x 10 s, cannot add a probe)."""
    if duration_ns <= 0:
        return 0
    return int((duration_ns - 1) * rate_pps / NS_PER_S) + 1


def probes_per_target(profile: Profile, rate_pps: float, n_targets: int) -> list[int] | None:
    """What each target is sent in all, None when the run is open-ended. With a duration the
    run's timetable (rate_pps over every target in turn, probe k to target k mod n) decides:
    the first N mod n targets get one more than the rest, and the run sends exactly
    probes_within(duration, rate). A count caps every target."""
    if profile.duration_ns is None:
        return None if profile.count is None else [profile.count] * n_targets
    total = probes_within(profile.duration_ns, rate_pps)
    share, extra = divmod(total, n_targets)
    counts = [share + (t < extra) for t in range(n_targets)]
    return counts if profile.count is None else [min(c, profile.count) for c in counts]


def probe_settings(profile: Profile) -> ProbeSettings:
    """The profile's probe settings, copied here once for every worker."""
    return ProbeSettings(
        size=profile.size,
        ttl=profile.ttl,
        tos=profile.tos,
        timeout_ns=profile.timeout_ns,
        linger_ns=profile.delay_ns,
        timestamps=profile.timestamps,
        tx_timestamps=profile.tx_timestamps,
        tx_path=profile.tx_path,
        interface=profile.interface,
        source=profile.source_address,
        kind=profile.probe,
        stamp_cos=profile.stamp_cos,
    )


def target_ports(profile: Profile, n_targets: int) -> tuple[int, ...]:
    """The port of each target, the profile's ports dealt round-robin in target order (target
    i gets ports[i mod len(ports)]); () for a kind without ports."""
    ports = profile.ports
    return tuple(ports[i % len(ports)] for i in range(n_targets)) if ports else ()


def source_port_blocks(plan: RunPlan) -> list[tuple[int, int]]:
    """tcp-syn: each worker's source ports, (first, last); [] for other kinds."""
    if plan.profile.probe is not ProbeKind.TCP_SYN:
        return []
    return [(port_base(w.ident), port_base(w.ident) + PORT_BLOCK - 1) for w in plan.workers]


def _check_kind(profile: Profile, n_workers: int) -> None:
    """One line for a kind this build cannot send, or cannot send the way the profile asks."""
    kind = profile.probe
    if kind not in IMPLEMENTED:
        sendable = ", ".join(f'"{kind}"' for kind in sorted(IMPLEMENTED))
        raise ProfileError(
            f'{profile.source}: probe = "{kind}" is not implemented in this build; '
            f"use one of {sendable}"
        )
    if kind is not ProbeKind.ICMP and profile.tx_path == "packet":
        raise ProfileError(
            f'{profile.source}: tx_path = "packet" sends ICMP echo only; set tx_path = "ip" '
            f'for probe = "{kind}"'
        )
    if kind is ProbeKind.TCP_SYN and n_workers > len(PORT_BLOCKS):
        raise ProfileError(
            f"{profile.source}: tcp-syn has {len(PORT_BLOCKS)} blocks of source ports, one per "
            f"worker, and the plan has {n_workers} workers; set workers = {len(PORT_BLOCKS)} "
            "or fewer"
        )


def _worker_cpus(profile: Profile, cpus_available: Sequence[int]) -> list[int | None]:
    if profile.cpus is None:
        return list(cpus_available) if cpus_available else [None]
    if cpus_available:
        missing = [cpu for cpu in profile.cpus if cpu not in cpus_available]
        if missing:
            allowed = ", ".join(str(cpu) for cpu in cpus_available)
            raise ProfileError(
                f"{profile.source}: "
                + bad_value(
                    "cpus",
                    list(profile.cpus),
                    f"CPU {missing[0]} is not available to this process (allowed: {allowed})",
                    "pick CPUs from that list, or leave cpus out",
                )
            )
    return list(profile.cpus)


def _deal(targets: Sequence[Target], n_workers: int) -> list[tuple[Target, ...]]:
    """Each worker's share: the targets of each family dealt round-robin over that family's
    workers, which are shared out by target count (every family present gets at least one,
    so a mixed run has at least two workers). Shares keep the run's order."""
    by_family: dict[int, list[Target]] = {}
    for target in targets:
        by_family.setdefault(target.family, []).append(target)
    groups = sorted(by_family.items())
    counts = [1] * len(groups)
    for _ in range(max(n_workers, len(groups)) - len(groups)):
        # The next worker goes to the family with the most targets per worker that still
        # has a target without a worker of its own.
        open_ = [i for i, (_, ts) in enumerate(groups) if counts[i] < len(ts)]
        if not open_:
            break
        pick = max(open_, key=lambda i: (len(groups[i][1]) / counts[i], -i))
        counts[pick] += 1
    shares: list[tuple[Target, ...]] = []
    for (_, family_targets), workers in zip(groups, counts, strict=True):
        shares.extend(tuple(family_targets[w::workers]) for w in range(workers))
    return shares


def _check_families(profile: Profile, targets: Sequence[Target]) -> None:
    """One line for what the run cannot do with the families it was given."""
    six = next((t for t in targets if t.family == 6), None)
    if six is not None and profile.tx_path == "packet":
        raise ProfileError(
            f'{profile.source}: tx_path = "packet" sends IPv4 only, and {six.address} is IPv6; '
            'set tx_path = "ip" or probe IPv4 targets'
        )
    if profile.source_address:
        version = 6 if ":" in profile.source_address else 4
        other = next((t for t in targets if t.family != version), None)
        if other is not None:
            raise ProfileError(
                f"{profile.source}: source {profile.source_address} is IPv{version} but target "
                f"{other.address} is IPv{other.family}; give targets of one family with -S/--source"
            )


def make_plan(
    profile: Profile,
    targets: Sequence[Target],
    *,
    cpus_available: Sequence[int],
    run_id: int,
    ident_base: int,
    icmp_path: IcmpPath = IcmpPath.RAW,
) -> RunPlan:
    """Deal each family's targets round-robin over its workers (`_deal`; one family: worker w
    gets targets[w::W]), give each worker the per-target rate times its share, pin workers
    round-robin on the CPUs, and number their ICMP identifiers from ident_base (on the
    datagram path the kernel picks each socket's own instead)."""
    if not targets:
        raise TargetError("no targets to probe; name at least one, like 127.0.0.1")
    if [t.index for t in targets] != list(range(len(targets))):
        raise ValueError("target indexes must be 0..n-1 in order (resolve_targets makes them)")
    if not 0 <= run_id < 2**32:
        raise ValueError(f"run_id {run_id} does not fit the 32-bit payload field")
    _check_families(profile, targets)
    check_tx_path(icmp_path, profile.tx_path)
    cpus = _worker_cpus(profile, cpus_available)
    n_targets = len(targets)
    shares = _deal(targets, min(profile.workers or len(cpus), n_targets))
    _check_kind(profile, len(shares))
    assert len(shares) <= 0x10000, "ICMP identifiers would repeat"
    rate_pps = profile.rate_pps
    if profile.rate_per_target_pps is not None:
        rate_pps = min(rate_pps, profile.rate_per_target_pps * n_targets)
    per_target = probes_per_target(profile, rate_pps, n_targets)
    settings = replace(probe_settings(profile), icmp_socket=str(icmp_path))
    ports = target_ports(profile, n_targets)
    workers = []
    for w, share in enumerate(shares):
        # A worker sends its targets in turn from its first: the targets given one more probe
        # are the first of the run, so they are the first of each worker's share too.
        # One product and one division: every target gets the same rate to within an ulp,
        # and the shares add up to the total.
        share_pps = rate_pps * len(share) / n_targets
        probes = None if per_target is None else sum(per_target[t.index] for t in share)
        if probes is not None and profile.duration_ns is not None:
            # Dealt by family, a worker may hold more of those first targets than its
            # timetable fits in the duration (one family's targets first): it sends what fits.
            probes = min(probes, probes_within(profile.duration_ns, share_pps))
        workers.append(
            WorkerPlan(
                index=w,
                cpu=cpus[w % len(cpus)],
                ident=(ident_base + w) & 0xFFFF,
                run_id=run_id,
                targets=share,
                rate_pps=share_pps,
                probes=probes,
                duration_ns=profile.duration_ns,
                settings=settings,
                ports=tuple(ports[t.index] for t in share) if ports else (),
            )
        )
    return RunPlan(
        run_id=run_id,
        targets=tuple(targets),
        workers=tuple(workers),
        rate_pps=rate_pps,
        profile=profile,
        icmp_path=icmp_path,
    )


def _target_label(target: Target) -> str:
    if target.name == target.address:
        return target.address
    return f"{target.name} ({target.address})"


# What carries each kind of probe (ICMP: the path the privileges settled on).
_KIND_PATHS = {
    ProbeKind.TCP_SYN: "TCP SYN via raw socket",
    ProbeKind.TCP_CONNECT: "TCP connects through the kernel (a socket per probe)",
    ProbeKind.UDP: "UDP via datagram socket",
    ProbeKind.STAMP: "STAMP over UDP via datagram socket",
}


def path_label(plan: RunPlan) -> str:
    """What carries the run's probes, for people (plan, table header, summary)."""
    kind = plan.profile.probe
    return LABELS[plan.icmp_path] if kind is ProbeKind.ICMP else _KIND_PATHS[kind]


def _stop_rule(plan: RunPlan) -> str:
    profile, send_ns = plan.profile, plan.send_ns
    if send_ns is None:
        return "stop: when interrupted (Ctrl-C); set count or duration for a bounded run"
    rules = []
    if profile.count is not None:
        rules.append(f"after {profile.count} probes per target")
    if profile.duration_ns is not None:
        rules.append(f"after {format_duration(profile.duration_ns)}")
    return (
        f"stop: {' or '.join(rules)}; sending takes about {format_duration(send_ns)}, "
        f"then up to {format_duration(profile.delay_ns)} for the last replies"
    )


def _ports_text(ports: tuple[int, ...]) -> str:
    if not ports:
        return ""
    shown = ", ".join(map(str, ports[:_SHOWN_TARGETS]))
    if len(ports) > _SHOWN_TARGETS:
        shown += f" and {len(ports) - _SHOWN_TARGETS} more"
    return f" to port {shown}" if len(ports) == 1 else f" to ports {shown} (round-robin)"


def _syn_lines(plan: RunPlan) -> list[str]:
    blocks = source_port_blocks(plan)
    if not blocks:
        return []
    shown = ", ".join(f"{first}-{last}" for first, last in blocks)
    rst = (
        "dropped by a temporary nftables table (suppress_rst)"
        if plan.profile.suppress_rst
        else "sent by this host's kernel to every SYN-ACK (suppress_rst = true drops them)"
    )
    return [f"source ports: {shown} (worker by worker)", f"RSTs: {rst}"]


def describe(plan: RunPlan) -> str:
    """The plan for people: targets, rates, limits and one line per worker."""
    profile = plan.profile
    shown = ", ".join(_target_label(t) for t in plan.targets[:_SHOWN_TARGETS])
    more = len(plan.targets) - _SHOWN_TARGETS
    if more > 0:
        shown += f", and {more} more"
    rate = f"rate: {format_rate(plan.rate_pps)} in total, {format_rate(plan.rate_per_target_pps)}"
    rate += " per target"
    if plan.rate_pps < profile.rate_pps:
        rate += (
            f" (rate {format_rate(profile.rate_pps)} capped by rate_per_target "
            f"{format_rate(profile.rate_per_target_pps or 0.0)})"
        )
    tx = "kernel TX timestamps" if profile.tx_timestamps else "user-space TX times"
    lines = [
        f"profile: {profile.source}",
        f"run id: 0x{plan.run_id:08x}",
        f"targets: {len(plan.targets)}: {shown}",
        rate,
        f"probes: {profile.probe}{_ports_text(profile.ports)}, "
        + ("" if profile.probe in _NO_PAYLOAD else f"{profile.size}-byte payload, ")
        + f"ttl {profile.ttl}, "
        f"tos 0x{profile.tos:02x}"
        + (f", interface {profile.interface}" if profile.interface else "")
        + (f", from {profile.source_address}" if profile.source_address else ""),
        _stop_rule(plan),
        f"timeout: {format_duration(profile.timeout_ns)} (later replies count as late); "
        f"delay: {format_duration(profile.delay_ns)} (then unanswered probes count as lost)",
        f"timestamps: {profile.timestamps} RX, {tx}",
        f"sent through: {path_label(plan)}, "
        + (
            "one per worker (the kernel routes each probe)"
            if profile.tx_path == "ip"
            else 'and a packet socket per worker, to next hops read at start (tx_path = "packet")'
        )
        + (", identifiers picked by the kernel" if plan.icmp_path is IcmpPath.DATAGRAM else ""),
        *_syn_lines(plan),
        f"workers: {len(plan.workers)}",
        "  worker   cpu   ident  targets          rate    per target  family",
    ]
    for worker in plan.workers:
        cpu = "any" if worker.cpu is None else str(worker.cpu)
        lines.append(
            f"  {worker.index:>6}  {cpu:>4}  0x{worker.ident:04x}  {len(worker.targets):>7}  "
            f"{format_rate(worker.rate_pps):>12}  {format_rate(worker.rate_per_target_pps):>12}"
            f"  IPv{worker.family}"
        )
    total = sum(worker.rate_pps for worker in plan.workers)
    lines.append(
        f"  {'total':>6}  {'':>4}  {'':>6}  {len(plan.targets):>7}  {format_rate(total):>12}"
    )
    return "\n".join(lines)
