"""loadgen's STAMP probe: a session-sender test packet (`stamp`) carrying, when longer than the
base packet, loadgen's payload header and fill (`icmp.PAYLOAD_HEADER`, `icmp.fill_patterns`)
inside an RFC 8972 Extra Padding TLV; and the sender's verdict on a reflected packet (good,
bitflip, foreign, malformed) with the four timestamps T1..T4's first three, the reflector's
sequence and what its TLVs report. Pure; decoding never raises on wire bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from loadgen.wire import stamp_tlv as tlv
from loadgen.wire.family import IPV4, WireFamily
from loadgen.wire.icmp import MAGIC, MIN_PAYLOAD, N_PATTERNS, PAYLOAD_HEADER, UNKNOWN_TARGET
from loadgen.wire.stamp import (
    BASE_LEN,
    ErrorEstimate,
    ParseStatus,
    SenderPacket,
    TimestampFormat,
    decode_timestamp,
    encode_timestamp,
    parse_reflector,
)

# Extra Padding TLV (RFC 8972 4.1) around our header: 4 + 28 bytes before the fill.
PADDING_OVERHEAD = tlv.TLV_HEADER_LEN + MIN_PAYLOAD
OPTION_TLV_LEN = tlv.TLV_HEADER_LEN + 4  # Class of Service and Timestamp Information alike
NO_VALUE = -1  # a figure the reply did not carry (no CoS TLV, reflector left it out)


class StampStatus(IntEnum):
    REPLY = 0  # a reflected packet of one of our probes, every copied field as sent
    BITFLIP = 1  # ours (SSID, run), but a copied field, our header or the fill differs
    FOREIGN = 2  # another session's (SSID) or another run's
    MALFORMED = 3  # shorter than the base packet, wrong length, or in authenticated mode


@dataclass(frozen=True, slots=True)
class StampSpec:
    """What every probe of one sender carries: fixed for a run and worker."""

    run_id: int
    ssid: int
    size: int  # the whole UDP payload, base packet and TLVs
    fmt: TimestampFormat = TimestampFormat.NTP
    synchronized: bool = False
    cos_dscp: int = NO_VALUE  # ask the reflector for this DSCP and report what it received
    timestamp_info: bool = False
    # Added to our probe sequence in the STAMP sequence field: a stateless reflector returns
    # it, a stateful one counts from 0 (RFC 8762 4.3), so replies say which kind answered.
    seq_base: int = 0

    @property
    def options_len(self) -> int:
        return OPTION_TLV_LEN * ((self.cos_dscp != NO_VALUE) + self.timestamp_info)

    @property
    def payload_at(self) -> int:
        """Where loadgen's payload header starts: after the base packet, the option TLVs and
        the Extra Padding TLV's header."""
        return BASE_LEN + self.options_len + tlv.TLV_HEADER_LEN

    @property
    def fill_len(self) -> int:
        """Fill bytes after our header; -1 when the packet has no room for the header."""
        return self.size - BASE_LEN - self.options_len - PADDING_OVERHEAD

    @property
    def error(self) -> ErrorEstimate:
        return ErrorEstimate(self.synchronized, self.fmt, 0, 1)


def check_stamp_size(spec: StampSpec, family: WireFamily = IPV4) -> None:
    """Refuse a size that neither is the bare packet nor fits our header, or that one UDP
    datagram cannot carry."""
    bare = BASE_LEN + spec.options_len
    if spec.size != bare and not bare + PADDING_OVERHEAD <= spec.size <= family.max_payload:
        raise ValueError(
            f"STAMP probe size {spec.size} does not fit: use {bare} (no padding) or "
            f"{bare + PADDING_OVERHEAD}..{family.max_payload} (padding with loadgen's header)"
        )


def build_test_packet(
    spec: StampSpec, fills: tuple[bytes, ...], *, target: int, seq: int, tx_ns: int
) -> bytes:
    """The session-sender test packet of probe `seq` to `target`, sent at `tx_ns`
    (CLOCK_REALTIME); `fills` from `icmp.fill_patterns(run_id, spec.fill_len)`."""
    options: list[tlv.Tlv] = []
    if spec.cos_dscp != NO_VALUE:
        options.append(tlv.ClassOfService(dscp1=spec.cos_dscp).tlv())
    if spec.timestamp_info:
        options.append(tlv.TimestampInfo().tlv())
    if spec.fill_len >= 0:
        fill = fills[seq % N_PATTERNS]
        if len(fill) != spec.fill_len:
            raise ValueError(f"fill of {len(fill)} bytes does not fit size {spec.size}")
        header = PAYLOAD_HEADER.pack(MAGIC, spec.run_id, target, seq, tx_ns)
        options.append(tlv.Tlv(0, tlv.TlvType.EXTRA_PADDING, header + fill))
    timestamp = encode_timestamp(tx_ns, spec.fmt)
    packet = SenderPacket(
        (seq + spec.seq_base) & 0xFFFF_FFFF,
        timestamp,
        spec.error,
        spec.ssid,
        tlv.pack_tlvs(options),
    )
    return packet.pack()


