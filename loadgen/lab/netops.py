"""Kernel operations for the lab: namespaces, veth links, addresses, neighbours, the shaper
(htb + u32 + tbf), nftables, sysctls.

Netlink goes through pyroute2; nftables through the `nft` tool run inside the namespace
(`ip netns exec`); /proc reads and sysctl writes run in a short-lived thread switched into the
namespace with setns(2), since /proc/sys/net and /proc/thread-self/net follow the caller's
network namespace. Every failure becomes a LabError that says what to do.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from loadgen.errors import LabError, PermissionProblem
from loadgen.lab.addressing import NS_IFNAME, HostPlan
from loadgen.lab.probematch import (
    FROM_HOST,
    FROM_HOST6,
    TOWARDS_HOST,
    TOWARDS_HOST6,
    u32_keys,
    u32_keys6,
)
from loadgen.wire.family import Icmp6Type, IcmpType

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
TOOL_TIMEOUT_S = 10.0
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
HTB_HANDLE = 0x10000  # 1:, the shaper's root
# Per IP version: the class the filters put our probes in (1:1, 1:2) and the tbf under it
# (10:, 20:), so each version's probes have a shaper, and a count, of their own.
PROBE_CLASS = {4: 0x10001, 6: 0x10002}
TBF_HANDLE = {4: 0xA0000, 6: 0x140000}
SHAPER_FIX = "rate_limit needs sch_htb, cls_u32 and sch_tbf in the kernel (modprobe them)"
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that has joined namespace `name`; the caller stays put."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            box["err"] = LabError(f"namespace {name} does not exist; bring the lab up again")
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                box["err"] = PermissionProblem(
                    f"setns({name}) failed: {os.strerror(err)}; run as root (CAP_SYS_ADMIN)"
                )
                return
        finally:
            os.close(fd)
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["err"] = exc

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "err" in box:
        raise box["err"]
    value: T = box["value"]
    return value


def write_sysctl(key: str, value: str) -> None:
    """Write one sysctl (dotted name) in the calling thread's namespace."""
    with open("/proc/sys/" + key.replace(".", "/"), "w", encoding="ascii") as f:
        f.write(value)


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp: pairs of lines `Proto: Name Name ...` and `Proto: 1 2 ...`."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) % 2:
        raise ValueError("snmp text has a header line without its value line")
    out: dict[str, dict[str, int]] = {}
    for head, vals in zip(lines[0::2], lines[1::2], strict=True):
        proto, names = head.split(":", 1)
        vproto, values = vals.split(":", 1)
        if proto != vproto or len(names.split()) != len(values.split()):
            raise ValueError(f"snmp lines for {proto!r} and {vproto!r} do not pair up")
        out[proto] = dict(zip(names.split(), map(int, values.split()), strict=True))
    return out


SNMP6_GROUPS = ("Ip6", "Icmp6", "Udp6")


