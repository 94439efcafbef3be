"""What differs on the wire between ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) echo probing: type
numbers, the header a raw socket delivers before the ICMP message, address width, where an error
quotes our probe and who owns the checksum. The codecs (`icmp`, `batch`) and the filters (`bpf`)
take one of the two `WireFamily` values as a parameter; nothing else in the wire layer branches
on the IP version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
IPV4_HEADER_LEN = 20  # without options (RFC 791 section 3.1)
IPV6_HEADER_LEN = 40  # fixed (RFC 8200 section 3)


class IcmpType(IntEnum):
    """ICMPv4 types we send or decode (RFC 792)."""

    ECHO_REPLY = 0
    DEST_UNREACH = 3
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11


class Icmp6Type(IntEnum):
    """ICMPv6 types we send or decode (RFC 4443 sections 3 and 4): errors below 128."""

    DEST_UNREACH = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAM_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129


@dataclass(frozen=True, slots=True)
class WireFamily:
    """One address family's wire facts, as the codecs and filters use them."""

    version: int  # 4 or 6: the IP version nibble, and the Target.family value
    proto: int  # the ICMP protocol number (IPv4 protocol / IPv6 next header)
    echo_request: int
    echo_reply: int
    error_types: frozenset[int]  # errors that quote the invoking packet: ours if it is a probe
    # A raw socket of this family hands over the IP header before the ICMP message (AF_INET,
    # raw(7)); an AF_INET6 raw socket hands over the ICMPv6 message only, and the source
    # address comes from msg_name (RFC 3542 section 3).
    rx_ip_header: bool
    address_len: int  # bytes of an address: 4 or 16
    # The decoded address columns of `batch`: IPv4 as host-order u32 (as the tracker sorts
    # them today), IPv6 as 16 raw bytes in network order (V16 sorts and compares bytewise).
    address_dtype: np.dtype[np.generic]
    quoted_header_len: int  # the quoted IP header's fixed part, before our echo header
    # IPv4: we compute the RFC 1071 checksum over the ICMP message and verify it on receive.
    # IPv6: the checksum covers a pseudo-header with both addresses (RFC 4443 section 2.3);
    # the kernel fills it in on send for raw ICMPv6 sockets (RFC 3542 section 3.1) and, when
    # the socket is read, drops a message whose checksum fails (counted in the socket's drops:
    # net/ipv6/raw.c, rawv6_recvmsg), so CORRUPTED cannot be seen.
    user_checksum: bool
    max_payload: int  # the largest echo payload one datagram holds (no jumbograms)

    @property
    def name(self) -> str:
        return f"IPv{self.version}"

    def address_column(self, packed: Sequence[bytes]) -> NDArray[Any]:
        """Addresses (Target.packed: network order, 4 or 16 bytes each) as a column of
        `address_dtype`, the form the decoder gives quoted destinations in: what a tracker
        sorts and searches to find the target an error names."""
        if any(len(a) != self.address_len for a in packed):
            raise ValueError(f"{self.name} addresses are {self.address_len} bytes each")
        raw = np.frombuffer(b"".join(packed), dtype=np.uint8)
        if self.address_dtype.kind == "V":
            return raw.view(self.address_dtype).copy()
        return raw.view(">u4").astype(self.address_dtype)


IPV4 = WireFamily(
    version=4,
    proto=IPPROTO_ICMP,
    echo_request=IcmpType.ECHO_REQUEST,
    echo_reply=IcmpType.ECHO_REPLY,
    error_types=frozenset({IcmpType.DEST_UNREACH, IcmpType.TIME_EXCEEDED}),
    rx_ip_header=True,
    address_len=4,
    address_dtype=np.dtype(np.uint32),
    quoted_header_len=IPV4_HEADER_LEN,
    user_checksum=True,
    max_payload=0xFFFF - IPV4_HEADER_LEN - 8,  # total length u16 covers the IP header
)

IPV6 = WireFamily(
    version=6,
    proto=IPPROTO_ICMPV6,
    echo_request=Icmp6Type.ECHO_REQUEST,
    echo_reply=Icmp6Type.ECHO_REPLY,
    error_types=frozenset(
        {
            Icmp6Type.DEST_UNREACH,
            Icmp6Type.PACKET_TOO_BIG,
            Icmp6Type.TIME_EXCEEDED,
            Icmp6Type.PARAM_PROBLEM,
        }
    ),
    rx_ip_header=False,
    address_len=16,
    address_dtype=np.dtype("V16"),
    quoted_header_len=IPV6_HEADER_LEN,
    user_checksum=False,
    max_payload=0xFFFF - 8,  # payload length u16 excludes the fixed IPv6 header
)

FAMILIES = {4: IPV4, 6: IPV6}


def family_of(version: int) -> WireFamily:
    """The wire family of a Target.family value (4 or 6)."""
    try:
        return FAMILIES[version]
    except KeyError:
        raise ValueError(f"address family {version} is unknown: use 4 or 6") from None
