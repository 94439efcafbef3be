"""What the lab counts as ours: matches for loadgen's probes and the answers to them, nothing else.

Every truth figure comes from a counter behind one of these matches (nftables expressions for
counters and drops, tc u32 keys for the shaper that puts only probes through tbf), so ARP,
neighbour discovery, stray pings or any other traffic on a lab link never enters a figure. A
probe is an ICMP echo request whose payload opens with our magic (docs/DESIGN.md); an echo reply
carries the same payload, and an ICMP error quotes the probe (IP header, ICMP header, payload).
ICMPv6 (RFC 4443) the same way: its own type numbers, and a quoted IPv6 header of 40 bytes.
A UDP or STAMP probe is a UDP datagram to the probed port carrying our magic where the kind puts
its payload header; an error about one quotes it the same way (`udp_error`).
"""

from __future__ import annotations

from loadgen.lab.addressing import LAB_SPACE
from loadgen.wire.family import IPPROTO_ICMPV6, IPV6_HEADER_LEN, Icmp6Type, IcmpType
from loadgen.wire.icmp import ICMP_HEADER_LEN, IPV4_HEADER_LEN, MAGIC

# Byte offsets from the start of the ICMP header. An echo's payload follows its 8-byte header;
# an error quotes the probe after its own 8 bytes: the probe's IP header (20 bytes: our probes
# carry no options), then its ICMP header, then its payload.
_ECHO_MAGIC = ICMP_HEADER_LEN
_QUOTED_VERSION_IHL = ICMP_HEADER_LEN
_QUOTED_PROTOCOL = ICMP_HEADER_LEN + 9
_QUOTED_TYPE = ICMP_HEADER_LEN + IPV4_HEADER_LEN
_QUOTED_MAGIC = _QUOTED_TYPE + ICMP_HEADER_LEN
IPPROTO_ICMP = 1
IPV4_NO_OPTIONS = 0x45  # version 4, header length 5 words: the offsets after it hold


# The shaper's filters per end of a link: requests towards a host, answers back from it.
TOWARDS_HOST = (IcmpType.ECHO_REQUEST,)
FROM_HOST = (IcmpType.ECHO_REPLY, IcmpType.DEST_UNREACH, IcmpType.TIME_EXCEEDED)
# (value, offset from the error's ICMP header, mask) of the probe an IPv4 error quotes.
_QUOTED4 = (
    (IPV4_NO_OPTIONS, _QUOTED_VERSION_IHL, 0xFF),
    (IPPROTO_ICMP, _QUOTED_PROTOCOL, 0xFF),
    (IcmpType.ECHO_REQUEST, _QUOTED_TYPE, 0xFF),
    (MAGIC, _QUOTED_MAGIC, 0xFFFFFFFF),
)


def _nft_bytes(at: int, width: int, value: int) -> str:
    """An nft raw payload match (`@th,bit offset,bit width value`) from the ICMP header on."""
    return f"@th,{at * 8},{width * 8} {value:#0{2 + 2 * width}x}"


REQUEST = f"icmp type echo-request {_nft_bytes(_ECHO_MAGIC, 4, MAGIC)}"
REPLY = f"icmp type echo-reply {_nft_bytes(_ECHO_MAGIC, 4, MAGIC)}"
ERROR = " ".join(
    (
        "icmp type { destination-unreachable, time-exceeded }",
        _nft_bytes(_QUOTED_VERSION_IHL, 1, IPV4_NO_OPTIONS),
        _nft_bytes(_QUOTED_PROTOCOL, 1, IPPROTO_ICMP),
        _nft_bytes(_QUOTED_TYPE, 1, IcmpType.ECHO_REQUEST),
        _nft_bytes(_QUOTED_MAGIC, 4, MAGIC),
    )
)


