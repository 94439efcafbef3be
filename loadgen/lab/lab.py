"""Bringing a lab up: `lab_up(spec) -> Lab`, and the `Lab` handle that tears it down again.

Each host gets a namespace, a veth link to the root namespace with a /31 of 198.18.0.0/15 and
permanent neighbours, nftables counters of our probes on both ends (and numgen drops when
asked), tbf for our probes only when rate-limited, and a reflector process when the kernel's
own echo responder cannot do what the spec asks.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute

import loadgen
from loadgen.errors import LabError, PermissionProblem, TargetError
from loadgen.lab.addressing import (
    LAB_SPACE,
    NS_IFNAME,
    HostPlan,
    IPNetwork,
    nft_table,
    parse_subnet,
    pick_block,
    plan_hosts,
)
from loadgen.lab.hostcfg import host_seed, nft_ruleset, reflector_config, root_ruleset
from loadgen.lab.impair import ReflectorConfig
from loadgen.lab.netops import (
    create_host,
    in_netns,
    list_netns,
    nft,
    nft_counters,
    write_sysctl,
)
from loadgen.lab.reap import Teardown, stop_processes, teardown_state
from loadgen.lab.spec import LabSpec
from loadgen.lab.state import (
    STATE_DIR,
    LabHost,
    LabState,
    list_states,
    load_state,
    locked,
    run_dir,
    save_state,
    state_path,
)
from loadgen.lab.truth import HostTruth, host_truth, link_counters, query_reflector

READY_TIMEOUT_S = 30.0  # python + numpy start-up on a busy 2-core machine


class Lab:
    """A running lab. As a context manager it always tears down, also on exceptions."""

    def __init__(
        self, state: LabState, state_dir: Path, procs: list[subprocess.Popen[bytes]]
    ) -> None:
        self.state = state
        self.state_dir = state_dir
        self._procs = procs
        self._down: Teardown | None = None

    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return self.state.hosts

    def host(self, name: str) -> LabHost:
        for h in self.state.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def addresses(self) -> list[str]:
        return [h.address for h in self.state.hosts]

    def seed_of(self, host: LabHost) -> int:
        """The seed of this host's reflector (to replay its decisions with impair.Decider)."""
        return host_seed(self.state.seed, host.index)

    def select(self, tokens: Iterable[str]) -> list[str]:
        return lab_targets(self.state.hosts, tokens)

    def truth(self, hosts: Sequence[LabHost] | None = None) -> dict[str, HostTruth]:
        """Ground truth per host address (all hosts, or the given ones)."""
        chosen = self.state.hosts if hosts is None else hosts
        with IPRoute() as ipr:
            roots = {h.index: link_counters(ipr, h.root_ifname) for h in chosen}
        root_counters = nft_counters(None, nft_table(self.prefix), "netdev") if chosen else {}
        return {
            h.address: host_truth(
                address=h.address,
                name=h.name,
                netns=h.netns,
                ns_ifname=h.ns_ifname,
                table=h.nft_table,
                control_path=h.control_path,
                root_link=roots[h.index],
                root_counters=root_counters,
                index=h.index,
            )
            for h in chosen
        }

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until no reflector holds a delayed or reordered reply back."""
        deadline = time.monotonic() + timeout_s
        for h in self.state.hosts:
            while h.control_path and query_reflector(h.control_path).get("pending", 0):
                if time.monotonic() > deadline:
                    raise LabError(f"reflector of {h.name} still busy after {timeout_s}s")
                time.sleep(0.01)

    def close(self) -> Teardown:
        """Stop the reflectors and remove every namespace, link and table; idempotent."""
        if self._down is None:
            stopped = stop_processes(self._procs)
            down = teardown_state(self.state, self.state_dir)
            self._down = replace(down, killed_pids=stopped + down.killed_pids)
        return self._down

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def lab_targets(hosts: Sequence[LabHost], tokens: Iterable[str]) -> list[str]:
    """Expand "lab:all", "lab:<group>" and "lab:<host>" to addresses; other tokens pass through."""
    out: list[str] = []
    for token in tokens:
        if not token.startswith("lab:"):
            out.append(token)
            continue
        key = token[4:]
        hit = [h.address for h in hosts if key in ("all", h.group, h.name)]
        if not hit:
            names = sorted({h.group for h in hosts})
            raise TargetError(
                f"{token}: no such lab host or group; use lab:all or lab:<{'|'.join(names)}>"
            )
        out.extend(hit)
    return out


def _taken(state_dir: Path, family: int) -> list[IPNetwork]:
    """Blocks other labs hold and lab-range addresses already configured in this namespace."""
    taken: list[IPNetwork] = []
    for path in list_states(state_dir):
        try:
            taken.append(ipaddress.ip_network(load_state(path).subnet))
        except LabError:
            continue
    with IPRoute() as ipr:
        for addr in ipr.get_addr():
            net = ipaddress.ip_network(
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False
            )
            if net.version == family and net.overlaps(LAB_SPACE[family]):
                taken.append(net)
    return taken


def _allocate(
    spec: LabSpec, state_dir: Path, source: str
) -> tuple[IPNetwork, tuple[HostPlan, ...]]:
    if state_path(spec.prefix, state_dir).exists() or any(
        n.startswith(spec.prefix + "-") for n in list_netns()
    ):
        raise LabError(
            f"lab {spec.prefix} is already up; run `loadgen lab down {spec.prefix}` "
            "or pick another prefix"
        )
    taken = _taken(state_dir, spec.family)
    if spec.subnet is None:
        block = pick_block(spec.family, spec.host_count, taken)
    else:
        block = parse_subnet(spec.subnet, spec.family, spec.host_count, source=source)
        if any(block.overlaps(t) for t in taken):
            raise LabError(
                f"subnet {block} is in use by another lab or interface; "
                "leave subnet out to pick a free one"
            )
    return block, plan_hosts(spec, block)


def add_root_counters(table: str, index: int, ifname: str) -> None:
    """Host `index`'s probe counters on the root end of its link (netdev egress and ingress)."""
    try:
        nft(None, ["-f", "-"], stdin=root_ruleset(table, index, ifname))
    except LabError as exc:
        raise LabError(
            f"{exc}; the lab counts probes at the link's egress hook: it needs Linux 5.16+ "
            "(CONFIG_NETFILTER_EGRESS) and nftables 1.0.1+"
        ) from exc


