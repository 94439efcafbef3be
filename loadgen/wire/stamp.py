"""STAMP base packets in unauthenticated mode (RFC 8762, with RFC 8972's SSID): the 44-byte
session-sender test packet (4.2.1) and the session-reflector's reply (4.3.1), NTP and PTP
timestamps (4.2.1 and RFC 8186 / IEEE 1588 truncated), the error estimate (RFC 4656 4.1.2 with
RFC 8762's Z bit). Pure: timestamps are passed in as CLOCK_REALTIME nanoseconds, parsing never
raises on wire bytes (a `ParseStatus` says what was wrong). TLVs are `stamp_tlv`'s.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from enum import IntEnum

from loadgen.wire.stamp_tlv import (
    COS_VALUE_LEN,
    NO_TOS,
    TLV_HEADER,
    ReflectContext,
    SyncSource,
    TimestampInfo,
    TimestampMethod,
    TlvType,
    reflect_tail,
)

STAMP_PORT = 862  # RFC 8762 section 4.1: the well-known session-reflector port
BASE_LEN = 44  # both base packets, unauthenticated mode: equal, so replies are symmetric

# RFC 8762 4.2.1 (SSID per RFC 8972 section 3), session-sender test packet, unauthenticated:
#    0  Sequence Number             u32
#    4  Timestamp                   u64  (NTP or PTP format, the Z bit says which)
#   12  Error Estimate              u16  S | Z | Scale(6) | Multiplier(8)
#   14  SSID                        u16  (RFC 8972; MBZ in plain RFC 8762, so 0 there)
#   16  MBZ                         28 bytes
#   44  TLVs (RFC 8972) or padding, up to the datagram's end
SENDER = struct.Struct("!IQHH28x")
# RFC 8762 4.3.1 (SSID per RFC 8972 section 3), session-reflector test packet, unauthenticated:
#    0  Sequence Number                      u32  (own counter if stateful, else the sender's)
#    4  Timestamp                            u64  T3, when the reply left
#   12  Error Estimate                       u16
#   14  SSID                                 u16  copied from the sender's packet
#   16  Receive Timestamp                    u64  T2, when the test packet arrived
#   24  Session-Sender Sequence Number       u32
#   28  Session-Sender Timestamp             u64  T1, copied
#   36  Session-Sender Error Estimate        u16
#   38  MBZ                                  u16
#   40  Ses-Sender TTL                       u8   TTL / hop limit of the received test packet
#   41  MBZ                                  3 bytes
REFLECTOR = struct.Struct("!IQHHQIQH2xB3x")
assert SENDER.size == REFLECTOR.size == BASE_LEN

# RFC 8762 4.2.2: an authenticated test packet is at least 112 bytes: sequence number, 12 MBZ
# bytes, then the timestamp at offset 16. An unauthenticated packet has its (never zero)
# timestamp at 4, so 12 zero bytes there on a packet of 112 or more reads as authenticated.
AUTH_MIN_LEN = 112
AUTH_MBZ = slice(4, 16)

# NTP 64-bit timestamp (RFC 5905 6): seconds since 1900-01-01 u32, fraction u32 (2**-32 s).
NTP_UNIX_OFFSET_S = 2_208_988_800
# Era 0 of NTP ends in 2036: seconds below this pivot (1968) are read as era 1 (RFC 5905 6).
NTP_ERA_PIVOT_S = 0x8000_0000
# PTP truncated timestamp (RFC 8186 section 2.3, IEEE 1588v2): seconds u32 and nanoseconds
# u32 since 1970-01-01 TAI. We stamp with CLOCK_REALTIME (UTC); TAI is ahead by the leap
# seconds inserted so far (37 since 2017-01-01, IERS Bulletin C).
TAI_MINUS_UTC_S = 37
NS_PER_S = 1_000_000_000


class ParseStatus(IntEnum):
    OK = 0
    TRUNCATED = 1  # shorter than the 44-byte base packet
    AUTHENTICATED = 2  # laid out as RFC 8762 4.2.2's authenticated mode: not served


class TimestampFormat(IntEnum):
    """The Z bit of the error estimate (RFC 8762 4.2.1)."""

    NTP = 0
    PTP = 1


@dataclass(frozen=True, slots=True)
class ErrorEstimate:
    """RFC 4656 4.1.2: S (clock synchronised to UTC), Z (RFC 8762: timestamp format), Scale
    and Multiplier; the error is Multiplier * 2**(Scale - 32) seconds. Multiplier MUST NOT be 0
    on transmit; a zero one received is kept as carried."""

    synchronized: bool = False
    fmt: TimestampFormat = TimestampFormat.NTP
    scale: int = 0
    multiplier: int = 1

    def pack(self) -> int:
        if not (0 <= self.scale < 64 and 0 <= self.multiplier < 256):
            raise ValueError("error estimate scale is 0..63 and multiplier 0..255")
        return self.synchronized << 15 | self.fmt << 14 | self.scale << 8 | self.multiplier

    @classmethod
    def unpack(cls, word: int) -> ErrorEstimate:
        fmt = TimestampFormat(word >> 14 & 1)
        return cls(bool(word >> 15 & 1), fmt, word >> 8 & 0x3F, word & 0xFF)

    @property
    def error_ns(self) -> int:
        return (self.multiplier * NS_PER_S << self.scale) >> 32

    @classmethod
    def for_error_ns(
        cls, error_ns: int, *, synchronized: bool, fmt: TimestampFormat
    ) -> ErrorEstimate:
        """The smallest scale whose multiplier (1..255) covers `error_ns`, rounded up."""
        for scale in range(64):
            unit = NS_PER_S << scale  # multiplier * unit / 2**32 ns
            multiplier = -(-(max(error_ns, 0) << 32) // unit)
            if multiplier <= 255:
                return cls(synchronized, fmt, scale, max(multiplier, 1))
        return cls(synchronized, fmt, 63, 255)


def encode_timestamp(realtime_ns: int, fmt: TimestampFormat) -> int:
    """CLOCK_REALTIME nanoseconds as a 64-bit STAMP timestamp of `fmt`."""
    seconds, ns = divmod(realtime_ns, NS_PER_S)
    if fmt is TimestampFormat.PTP:
        return ((seconds + TAI_MINUS_UTC_S) & 0xFFFF_FFFF) << 32 | ns
    fraction = ((ns << 32) + NS_PER_S // 2) // NS_PER_S
    return ((seconds + NTP_UNIX_OFFSET_S) << 32) + fraction & 0xFFFF_FFFF_FFFF_FFFF


def decode_timestamp(raw: int, fmt: TimestampFormat) -> int:
    """A 64-bit STAMP timestamp of `fmt` as CLOCK_REALTIME nanoseconds (inverse of encode for
    every time between 1968 and 2104)."""
    seconds, low = raw >> 32, raw & 0xFFFF_FFFF
    if fmt is TimestampFormat.PTP:
        return (seconds - TAI_MINUS_UTC_S) * NS_PER_S + min(low, NS_PER_S - 1)
    if seconds < NTP_ERA_PIVOT_S:
        seconds += 1 << 32
    return (seconds - NTP_UNIX_OFFSET_S) * NS_PER_S + ((low * NS_PER_S + (1 << 31)) >> 32)


@dataclass(frozen=True, slots=True)
class SenderPacket:
    """A session-sender test packet; `tail` is everything after the 44 base bytes."""

    seq: int
    timestamp: int
    error: ErrorEstimate
    ssid: int = 0
    tail: bytes = b""

    def pack(self) -> bytes:
        return SENDER.pack(self.seq, self.timestamp, self.error.pack(), self.ssid) + self.tail


@dataclass(frozen=True, slots=True)
class ReflectorPacket:
    """A session-reflector test packet; `tail` is everything after the 44 base bytes."""

    seq: int
    timestamp: int  # T3
    error: ErrorEstimate
    ssid: int
    rx_timestamp: int  # T2
    sender_seq: int
    sender_timestamp: int  # T1
    sender_error: ErrorEstimate
    sender_ttl: int
    tail: bytes = b""

    def pack(self) -> bytes:
        base = REFLECTOR.pack(
            self.seq,
            self.timestamp,
            self.error.pack(),
            self.ssid,
            self.rx_timestamp,
            self.sender_seq,
            self.sender_timestamp,
            self.sender_error.pack(),
            self.sender_ttl,
        )
        return base + self.tail


def looks_authenticated(datagram: bytes) -> bool:
    return len(datagram) >= AUTH_MIN_LEN and datagram[AUTH_MBZ] == bytes(12)


def parse_sender(datagram: bytes) -> tuple[ParseStatus, SenderPacket | None]:
    if len(datagram) < BASE_LEN:
        return ParseStatus.TRUNCATED, None
    if looks_authenticated(datagram):
        return ParseStatus.AUTHENTICATED, None
    seq, timestamp, error, ssid = SENDER.unpack_from(datagram)
    packet = SenderPacket(seq, timestamp, ErrorEstimate.unpack(error), ssid, datagram[BASE_LEN:])
    return ParseStatus.OK, packet


def parse_reflector(datagram: bytes) -> tuple[ParseStatus, ReflectorPacket | None]:
    if len(datagram) < BASE_LEN:
        return ParseStatus.TRUNCATED, None
    if looks_authenticated(datagram):
        return ParseStatus.AUTHENTICATED, None
    seq, ts, err, ssid, rx_ts, s_seq, s_ts, s_err, ttl = REFLECTOR.unpack_from(datagram)
    packet = ReflectorPacket(
        seq,
        ts,
        ErrorEstimate.unpack(err),
        ssid,
        rx_ts,
        s_seq,
        s_ts,
        ErrorEstimate.unpack(s_err),
        ttl,
        datagram[BASE_LEN:],
    )
    return ParseStatus.OK, packet


class ReflectStatus(IntEnum):
    REFLECTED = 0
    TRUNCATED = 1  # shorter than the base packet
    AUTHENTICATED = 2  # authenticated mode (RFC 8762 4.2.2): this reflector serves none


@dataclass(frozen=True, slots=True)
class Reflection:
    status: ReflectStatus
    reply: bytes = b""  # never longer than the test packet (same length when REFLECTED)
    sender_seq: int = 0
    ssid: int = 0
    refused_tlvs: int = 0
    tos: int = NO_TOS  # the TOS byte to send the reply with (Class of Service TLV), per packet


@functools.lru_cache(maxsize=16)
def _error_word(error_ns: int, synchronized: bool, fmt: TimestampFormat) -> int:
    return ErrorEstimate.for_error_ns(error_ns, synchronized=synchronized, fmt=fmt).pack()


SOFTWARE_STAMPS = TimestampInfo(
    SyncSource.LOCAL_FREE_RUNNING,
    TimestampMethod.SW_LOCAL,
    SyncSource.LOCAL_FREE_RUNNING,
    TimestampMethod.SW_LOCAL,
)


@dataclass(frozen=True, slots=True)
class ReflectorClock:
    """How the reflector stamps: format and S bit of its error estimate, and what its
    Timestamp Information TLV says about T2 and T3 (RFC 8972 4.3)."""

    fmt: TimestampFormat = TimestampFormat.NTP
    synchronized: bool = False
    error_ns: int = 1_000  # software stamps: a microsecond is honest
    stamps: TimestampInfo = SOFTWARE_STAMPS

    @property
    def error_word(self) -> int:
        """The error estimate this clock puts in every reply, packed."""
        return _error_word(self.error_ns, self.synchronized, self.fmt)


def reflect(
    datagram: bytes,
    *,
    rx_ns: int,
    tx_ns: int,
    ttl: int,
    tos: int,
    clock: ReflectorClock,
    reflector_seq: int | None = None,
    permitted_dscp: frozenset[int] | None = None,
) -> Reflection:
    """The session-reflector's reply (RFC 8762 4.3) to one test packet received at `rx_ns`
    (T2) and answered at `tx_ns` (T3), both CLOCK_REALTIME. Stateless (`reflector_seq` None):
    the reply's sequence number copies the sender's; stateful: the session's own counter.
    `tos` is the received TOS / traffic class; `permitted_dscp` the DSCP1 values a reply may
    carry (RFC 8972 4.4 local policy; None: all)."""
    # The reflector's hot path: the same layouts as parse_sender and ReflectorPacket.pack,
    # without building their objects (tests hold the two equal).
    if len(datagram) < BASE_LEN:
        return Reflection(ReflectStatus.TRUNCATED)
    if looks_authenticated(datagram):
        return Reflection(ReflectStatus.AUTHENTICATED)
    seq, timestamp, error, ssid = SENDER.unpack_from(datagram)
    tail, refused, reply_tos = datagram[BASE_LEN:], 0, NO_TOS
    if tail.startswith(COS_HEAD) and padding_from(tail, COS_TLV_LEN):
        tail, reply_tos = _answer_cos(tail, tos, permitted_dscp)
    elif tail and not returned_as_is(tail):
        out = reflect_tail(tail, ReflectContext(tos, clock.stamps, permitted_dscp))
        tail, refused, reply_tos = out.tail, out.refused, out.reply_tos
    reply = REFLECTOR.pack(
        seq if reflector_seq is None else reflector_seq & 0xFFFF_FFFF,
        encode_timestamp(tx_ns, clock.fmt),
        clock.error_word,
        ssid,
        encode_timestamp(rx_ns, clock.fmt),
        seq,
        timestamp,
        error,
        ttl & 0xFF,
    )
    return Reflection(ReflectStatus.REFLECTED, reply + tail, seq, ssid, refused, reply_tos)


def returned_as_is(tail: bytes) -> bool:
    """Padding the reflector returns unchanged whatever TLV rules say: all zeros (RFC 8762
    padding) or one Extra Padding TLV filling the tail, its flags clear (RFC 8972 4.1)."""
    if len(tail) >= TLV_HEADER.size and tail[0] == 0 and tail[1] == TlvType.EXTRA_PADDING:
        return int.from_bytes(tail[2:4], "big") == len(tail) - TLV_HEADER.size
    return tail.count(0) == len(tail)


# loadgen's own tail, the reflector's hot path: a Class of Service TLV, flags clear (RFC 8972
# 4.4), then nothing or one Extra Padding TLV filling the rest. Answered here as `reflect_tail`
# would (tests hold the two equal) without parsing it into objects.
COS_HEAD = TLV_HEADER.pack(0, TlvType.CLASS_OF_SERVICE, COS_VALUE_LEN)
COS_TLV_LEN = TLV_HEADER.size + COS_VALUE_LEN


def padding_from(tail: bytes, at: int) -> bool:
    """Nothing from `at` on, or one Extra Padding TLV (flags clear) filling the rest."""
    n = len(tail) - at
    if n <= 0:
        return n == 0
    return (
        n >= TLV_HEADER.size
        and tail[at] == 0
        and tail[at + 1] == TlvType.EXTRA_PADDING
        and tail[at + 2] << 8 | tail[at + 3] == n - TLV_HEADER.size
    )


def _answer_cos(tail: bytes, tos: int, permitted: frozenset[int] | None) -> tuple[bytes, int]:
    """The Class of Service TLV answered (DSCP2/ECN as received, RP, Reserved zero), and the
    reply's TOS: DSCP1 or, refused, the received DSCP; Not-ECT."""
    at = TLV_HEADER.size  # the value: DSCP1 (6) | DSCP2 (6) | ECN (2) | RP (2) | Reserved (16)
    dscp1 = tail[at] >> 2
    refused = permitted is not None and dscp1 not in permitted
    out = bytearray(tail)
    out[at] = dscp1 << 2 | tos >> 6 & 3
    out[at + 1] = (tos >> 2 & 0xF) << 4 | (tos & 3) << 2 | refused
    out[at + 2] = out[at + 3] = 0
    return bytes(out), (tos >> 2 & 0x3F if refused else dscp1) << 2
