"""Bringing a lab up: `lab_up(spec) -> Lab`, and the `Lab` handle that tears it down again.

Each host gets a namespace, a veth link to the root namespace with a /31 of 198.18.0.0/15 and a
/127 of 2001:2::/48 and permanent neighbours for both, nftables counters of our probes (of
either IP version) on both ends (and numgen drops when asked), tbf for our probes only when
rate-limited, and a reflector process per IP version when the kernel's own echo responder
cannot do what the spec asks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute

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
from loadgen.lab.hostcfg import host_seed, nft_ruleset, root_ruleset
from loadgen.lab.netops import (
    create_host,
    list_netns,
    nft,
    nft_counters,
)
from loadgen.lab.procs import ReflectorKey, leave_echo_to_reflectors, start_reflectors
from loadgen.lab.reap import Teardown, stop_processes, teardown_state
from loadgen.lab.spec import LabSpec
from loadgen.lab.stamphost import relay_truth, start_relay
from loadgen.lab.state import (
    STATE_DIR,
    LabHost,
    LabState,
    held_blocks,
    list_states,
    load_state,
    locked,
    run_dir,
    save_state,
    state_path,
)
from loadgen.lab.tcphost import apply_tcp, read_tcp_truth, start_listener
from loadgen.lab.tcptruth import TcpTruth
from loadgen.lab.truth import HostTruth, host_truth, link_counters


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

    def addresses(self, version: int = 4) -> list[str]:
        return [h.address_of(version) for h in self.state.hosts]

    def seed_of(self, host: LabHost, version: int = 4) -> int:
        """The seed of this host's reflector for IP `version` (to replay its decisions with
        impair.Decider)."""
        return host_seed(self.state.seed, host.index, version)

    def select(self, tokens: Iterable[str]) -> list[str]:
        return lab_targets(self.state.hosts, tokens)

    def truth(
        self, hosts: Sequence[LabHost] | None = None, version: int = 4
    ) -> dict[str, HostTruth]:
        """Ground truth per (host, IP version), keyed by the host's address of `version` (all
        hosts, or the given ones): each version has its own counters, drops, shaper and
        reflector. A run of both versions merges `truth(hosts, 4)` and `truth(hosts, 6)`."""
        chosen = self.state.hosts if hosts is None else hosts
        if version == 6 and any(not h.address6 for h in chosen):
            raise LabError(f"lab {self.prefix} has no IPv6 addresses; bring it up again")
        with IPRoute() as ipr:
            roots = {h.index: link_counters(ipr, h.root_ifname, version) for h in chosen}
        root_counters = nft_counters(None, nft_table(self.prefix), "netdev") if chosen else {}
        return {
            h.address_of(version): host_truth(
                address=h.address_of(version),
                name=h.name,
                netns=h.netns,
                ns_ifname=h.ns_ifname,
                table=h.nft_table,
                control_path=h.control_path_of(version),
                root_link=roots[h.index],
                root_counters=root_counters,
                index=h.index,
                version=version,
            )
            for h in chosen
        }

    def tcp_truth(
        self, hosts: Sequence[LabHost] | None = None, version: int = 4
    ) -> dict[str, TcpTruth]:
        """TCP truth per (host, IP version) of the hosts that serve TCP, keyed by address."""
        chosen = [
            h for h in (self.state.hosts if hosts is None else hosts) if h.impairments.tcp_ports
        ]
        root_counters = nft_counters(None, nft_table(self.prefix), "netdev") if chosen else {}
        return {
            h.address_of(version): read_tcp_truth(h, self.prefix, root_counters, version)
            for h in chosen
        }

    def relay_truth(self, host: LabHost) -> dict[str, Any]:
        """What the STAMP delay relay of `host` held so far, per direction (`holds.Holds`)."""
        return relay_truth(host)

    def wait_idle(self, timeout_s: float = 10.0, hosts: Sequence[LabHost] | None = None) -> None:
        """Wait until every reflector (of `hosts`, else all) has read every probe that got past
        its host's nftables (or seen its socket drop it) and holds no reply back. A reflector
        kept off its CPU has requests queued that its counts do not show yet; the nft counter
        has them as soon as they are queued."""
        deadline = time.monotonic() + timeout_s
        for h in self.state.hosts if hosts is None else hosts:
            for version in (4, 6):
                while h.control_path_of(version) and (behind := self._behind(h, version)):
                    if time.monotonic() > deadline:
                        raise LabError(f"reflector of {h.name} {behind} after {timeout_s:.0f}s")
                    time.sleep(0.01)

    def _behind(self, host: LabHost, version: int) -> str:
        """What host's reflector of `version` has still to do ("" when nothing)."""
        t = self.truth([host], version)[host.address_of(version)]
        r = t.reflector
        assert r is not None  # only hosts with a reflector are asked
        unread = t.responder_missed - r.socket_drops
        if unread > 0:
            return f"has {unread} requests unread (IPv{version})"
        return f"holds {r.pending} replies (IPv{version})" if r.pending else ""

    def settled(self, host: LabHost, version: int = 4) -> bool:
        """Whether every probe sent to `host` at `version` is through: arrived, read by its
        responder, answered, and every answer back at the root end (so in the sender's socket).
        False for good on a host whose link or responder dropped any since it came up."""
        t = self.truth([host], version)[host.address_of(version)]
        idle = t.reflector is None or t.reflector.pending == 0
        return idle and t.lost_towards_host == t.responder_missed == t.lost_on_the_way_back == 0

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