def parse_snmp6(text: str) -> dict[str, int]:
    """/proc/net/snmp6: one `Name value` pair per line, e.g. "Icmp6InEchos 3"."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_snmp() -> dict[str, dict[str, int]]:
    """/proc/net/snmp of the calling thread's namespace, e.g. ["Icmp"]["InEchos"], and the
    IPv6 figures of /proc/net/snmp6 the same way, e.g. ["Icmp6"]["InEchos"]."""
    with open("/proc/thread-self/net/snmp", encoding="ascii") as f:
        out = parse_snmp(f.read())
    try:
        with open("/proc/thread-self/net/snmp6", encoding="ascii") as f:
            six = parse_snmp6(f.read())
    except FileNotFoundError:  # a kernel without IPv6
        six = {}
    for group in SNMP6_GROUPS:  # e.g. "Icmp6InEchos" as ["Icmp6"]["InEchos"]
        out[group] = {k.removeprefix(group): v for k, v in six.items() if k.startswith(group)}
    return out


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def ns_pids(name: str) -> list[int]:
    """Processes whose network namespace is `name`."""
    try:
        inode = os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                continue  # gone meanwhile, or not ours to look at
    return pids


def _nl(what: str, fn: Callable[[], T], fix: str = "run `loadgen lab down --all` and retry") -> T:
    try:
        return fn()
    except NetlinkError as exc:
        if exc.code == 1:  # EPERM
            raise PermissionProblem(f"{what}: not permitted; run as root") from exc
        raise LabError(f"{what}: {exc}; {fix}") from exc


# IPv6 is on (every host has an address of each family) but says nothing by itself: no
# link-local address (so no DAD and no MLD report for its solicited-node group), no router
# solicitations, no autoconfiguration from router advertisements. Set before the link comes up.
QUIET_IPV6 = {
    "addr_gen_mode": "1",
    "accept_ra": "0",
    "autoconf": "0",
    "dad_transmits": "0",
    "router_solicitations": "0",
}
NUD_PERMANENT = 0x80
# An IPv6 address added before its link is up stays tentative for a while after: packets to it
# are discarded (Ip6InAddrErrors) until then. `nodad` makes it usable at once.
IFA_F_NODAD = 0x02


def quiet_ipv6(ifname: str) -> None:
    """Switch off IPv6's own chatter on `ifname` (in the calling thread's namespace)."""
    for key, value in QUIET_IPV6.items():
        write_sysctl(f"net.ipv6.conf.{ifname}.{key}", value)


def _mac(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def create_host(ipr: IPRoute, plan: HostPlan, rate_bps: int) -> None:
    """Namespace, veth pair, addresses, routes, permanent neighbours, link state and the shaper
    for one host."""
    _nl(f"create namespace {plan.netns}", lambda: netns.create(plan.netns))
    peer = {"ifname": NS_IFNAME, "net_ns_fd": plan.netns}
    _nl(
        f"create link {plan.root_ifname}",
        lambda: ipr.link("add", ifname=plan.root_ifname, kind="veth", peer=peer),
    )
    idx = ipr.link_lookup(ifname=plan.root_ifname)[0]
    quiet_ipv6(plan.root_ifname)
    in_netns(plan.netns, lambda: quiet_ipv6(NS_IFNAME))
    add_address(ipr, idx, plan.peer_address, plan.prefixlen)
    with IPRoute(netns=plan.netns) as nsr:
        lo = nsr.link_lookup(ifname="lo")[0]
        eth = nsr.link_lookup(ifname=NS_IFNAME)[0]
        # Permanent neighbours on both ends: no ARP on the link, and no packet ever waits in
        # (or is dropped from) a queue of unresolved neighbours.
        add_neighbour(ipr, idx, plan.address, _mac(nsr, eth))
        add_neighbour(nsr, eth, plan.peer_address, _mac(ipr, idx))
        if plan.address6:  # and no neighbour discovery either
            add_neighbour(ipr, idx, plan.address6, _mac(nsr, eth))
            add_neighbour(nsr, eth, plan.peer_address6, _mac(ipr, idx))
            add_address(ipr, idx, plan.peer_address6, plan.prefixlen6)
        _nl(f"link up {plan.root_ifname}", lambda: ipr.link("set", index=idx, state="up"))
        _nl("lo up", lambda: nsr.link("set", index=lo, state="up"))
        add_address(nsr, eth, plan.address, plan.prefixlen)
        if plan.address6:
            add_address(nsr, eth, plan.address6, plan.prefixlen6)
        _nl(f"link up in {plan.netns}", lambda: nsr.link("set", index=eth, state="up"))
        # A default route back, so replies reach any root-namespace source address.
        _nl("default route", lambda: nsr.route("add", dst="0.0.0.0/0", gateway=plan.peer_address))
        if plan.address6:
            _nl(
                "IPv6 default route",
                lambda: nsr.route(
                    "add", dst="::/0", gateway=plan.peer_address6, family=socket.AF_INET6
                ),
            )
        if rate_bps:
            add_shaper(ipr, idx, rate_bps, (TOWARDS_HOST, TOWARDS_HOST6), plan.root_ifname)
            add_shaper(nsr, eth, rate_bps, (FROM_HOST, FROM_HOST6), f"{plan.netns}/{NS_IFNAME}")


def add_address(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    """`address`/`prefixlen` on link `index`; an IPv6 one usable at once (no DAD)."""
    flags = IFA_F_NODAD if ":" in address else 0
    _nl(
        f"address {address}",
        lambda: ipr.addr("add", index=index, address=address, prefixlen=prefixlen, flags=flags),
    )


def add_neighbour(ipr: IPRoute, index: int, address: str, lladdr: str) -> None:
    """A permanent neighbour entry: `address` is at `lladdr` on link `index`."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    _nl(
        f"neighbour {address}",
        lambda: ipr.neigh(
            "add", dst=address, lladdr=lladdr, ifindex=index, state=NUD_PERMANENT, family=family
        ),
    )


