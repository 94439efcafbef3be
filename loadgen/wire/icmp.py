"""Scalar reference codec for ICMPv4 echo probes: our payload header, fill patterns, the RFC 1071
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

# ICMP header, RFC 792 (https://www.rfc-editor.org/rfc/rfc792):
#   type u8 | code u8 | checksum u16 | identifier u16 | sequence u16   (echo / echo reply)
#   type u8 | code u8 | checksum u16 | unused u32 | inner IP header + leading data (errors)
ICMP_HEADER = struct.Struct("!BBHHH")
ICMP_HEADER_LEN = 8
# Our payload header (docs/DESIGN.md): magic, run_id, target, seq, tx_ns; then the fill bytes.
PAYLOAD_HEADER = struct.Struct("!IIIQq")
MIN_PAYLOAD = PAYLOAD_HEADER.size
MAGIC = 0x4C47454E  # "LGEN"
N_PATTERNS = 4
UNKNOWN_TARGET = 0xFFFFFFFF
MAX_PAYLOAD = 0xFFFF - 20 - ICMP_HEADER_LEN  # the largest echo payload an IPv4 packet holds
# A valid-checksum reply whose magic and run_id are each within this many bit errors of ours is
# our probe damaged in flight (a bitflip); further away it belongs to another program or run.
MAX_DAMAGED_BITS = 2
# IPv4 header, RFC 791 (https://www.rfc-editor.org/rfc/rfc791#section-3.1):
#   ver/ihl u8 | tos u8 | total length u16 | id u16 | flags/frag u16 | ttl u8 | proto u8 |
#   header checksum u16 | src u32 | dst u32 | options (ihl*4 - 20 bytes)
IPV4_HEADER = struct.Struct("!BBHHHBBHII")
IPV4_HEADER_LEN = 20
IPPROTO_ICMP = 1


class IcmpType(IntEnum):
    ECHO_REPLY = 0
    DEST_UNREACH = 3
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11


class DecodeStatus(IntEnum):
    REPLY = 0  # a good echo reply to one of our probes
    BITFLIP = 1  # valid checksum, ours, but header or fill differs from what the probe carried
    CORRUPTED = 2  # bad ICMP checksum on a packet naming our identifier
    ICMP_ERROR = 3  # destination unreachable / time exceeded quoting one of our echo requests
    FOREIGN = 4  # well formed but not ours (other identifier, other run, other type)
    MALFORMED = 5  # truncated, bad IP header, wrong length


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one received datagram says. Fields the status cannot vouch for are 0 or
    UNKNOWN_TARGET; `seq16_only` means `seq` is only the 16-bit ICMP sequence field. A REPLY's
    target and seq are as carried: nothing in the packet is redundant with them, so a flip that
    the checksum misses there reads as a good reply, and the tracker checks them against what
    it sent."""

    status: DecodeStatus
    target: int = UNKNOWN_TARGET
    seq: int = 0
    tx_ns: int = 0
    src: int = 0  # IPv4 source address of the datagram, host order
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


def build_echo_request(
    *, ident: int, run_id: int, target: int, seq: int, tx_ns: int, size: int, fills: Sequence[bytes]
) -> bytes:
    """One ICMP echo request (no IP header) whose payload is `size` bytes of our format."""
    if not MIN_PAYLOAD <= size <= MAX_PAYLOAD:
        raise ValueError(f"probe size {size} is out of range: use {MIN_PAYLOAD}..{MAX_PAYLOAD}")
    fill = fills[seq % N_PATTERNS]
    if len(fill) != size - MIN_PAYLOAD:
        raise ValueError(f"fill of {len(fill)} bytes does not fit size {size}: rebuild the fills")
    try:
        body = PAYLOAD_HEADER.pack(MAGIC, run_id, target, seq, tx_ns) + fill
        header = ICMP_HEADER.pack(IcmpType.ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF)
    except struct.error as exc:
        raise ValueError(f"echo request field out of range ({exc}): check ident/run_id") from None
    return _with_checksum(header + body, 2)


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


def echo_reply_for(request: bytes) -> bytes:
    """The echo reply a host answers `request` (an ICMP message) with: type 0, same identifier,
    sequence and data, checksum recomputed (RFC 792)."""
    return _with_checksum(b"\x00" + request[1:2] + b"\0\0" + request[4:], 2)


