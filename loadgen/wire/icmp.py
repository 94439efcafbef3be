"""Scalar reference codec for ICMP echo probes, IPv4 (RFC 792) and IPv6 (RFC 4443) alike, the
family a parameter (`family.WireFamily`): our payload header, fill patterns, the RFC 1071
checksum, the echo-request builder and a decoder that classifies anything a raw socket returns.
`batch` is the vectorised twin and must agree with this module byte for byte; this one is the
specification. Nothing here touches a socket or a clock; decoding never raises on wire bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from loadgen.wire.family import IPPROTO_ICMPV6, IPV4, IPV6_HEADER_LEN, WireFamily

# Re-exported: the worker sizes link-layer headers with it.
from loadgen.wire.family import IPV4_HEADER_LEN as IPV4_HEADER_LEN  # noqa: PLC0414

# ICMP header, RFC 792 (https://www.rfc-editor.org/rfc/rfc792):
#   type u8 | code u8 | checksum u16 | identifier u16 | sequence u16   (echo / echo reply)
#   type u8 | code u8 | checksum u16 | unused u32 | inner IP header + leading data (errors)
# ICMPv6 (RFC 4443 sections 2.1, 3 and 4.1) has the same 8-byte shape; its errors' second word
# is unused, an MTU (packet too big) or a pointer (parameter problem).
ICMP_HEADER = struct.Struct("!BBHHH")
ICMP_HEADER_LEN = 8
# Our payload header (docs/DESIGN.md): magic, run_id, target, seq, tx_ns; then the fill bytes.
PAYLOAD_HEADER = struct.Struct("!IIIQq")
MIN_PAYLOAD = PAYLOAD_HEADER.size
MAGIC = 0x4C47454E  # "LGEN"
N_PATTERNS = 4
UNKNOWN_TARGET = 0xFFFFFFFF
# A valid-checksum reply whose magic and run_id are each within this many bit errors of ours is
# our probe damaged in flight (a bitflip); further away it belongs to another program or run.
MAX_DAMAGED_BITS = 2
# IPv4 header, RFC 791 (https://www.rfc-editor.org/rfc/rfc791#section-3.1):
#   ver/ihl u8 | tos u8 | total length u16 | id u16 | flags/frag u16 | ttl u8 | proto u8 |
#   header checksum u16 | src u32 | dst u32 | options (ihl*4 - 20 bytes)
IPV4_HEADER = struct.Struct("!BBHHHBBHII")
# IPv6 header, RFC 8200 section 3 (https://www.rfc-editor.org/rfc/rfc8200#section-3):
#   version/traffic class/flow label u32 | payload length u16 | next header u8 | hop limit u8 |
#   source 16 bytes | destination 16 bytes
IPV6_HEADER = struct.Struct("!IHBB16s16s")
# Next-header values that are extension headers (RFC 8200 section 4, IANA "IPv6 Extension
# Header Types"): hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP,
# shim6, experiments. Our probes carry none, but the kernel adds a fragment header to one
# larger than the path MTU; an error quoting such a packet is counted as malformed rather than
# walked (the BPF filter, reading the quoted identifier at a fixed offset, drops it anyway).
_IPV6_EXTENSION_HEADERS = frozenset({0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254})


class DecodeStatus(IntEnum):
    REPLY = 0  # a good echo reply to one of our probes
    BITFLIP = 1  # valid checksum, ours, but header or fill differs from what the probe carried
    CORRUPTED = 2  # bad ICMP checksum on a packet naming our identifier (IPv4 only: the
    # kernel drops an ICMPv6 message whose checksum fails before a raw socket reads it)
    ICMP_ERROR = 3  # an ICMP error (family.error_types) quoting one of our echo requests
    FOREIGN = 4  # well formed but not ours (other identifier, other run, other type)
    MALFORMED = 5  # truncated, bad IP header, wrong length


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one received datagram says. Fields the status cannot vouch for are 0 or
    UNKNOWN_TARGET; `seq16_only` means `seq` is only the 16-bit ICMP sequence field. A REPLY's
    target and seq are as carried: nothing in the packet is redundant with them, so a flip that
    the checksum misses there reads as a good reply, and the tracker checks them against what
    it sent. Addresses are integers of the family's width (32 or 128 bits)."""

    status: DecodeStatus
    target: int = UNKNOWN_TARGET
    seq: int = 0
    tx_ns: int = 0
    # IPv4 source address of the datagram, from its header. 0 for IPv6: an AF_INET6 raw socket
    # delivers no IP header, the source is in msg_name (the socket layer's to read).
    src: int = 0
    quoted_dst: int = 0  # ICMP errors quoting our probe: the quoted destination address
    icmp_type: int = 0
    icmp_code: int = 0
    seq16_only: bool = False


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum of the
    big-endian 16-bit words, an odd trailing byte padded with zero. Over a message that already
    carries its checksum the result is 0."""
    # 2**16 == 1 modulo 0xFFFF, so the message read as one big integer is congruent to the sum of
    # its words, and ones' complement addition is addition modulo 0xFFFF in which a non-zero
    # multiple of 0xFFFF reads 0xFFFF. One bignum operation instead of a loop over the words.
    value = int.from_bytes(data, "big") << (8 * (len(data) % 2))
    total = value % 0xFFFF or (0xFFFF if value else 0)
    return ~total & 0xFFFF


def fill_patterns(run_id: int, fill_len: int) -> tuple[bytes, ...]:
    """The four fills a probe can carry (pattern = seq % 4): bytes drawn from a generator seeded
    with run_id, all zeros, all ones, alternating bits. Deterministic for a run."""
    seeded = np.random.default_rng(run_id).bytes(fill_len)
    return (seeded, b"\x00" * fill_len, b"\xff" * fill_len, b"\x5a" * fill_len)


def check_size(size: int, family: WireFamily = IPV4) -> None:
    """Refuse a payload size our header does not fit in or one datagram cannot carry."""
    if not MIN_PAYLOAD <= size <= family.max_payload:
        raise ValueError(
            f"probe size {size} is out of range for {family.name}: "
            f"use {MIN_PAYLOAD}..{family.max_payload}"
        )


def build_echo_request(
    *,
    ident: int,
    run_id: int,
    target: int,
    seq: int,
    tx_ns: int,
    size: int,
    fills: Sequence[bytes],
    family: WireFamily = IPV4,
) -> bytes:
    """One echo request message (no IP header) whose payload is `size` bytes of our format.
    IPv4: checksum filled in. IPv6: checksum left 0, the kernel fills it for a raw ICMPv6
    socket (RFC 3542 section 3.1); `fill_checksum6` gives the bytes as they go on the wire."""
    check_size(size, family)
    fill = fills[seq % N_PATTERNS]
    if len(fill) != size - MIN_PAYLOAD:
        raise ValueError(f"fill of {len(fill)} bytes does not fit size {size}: rebuild the fills")
    try:
        body = PAYLOAD_HEADER.pack(MAGIC, run_id, target, seq, tx_ns) + fill
        header = ICMP_HEADER.pack(family.echo_request, 0, 0, ident, seq & 0xFFFF)
    except struct.error as exc:
        raise ValueError(f"echo request field out of range ({exc}): check ident/run_id") from None
    return _with_checksum(header + body, 2) if family.user_checksum else header + body


def checksum6(src: bytes, dst: bytes, message: bytes) -> int:
    """The ICMPv6 checksum of `message` (its checksum field zeroed) from `src` to `dst`: RFC
    1071 over the upper-layer pseudo-header of RFC 8200 section 8.1 (source, destination,
    upper-layer length u32, three zero bytes, next header 58) and the message (RFC 4443 2.3)."""
    if len(src) != 16 or len(dst) != 16:
        raise ValueError("IPv6 addresses are 16 bytes: pass ipaddress.IPv6Address(...).packed")
    pseudo = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return checksum(pseudo + message)


def fill_checksum6(message: bytes, src: bytes, dst: bytes) -> bytes:
    """An ICMPv6 message with its checksum written as the sending kernel writes it."""
    zeroed = message[:2] + b"\0\0" + message[4:]
    return zeroed[:2] + checksum6(src, dst, zeroed).to_bytes(2, "big") + zeroed[4:]


def build_ipv4_packet(
    src: int, dst: int, proto: int, payload: bytes, *, ttl: int = 64, tos: int = 0, ip_id: int = 0
) -> bytes:
    """An option-less IPv4 datagram around `payload`, header checksum filled in. Used by tests
    and the lab reflector; the prober itself lets the kernel write IP headers."""
    total = IPV4_HEADER_LEN + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 payload of {len(payload)} bytes is too large: at most 65515")
    header = IPV4_HEADER.pack(0x45, tos, total, ip_id, 0, ttl, proto, 0, src, dst)
    return _with_checksum(header, 10) + payload


def build_ipv6_packet(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    tclass: int = 0,
) -> bytes:
    """An IPv6 datagram without extension headers around `payload` (RFC 8200 section 3), as
    an ICMPv6 error quotes it. For tests and the lab; the prober lets the kernel write it."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"IPv6 payload of {len(payload)} bytes is too large: at most 65535")
    first_word = 6 << 28 | tclass << 20
    return IPV6_HEADER.pack(first_word, len(payload), next_header, hop_limit, src, dst) + payload