def add_shaper(
    ipr: IPRoute,
    index: int,
    rate_bps: int,
    ours: tuple[tuple[IcmpType, ...], tuple[Icmp6Type, ...]],
    where: str,
) -> None:
    """An htb root whose u32 filters put our probes (or the answers to them: `ours`, IPv4's
    then IPv6's) into one class per IP version, each over a token bucket filter; anything else
    matches no class and goes out by htb's direct queue untouched, so tbf counts only probes.
    tbf: `rate_bps` per version, a burst of 10 ms of traffic but at least one full frame (else
    full-size packets could never pass), and 50 ms of queue beyond it. The classes' own rate is
    far above any lab link: tbf decides alone (htb logs once per link that its tbf is
    "non-work-conserving": it is, by design)."""
    _nl(
        f"htb on {where}",
        lambda: ipr.tc("add", "htb", index=index, handle=HTB_HANDLE, default=0),
        SHAPER_FIX,
    )
    filters = [(4, ETH_P_IP, u32_keys(t)) for t in ours[0]]
    filters += [(6, ETH_P_IPV6, u32_keys6(t)) for t in ours[1]]
    for version in (4, 6):
        _nl(
            f"htb class on {where}",
            partial(
                ipr.tc,
                "add-class",
                "htb",
                index=index,
                handle=PROBE_CLASS[version],
                parent=HTB_HANDLE,
                rate="20gbit",
            ),
            SHAPER_FIX,
        )
    for pref, (version, protocol, keys) in enumerate(filters, start=1):
        _nl(
            f"probe filter on {where}",
            partial(
                ipr.tc,
                "add-filter",
                "u32",
                index=index,
                parent=HTB_HANDLE,
                prio=pref,
                protocol=protocol,
                target=PROBE_CLASS[version],
                keys=keys,
            ),
            SHAPER_FIX,
        )
    burst = max(1600, rate_bps // 8 // 100)
    for version in (4, 6):
        _nl(
            f"tbf on {where}",
            partial(
                ipr.tc,
                "add",
                "tbf",
                index=index,
                handle=TBF_HANDLE[version],
                parent=PROBE_CLASS[version],
                rate=f"{rate_bps}bit",
                burst=burst,
                latency="50ms",
            ),
            SHAPER_FIX,
        )


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete a root-namespace link (its veth peer goes with it); False if it was not there."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV: gone meanwhile
            return False
        raise LabError(f"delete link {ifname}: {exc}; retry `loadgen lab down`") from exc
    return True


def delete_netns(name: str) -> bool:
    if name not in list_netns():
        return False
    try:
        netns.remove(name)
    except OSError as exc:
        raise LabError(f"remove namespace {name}: {exc}; retry `loadgen lab down`") from exc
    return True


def nft(netns_name: str | None, args: list[str], stdin: str | None = None) -> str:
    """Run `nft` in a namespace (None = this one); returns stdout."""
    exe = shutil.which("nft")
    if exe is None:
        raise LabError("nft not found; install nftables (make sysdeps)")
    cmd = [exe, *args] if netns_name is None else ["ip", "netns", "exec", netns_name, exe, *args]
    try:
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd[:5])} hung; check the nftables setup") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        why = lines[0] if lines else f"exit {done.returncode}"
        where = netns_name or "the root namespace"
        raise LabError(f"nft {' '.join(args)} in {where} failed: {why}; check nftables")
    return done.stdout


def nft_counters(netns_name: str | None, table: str, family: str = "ip") -> dict[str, int]:
    """Packet counts of the named counters in table `<family> <table>`."""
    out = json.loads(nft(netns_name, ["-j", "list", "counters", "table", family, table]))
    counters: dict[str, int] = {}
    for item in out.get("nftables", []):
        c = item.get("counter")
        if c is not None:
            counters[c["name"]] = int(c["packets"])
    return counters


def nft_tables(netns_name: str | None) -> list[tuple[str, str]]:
    """(family, name) of every table in a namespace."""
    out = json.loads(nft(netns_name, ["-j", "list", "tables"]))
    return [
        (t["table"]["family"], t["table"]["name"]) for t in out.get("nftables", []) if "table" in t
    ]
