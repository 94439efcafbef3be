"""What the lab counts as ours: matches for loadgen's probes and the answers to them, nothing else.

Every truth figure comes from a counter behind one of these matches (nftables expressions for
counters and drops, tc u32 keys for the shaper that puts only probes through tbf), so ARP,
neighbour discovery, stray pings or any other traffic on a lab link never enters a figure. A
probe is an ICMP echo request whose payload opens with our magic (docs/DESIGN.md); an echo reply
carries the same payload, and an ICMP error quotes the probe (IP header, ICMP header, payload).
"""

from __future__ import annotations

from enum import IntEnum

from loadgen.wire.icmp import ICMP_HEADER_LEN, IPV4_HEADER_LEN, MAGIC


class Icmp(IntEnum):
    """ICMP types (RFC 792) the lab counts."""

    ECHO_REPLY = 0
    DEST_UNREACHABLE = 3
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11


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
        _nft_bytes(_QUOTED_TYPE, 1, Icmp.ECHO_REQUEST),
        _nft_bytes(_QUOTED_MAGIC, 4, MAGIC),
    )
)


def u32_keys(icmp_type: Icmp) -> list[str]:
    """tc u32 keys (pyroute2's "value/mask+byte offset" form, offsets from the IP header) for an
    unfragmented-or-first-fragment IPv4 ICMP message of `icmp_type` without IP options that is
    a probe, a reply to one or an error quoting one: the same facts as the nft matches."""
    icmp = IPV4_HEADER_LEN
    keys = [
        f"{IPV4_NO_OPTIONS:#04x}/0xff+0",
        "0x0000/0x1fff+6",  # fragment offset 0
        f"{IPPROTO_ICMP:#04x}/0xff+9",
        f"{icmp_type:#04x}/0xff+{icmp}",
    ]
    if icmp_type in (Icmp.DEST_UNREACHABLE, Icmp.TIME_EXCEEDED):
        keys += [
            f"{IPV4_NO_OPTIONS:#04x}/0xff+{icmp + _QUOTED_VERSION_IHL}",
            f"{IPPROTO_ICMP:#04x}/0xff+{icmp + _QUOTED_PROTOCOL}",
            f"{Icmp.ECHO_REQUEST:#04x}/0xff+{icmp + _QUOTED_TYPE}",
            f"{MAGIC:#010x}/0xffffffff+{icmp + _QUOTED_MAGIC}",
        ]
    else:
        keys.append(f"{MAGIC:#010x}/0xffffffff+{icmp + _ECHO_MAGIC}")
    return keys


# The shaper's filters per end of a link: requests towards a host, answers back from it.
TOWARDS_HOST = (Icmp.ECHO_REQUEST,)
FROM_HOST = (Icmp.ECHO_REPLY, Icmp.DEST_UNREACHABLE, Icmp.TIME_EXCEEDED)