def echo_reply_for(request: bytes, family: WireFamily = IPV4) -> bytes:
    """The echo reply a host answers `request` (an ICMP message) with: the family's reply type,
    same code, identifier, sequence and data (RFC 792; RFC 4443 section 4.2). IPv4: checksum
    recomputed. IPv6: the pseudo-header sum is the same both ways, so the checksum only moves
    by the type change (RFC 1624 eqn. 3): a request with its wire checksum gets its reply's."""
    reply = bytes([family.echo_reply]) + request[1:]
    if family.user_checksum:
        return _with_checksum(reply[:2] + b"\0\0" + reply[4:], 2)
    old, new = int.from_bytes(request[:2], "big"), int.from_bytes(reply[:2], "big")
    total = (~int.from_bytes(request[2:4], "big") & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return reply[:2] + (~total & 0xFFFF).to_bytes(2, "big") + reply[4:]


# How much of the invoking packet Linux quotes: IPv4 up to 576 - 28 = 548 bytes (RFC 792 asks
# for only header + 8); IPv6 as much as fits the minimum MTU, 1280 - 48 (RFC 4443 2.4(c)).
QUOTE_LEN = {4: 548, 6: 1232}


def build_icmp_error(
    icmp_type: int,
    code: int,
    original: bytes,
    *,
    quote_len: int | None = None,
    family: WireFamily = IPV4,
) -> bytes:
    """An ICMP error message quoting the first `quote_len` bytes of the IP datagram `original`
    (by default as much as Linux quotes). IPv6: checksum 0, see `fill_checksum6`."""
    quoted = original[: QUOTE_LEN[family.version] if quote_len is None else quote_len]
    message = bytes([icmp_type, code]) + b"\0" * 6 + quoted
    return _with_checksum(message, 2) if family.user_checksum else message


def _with_checksum(data: bytes, at: int) -> bytes:
    """`data` with the checksum of all of it written into the zeroed 16-bit field at `at`."""
    return data[:at] + checksum(data).to_bytes(2, "big") + data[at + 2 :]


def _near(value: int, expected: int) -> bool:
    return (value ^ expected).bit_count() <= MAX_DAMAGED_BITS


def decode(
    datagram: bytes,
    *,
    ident: int,
    run_id: int,
    size: int,
    fills: Sequence[bytes],
    family: WireFamily = IPV4,
    ip_header: bool | None = None,
) -> Decoded:
    """Classify one datagram as a raw socket of `family` returns it: AF_INET/IPPROTO_ICMP gives
    the IPv4 header (options allowed), then ICMP; AF_INET6/IPPROTO_ICMPV6 gives the ICMPv6
    message alone, and so does a datagram ICMP socket of either family (`ip_header=False`).
    Never raises on any bytes: garbage is MALFORMED."""
    src = 0
    icmp = datagram
    if family.rx_ip_header if ip_header is None else ip_header:
        length = len(datagram)
        if length < IPV4_HEADER_LEN:
            return Decoded(DecodeStatus.MALFORMED)
        ver_ihl, _, total, _, _, _, proto, _, src, _ = IPV4_HEADER.unpack_from(datagram)
        ihl = (ver_ihl & 0x0F) * 4
        # Linux hands raw sockets the header as received; reassembled, trimmed to total length.
        if ver_ihl >> 4 != 4 or ihl < IPV4_HEADER_LEN or total != length or ihl > length:
            return Decoded(DecodeStatus.MALFORMED, src=src)
        if checksum(datagram[:ihl]) != 0:
            return Decoded(DecodeStatus.MALFORMED, src=src)
        if proto != family.proto:
            return Decoded(DecodeStatus.FOREIGN, src=src)
        icmp = datagram[ihl:]
    if len(icmp) < ICMP_HEADER_LEN:
        return Decoded(DecodeStatus.MALFORMED, src=src)
    icmp_type, code, _, their_ident, seq16 = ICMP_HEADER.unpack_from(icmp)
    if icmp_type == family.echo_reply:
        if their_ident != ident:
            return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
        return _decode_reply(
            icmp, src=src, code=code, seq16=seq16, run_id=run_id, size=size, fills=fills,
            family=family,
        )  # fmt: skip
    if icmp_type in family.error_types:
        return _decode_error(
            icmp, src=src, icmp_type=icmp_type, code=code, ident=ident, run_id=run_id,
            family=family,
        )  # fmt: skip
    return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)