LAB_TOKENS = {"lab": 4, "lab6": 6}  # "lab:<x>" names IPv4 addresses, "lab6:<x>" IPv6 ones


def lab_targets(hosts: Sequence[LabHost], tokens: Iterable[str]) -> list[str]:
    """Expand "lab:all", "lab:<group>" and "lab:<host>" to IPv4 addresses ("lab6:..." to IPv6
    ones); other tokens pass through."""
    out: list[str] = []
    for token in tokens:
        head, sep, key = token.partition(":")
        if not sep or head not in LAB_TOKENS:
            out.append(token)
            continue
        hit = [h.address_of(LAB_TOKENS[head]) for h in hosts if key in ("all", h.group, h.name)]
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
        for block in held_blocks(path):
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(block))
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
) -> tuple[IPNetwork, IPNetwork, tuple[HostPlan, ...]]:
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
    block6 = pick_block(6, spec.host_count, _taken(state_dir, 6))
    return block, block6, plan_hosts(spec, block, block6)


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
    rdir = run_dir(prefix, state_dir)
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
        control_path=str(rdir / f"{plan.name}.sock") if reflector else None,
        address6=plan.address6,
        peer_address6=plan.peer_address6,
        prefixlen6=plan.prefixlen6,
        control_path6=str(rdir / f"{plan.name}.6.sock") if reflector else None,
    )


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
        block, block6, plans = _allocate(spec, state_dir, source)
        hosts = tuple(_to_host(p, spec.prefix, state_dir) for p in plans)
        state = LabState(
            spec.prefix,
            spec.family,
            str(block),
            spec.seed,
            os.getpid(),
            detached,
            hosts,
            subnet6=str(block6),
        )
        save_state(state, state_dir)
    procs: dict[ReflectorKey, subprocess.Popen[bytes]] = {}
    listeners: list[subprocess.Popen[bytes]] = []  # TCP listeners and STAMP relays it owns
    listener_pids: dict[int, int] = {}
    relays: dict[int, tuple[int, str]] = {}  # host index -> the relay's pid and control socket
    try:
        rdir = run_dir(spec.prefix, state_dir)
        rdir.mkdir(parents=True, exist_ok=True)
        with IPRoute() as ipr:
            for plan, host in zip(plans, hosts, strict=True):
                create_host(ipr, plan, host.impairments.rate_limit_bps)
                for version in (4, 6):
                    rules = nft_ruleset(host.nft_table, host.impairments, version)
                    nft(host.netns, ["-f", "-"], stdin=rules)
                add_root_counters(host.nft_table, host.index, plan.root_ifname)
                if host.impairments.tcp_ports:
                    apply_tcp(host, spec.prefix, host.nft_table)
                if host.responder == "reflector":
                    leave_echo_to_reflectors(host.netns)
        refl = [h for h in hosts if h.responder == "reflector"]
        pids = start_reflectors(refl, spec.seed, rdir, detached, procs)
        for h in hosts:
            if h.impairments.tcp_open:
                proc, listener_pids[h.index] = start_listener(h, rdir, detached)
                if not detached:
                    listeners.append(proc)
            if h.impairments.stamp_port:
                proc, pid, control = start_relay(h, rdir, detached)
                relays[h.index] = (pid, control)
                if not detached:
                    listeners.append(proc)
        state = replace(
            state,
            hosts=tuple(
                replace(
                    h,
                    reflector_pid=pids.get((h.index, 4)),
                    reflector_pid6=pids.get((h.index, 6)),
                    listener_pid=listener_pids.get(h.index),
                    relay_pid=relays.get(h.index, (None, None))[0],
                    relay_control_path=relays.get(h.index, (None, None))[1],
                )
                for h in hosts
            ),
        )
        save_state(state, state_dir)
    except BaseException:
        stop_processes(list(procs.values()) + listeners)
        teardown_state(state, state_dir)
        raise
    return Lab(state, state_dir, list(procs.values()) + listeners)


def attach_lab(prefix: str, *, state_dir: Path = STATE_DIR) -> Lab:
    """A handle on a lab brought up elsewhere (e.g. `loadgen lab up`); closing it takes it down."""
    path = state_path(prefix, state_dir)
    if not path.exists():
        raise LabError(f"no lab {prefix} is up; bring it up with `loadgen lab up PROFILE`")
    return Lab(load_state(path), state_dir, [])
