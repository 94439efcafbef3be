"""RFC 8972 TLVs after the STAMP base packet: the TLV header and flags (section 4), Extra Padding
(4.1), Timestamp Information (4.3), Class of Service (4.4), and what a session-reflector
returns for each (unknown types copied with the U flag, a malformed remainder copied with the M
flag, section 4) and which DSCP its reply carries. Reflection never changes a packet's length.
Pure, never raises on wire bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

# RFC 8972 section 4, every TLV:
#   0  STAMP TLV Flags  u8   U (unrecognized) | M (malformed) | I (integrity) | 5 reserved
#   1  Type             u8
#   2  Length           u16  bytes of Value, not counting this 4-byte header
#   4  Value
TLV_HEADER = struct.Struct("!BBH")
TLV_HEADER_LEN = TLV_HEADER.size
# RFC 8972 4.4, Class of Service TLV (Type 4, Length 4), the value as one big-endian u32:
#   bits 31..26  DSCP1     the DSCP the session-sender asks the reflected packet to carry
#   bits 25..20  DSCP2     the DSCP field of the test packet as it reached the reflector
#   bits 19..18  ECN       the ECN field of the test packet as it reached the reflector
#   bits 17..16  RP        Reverse Path: 0 on transmission; the reflector sets 1 when its local
#                          policy refuses DSCP1 and its reply carries the received DSCP instead
#   bits 15..0   Reserved  zero on transmission, ignored on receipt
# The reflector MUST return the TLV, copy the received DSCP and ECN into DSCP2 and ECN, and
# send its reply with DSCP1 where policy permits (per packet: each sender asks its own).
COS_VALUE_LEN = 4
# RFC 8972 4.3, Timestamp Information value (Length 4):
#   Sync Src In u8 | Timestamp In u8 | Sync Src Out u8 | Timestamp Out u8
TIMESTAMP_INFO = struct.Struct("!BBBB")


class TlvFlag(IntFlag):
    NONE = 0
    UNRECOGNIZED = 0x80  # U: the reflector does not know this Type
    MALFORMED = 0x40  # M: the reflector could not parse this TLV
    INTEGRITY = 0x20  # I: HMAC verification failed (authenticated mode, not served)


class TlvType(IntEnum):
    """IANA "STAMP TLV Types" (RFC 8972 section 5.1)."""

    RESERVED = 0
    EXTRA_PADDING = 1
    LOCATION = 2
    TIMESTAMP_INFO = 3
    CLASS_OF_SERVICE = 4
    DIRECT_MEASUREMENT = 5
    ACCESS_REPORT = 6
    FOLLOW_UP_TELEMETRY = 7
    HMAC = 8


class Ecn(IntEnum):
    """The two ECN bits of the IP header (RFC 3168 section 5)."""

    NOT_ECT = 0
    ECT1 = 1
    ECT0 = 2
    CE = 3


class ReversePath(IntEnum):
    """RP of the Class of Service TLV (RFC 8972 4.4)."""

    DSCP1_USED = 0  # the reply carries DSCP1 (and a sender always sends 0)
    DSCP1_REFUSED = 1  # local policy refused DSCP1: the reply carries the received DSCP


class SyncSource(IntEnum):
    """RFC 8972 section 5.3 "Synchronization Source" values."""

    RESERVED = 0
    NTP = 1
    PTP = 2
    SSU_BITS = 3
    GPS_GLONASS = 4
    LOCAL_FREE_RUNNING = 5


class TimestampMethod(IntEnum):
    """RFC 8972 section 5.4 "Timestamping Method" values."""

    RESERVED = 0
    HW_ASSIST = 1
    SW_LOCAL = 2
    CONTROL_PLANE = 3


@dataclass(frozen=True, slots=True)
class Tlv:
    flags: int
    type: int
    value: bytes

    def pack(self) -> bytes:
        return TLV_HEADER.pack(self.flags, self.type, len(self.value)) + self.value


@dataclass(frozen=True, slots=True)
class ParsedTlvs:
    """The TLVs that parsed, then `rest`: the bytes from the first TLV whose header or length
    does not fit (empty when everything parsed)."""

    tlvs: tuple[Tlv, ...]
    rest: bytes = b""


def parse_tlvs(tail: bytes) -> ParsedTlvs:
    tlvs: list[Tlv] = []
    at = 0
    while at < len(tail):
        if len(tail) - at < TLV_HEADER_LEN:
            break
        flags, kind, length = TLV_HEADER.unpack_from(tail, at)
        end = at + TLV_HEADER_LEN + length
        if end > len(tail):
            break
        tlvs.append(Tlv(flags, kind, tail[at + TLV_HEADER_LEN : end]))
        at = end
    return ParsedTlvs(tuple(tlvs), tail[at:])


def pack_tlvs(tlvs: tuple[Tlv, ...] | list[Tlv]) -> bytes:
    return b"".join(tlv.pack() for tlv in tlvs)


@dataclass(frozen=True, slots=True)
class ClassOfService:
    dscp1: int = 0  # asked for on the reply
    dscp2: int = 0  # received by the reflector
    ecn: int = Ecn.NOT_ECT  # received by the reflector
    rp: int = ReversePath.DSCP1_USED  # RP is two bits on the wire: values 2 and 3 are kept

    def tlv(self) -> Tlv:
        if not (0 <= self.dscp1 < 64 and 0 <= self.dscp2 < 64 and 0 <= self.ecn < 4):
            raise ValueError("DSCP is 0..63 and ECN 0..3")
        if not 0 <= self.rp < 4:
            raise ValueError("RP is 0..3")
        word = self.dscp1 << 26 | self.dscp2 << 20 | self.ecn << 18 | self.rp << 16
        return Tlv(0, TlvType.CLASS_OF_SERVICE, word.to_bytes(COS_VALUE_LEN, "big"))

    @property
    def received_tos(self) -> int:
        """DSCP2 and ECN as the TOS / traffic class byte they came in."""
        return self.dscp2 << 2 | self.ecn

    @classmethod
    def from_value(cls, value: bytes) -> ClassOfService | None:
        if len(value) != COS_VALUE_LEN:
            return None
        word = int.from_bytes(value, "big")  # Reserved (the low 16 bits): ignored on receipt
        return cls(word >> 26, word >> 20 & 0x3F, word >> 18 & 3, word >> 16 & 3)


@dataclass(frozen=True, slots=True)
class TimestampInfo:
    sync_in: SyncSource = SyncSource.RESERVED
    method_in: TimestampMethod = TimestampMethod.RESERVED
    sync_out: SyncSource = SyncSource.RESERVED
    method_out: TimestampMethod = TimestampMethod.RESERVED

    def tlv(self) -> Tlv:
        value = TIMESTAMP_INFO.pack(self.sync_in, self.method_in, self.sync_out, self.method_out)
        return Tlv(0, TlvType.TIMESTAMP_INFO, value)

    @classmethod
    def from_value(cls, value: bytes) -> TimestampInfo | None:
        if len(value) != TIMESTAMP_INFO.size:
            return None
        sync_in, m_in, sync_out, m_out = TIMESTAMP_INFO.unpack(value)
        if max(sync_in, sync_out) >= len(SyncSource) or max(m_in, m_out) >= len(TimestampMethod):
            return None  # a value registered after RFC 8972: shown as unknown
        return cls(
            SyncSource(sync_in), TimestampMethod(m_in), SyncSource(sync_out), TimestampMethod(m_out)
        )


@dataclass(frozen=True, slots=True)
class ReflectContext:
    """What the reflector knows about one received test packet that its TLVs may report."""

    tos: int  # the received IPv4 TOS / IPv6 traffic class byte
    stamps: TimestampInfo
    # Local policy on DSCP1 (RFC 8972 4.4): the DSCPs a reply may carry; None permits all.
    permitted_dscp: frozenset[int] | None = None


NO_TOS = -1  # a reply sent with the socket's own TOS: the test packet asked for no DSCP


@dataclass(frozen=True, slots=True)
class ReflectedTail:
    tail: bytes  # same length as the test packet's tail
    refused: int  # TLVs the reflector could not serve (unknown or malformed)
    reply_tos: int = NO_TOS  # the TOS byte the reply goes out with (Class of Service TLV)


def reflect_tail(tail: bytes, ctx: ReflectContext) -> ReflectedTail:
    """What a reflector puts after its base packet for a test packet ending in `tail`.

    A tail that does not open with a whole TLV (RFC 8762 padding: zeros, or any bytes) is
    copied unchanged: only a sender that uses TLVs puts one first. A valid TLV run that ends
    in bytes that are no TLV gets the M flag on the remainder's first byte (RFC 8972 4).
    With a Class of Service TLV the reply carries DSCP1 (or, refused by policy, the received
    DSCP) and ECN Not-ECT: RFC 8972 asks the reply for no ECN codepoint, so it uses none."""
    if not tail or not any(tail):
        return ReflectedTail(tail, 0)
    parsed = parse_tlvs(tail)
    if not parsed.tlvs:
        return ReflectedTail(tail, 0)
    out: list[bytes] = []
    refused, reply_tos = 0, NO_TOS
    for tlv in parsed.tlvs:
        answered = _reflect_one(tlv, ctx)
        refused += answered.flags != tlv.flags
        if reply_tos == NO_TOS and answered.type == TlvType.CLASS_OF_SERVICE:
            reply_tos = _reply_tos(answered)
        out.append(answered.pack())
    if parsed.rest:
        refused += 1
        out.append(bytes([parsed.rest[0] | TlvFlag.MALFORMED]) + parsed.rest[1:])
    return ReflectedTail(b"".join(out), refused, reply_tos)


def _reply_tos(answered: Tlv) -> int:
    cos = ClassOfService.from_value(answered.value)
    if cos is None or answered.flags & TlvFlag.MALFORMED:
        return NO_TOS
    dscp = cos.dscp2 if cos.rp == ReversePath.DSCP1_REFUSED else cos.dscp1
    return dscp << 2 | Ecn.NOT_ECT


def _reflect_one(tlv: Tlv, ctx: ReflectContext) -> Tlv:
    if tlv.type == TlvType.EXTRA_PADDING:
        return tlv
    if tlv.type == TlvType.CLASS_OF_SERVICE:
        asked = ClassOfService.from_value(tlv.value)
        if asked is None:
            return Tlv(tlv.flags | TlvFlag.MALFORMED, tlv.type, tlv.value)
        allowed = ctx.permitted_dscp is None or asked.dscp1 in ctx.permitted_dscp
        rp = ReversePath.DSCP1_USED if allowed else ReversePath.DSCP1_REFUSED
        seen = ClassOfService(asked.dscp1, ctx.tos >> 2 & 0x3F, ctx.tos & 3, rp)
        return Tlv(tlv.flags, tlv.type, seen.tlv().value)
    if tlv.type == TlvType.TIMESTAMP_INFO:
        if len(tlv.value) != TIMESTAMP_INFO.size:
            return Tlv(tlv.flags | TlvFlag.MALFORMED, tlv.type, tlv.value)
        return Tlv(tlv.flags, tlv.type, ctx.stamps.tlv().value)
    return Tlv(tlv.flags | TlvFlag.UNRECOGNIZED, tlv.type, tlv.value)