def build_icmp_error(icmp_type: int, code: int, original: bytes, *, quote_len: int = 548) -> bytes:
    """An ICMP error message quoting the first `quote_len` bytes of the IP datagram `original`
    (Linux quotes up to 576 - 28 = 548 bytes; RFC 792 asks for only header + 8)."""
    return _with_checksum(bytes([icmp_type, code]) + b"\0" * 6 + original[:quote_len], 2)


def _with_checksum(data: bytes, at: int) -> bytes:
    """`data` with the checksum of all of it written into the zeroed 16-bit field at `at`."""
    return data[:at] + checksum(data).to_bytes(2, "big") + data[at + 2 :]


def _near(value: int, expected: int) -> bool:
    return (value ^ expected).bit_count() <= MAX_DAMAGED_BITS


def decode_ipv4(
    datagram: bytes, *, ident: int, run_id: int, size: int, fills: Sequence[bytes]
) -> Decoded:
    """Classify one datagram as a raw AF_INET/IPPROTO_ICMP socket returns it (IPv4 header,
    options allowed, then ICMP). Never raises on any bytes: garbage is MALFORMED."""
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
    if proto != IPPROTO_ICMP:
        return Decoded(DecodeStatus.FOREIGN, src=src)
    icmp = datagram[ihl:]
    if len(icmp) < ICMP_HEADER_LEN:
        return Decoded(DecodeStatus.MALFORMED, src=src)
    icmp_type, code, _, their_ident, seq16 = ICMP_HEADER.unpack_from(icmp)
    if icmp_type == IcmpType.ECHO_REPLY:
        if their_ident != ident:
            return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
        return _decode_reply(
            icmp, src=src, code=code, seq16=seq16, run_id=run_id, size=size, fills=fills
        )
    if icmp_type in (IcmpType.DEST_UNREACH, IcmpType.TIME_EXCEEDED):
        return _decode_error(
            icmp, src=src, icmp_type=icmp_type, code=code, ident=ident, run_id=run_id
        )
    return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)


def _decode_reply(
    icmp: bytes, *, src: int, code: int, seq16: int, run_id: int, size: int, fills: Sequence[bytes]
) -> Decoded:
    """An echo reply carrying our identifier."""
    payload_len = len(icmp) - ICMP_HEADER_LEN
    valid = checksum(icmp) == 0
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


def _decode_error(
    icmp: bytes, *, src: int, icmp_type: int, code: int, ident: int, run_id: int
) -> Decoded:
    """Destination unreachable / time exceeded: ours if it quotes one of our echo requests."""
    inner_at = ICMP_HEADER_LEN
    if len(icmp) < inner_at + IPV4_HEADER_LEN:
        return Decoded(DecodeStatus.MALFORMED, src=src, icmp_type=icmp_type, icmp_code=code)
    ver_ihl, _, _, _, _, _, proto, _, _, inner_dst = IPV4_HEADER.unpack_from(icmp, inner_at)
    echo_at = inner_at + (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or echo_at < inner_at + IPV4_HEADER_LEN or len(icmp) < echo_at + 8:
        return Decoded(DecodeStatus.MALFORMED, src=src, icmp_type=icmp_type, icmp_code=code)
    inner_type, _, _, their_ident, seq16 = ICMP_HEADER.unpack_from(icmp, echo_at)
    if proto != IPPROTO_ICMP or inner_type != IcmpType.ECHO_REQUEST or their_ident != ident:
        return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
    quoted = icmp[echo_at + ICMP_HEADER_LEN :]
    magic, their_run = struct.unpack_from("!II", quoted) if len(quoted) >= 8 else (MAGIC, run_id)
    if not (_near(magic, MAGIC) and _near(their_run, run_id)):
        return Decoded(DecodeStatus.FOREIGN, src=src, icmp_type=icmp_type, icmp_code=code)
    # A damaged error is still about our probe; the tracker counts it apart from clean ones.
    status = DecodeStatus.ICMP_ERROR if checksum(icmp) == 0 else DecodeStatus.CORRUPTED
    if len(quoted) >= MIN_PAYLOAD and magic == MAGIC and their_run == run_id:
        _, _, target, seq, tx_ns = PAYLOAD_HEADER.unpack_from(quoted)
        return Decoded(status, target, seq, tx_ns, src, inner_dst, icmp_type, code)
    # The quote stops short of our payload header (RFC 792 asks for only 8 bytes of the echo)
    # or that header is damaged: the ICMP sequence field is all that identifies the probe.
    return Decoded(status, UNKNOWN_TARGET, seq16, 0, src, inner_dst, icmp_type, code, True)