def _to_host(plan: HostPlan, prefix: str, state_dir: Path) -> LabHost:
    reflector = plan.impairments.needs_reflector
    return LabHost(
        index=plan.index,
        name=plan.name,
        group=plan.group,
        address=plan.address,
        peer_address=plan.peer_address,
        prefixlen=plan.prefixlen,
        netns=plan.netns,
        root_ifname=plan.root_ifname,
        ns_ifname=NS_IFNAME,
        nft_table=nft_table(prefix),
        impairments=plan.impairments,
        responder="reflector" if reflector else "kernel",
        control_path=str(run_dir(prefix, state_dir) / f"{plan.name}.sock") if reflector else None,
    )


def _start_reflector(
    host: LabHost, cfg: ReflectorConfig, log_path: Path, detached: bool
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # `-m loadgen.lab.reflector` must import this very loadgen, installed or not.
    src = str(Path(loadgen.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # numpy threads: none needed
    cmd = [
        "ip",
        "netns",
        "exec",
        host.netns,
        sys.executable,
        "-m",
        "loadgen.lab.reflector",
        "--config",
        cfg.to_json(),
    ]
    if detached:  # `setsid -f` forks it off: it outlives `loadgen lab up`
        cmd = ["setsid", "-f", *cmd]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _wait_ready(
    hosts: list[LabHost],
    procs: dict[int, subprocess.Popen[bytes]],
    logs: dict[int, Path],
    timeout_s: float,
) -> dict[int, int]:
    """Wait until every reflector answers on its control socket; returns host index -> pid."""
    pids: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(hosts)
    while pending:
        for h in list(pending):
            proc = procs.get(h.index)
            if proc is not None and proc.poll() is not None:
                raise LabError(
                    f"reflector of lab host {h.name} exited "
                    f"({_log_tail(logs[h.index])}); see {logs[h.index]}"
                )
            if h.control_path and os.path.exists(h.control_path):
                try:
                    pids[h.index] = int(query_reflector(h.control_path)["pid"])
                except LabError:
                    continue  # bound but not listening yet
                pending.remove(h)
        if pending and time.monotonic() > deadline:
            raise LabError(
                f"reflector of lab host {pending[0].name} not ready after "
                f"{timeout_s:.0f}s; see {logs[pending[0].index]}"
            )
        if pending:
            time.sleep(0.02)
    return pids


def lab_up(
    spec: LabSpec, *, state_dir: Path = STATE_DIR, detached: bool = False, source: str = "lab spec"
) -> Lab:
    """Build the lab `spec` describes. `detached`: reflectors outlive this process (`lab up`).

    Everything is recorded in the state file before it is created; on any failure what was
    built is removed again before the error propagates.
    """
    if os.geteuid() != 0:
        raise PermissionProblem(
            "the lab needs root (namespaces, veth links, nftables); run as root"
        )
    with locked(state_dir):
        block, plans = _allocate(spec, state_dir, source)
        hosts = tuple(_to_host(p, spec.prefix, state_dir) for p in plans)
        state = LabState(
            spec.prefix, spec.family, str(block), spec.seed, os.getpid(), detached, hosts
        )
        save_state(state, state_dir)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        rdir = run_dir(spec.prefix, state_dir)
        rdir.mkdir(parents=True, exist_ok=True)
        with IPRoute() as ipr:
            for plan, host in zip(plans, hosts, strict=True):
                create_host(ipr, plan, host.impairments.rate_limit_bps)
                nft(host.netns, ["-f", "-"], stdin=nft_ruleset(host.nft_table, host.impairments))
                add_root_counters(host.nft_table, host.index, plan.root_ifname)
                if host.responder == "reflector":
                    in_netns(
                        host.netns, partial(write_sysctl, "net.ipv4.icmp_echo_ignore_all", "1")
                    )
        refl = [h for h in hosts if h.responder == "reflector"]
        logs = {h.index: rdir / f"{h.name}.log" for h in refl}
        for h in refl:
            stats = str(rdir / f"{h.name}.stats.json")
            cfg = reflector_config(h, host_seed(spec.seed, h.index), stats, not detached)
            procs[h.index] = _start_reflector(h, cfg, logs[h.index], detached)
            if detached:
                procs.pop(h.index).wait(READY_TIMEOUT_S)
        pids = _wait_ready(refl, procs, logs, READY_TIMEOUT_S)
        state = replace(
            state, hosts=tuple(replace(h, reflector_pid=pids.get(h.index)) for h in hosts)
        )
        save_state(state, state_dir)
    except BaseException:
        stop_processes(list(procs.values()))
        teardown_state(state, state_dir)
        raise
    return Lab(state, state_dir, list(procs.values()))


def attach_lab(prefix: str, *, state_dir: Path = STATE_DIR) -> Lab:
    """A handle on a lab brought up elsewhere (e.g. `loadgen lab up`); closing it takes it down."""
    path = state_path(prefix, state_dir)
    if not path.exists():
        raise LabError(f"no lab {prefix} is up; bring it up with `loadgen lab up PROFILE`")
    return Lab(load_state(path), state_dir, [])
