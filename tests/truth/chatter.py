"""Traffic on a lab link that is not loadgen's probes, both ways, bounded in count and time.

Each round puts on the link, from each end: an ARP request for the other end, an ARP request
for a lab address nobody has, an IPv6 neighbour solicitation (DAD style, for an address in the
IPv6 lab range), and a UDP datagram to a closed port (answered with ICMP port unreachable); every
`STRAY_EVERY`-th round also an echo request from the root end that is not a probe (no magic).
For IPv6 (`version` 6) the UDP datagrams and strays go to the hosts' IPv6 addresses (ICMPv6
port unreachables and echo requests), and each end also solicits the other's address. Only lab
addresses (198.18.0.0/15, 2001:2::/48) are ever named.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute

from loadgen.lab import LabHost
from loadgen.lab.netops import in_netns
from loadgen.wire.icmp import checksum as inet_checksum

ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
BROADCAST = b"\xff" * 6
DISCARD_PORT = 9  # nothing listens on it in a lab namespace: port unreachable comes back
STRAY_EVERY = 10
SOL_RAW, ICMP_FILTER, ICMP6_FILTER = 255, 1, 1
NOBODY = ipaddress.IPv4Address("198.18.255.254")  # in the lab range, on no lab link


@dataclass
class Sent:
    """What the chatter put on the link."""

    rounds: int = 0
    frames: int = 0  # ARP and neighbour solicitations, both ends
    datagrams: int = 0  # UDP, both ends
    strays: int = 0  # echo requests without our magic, root end to the host


def _arp_request(mac: bytes, ip: str, target: str) -> bytes:
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # Ethernet
        0x0800,
        6,
        4,
        1,  # request
        mac,
        socket.inet_aton(ip),
        b"\0" * 6,
        socket.inet_aton(target),
    )
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def _neighbour_solicitation(mac: bytes, n: int, target_ip: str = "", src_ip: str = "") -> bytes:
    """RFC 4861 4.3 for `target_ip` (else a lab address from `n`), from `src_ip` (else from the
    unspecified address, as DAD does), without options."""
    target = ipaddress.IPv6Address(target_ip or f"2001:2:0:ffff::{n & 0xFFFF:x}").packed
    src = ipaddress.IPv6Address(src_ip or "::").packed
    group = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + target[13:]
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target
    pseudo = src + group + struct.pack("!I3xB", len(body), 58)
    csum = inet_checksum(pseudo + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + group
    return b"\x33\x33" + group[12:] + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def _stray_ping(seq: int, version: int = 4) -> bytes:
    payload = b"not one of loadgen's probes"
    head = struct.pack("!BBHHH", 8 if version == 4 else 128, 0, 0, 0x7357, seq)
    if version == 6:  # the kernel fills the ICMPv6 checksum in
        return head + payload
    csum = inet_checksum(head + payload)
    return head[:2] + struct.pack("!H", csum) + head[4:] + payload


def _link_end(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # send only: protocol 0 reads none
    s.bind((ifname, 0))
    return s


class Chatter:
    """Sockets on both ends of `host`'s link; each `round` sends one round on it."""

    def __init__(self, host: LabHost, version: int = 4) -> None:
        self.host, self.version = host, version
        with IPRoute() as ipr:
            self.root_mac = self._mac(ipr, host.root_ifname)
        with IPRoute(netns=host.netns) as nsr:
            self.host_mac = self._mac(nsr, host.ns_ifname)
        self.root_raw = _link_end(host.root_ifname)
        self.host_raw = in_netns(host.netns, lambda: _link_end(host.ns_ifname))
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        self.root_udp = socket.socket(family, socket.SOCK_DGRAM)
        self.host_udp = in_netns(host.netns, lambda: socket.socket(family, socket.SOCK_DGRAM))
        # The ICMP filters block the types whose bits are set: all of them, it only sends.
        if version == 4:
            self.stray = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.stray.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))
        else:
            self.stray = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self.stray.setsockopt(
                socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *[0xFFFFFFFF] * 8)
            )
        self.sent = Sent()

    @staticmethod
    def _mac(ipr: IPRoute, ifname: str) -> bytes:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return bytes.fromhex(str(link.get_attr("IFLA_ADDRESS")).replace(":", ""))

    def round(self) -> None:
        h, n, v = self.host, self.sent.rounds, self.version
        six = v == 6
        for raw, mac, ip, other, ip6, other6 in (
            (self.root_raw, self.root_mac, h.peer_address, h.address, h.peer_address6, h.address6),
            (self.host_raw, self.host_mac, h.address, h.peer_address, h.address6, h.peer_address6),
        ):
            raw.send(_arp_request(mac, ip, other))
            raw.send(_arp_request(mac, ip, str(NOBODY)))
            raw.send(_neighbour_solicitation(mac, n))
            if six:  # and a solicitation of the other end's own address
                raw.send(_neighbour_solicitation(mac, n, other6, ip6))
            self.sent.frames += 3 + six
        address, peer = h.address_of(v), (h.peer_address6 if six else h.peer_address)
        self.root_udp.sendto(b"chatter %d" % n, (address, DISCARD_PORT))
        self.host_udp.sendto(b"chatter %d" % n, (peer, DISCARD_PORT))
        self.sent.datagrams += 2
        if n % STRAY_EVERY == 0:
            self.stray.sendto(_stray_ping(n, v), (address, 0))
            self.sent.strays += 1
        self.sent.rounds += 1

    def close(self) -> None:
        for s in (self.root_raw, self.host_raw, self.root_udp, self.host_udp, self.stray):
            s.close()