def _decode_reply(
    icmp: bytes,
    *,
    src: int,
    code: int,
    seq16: int,
    run_id: int,
    size: int,
    fills: Sequence[bytes],
    family: WireFamily,
) -> Decoded:
    """An echo reply carrying our identifier."""
    payload_len = len(icmp) - ICMP_HEADER_LEN
    # IPv6: the kernel verified the checksum before handing the message over (family.py).
    valid = checksum(icmp) == 0 if family.user_checksum else True
    magic, their_run = (
        struct.unpack_from("!II", icmp, ICMP_HEADER_LEN) if payload_len >= 8 else (0, 0)
    )
    if valid and payload_len >= 8 and not (_near(magic, MAGIC) and _near(their_run, run_id)):
        # Someone else's echo with a colliding identifier, or another run of ours.
        return Decoded(DecodeStatus.FOREIGN, src=src, icmp_code=code)
    if payload_len != size:
        return Decoded(DecodeStatus.MALFORMED, src=src, icmp_code=code)
    _, _, target, seq, tx_ns = PAYLOAD_HEADER.unpack_from(icmp, ICMP_HEADER_LEN)
    intact = magic == MAGIC and their_run == run_id
    status = DecodeStatus.BITFLIP
    if not valid:
        status = DecodeStatus.CORRUPTED
    elif (
        intact
        and code == 0
        and seq16 == seq & 0xFFFF
        and icmp[ICMP_HEADER_LEN + MIN_PAYLOAD :] == fills[seq % N_PATTERNS]
    ):
        status = DecodeStatus.REPLY
    if not intact:  # magic or run_id damaged: target and seq cannot be trusted
        return Decoded(status, src=src, icmp_code=code)
    return Decoded(status, target=target, seq=seq, tx_ns=tx_ns, src=src, icmp_code=code)


