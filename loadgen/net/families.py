"""What differs between the raw ICMP sockets of the two address families, as `sockets` and
`batchio` use it: socket family and protocol, the options for hop limit and traffic class, the
error-queue cmsg, and the sockaddr layout a send names its destination with (sockaddr_in, or
sockaddr_in6 with a link-local target's scope id). Socket code is written once against these.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.errors import UsageError

IP_RECVERR = 11  # <linux/in.h>: also the type of the IPv4 error-queue cmsg
IPV6_RECVERR = 25  # <linux/in6.h>: also the type of the IPv6 error-queue cmsg


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """What differs between IPv4 and IPv6 raw ICMP sockets."""

    version: int  # 4 or 6, as Target.family
    family: int
    proto: int
    ip_level: int
    hops_option: int  # IP_TTL / IPV6_UNICAST_HOPS
    class_option: int  # IP_TOS / IPV6_TCLASS
    recverr: tuple[int, int]  # (level, type) of the error-queue cmsg
    sockaddr: np.dtype[Any]  # field `addr` takes the destination column of `send`
    # IPv4: `send` takes bare addresses (host-order u32) into the `addr` field; IPv6: whole
    # sockaddr_in6 rows, as a link-local destination carries its own scope id.
    whole_names: bool

    @property
    def name(self) -> str:
        return f"IPv{self.version}"


IPV4 = FamilySpec(
    version=4,
    family=socket.AF_INET,
    proto=socket.IPPROTO_ICMP,
    ip_level=socket.IPPROTO_IP,
    hops_option=socket.IP_TTL,
    class_option=socket.IP_TOS,
    recverr=(socket.IPPROTO_IP, IP_RECVERR),
    sockaddr=np.dtype([("family", "=u2"), ("port", ">u2"), ("addr", ">u4"), ("zero", "u1", 8)]),
    whole_names=False,
)
IPV6 = FamilySpec(
    version=6,
    family=socket.AF_INET6,
    proto=socket.IPPROTO_ICMPV6,
    ip_level=socket.IPPROTO_IPV6,
    hops_option=socket.IPV6_UNICAST_HOPS,
    class_option=socket.IPV6_TCLASS,
    recverr=(socket.IPPROTO_IPV6, IPV6_RECVERR),
    # struct sockaddr_in6 (<linux/in6.h>). No IPV6_CHECKSUM: on an ICMPv6 socket the kernel
    # always fills the checksum (and refuses the option with EINVAL).
    sockaddr=np.dtype(
        [
            ("family", "=u2"),
            ("port", ">u2"),
            ("flowinfo", ">u4"),
            ("addr", "V16"),
            ("scope_id", "=u4"),
        ]
    ),
    whole_names=True,
)
SPECS = {4: IPV4, 6: IPV6}


def route_sources(
    addresses: list[str], version: int, *, source: str | None, interface: str | None
) -> list[bytes]:
    """The address (packed) each target's packets leave from: `source` if given, else what
    the routing table picks, read from a UDP socket connected to the target (connect only
    looks the route up: nothing is sent). A protocol that checksums a pseudo-header needs it."""
    spec = SPECS[version]
    if source is not None:
        return [socket.inet_pton(spec.family, source.partition("%")[0])] * len(addresses)
    names = ipv6_names(addresses) if version == 6 else None
    out = []
    for i, text in enumerate(addresses):
        # A socket per target: a connected UDP socket keeps the source address of its first
        # route when connected again (ip4_datagram_connect sets it only while unset).
        with socket.socket(spec.family, socket.SOCK_DGRAM) as probe:
            if interface:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            bare = text.partition("%")[0]
            where = (bare, 9) if names is None else (bare, 9, 0, int(names["scope_id"][i]))
            try:
                probe.connect(where)
            except OSError as exc:
                raise UsageError(
                    f"target {text}: no route to it ({exc.strerror}); check `ip route get {bare}`"
                ) from None
            out.append(socket.inet_pton(spec.family, probe.getsockname()[0].partition("%")[0]))
    return out


def ipv6_names(addresses: list[str]) -> NDArray[Any]:
    """sockaddr_in6 rows for IPv6 addresses (a link-local one with its %scope: the interface
    name or index), in order: the destination column `BatchIO.send` takes for IPv6."""
    names = np.zeros(len(addresses), IPV6.sockaddr)
    names["family"] = socket.AF_INET6
    for i, text in enumerate(addresses):
        bare, _, scope = text.partition("%")
        names["addr"][i] = np.void(socket.inet_pton(socket.AF_INET6, bare))
        if scope:
            try:
                names["scope_id"][i] = (
                    int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
                )
            except OSError:
                raise UsageError(
                    f"target {text}: there is no interface {scope!r}; pick one from "
                    "`ip -brief link`"
                ) from None
    return names
