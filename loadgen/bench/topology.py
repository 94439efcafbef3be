"""The bench's own two-namespace lab: a client namespace (where the tools run) joined by one
veth pair to a responder namespace whose kernel answers echo requests for 64 IPv4 and 64 IPv6
addresses.

Only 198.18.0.0/15 and 2001:2::/48; both ends are private namespaces, so nothing touches the
root namespace and each namespace's /proc/net/snmp and snmp6 count only the bench's traffic.
Names carry the bench's pid: a later bench removes what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from loadgen.bench.figures import icmp6_counters
from loadgen.errors import LabError, PermissionProblem
from loadgen.lab.netops import (
    NUD_PERMANENT,
    in_netns,
    list_netns,
    ns_pids,
    parse_snmp,
    quiet_ipv6,
    write_sysctl,
)

NAME_RE = re.compile(r"^loadgen-bench-(\d+)-(client|responder)$")
CLIENT_IF, RESPONDER_IF = "bench0", "bench1"
CLIENT_ADDR, RESPONDER_ADDR, LINK_PREFIXLEN = "198.18.0.1", "198.18.0.2", 24
TARGET_NET = "198.18.1.0/24"
CLIENT_ADDR6, RESPONDER_ADDR6, LINK_PREFIXLEN6 = "2001:2::1", "2001:2::2", 64
TARGET_NET6 = "2001:2:0:1::/64"
MAX_TARGETS = 64
# The kernel must not be the bottleneck: no ICMP rate limits inside the bench's namespaces.
# icmp_msgs_per_sec/burst are the kernel's one global ICMP budget, ICMPv6 included (there are
# no IPv6 names for them up to at least 6.18); ratelimit is each family's per-peer limit.
SYSCTLS = {
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000000",
    "net.ipv4.icmp_msgs_burst": "1000000000",
    "net.ipv6.icmp.ratelimit": "0",
    "net.ipv6.icmp.echo_ignore_all": "0",
    # No duplicate address detection at all: with dad_transmits 0 alone an address still
    # waits, tentative, for a turn of the kernel's DAD work, and echo requests to it are
    # dropped (Ip6InAddrErrors) meanwhile: 11% of a first ping -6 -f on a busy machine.
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
# Where a kernel has them (some give IPv6 a global budget of its own): the same, if present.
OPTIONAL_SYSCTLS = {
    "net.ipv6.icmp.msgs_per_sec": "1000000000",
    "net.ipv6.icmp.msgs_burst": "1000000000",
}
FAMILIES = (4, 6)


def target_addresses(n: int = MAX_TARGETS, family: int = 4) -> tuple[str, ...]:
    """The responder's addresses: 198.18.1.1 up to 198.18.1.64, or 2001:2:0:1::1 up to
    2001:2:0:1::40."""
    if not 1 <= n <= MAX_TARGETS:
        raise ValueError(f"the bench responder has 1..{MAX_TARGETS} addresses, not {n}")
    if family == 6:
        return tuple(f"2001:2:0:1::{i:x}" for i in range(1, n + 1))
    return tuple(f"198.18.1.{i}" for i in range(1, n + 1))


class SnmpReader:
    """/proc/net/snmp and /proc/net/snmp6 of one namespace, opened once inside it; readable
    from any thread (a /proc/net file stays bound to the namespace it was opened in)."""

    def __init__(self, namespace: str) -> None:
        def open_both() -> dict[int, int]:
            return {
                4: os.open("/proc/thread-self/net/snmp", os.O_RDONLY),
                6: os.open("/proc/thread-self/net/snmp6", os.O_RDONLY),
            }

        self._fds = in_netns(namespace, open_both)

    def text(self, family: int = 4) -> str:
        """The raw file of one family: snmp (4) or snmp6 (6)."""
        return os.pread(self._fds[family], 1 << 16, 0).decode("ascii")

    def read(self) -> dict[str, dict[str, int]]:
        """Both files: snmp's groups, and "Icmp6" with the echo counters under Icmp's names."""
        return {**parse_snmp(self.text(4)), "Icmp6": icmp6_counters(self.text(6))}

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True, slots=True)
class BenchNet:
    client_ns: str
    responder_ns: str
    targets: tuple[str, ...]
    client: SnmpReader
    responder: SnmpReader
    targets6: tuple[str, ...] = ()

    def family_targets(self, family: int) -> tuple[str, ...]:
        return self.targets6 if family == 6 else self.targets


def _names(pid: int) -> tuple[str, str]:
    return f"loadgen-bench-{pid}-client", f"loadgen-bench-{pid}-responder"


def _nl(what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as exc:
        if exc.code == 1:
            raise PermissionProblem(f"{what}: not permitted; run the bench as root") from exc
        raise LabError(f"{what}: {exc}; remove leftovers with `ip netns del` and retry") from exc


def _write_sysctls() -> None:
    for key, value in SYSCTLS.items():
        write_sysctl(key, value)
    for key, value in OPTIONAL_SYSCTLS.items():
        if os.path.exists("/proc/sys/" + key.replace(".", "/")):
            write_sysctl(key, value)


def _quiet_ipv6(ifname: str) -> None:
    """The lab's quiet IPv6 (no link-local address, RS or autoconf), and no DAD."""
    quiet_ipv6(ifname)
    write_sysctl(f"net.ipv6.conf.{ifname}.accept_dad", "0")