def _key(value: int, at: int, mask: int = 0xFF) -> str:
    """One tc u32 key in pyroute2's "value/mask+byte offset" form (the mask's width is the
    match's)."""
    digits = 2 + 2 * ((mask.bit_length() + 7) // 8)
    return f"{value:#0{digits}x}/{mask:#0{digits}x}+{at}"


def _ours(icmp: int, quoted: tuple[tuple[int, int, int], ...] | None) -> list[str]:
    """The keys that make an ICMP message at `icmp` ours: for an error, the (value, offset,
    mask) facts of the probe it quotes; else the magic opening its payload."""
    if quoted is None:
        return [_key(MAGIC, icmp + _ECHO_MAGIC, 0xFFFFFFFF)]
    return [_key(value, icmp + at, mask) for value, at, mask in quoted]


def u32_keys(icmp_type: IcmpType) -> list[str]:
    """tc u32 keys (pyroute2's "value/mask+byte offset" form, offsets from the IP header) for an
    unfragmented-or-first-fragment IPv4 ICMP message of `icmp_type` without IP options that is
    a probe, a reply to one or an error quoting one: the same facts as the nft matches."""
    icmp = IPV4_HEADER_LEN
    keys = [
        _key(IPV4_NO_OPTIONS, 0),
        _key(0, 6, 0x1FFF),  # fragment offset 0
        _key(IPPROTO_ICMP, 9),
        _key(icmp_type, icmp),
    ]
    return keys + _ours(icmp, _QUOTED4 if icmp_type in FROM_HOST[1:] else None)


# IPv6: the quoted probe's header is 40 bytes; its next header must be ICMPv6 (no extension
# headers: our probes carry none), so the quoted echo header follows right after it.
_QUOTED6_VERSION = ICMP_HEADER_LEN
_QUOTED6_NEXT_HEADER = ICMP_HEADER_LEN + 6
_QUOTED6_TYPE = ICMP_HEADER_LEN + IPV6_HEADER_LEN
_QUOTED6_MAGIC = _QUOTED6_TYPE + ICMP_HEADER_LEN
IPV6_VERSION = 0x60  # the version nibble in the first byte, under the mask 0xf0

REQUEST6 = f"icmpv6 type echo-request {_nft_bytes(_ECHO_MAGIC, 4, MAGIC)}"
REPLY6 = f"icmpv6 type echo-reply {_nft_bytes(_ECHO_MAGIC, 4, MAGIC)}"
ERROR6 = " ".join(
    (
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }",
        f"@th,{_QUOTED6_VERSION * 8},4 {IPV6_VERSION >> 4:#x}",
        _nft_bytes(_QUOTED6_NEXT_HEADER, 1, IPPROTO_ICMPV6),
        _nft_bytes(_QUOTED6_TYPE, 1, Icmp6Type.ECHO_REQUEST),
        _nft_bytes(_QUOTED6_MAGIC, 4, MAGIC),
    )
)
_QUOTED6 = (
    (IPV6_VERSION, _QUOTED6_VERSION, 0xF0),
    (IPPROTO_ICMPV6, _QUOTED6_NEXT_HEADER, 0xFF),
    (Icmp6Type.ECHO_REQUEST, _QUOTED6_TYPE, 0xFF),
    (MAGIC, _QUOTED6_MAGIC, 0xFFFFFFFF),
)
MATCHES = {4: (REQUEST, REPLY, ERROR), 6: (REQUEST6, REPLY6, ERROR6)}
"""(probe, reply, error) nft matches per IP version."""


def u32_keys6(icmp_type: Icmp6Type) -> list[str]:
    """tc u32 keys (offsets from the IPv6 header) for an ICMPv6 message of `icmp_type` right
    after the fixed header (no extension headers, so no fragment either) that is a probe, a
    reply to one or an error quoting one: the same facts as the nft matches."""
    icmp = IPV6_HEADER_LEN
    keys = [_key(IPPROTO_ICMPV6, 6), _key(icmp_type, icmp)]
    return keys + _ours(icmp, _QUOTED6 if icmp_type < Icmp6Type.ECHO_REQUEST else None)