def _quoted_probe(icmp: bytes, family: WireFamily) -> tuple[int, int, int] | None:
    """Where an error's quoted packet puts its ICMP header: (offset in `icmp`, the quoted
    protocol / next header, the quoted destination address); None if the quote is cut short
    of the echo header or is not an IP header of the family. IPv4: the quoted header has
    IHL * 4 bytes (RFC 792); IPv6: a fixed 40 (RFC 4443 section 2.4(c)), extension headers
    excepted (see _IPV6_EXTENSION_HEADERS)."""
    inner_at = ICMP_HEADER_LEN
    if len(icmp) < inner_at + family.quoted_header_len:
        return None
    if family.rx_ip_header:
        ver_ihl, _, _, _, _, _, proto, _, _, inner_dst = IPV4_HEADER.unpack_from(icmp, inner_at)
        echo_at = inner_at + (ver_ihl & 0x0F) * 4
        ok = ver_ihl >> 4 == 4 and echo_at >= inner_at + IPV4_HEADER_LEN
    else:
        first, _, proto, _, _, dst = IPV6_HEADER.unpack_from(icmp, inner_at)
        echo_at = inner_at + IPV6_HEADER_LEN
        inner_dst = int.from_bytes(dst, "big")
        ok = first >> 28 == 6 and proto not in _IPV6_EXTENSION_HEADERS
    if not ok or len(icmp) < echo_at + ICMP_HEADER_LEN:
        return None
    return echo_at, proto, inner_dst


