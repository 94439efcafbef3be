"""The STAMP codec: timestamps and error estimates, the base packets checked against a decoding
written here from RFC 8762 4.2.1 / 4.3.1 and RFC 8972 (not from the codec), TLV reflection,
loadgen's probe verdicts, and fuzzing: no wire bytes make a parser or the reflector raise."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire import icmp, stamp, stamp_probe, stamp_tlv
from loadgen.wire.stamp import ReflectStatus, TimestampFormat
from loadgen.wire.stamp_probe import StampStatus

BOUNDED = settings(max_examples=200, deadline=None)
NOW_NS = 1_796_300_000_123_456_789  # 2026-12-03, CLOCK_REALTIME
RUN_ID = 0x5EED_0001
CLOCK = stamp.ReflectorClock()
formats = st.sampled_from(list(TimestampFormat))
# 1970 to 2104-02-26, where NTP's era pivot (1968 + 2**32 s) ends what the codec reads
realtimes = st.integers(min_value=0, max_value=4_233_462_143 * 10**9 + 999_999_999)


def spec(size: int = 128, **kw: object) -> stamp_probe.StampSpec:
    return stamp_probe.StampSpec(run_id=RUN_ID, ssid=0x0A01, size=size, **kw)  # type: ignore[arg-type]


def fills_for(s: stamp_probe.StampSpec) -> tuple[bytes, ...]:
    return icmp.fill_patterns(RUN_ID, max(s.fill_len, 0))


def probe(s: stamp_probe.StampSpec, seq: int = 9, target: int = 3, tx_ns: int = NOW_NS) -> bytes:
    return stamp_probe.build_test_packet(s, fills_for(s), target=target, seq=seq, tx_ns=tx_ns)


def reflected(packet: bytes, rx_ns: int = NOW_NS + 1000, tos: int = 0xB9, **kw: object) -> bytes:
    out = stamp.reflect(packet, rx_ns=rx_ns, tx_ns=rx_ns + 500, ttl=61, tos=tos, clock=CLOCK, **kw)  # type: ignore[arg-type]
    assert out.status is ReflectStatus.REFLECTED
    return out.reply


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


# --- timestamps and error estimate ----------------------------------------------------------


@BOUNDED
@given(realtimes, formats)
def test_timestamps_round_trip(ns: int, fmt: TimestampFormat) -> None:
    assert stamp.decode_timestamp(stamp.encode_timestamp(ns, fmt), fmt) == ns


def test_timestamp_epochs_from_the_rfcs() -> None:
    # NTP: 1970-01-01 is 2208988800 s after 1900 (RFC 5905 figure 4); half a second is 2**31.
    assert (
        stamp.encode_timestamp(500_000_000, TimestampFormat.NTP) == (2_208_988_800 << 32) | 1 << 31
    )
    # PTP: seconds since 1970 TAI, nanoseconds as carried.
    assert stamp.encode_timestamp(2 * 10**9 + 7, TimestampFormat.PTP) == (2 + 37) << 32 | 7
    # NTP era 1 (after 2036-02-07) wraps the seconds field and still decodes forward.
    era1_ns = (1 << 32) * 10**9 - 2_208_988_800 * 10**9 + 5 * 10**9
    assert stamp.encode_timestamp(era1_ns, TimestampFormat.NTP) >> 32 == 5
    assert stamp.decode_timestamp(5 << 32, TimestampFormat.NTP) == era1_ns


@BOUNDED
@given(st.booleans(), formats, st.integers(0, 63), st.integers(0, 255))
def test_error_estimate_bits(sync: bool, fmt: TimestampFormat, scale: int, mult: int) -> None:
    est = stamp.ErrorEstimate(sync, fmt, scale, mult)
    word = est.pack()
    # RFC 4656 4.1.2 / RFC 8762 4.2.1: S is the top bit, Z the next, 6 bits scale, 8 multiplier
    assert (word >> 15, word >> 14 & 1, word >> 8 & 63, word & 255) == (sync, fmt, scale, mult)
    assert stamp.ErrorEstimate.unpack(word) == est


@BOUNDED
@given(st.integers(0, 10**12))
def test_error_estimate_covers_the_error(error_ns: int) -> None:
    est = stamp.ErrorEstimate.for_error_ns(error_ns, synchronized=True, fmt=TimestampFormat.NTP)
    assert est.multiplier >= 1 and est.error_ns >= error_ns - 1
    if est.scale:  # the next finer scale could not have carried it
        assert est.multiplier > 127


# --- an independent decoding, written from RFC 8762 figures 3 and 5 and RFC 8972 3 and 4.4 --

RFC_SENDER = ">I Q H H 28s"  # seq, timestamp, error estimate, SSID, MBZ
RFC_REFLECTOR = ">I Q H H Q I Q H H B 3s"  # ... rx ts, sender seq, ts, err, MBZ, TTL, MBZ


def ntp_to_ns(t: int) -> int:
    return ((t >> 32) - 2_208_988_800) * 10**9 + round((t & 0xFFFFFFFF) * 10**9 / 2**32)


def test_sender_packet_as_the_rfc_lays_it_out() -> None:
    packet = probe(spec(44))
    assert len(packet) == 44
    seq, ts, err, ssid, mbz = struct.unpack(RFC_SENDER, packet)
    assert (seq, ssid, mbz) == (9, 0x0A01, bytes(28))
    assert err >> 14 & 1 == 0 and err & 0xFF != 0  # Z = NTP, multiplier non-zero
    seconds, fraction = ts >> 32, ts & 0xFFFFFFFF
    assert seconds - 2_208_988_800 == NOW_NS // 10**9
    assert abs(fraction * 10**9 / 2**32 - NOW_NS % 10**9) < 1


def test_reflector_reply_as_the_rfc_lays_it_out() -> None:
    sent = probe(spec(44))
    reply = reflected(sent, rx_ns=NOW_NS + 2_000, reflector_seq=77)
    fields = struct.unpack(RFC_REFLECTOR, reply)
    seq, ts, err, ssid, rx_ts, s_seq, s_ts, s_err, mbz1, ttl, mbz2 = fields
    assert (seq, ssid, s_seq, ttl, mbz1, mbz2) == (77, 0x0A01, 9, 61, 0, bytes(3))
    assert (
        s_ts == struct.unpack(RFC_SENDER, sent)[1] and s_err == struct.unpack(RFC_SENDER, sent)[2]
    )
    assert (ntp_to_ns(rx_ts), ntp_to_ns(ts)) == (NOW_NS + 2_000, NOW_NS + 2_500)
    assert err & 0xFF != 0


def test_our_sender_reads_a_reply_built_from_the_rfc() -> None:
    """A reflector written from the RFC's figure, stateful, PTP timestamps, no TLV handling:
    it copies the padding after the base packet as it came."""
    s = spec(128)
    sent = probe(s, seq=1234, target=5)
    seq, ts, err, ssid, _ = struct.unpack_from(RFC_SENDER, sent)
    t2 = (NOW_NS + 40_000) // 10**9 + 37 << 32 | (NOW_NS + 40_000) % 10**9
    t3 = (NOW_NS + 41_000) // 10**9 + 37 << 32 | (NOW_NS + 41_000) % 10**9
    ptp_err = 1 << 14 | 1
    head = struct.pack(RFC_REFLECTOR, 3, t3, ptp_err, ssid, t2, seq, ts, err, 0, 57, bytes(3))
    got = stamp_probe.decode_reply(head + sent[44:], s, fills_for(s))
    assert got.status is StampStatus.REPLY
    assert (got.target, got.seq, got.reflector_seq, got.ttl) == (5, 1234, 3, 57)
    assert (got.t1_ns, got.t2_ns, got.t3_ns) == (NOW_NS, NOW_NS + 40_000, NOW_NS + 41_000)


def test_our_reflector_answers_a_packet_built_from_the_rfc() -> None:
    t1 = 0xE8_0000_0001_0000_00
    sent = struct.pack(RFC_SENDER, 0xFFFF_FFFE, t1, 0x8001, 0xBEEF, bytes(28)) + bytes(20)
    reply = reflected(sent)
    assert len(reply) == len(sent) and reply[44:] == bytes(20)  # RFC 8762 padding copied
    fields = struct.unpack_from(RFC_REFLECTOR, reply)
    assert fields[0] == 0xFFFF_FFFE and fields[3] == 0xBEEF  # stateless: sequence copied
    assert fields[5:8] == (0xFFFF_FFFE, t1, 0x8001)


def rfc8972_cos(tlv: bytes) -> tuple[int, int, int, int, int, int, int]:
    """RFC 8972 4.4, read bit by bit from its figure: STAMP TLV Flags (8), Type (8), Length
    (16), then DSCP1 (6), DSCP2 (6), ECN (2), RP (2), Reserved (16)."""
    bits = "".join(f"{b:08b}" for b in tlv[:8])
    widths = (8, 8, 16, 6, 6, 2, 2, 16)
    cuts = [sum(widths[:i]) for i in range(len(widths) + 1)]
    flags, kind, length, dscp1, dscp2, ecn, rp, reserved = (
        int(bits[a:b], 2) for a, b in itertools.pairwise(cuts)
    )
    assert (kind, length, reserved) == (4, 4, 0)  # Type 4 (IANA, RFC 8972 5.1), 4 octets
    return flags, dscp1, dscp2, ecn, rp, kind, length


def rfc8972_cos_tlv(dscp1: int, dscp2: int = 0, ecn: int = 0, rp: int = 0) -> bytes:
    bits = f"{0:08b}{4:08b}{4:016b}{dscp1:06b}{dscp2:06b}{ecn:02b}{rp:02b}{0:016b}"
    return int(bits, 2).to_bytes(8, "big")


def test_our_sender_asks_for_its_dscp_as_the_rfc_lays_it_out() -> None:
    sent = probe(spec(128, cos_dscp=46))
    # The sender sets DSCP1 and leaves what the reflector fills (DSCP2, ECN) and RP at 0.
    assert rfc8972_cos(sent[44:52])[:5] == (0, 46, 0, 0, 0)


def test_our_reflector_fills_in_cos_for_an_rfc_built_packet() -> None:
    head = struct.pack(RFC_SENDER, 5, 1 << 60, 0x0001, 0x0102, bytes(28))
    padding = bytes([0, 1, 0, 4]) + bytes(4)  # RFC 8972 4.1 Extra Padding, returned as is
    sent = head + rfc8972_cos_tlv(dscp1=10) + padding
    out = stamp.reflect(sent, rx_ns=NOW_NS, tx_ns=NOW_NS, ttl=64, tos=0x23, clock=CLOCK)
    assert len(out.reply) == len(sent) and out.reply[52:] == padding and out.refused_tlvs == 0
    # DSCP1 kept, DSCP2 = 8 and ECN = CE as arrived (TOS 0x23), RP 0: DSCP1 was used ...
    assert rfc8972_cos(out.reply[44:52])[:5] == (0, 10, 8, 3, 0)
    assert out.tos == 10 << 2  # ... and the reply goes out with DSCP1 (and Not-ECT)


def test_our_sender_reads_cos_from_an_rfc_built_reply() -> None:
    s = spec(128, cos_dscp=34)
    sent = probe(s, seq=77, target=2)
    seq, ts, err, ssid, _ = struct.unpack_from(RFC_SENDER, sent)
    head = struct.pack(RFC_REFLECTOR, seq, ts, err, ssid, ts, seq, ts, err, 0, 60, bytes(3))
    tail = rfc8972_cos_tlv(dscp1=34, dscp2=12, ecn=1, rp=1) + sent[52:]
    got = stamp_probe.decode_reply(head + tail, s, fills_for(s))
    assert got.status is StampStatus.REPLY and (got.target, got.seq) == (2, 77)
    assert (got.dscp, got.ecn, got.rp) == (12, 1, 1)


@BOUNDED
@given(st.binary(min_size=44, max_size=200), st.integers(0, 255), st.integers(0, 1 << 32))
def test_reflector_packets_round_trip(raw: bytes, ttl: int, seq: int) -> None:
    status, packet = stamp.parse_sender(raw)
    if status is stamp.ParseStatus.OK:
        assert packet is not None and packet.pack()[:16] == raw[:16] and packet.tail == raw[44:]
    out = stamp.reflect(
        raw, rx_ns=NOW_NS, tx_ns=NOW_NS, ttl=ttl, tos=0, clock=CLOCK, reflector_seq=seq
    )
    assert len(out.reply) in (0, len(raw))  # never larger than the request
    if out.status is ReflectStatus.REFLECTED:
        _, back = stamp.parse_reflector(out.reply)
        assert back is not None and back.pack() == out.reply and back.sender_ttl == ttl


# --- TLVs (RFC 8972 section 4) --------------------------------------------------------------


def test_class_of_service_reports_what_arrived() -> None:
    s = spec(128, cos_dscp=46)
    got = stamp_probe.decode_reply(reflected(probe(s), tos=0x2B), s, fills_for(s))
    assert got.status is StampStatus.REPLY and (got.dscp, got.ecn) == (0x2B >> 2, 3)
    # DSCP1 travels untouched in the top six bits (RFC 8972 4.4).
    value = reflected(probe(s), tos=0)[48:52]
    assert int.from_bytes(value, "big") >> 26 == 46


def test_timestamp_information_is_filled_in() -> None:
    s = spec(128, timestamp_info=True)
    reply = reflected(probe(s))
    flags, kind, length = struct.unpack_from(">BBH", reply, 44)
    assert (flags, kind, length) == (0, 3, 4)
    assert reply[48:52] == bytes([5, 2, 5, 2])  # local free-running, software stamps


def test_unknown_tlv_comes_back_with_the_u_flag() -> None:
    tail = stamp_tlv.Tlv(0, 200, b"abc").pack() + stamp_tlv.Tlv(0, 1, bytes(4)).pack()
    sent = struct.pack(RFC_SENDER, 1, 1 << 40, 1, 2, bytes(28)) + tail
    out = stamp.reflect(sent, rx_ns=NOW_NS, tx_ns=NOW_NS, ttl=1, tos=0, clock=CLOCK)
    assert out.refused_tlvs == 1
    assert out.reply[44:] == bytes([0x80]) + tail[1:]


def test_malformed_remainder_gets_the_m_flag_and_keeps_its_length() -> None:
    tail = stamp_tlv.Tlv(0, 1, bytes(4)).pack() + bytes(
        [0, 1, 0, 99, 7]
    )  # length 99 > what is left
    sent = struct.pack(RFC_SENDER, 1, 1 << 40, 1, 2, bytes(28)) + tail
    out = stamp.reflect(sent, rx_ns=NOW_NS, tx_ns=NOW_NS, ttl=1, tos=0, clock=CLOCK)
    assert out.refused_tlvs == 1 and len(out.reply) == len(sent)
    assert out.reply[44 + 8] == 0x40 and out.reply[44 + 9 :] == tail[9:]


@BOUNDED
@given(st.binary(max_size=300), st.integers(0, 255))
def test_reflected_tail_keeps_its_length(tail: bytes, tos: int) -> None:
    out = stamp_tlv.reflect_tail(tail, stamp_tlv.ReflectContext(tos, stamp.SOFTWARE_STAMPS))
    assert len(out.tail) == len(tail) and out.refused >= 0
    # A reply asks for a DSCP only from a served Class of Service TLV, and never an ECN bit.
    assert out.reply_tos == stamp_tlv.NO_TOS or 0 <= out.reply_tos < 256
    assert out.reply_tos == stamp_tlv.NO_TOS or out.reply_tos & 3 == stamp_tlv.Ecn.NOT_ECT


# --- Class of Service (RFC 8972 4.4) ---------------------------------------------------------


@BOUNDED
@given(st.integers(0, 63), st.integers(0, 63), st.integers(0, 3), st.integers(0, 3))
def test_class_of_service_round_trips(dscp1: int, dscp2: int, ecn: int, rp: int) -> None:
    cos = stamp_tlv.ClassOfService(dscp1, dscp2, ecn, rp)
    packed = cos.tlv().pack()
    assert packed[:4] == bytes([0, 4, 0, 4])  # flags, Type 4, Length 4
    parsed = stamp_tlv.parse_tlvs(packed)
    assert parsed.rest == b"" and stamp_tlv.ClassOfService.from_value(parsed.tlvs[0].value) == cos
    assert cos.received_tos == dscp2 << 2 | ecn


@BOUNDED
@given(st.integers(0, 0xFFFF_FFFF))
def test_class_of_service_reserved_bits_are_ignored(word: int) -> None:
    cos = stamp_tlv.ClassOfService.from_value(word.to_bytes(4, "big"))
    assert cos is not None
    again = stamp_tlv.ClassOfService.from_value((word & 0xFFFF_0000).to_bytes(4, "big"))
    assert cos == again


def test_class_of_service_refuses_values_that_do_not_fit() -> None:
    for bad in ((64, 0, 0, 0), (0, 64, 0, 0), (0, 0, 4, 0), (0, 0, 0, 4), (-1, 0, 0, 0)):
        with pytest.raises(ValueError):
            stamp_tlv.ClassOfService(*bad).tlv()


def test_reflector_answers_with_dscp1_and_reports_what_arrived() -> None:
    asked = stamp_tlv.ClassOfService(dscp1=46).tlv().pack()
    ctx = stamp_tlv.ReflectContext(0x22, stamp.SOFTWARE_STAMPS)  # DSCP 8 (cs1), ECT(0)
    out = stamp_tlv.reflect_tail(asked, ctx)
    assert out.refused == 0 and out.reply_tos == 46 << 2
    back = stamp_tlv.ClassOfService.from_value(out.tail[4:])
    assert back == stamp_tlv.ClassOfService(46, 8, stamp_tlv.Ecn.ECT0, 0)


def test_a_refused_dscp1_sets_rp_and_the_reply_keeps_the_received_dscp() -> None:
    asked = stamp_tlv.ClassOfService(dscp1=46).tlv().pack()
    ctx = stamp_tlv.ReflectContext(0x21, stamp.SOFTWARE_STAMPS, frozenset({0, 8}))
    out = stamp_tlv.reflect_tail(asked, ctx)
    back = stamp_tlv.ClassOfService.from_value(out.tail[4:])
    assert back is not None and back.rp == stamp_tlv.ReversePath.DSCP1_REFUSED
    assert out.reply_tos == 8 << 2  # DSCP2, Not-ECT


def test_a_malformed_class_of_service_is_flagged_and_asks_for_nothing() -> None:
    bad = stamp_tlv.Tlv(0, stamp_tlv.TlvType.CLASS_OF_SERVICE, b"\x01\x02\x03").pack()
    out = stamp_tlv.reflect_tail(bad, stamp_tlv.ReflectContext(0xFF, stamp.SOFTWARE_STAMPS))
    assert out.refused == 1 and out.tail[0] == stamp_tlv.TlvFlag.MALFORMED
    assert out.tail[1:] == bad[1:] and out.reply_tos == stamp_tlv.NO_TOS


@BOUNDED
@given(st.binary(max_size=12), st.integers(0, 255), st.integers(0, 255))
def test_any_class_of_service_value_is_served_or_counted(
    value: bytes, flags: int, tos: int
) -> None:
    tail = stamp_tlv.Tlv(flags, stamp_tlv.TlvType.CLASS_OF_SERVICE, value).pack()
    out = stamp_tlv.reflect_tail(tail, stamp_tlv.ReflectContext(tos, stamp.SOFTWARE_STAMPS))
    assert len(out.tail) == len(tail)
    if flags & stamp_tlv.TlvFlag.MALFORMED or len(value) != 4:
        assert out.reply_tos == stamp_tlv.NO_TOS
    else:
        assert out.refused == 0 and out.reply_tos == value[0] >> 2 << 2
    if not flags & stamp_tlv.TlvFlag.MALFORMED:  # what the reflector flags, it counts
        assert out.refused == (len(value) != 4)


def test_a_reflector_that_does_not_know_cos_reports_nothing() -> None:
    """An RFC 8762-only reflector returns our TLV flagged U with the zeros we sent: that is no
    report of DSCP 0 arriving."""
    s = spec(128, cos_dscp=10)
    sent = probe(s)
    seq, ts, err, ssid, _ = struct.unpack_from(RFC_SENDER, sent)
    head = struct.pack(RFC_REFLECTOR, seq, ts, err, ssid, ts, seq, ts, err, 0, 60, bytes(3))
    tail = bytes([0x80]) + sent[45:]
    got = stamp_probe.decode_reply(head + tail, s, fills_for(s))
    assert got.status is StampStatus.REPLY and got.dscp == stamp_probe.NO_VALUE
    assert got.refused_tlvs == 1


# --- loadgen's probe: verdicts ---------------------------------------------------------------


@pytest.mark.parametrize("size", [44, 76, 128, 1400])
def test_good_reply_is_read_back(size: int) -> None:
    s = spec(size)
    stamp_probe.check_stamp_size(s)
    got = stamp_probe.decode_reply(reflected(probe(s, seq=7)), s, fills_for(s))
    assert got.status is StampStatus.REPLY and got.seq == 7 and got.ttl == 61
    assert got.target == (3 if size > 44 else icmp.UNKNOWN_TARGET)
    assert (got.t1_ns, got.t2_ns, got.t3_ns) == (NOW_NS, NOW_NS + 1000, NOW_NS + 1500)


def test_sizes_without_room_for_our_header_are_refused() -> None:
    with pytest.raises(ValueError, match="44 \\(no padding\\) or 76"):
        stamp_probe.check_stamp_size(spec(60))


# Bytes a reflector copies back (sender seq, T1, its error estimate, SSID) and the padding:
# a flip in any of them is seen. Not: the reflector's own fields (seq, T2, T3, TTL), the TLV
# flags (the reflector's to set), our header's target index and the top half of its sequence
# (as for ICMP, nothing repeats them: the tracker checks them against what it sent).
COPIED_BITS = [
    *range(14 * 8, 16 * 8),
    *range(24 * 8, 38 * 8),
    *range(45 * 8, 56 * 8),
    *range(64 * 8, 128 * 8),
]


@BOUNDED
@given(st.sampled_from(COPIED_BITS), st.integers(0, 1 << 20))
def test_any_flip_in_copied_fields_or_padding_is_caught(bit: int, seq: int) -> None:
    s = spec(128)
    got = stamp_probe.decode_reply(flip(reflected(probe(s, seq=seq)), bit), s, fills_for(s))
    assert got.status in (StampStatus.BITFLIP, StampStatus.FOREIGN)


def test_other_sessions_and_runs_are_foreign_and_short_ones_malformed() -> None:
    s = spec(128)
    other = stamp_probe.StampSpec(run_id=RUN_ID + 1, ssid=s.ssid, size=128)
    assert (
        stamp_probe.decode_reply(reflected(probe(other)), s, fills_for(s)).status
        is StampStatus.FOREIGN
    )
    for cut in (40, 100):
        got = stamp_probe.decode_reply(reflected(probe(s))[:cut], s, fills_for(s))
        assert got.status is StampStatus.MALFORMED


def test_authenticated_mode_is_refused() -> None:
    sent = struct.pack(">I12sQHH", 1, bytes(12), 1 << 40, 1, 2) + bytes(84)  # RFC 8762 4.2.2
    assert len(sent) == 112
    assert (
        stamp.reflect(sent, rx_ns=0, tx_ns=0, ttl=1, tos=0, clock=CLOCK).status
        is ReflectStatus.AUTHENTICATED
    )
    assert (
        stamp.reflect(sent[:40], rx_ns=0, tx_ns=0, ttl=1, tos=0, clock=CLOCK).status
        is ReflectStatus.TRUNCATED
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_never_raises(raw: bytes) -> None:
    s = spec(128, cos_dscp=10, timestamp_info=True)
    stamp.parse_sender(raw)
    stamp.parse_reflector(raw)
    assert stamp_probe.decode_reply(raw, s, fills_for(s)).status in set(StampStatus)
    stamp.reflect(raw, rx_ns=NOW_NS, tx_ns=NOW_NS, ttl=1, tos=0, clock=CLOCK)


@BOUNDED
@given(
    st.integers(0, 0xFFFF_FFFF),
    st.integers(0, 255),
    st.none() | st.frozensets(st.integers(0, 63), max_size=8),
    st.none() | st.binary(max_size=40),
)
def test_the_reflectors_cos_fast_path_equals_the_tlv_rules(
    word: int, tos: int, permitted: frozenset[int] | None, padding: bytes | None
) -> None:
    tail = bytes([0, 4, 0, 4]) + word.to_bytes(4, "big")
    if padding is not None:
        tail += stamp_tlv.Tlv(0, stamp_tlv.TlvType.EXTRA_PADDING, padding).pack()
    sent = struct.pack(RFC_SENDER, 1, 1 << 60, 1, 2, bytes(28)) + tail
    out = stamp.reflect(
        sent, rx_ns=NOW_NS, tx_ns=NOW_NS, ttl=1, tos=tos, clock=CLOCK, permitted_dscp=permitted
    )
    rules = stamp_tlv.reflect_tail(tail, stamp_tlv.ReflectContext(tos, CLOCK.stamps, permitted))
    assert (out.reply[44:], out.tos, out.refused_tlvs) == (rules.tail, rules.reply_tos, 0)