TOWARDS_HOST6 = (Icmp6Type.ECHO_REQUEST,)
FROM_HOST6 = (
    Icmp6Type.ECHO_REPLY,
    Icmp6Type.DEST_UNREACH,
    Icmp6Type.PACKET_TOO_BIG,
    Icmp6Type.TIME_EXCEEDED,
    Icmp6Type.PARAM_PROBLEM,
)


# UDP and STAMP probes: an error quotes the probe's IP header (IPv4 without options, or IPv6
# with UDP right after it), its UDP header (destination port at 2), then its payload, in which
# loadgen's header (and magic) starts at `magic_at`: 0 for plain UDP, the Extra Padding TLV's
# value for STAMP (`stamp_probe.StampSpec.payload_at`).
IPPROTO_UDP = 17
_UDP_HEADER_LEN = 8
_QUOTED_UDP = {
    4: ("icmp type { destination-unreachable, time-exceeded }", IPV4_HEADER_LEN),
    6: (ERROR6.split(" @", 1)[0], IPV6_HEADER_LEN),
}


def udp_error(version: int, port: int, magic_at: int) -> str:
    """An ICMP(v6) error quoting one of our UDP probes to `port`, loadgen's header `magic_at`
    bytes into its UDP payload (a port unreachable from a host with nothing on the port)."""
    types, ip_len = _QUOTED_UDP[version]
    udp = ICMP_HEADER_LEN + ip_len
    if version == 4:
        head = [
            _nft_bytes(_QUOTED_VERSION_IHL, 1, IPV4_NO_OPTIONS),
            _nft_bytes(_QUOTED_PROTOCOL, 1, IPPROTO_UDP),
        ]
    else:
        head = [
            f"@th,{_QUOTED6_VERSION * 8},4 {IPV6_VERSION >> 4:#x}",
            _nft_bytes(_QUOTED6_NEXT_HEADER, 1, IPPROTO_UDP),
        ]
    tail = [_nft_bytes(udp + 2, 2, port), _nft_bytes(udp + _UDP_HEADER_LEN + magic_at, 4, MAGIC)]
    return " ".join([types, *head, *tail])


# TCP (a lab host's services, `tcpcfg`). A SYN carries no payload to mark it as ours, so the
# lab's own address range (where loadgen's sources are: the root ends of the lab links) and the
# ports the host serves do: nothing else in a lab sends TCP to them. Only the four flags that
# tell the handshake's packets apart are looked at (ECN's CWR/ECE may ride on a SYN).
TCP_SPACE = {v: (nfproto, str(LAB_SPACE[v])) for v, nfproto in ((4, "ip"), (6, "ip6"))}
_HANDSHAKE_FLAGS = "tcp flags & (fin | syn | rst | ack)"


def _ports(ports: tuple[int, ...]) -> str:
    return "{ " + ", ".join(str(p) for p in ports) + " }"


def tcp_syn(version: int, ports: tuple[int, ...]) -> str:
    """A SYN (no ACK) from the lab range to one of `ports`: a probe, or a kernel's retransmission
    of one."""
    nfproto, space = TCP_SPACE[version]
    return f"{nfproto} saddr {space} tcp dport {_ports(ports)} {_HANDSHAKE_FLAGS} == syn"


def tcp_synack(version: int, ports: tuple[int, ...]) -> str:
    """A SYN-ACK from one of `ports` to the lab range: an open port's (or a SYN cookie's) answer."""
    nfproto, space = TCP_SPACE[version]
    return f"{nfproto} daddr {space} tcp sport {_ports(ports)} {_HANDSHAKE_FLAGS} == syn | ack"


def tcp_rst(version: int, ports: tuple[int, ...]) -> str:
    """A RST from one of `ports` to the lab range: on a port nobody listens on, the kernel's
    answer to a SYN (RFC 793 3.4, "reset generation", case 1)."""
    nfproto, space = TCP_SPACE[version]
    return f"{nfproto} daddr {space} tcp sport {_ports(ports)} tcp flags & rst == rst"