@dataclass(frozen=True, slots=True)
class StampReply:
    """The sender's reading of one reflected packet. Timestamps are CLOCK_REALTIME ns of the
    clock that took them: t1 ours (copied back), t2 and t3 the reflector's."""

    status: StampStatus
    target: int = UNKNOWN_TARGET  # from our header; UNKNOWN_TARGET for a bare packet
    seq: int = 0  # our probe sequence (32 bits only for a bare packet)
    reflector_seq: int = 0  # the reflector's own counter when stateful, else == seq
    t1_ns: int = 0
    t2_ns: int = 0
    t3_ns: int = 0
    ttl: int = 0  # TTL / hop limit our probe arrived with at the reflector
    dscp: int = NO_VALUE  # DSCP and ECN the reflector received (Class of Service TLV)
    ecn: int = NO_VALUE
    rp: int = 0  # the reflector's Reverse Path verdict on our DSCP1 (RFC 8972 4.4)
    refused_tlvs: int = 0  # TLVs the reflector flagged unknown or malformed


def decode_reply(datagram: bytes, spec: StampSpec, fills: tuple[bytes, ...]) -> StampReply:
    status, packet = parse_reflector(datagram)
    if status is not ParseStatus.OK or packet is None:
        return StampReply(StampStatus.MALFORMED)
    if packet.ssid != spec.ssid:
        return StampReply(StampStatus.FOREIGN)
    if len(datagram) != spec.size:
        return StampReply(StampStatus.MALFORMED)
    t1_ns = decode_timestamp(packet.sender_timestamp, packet.sender_error.fmt)
    reply = StampReply(
        StampStatus.REPLY,
        seq=(packet.sender_seq - spec.seq_base) & 0xFFFF_FFFF,
        reflector_seq=packet.seq,
        t1_ns=t1_ns,
        t2_ns=decode_timestamp(packet.rx_timestamp, packet.error.fmt),
        t3_ns=decode_timestamp(packet.timestamp, packet.error.fmt),
        ttl=packet.sender_ttl,
    )
    parsed = tlv.parse_tlvs(packet.tail)
    refused = sum(
        1 for t in parsed.tlvs if t.flags & (tlv.TlvFlag.UNRECOGNIZED | tlv.TlvFlag.MALFORMED)
    )
    dscp = ecn = NO_VALUE
    rp = 0
    ours: bytes | None = None
    for item in parsed.tlvs:
        served = not item.flags & (tlv.TlvFlag.UNRECOGNIZED | tlv.TlvFlag.MALFORMED)
        if (
            item.type == tlv.TlvType.CLASS_OF_SERVICE
            and served
            and dscp == NO_VALUE
            and (cos := tlv.ClassOfService.from_value(item.value))
        ):
            dscp, ecn, rp = cos.dscp2, cos.ecn, cos.rp
        elif item.type == tlv.TlvType.EXTRA_PADDING and item.value[:4] == MAGIC.to_bytes(4, "big"):
            ours = item.value
    reply = replace(reply, dscp=dscp, ecn=ecn, rp=rp, refused_tlvs=refused + bool(parsed.rest))
    damaged = packet.sender_error != spec.error or bool(parsed.rest)
    if spec.fill_len < 0:
        return replace(reply, status=StampStatus.BITFLIP) if damaged else reply
    if ours is None or len(ours) != MIN_PAYLOAD + spec.fill_len:
        return replace(reply, status=StampStatus.BITFLIP)
    _, run_id, target, seq, tx_ns = PAYLOAD_HEADER.unpack_from(ours)
    if run_id != spec.run_id:
        return StampReply(StampStatus.FOREIGN)
    damaged = (
        damaged
        or (seq + spec.seq_base) & 0xFFFF_FFFF != packet.sender_seq
        # the raw field, not t1_ns: NTP's 2**-32 s fraction has bits below a nanosecond
        or encode_timestamp(tx_ns, spec.fmt) != packet.sender_timestamp
        or ours[MIN_PAYLOAD:] != fills[seq % N_PATTERNS]
    )
    verdict = StampStatus.BITFLIP if damaged else StampStatus.REPLY
    return replace(reply, status=verdict, target=target, seq=seq)
