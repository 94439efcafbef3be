"""Link-layer sending (tx_path = "packet"): which interface each target's packets leave by, from
which source address, to which link-layer address, read from the kernel's routing and neighbour
tables (rtnetlink, through pyroute2); and the AF_PACKET socket that writes them.

Why: a raw IP socket's sendmmsg runs the whole IP output path for every packet (route lookup,
cork and copy, netfilter, neighbour output); writing finished IPv4 packets to the link skips it
and costs the kernel about a quarter less per probe. What it skips is also what it changes:
the host's netfilter OUTPUT/POSTROUTING rules and IP fragmentation do not see these packets
(the interface's qdisc, tc shaping included, still does), and routes are read once at start.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from loadgen.errors import PermissionProblem, SocketProblem, TargetError, UsageError

ETH_P_IP = 0x0800
ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE = 1, 772, 65534  # <linux/if_arp.h>
# <linux/neighbour.h>: states in which the kernel itself would send to the cached address.
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
SOCKADDR_LL = struct.Struct("=HHiHBB8s")  # struct sockaddr_ll, <linux/if_packet.h>
RESOLVE_WAIT_S = 3.0  # ARP answers in milliseconds; a next hop silent this long is not there
_DISCARD_PORT = 9  # RFC 863: what a neighbour solicitation's trigger datagram is sent to
_FIX = 'or send through the IP stack: tx_path = "ip" (the default)'
RTM_F_FIB_MATCH = 0x2000  # <linux/rtnetlink.h>: answer with the FIB entry that matched
RTN_LOCAL = 2  # <linux/rtnetlink.h>: a route to an address of this host
SO_BINDTODEVICE = 25  # <asm-generic/socket.h>


@dataclass(frozen=True, slots=True)
class LinkHop:
    """Where one target's packets go: out of `ifindex` to `lladdr`, from `source`."""

    address: int  # the target (IPv4, host order)
    source: int  # our address on that route (RTA_PREFSRC)
    ifindex: int
    ifname: str
    hatype: int  # ARPHRD_*
    lladdr: bytes  # the next hop's link-layer address; b"" on links without one

    def sockaddr(self) -> bytes:
        """The struct sockaddr_ll a packet socket sends this target's packets to."""
        return SOCKADDR_LL.pack(
            socket.AF_PACKET,
            socket.htons(ETH_P_IP),
            self.ifindex,
            self.hatype,
            0,
            len(self.lladdr),
            self.lladdr,
        )


@dataclass(frozen=True, slots=True)
class _Route:
    ifindex: int
    source: int
    next_hop: int
    ifname: str
    hatype: int


def interface_index(interface: str) -> int:
    """The index of a network interface of this host; UsageError if there is none."""
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise UsageError(
            f"interface {interface!r}: no such interface on this host; pick one from "
            "`ip -brief link`"
        ) from None


def check_interface(interface: str, addresses: Sequence[str]) -> None:
    """Refuse targets this host's routing table does not reach through `interface`.

    A socket bound to an interface would not fail by itself: the kernel assumes a destination
    it has no route for through the bound interface is on that link, and every probe would be
    lost to unanswered ARP. The FIB is asked (RTM_F_FIB_MATCH, output interface fixed) for a
    route through that interface; none means the target is reached, if at all, through another.
    """
    index = interface_index(interface)
    outside: list[tuple[str, str]] = []
    with IPRoute() as ipr:
        for address in dict.fromkeys(addresses):
            # A link-local IPv6 target's %scope is for the socket, not for the FIB.
            why = _not_through(ipr, address.partition("%")[0], index)
            if why is not None:
                outside.append((address, why))
    if outside:
        address, why = outside[0]
        more = f" (and {len(outside) - 1} more targets)" if len(outside) > 1 else ""
        raise TargetError(
            f"target {address}{more} is not reachable through interface {interface} ({why}): "
            f"drop it from the targets, or the interface setting (-I/--interface)"
        )