def _decode_error(
    icmp: bytes,
    *,
    src: int,
    icmp_type: int,
    code: int,
    ident: int,
    run_id: int,
    family: WireFamily,
) -> Decoded:
    """An ICMP error of `family.error_types`: ours if it quotes one of our echo requests."""
    located = _quoted_probe(icmp, family)
    if located is None:
        return Decoded(DecodeStatus.MALFORMED, src=src, icmp_type=icmp_type, icmp_code=code)
    echo_at, proto, inner_dst = located
    if proto != family.proto:
        return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
    # A damaged error is still about our probe; the tracker counts it apart from clean ones.
    # (IPv6: the kernel dropped it before we could see the damage.)
    damaged = family.user_checksum and checksum(icmp) != 0
    return decode_quoted(
        icmp[echo_at:], icmp_type=icmp_type, code=code, src=src, quoted_dst=inner_dst,
        ident=ident, run_id=run_id, family=family, damaged=damaged,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueuedError:
    """An ICMP error about a probe of a datagram ICMP socket, as its error queue gives it
    (ip(7) IP_RECVERR, ipv6(7) IPV6_RECVERR): the error's type and code (sock_extended_err),
    the router that sent it (SO_EE_OFFENDER) and the probe's destination (msg_name), network
    order, and the quoted probe from its ICMP header on (the quoted IP header is not given;
    on a UDP probe socket `echo` is the quoted payload after the UDP header)."""

    icmp_type: int
    code: int
    offender: bytes
    destination: bytes
    echo: bytes


def decode_quoted(
    echo: bytes,
    *,
    icmp_type: int,
    code: int,
    src: int,
    quoted_dst: int,
    ident: int,
    run_id: int,
    family: WireFamily,
    damaged: bool = False,
) -> Decoded:
    """An ICMP error quoting `echo` (the quoted packet from its ICMP header on), sent to the
    probe's destination quoted_dst: ours if it is one of our echo requests."""
    if len(echo) < ICMP_HEADER_LEN:
        return Decoded(DecodeStatus.MALFORMED, src=src, icmp_type=icmp_type, icmp_code=code)
    inner_type, _, _, their_ident, seq16 = ICMP_HEADER.unpack_from(echo)
    if inner_type != family.echo_request or their_ident != ident:
        return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
    quoted = echo[ICMP_HEADER_LEN:]
    magic, their_run = struct.unpack_from("!II", quoted) if len(quoted) >= 8 else (MAGIC, run_id)
    if not (_near(magic, MAGIC) and _near(their_run, run_id)):
        return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
    status = DecodeStatus.CORRUPTED if damaged else DecodeStatus.ICMP_ERROR
    inner_dst = quoted_dst
    if len(quoted) >= MIN_PAYLOAD and magic == MAGIC and their_run == run_id:
        _, _, target, seq, tx_ns = PAYLOAD_HEADER.unpack_from(quoted)
        return Decoded(status, target, seq, tx_ns, src, inner_dst, icmp_type, code)
    # The quote stops short of our payload header (RFC 792 asks for only 8 bytes of the echo)
    # or that header is damaged: the ICMP sequence field is all that identifies the probe.
    return Decoded(status, UNKNOWN_TARGET, seq16, 0, src, inner_dst, icmp_type, code, True)