def _mac(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def _neighbour(ipr: IPRoute, index: int, address: str, lladdr: str) -> None:
    """A permanent neighbour: neighbour discovery never runs, so it never shows in a figure."""
    _nl(
        f"neighbour {address}",
        lambda: ipr.neigh("add", dst=address, lladdr=lladdr, ifindex=index, state=NUD_PERMANENT),
    )


def _addresses(ipr: IPRoute, index: int, own: tuple[str, int], hosts: tuple[str, ...]) -> None:
    """The link's own address (with its prefix) and any /32 or /128 host addresses."""
    address, prefixlen = own
    _nl(
        f"address {address}",
        lambda: ipr.addr("add", index=index, address=address, prefixlen=prefixlen),
    )
    for addr in hosts:
        full = 128 if ":" in addr else 32
        _nl(f"address {addr}", partial(ipr.addr, "add", index=index, address=addr, prefixlen=full))


def _build(
    client_ns: str, responder_ns: str, targets: tuple[str, ...], targets6: tuple[str, ...]
) -> None:
    for ns in (client_ns, responder_ns):
        _nl(f"create namespace {ns}", partial(netns.create, ns))
        in_netns(ns, _write_sysctls)
    with IPRoute(netns=client_ns) as ipr, IPRoute(netns=responder_ns) as rsp:
        peer = {"ifname": RESPONDER_IF, "net_ns_fd": responder_ns}
        _nl("create veth", lambda: ipr.link("add", ifname=CLIENT_IF, kind="veth", peer=peer))
        idx = ipr.link_lookup(ifname=CLIENT_IF)[0]
        ridx = rsp.link_lookup(ifname=RESPONDER_IF)[0]
        # No link-local address, DAD, router solicitation or autoconfiguration: before link up.
        in_netns(client_ns, partial(_quiet_ipv6, CLIENT_IF))
        in_netns(responder_ns, partial(_quiet_ipv6, RESPONDER_IF))
        _addresses(ipr, idx, (CLIENT_ADDR, LINK_PREFIXLEN), ())
        _addresses(ipr, idx, (CLIENT_ADDR6, LINK_PREFIXLEN6), ())
        _addresses(rsp, ridx, (RESPONDER_ADDR, LINK_PREFIXLEN), targets)
        _addresses(rsp, ridx, (RESPONDER_ADDR6, LINK_PREFIXLEN6), targets6)
        _neighbour(ipr, idx, RESPONDER_ADDR6, _mac(rsp, ridx))
        _neighbour(rsp, ridx, CLIENT_ADDR6, _mac(ipr, idx))
        for name, nl, index in (("client", ipr, idx), ("responder", rsp, ridx)):
            _nl(f"{name} link up", partial(nl.link, "set", index=index, state="up"))
            _nl(f"{name} lo up", partial(nl.link, "set", ifname="lo", state="up"))
        _nl("route", lambda: ipr.route("add", dst=TARGET_NET, gateway=RESPONDER_ADDR))
        _nl("route6", lambda: ipr.route("add", dst=TARGET_NET6, gateway=RESPONDER_ADDR6))


def remove_namespace(name: str) -> bool:
    """Kill what still runs in it (only bench children can), then delete it (and its veth end)."""
    if name not in list_netns():
        return False
    for pid in ns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3.0
    while ns_pids(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        netns.remove(name)
    except OSError as exc:
        raise LabError(f"cannot remove namespace {name}: {exc}; run `ip netns del {name}`") from exc
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(names: list[str], alive: Callable[[int], bool] = _alive) -> list[str]:
    """Bench namespaces whose bench process is gone (killed before it could clean up)."""
    out = []
    for name in names:
        m = NAME_RE.match(name)
        if m and not alive(int(m[1])):
            out.append(name)
    return out


def bench_namespaces() -> list[str]:
    return [n for n in list_netns() if NAME_RE.match(n)]


@contextlib.contextmanager
def bench_net(n_targets: int = MAX_TARGETS) -> Iterator[BenchNet]:
    """Build the two namespaces; remove them on exit, also on errors and CTRL-C."""
    for name in leftovers(list_netns()):
        remove_namespace(name)
    owner = os.getpid()
    client_ns, responder_ns = _names(owner)
    targets, targets6 = target_addresses(n_targets), target_addresses(n_targets, family=6)
    readers: list[SnmpReader] = []
    try:
        _build(client_ns, responder_ns, targets, targets6)
        readers = [SnmpReader(client_ns), SnmpReader(responder_ns)]
        yield BenchNet(client_ns, responder_ns, targets, readers[0], readers[1], targets6)
    finally:
        # Only the bench itself: a forked child unwinding through here must not tear down.
        if os.getpid() == owner:
            for r in readers:
                r.close()
            for ns in (client_ns, responder_ns):
                remove_namespace(ns)
