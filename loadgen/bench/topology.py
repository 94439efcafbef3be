"""The bench's own two-namespace lab: a client namespace (where the tools run) joined by one
veth pair to a responder namespace whose kernel answers echo requests for 64 addresses.

Only 198.18.0.0/15; both ends are private namespaces, so nothing touches the root namespace and
each namespace's /proc/net/snmp counts only the bench's traffic. Names carry the bench's pid:
a later bench removes what a killed one left behind.
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

from loadgen.errors import LabError, PermissionProblem
from loadgen.lab.netops import in_netns, list_netns, ns_pids, parse_snmp, write_sysctl

NAME_RE = re.compile(r"^loadgen-bench-(\d+)-(client|responder)$")
CLIENT_IF, RESPONDER_IF = "bench0", "bench1"
CLIENT_ADDR, RESPONDER_ADDR, LINK_PREFIXLEN = "198.18.0.1", "198.18.0.2", 24
TARGET_NET = "198.18.1.0/24"
MAX_TARGETS = 64
# The kernel must not be the bottleneck: no ICMP rate limits inside the bench's namespaces.
SYSCTLS = {
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000000",
    "net.ipv4.icmp_msgs_burst": "1000000000",
    "net.ipv6.conf.all.disable_ipv6": "1",  # no router solicitations or DAD in the counters
    "net.ipv6.conf.default.disable_ipv6": "1",
}


def target_addresses(n: int = MAX_TARGETS) -> tuple[str, ...]:
    """The responder's addresses: 198.18.1.1 up to 198.18.1.64."""
    if not 1 <= n <= MAX_TARGETS:
        raise ValueError(f"the bench responder has 1..{MAX_TARGETS} addresses, not {n}")
    return tuple(f"198.18.1.{i}" for i in range(1, n + 1))


class SnmpReader:
    """/proc/net/snmp of one namespace, opened once inside it; readable from any thread (a
    /proc/net file stays bound to the namespace it was opened in)."""

    def __init__(self, namespace: str) -> None:
        self._fd = in_netns(namespace, lambda: os.open("/proc/thread-self/net/snmp", os.O_RDONLY))

    def text(self) -> str:
        return os.pread(self._fd, 1 << 16, 0).decode("ascii")

    def read(self) -> dict[str, dict[str, int]]:
        return parse_snmp(self.text())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


@dataclass(frozen=True, slots=True)
class BenchNet:
    client_ns: str
    responder_ns: str
    targets: tuple[str, ...]
    client: SnmpReader
    responder: SnmpReader


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


def _build(client_ns: str, responder_ns: str, targets: tuple[str, ...]) -> None:
    for ns in (client_ns, responder_ns):
        _nl(f"create namespace {ns}", partial(netns.create, ns))
        in_netns(ns, _write_sysctls)
    with IPRoute(netns=client_ns) as ipr:
        peer = {"ifname": RESPONDER_IF, "net_ns_fd": responder_ns}
        _nl("create veth", lambda: ipr.link("add", ifname=CLIENT_IF, kind="veth", peer=peer))
        idx = ipr.link_lookup(ifname=CLIENT_IF)[0]
        _nl(
            "client address",
            lambda: ipr.addr("add", index=idx, address=CLIENT_ADDR, prefixlen=LINK_PREFIXLEN),
        )
        _nl("client link up", lambda: ipr.link("set", index=idx, state="up"))
        _nl("client lo up", lambda: ipr.link("set", ifname="lo", state="up"))
        _nl("route", lambda: ipr.route("add", dst=TARGET_NET, gateway=RESPONDER_ADDR))
    with IPRoute(netns=responder_ns) as ipr:
        idx = ipr.link_lookup(ifname=RESPONDER_IF)[0]
        _nl(
            "responder address",
            lambda: ipr.addr("add", index=idx, address=RESPONDER_ADDR, prefixlen=LINK_PREFIXLEN),
        )
        for addr in targets:
            _nl(f"address {addr}", partial(ipr.addr, "add", index=idx, address=addr, prefixlen=32))
        _nl("responder link up", lambda: ipr.link("set", index=idx, state="up"))
        _nl("responder lo up", lambda: ipr.link("set", ifname="lo", state="up"))


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
    targets = target_addresses(n_targets)
    readers: list[SnmpReader] = []
    try:
        _build(client_ns, responder_ns, targets)
        readers = [SnmpReader(client_ns), SnmpReader(responder_ns)]
        yield BenchNet(client_ns, responder_ns, targets, readers[0], readers[1])
    finally:
        # Only the bench itself: a forked child unwinding through here must not tear down.
        if os.getpid() == owner:
            for r in readers:
                r.close()
            for ns in (client_ns, responder_ns):
                remove_namespace(ns)