def _not_through(ipr: IPRoute, address: str, index: int) -> str | None:
    """None if the FIB has a route to `address` out of interface `index`, else how the
    routing table does reach it."""
    try:
        way = ipr.route("get", dst=address)[0]
    except NetlinkError:
        way = None
    if way is not None and way.get_attr("RTA_OIF") == index:
        return None
    # This host's own addresses are reached through loopback, whatever else would match.
    if way is None or way["type"] != RTN_LOCAL:
        try:
            ipr.route("get", dst=address, oif=index, flags=RTM_F_FIB_MATCH)
            return None
        except NetlinkError:
            pass
    if way is None:
        return "there is no route to it at all"
    name = ipr.get_links(way.get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME")
    return f"the routing table sends it through {name}"


def _route(ipr: IPRoute, address: int, oif: int | None, source: str | None) -> _Route:
    text = str(ipaddress.IPv4Address(address))
    where = {"oif": oif} if oif is not None else {}
    try:
        found = ipr.route("get", dst=text, **where)
    except NetlinkError as exc:
        why = errno.errorcode.get(exc.code, str(exc.code))
        raise TargetError(f"no route to {text} ({why}): check the target, {_FIX}") from None
    route = found[0]
    ifindex = route.get_attr("RTA_OIF")
    source = source or route.get_attr("RTA_PREFSRC")
    if ifindex is None or source is None:
        raise TargetError(f"the route to {text} names no interface or source address: {_FIX}")
    link = ipr.get_links(ifindex)[0]
    next_hop = route.get_attr("RTA_GATEWAY") or text
    return _Route(
        ifindex=ifindex,
        source=int(ipaddress.IPv4Address(source)),
        next_hop=int(ipaddress.IPv4Address(next_hop)),
        ifname=str(link.get_attr("IFLA_IFNAME")),
        hatype=int(link["ifi_type"]),
    )


def _neighbour(ipr: IPRoute, ifindex: int, address: int) -> bytes | None:
    text = str(ipaddress.IPv4Address(address))
    for entry in ipr.get_neighbours(ifindex=ifindex, dst=text):
        lladdr = entry.get_attr("NDA_LLADDR")
        if lladdr and entry["state"] & NUD_USABLE:
            return bytes.fromhex(str(lladdr).replace(":", ""))
    return None


def _solicit(address: int, interface: str | None) -> None:
    """Make the kernel resolve a next hop: one empty UDP datagram to its discard port, sent
    through the IP stack (out of `interface` if given), which queues it behind an ARP request."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, contextlib.suppress(OSError):
        if interface is not None:
            udp.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        udp.sendto(b"", (str(ipaddress.IPv4Address(address)), _DISCARD_PORT))


def resolve_hops(
    addresses: Sequence[int],
    wait_s: float = RESOLVE_WAIT_S,
    *,
    interface: str | None = None,
    source: str | None = None,
) -> list[LinkHop]:
    """A LinkHop per address, in order, out of `interface` only if given and from `source` if
    given; next hops not in the neighbour table are solicited and waited for up to wait_s.
    Raises TargetError or SocketProblem with the fix."""
    oif = None if interface is None else interface_index(interface)
    with IPRoute() as ipr:
        routes = {a: _route(ipr, a, oif, source) for a in dict.fromkeys(addresses)}
        lladdrs: dict[tuple[int, int], bytes | None] = {}
        for r in routes.values():
            if r.hatype == ARPHRD_LOOPBACK:
                # Arriving from a link, 127/8 is martian (IP_LOCALNET) and nothing else here
                # needs the link path: this host's own addresses go through the IP stack.
                raise TargetError(
                    f'tx_path = "packet" sends on links, and {ipaddress.IPv4Address(r.next_hop)} '
                    f'is this host (via {r.ifname}): use tx_path = "ip" for it'
                )
            if r.hatype == ARPHRD_NONE:
                lladdrs[r.ifindex, r.next_hop] = b""
            elif r.hatype == ARPHRD_ETHER:
                lladdrs[r.ifindex, r.next_hop] = _neighbour(ipr, r.ifindex, r.next_hop)
            else:
                raise SocketProblem(
                    f'tx_path = "packet" cannot send on {r.ifname} (link type {r.hatype}); ' + _FIX
                )
        missing = [key for key, ll in lladdrs.items() if ll is None]
        for _, hop in missing:
            _solicit(hop, interface)
        deadline = time.monotonic() + wait_s
        while missing and time.monotonic() < deadline:
            time.sleep(0.01)
            for key in missing:
                lladdrs[key] = _neighbour(ipr, *key)
            missing = [key for key in missing if lladdrs[key] is None]
        if missing:
            ifindex, hop = missing[0]
            name = next(r.ifname for r in routes.values() if r.ifindex == ifindex)
            raise TargetError(
                f"no link-layer address for next hop {ipaddress.IPv4Address(hop)} on {name} "
                f"after {wait_s:g} s (it does not answer ARP): check it is up, {_FIX}"
            )
    return [
        LinkHop(
            address=a,
            source=routes[a].source,
            ifindex=routes[a].ifindex,
            ifname=routes[a].ifname,
            hatype=routes[a].hatype,
            lladdr=lladdrs[routes[a].ifindex, routes[a].next_hop] or b"",
        )
        for a in addresses
    ]


def open_link_tx(sndbuf_bytes: int = 4 << 20, interface: str | None = None) -> socket.socket:
    """A non-blocking AF_PACKET datagram socket for IPv4 packets, sending only: protocol 0
    means it is bound to no protocol and receives nothing. With `interface` it is bound to it
    too (each packet still names its interface, which resolve_hops took from the same one)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError:
        raise PermissionProblem(
            'tx_path = "packet" needs CAP_NET_RAW: run as root, ' + _FIX
        ) from None
    except OSError as exc:
        raise SocketProblem(f"opening a packet socket failed ({exc.strerror}): {_FIX}") from None
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf_bytes)
    if interface is not None:
        try:
            sock.bind((interface, 0))
        except OSError as exc:
            sock.close()
            raise SocketProblem(
                f"binding the packet socket to {interface} failed ({exc.strerror}); check it "
                "with `ip link`, " + _FIX
            ) from None
    return sock
