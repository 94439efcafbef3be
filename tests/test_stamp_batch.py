"""The vectorised UDP-kind codecs against the scalar specification: STAMP rows byte for byte as
`stamp_probe.build_test_packet` builds them, the decoder's verdicts and reflector columns equal
to `decode_reply`'s on good, damaged and foreign replies; the UDP echo codec likewise."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire import icmp, stamp, stamp_probe
from loadgen.wire.family import IPV4, IPV6
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.stamp_batch import (
    StampBuilder,
    StampDecoder,
    UdpEchoBuilder,
    UdpEchoDecoder,
    stamp_spec,
)

RUN_ID, SSID, SIZE = 0x1234_5678, 0x0C0D, 64
NOW_NS = 1_796_300_000_987_654_321
GLOBAL = np.array([40, 41, 42], np.uint32)
SPEC = stamp_spec(RUN_ID, SSID, SIZE)
FILLS = icmp.fill_patterns(RUN_ID, SPEC.fill_len)
CLOCK = stamp.ReflectorClock()


def reflect(packet: bytes, rx_ns: int = NOW_NS + 7_000, seq: int | None = None) -> bytes:
    out = stamp.reflect(
        packet, rx_ns=rx_ns, tx_ns=rx_ns + 900, ttl=60, tos=0, clock=CLOCK, reflector_seq=seq
    )
    return out.reply


def as_rows(datagrams: list[bytes], width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    buf = np.zeros((len(datagrams), width), np.uint8)
    for i, d in enumerate(datagrams):
        buf[i, : len(d)] = np.frombuffer(d[:width], np.uint8)
    return buf, np.array([len(d) for d in datagrams], np.uint32)


def test_builder_matches_the_scalar_packet() -> None:
    local = np.array([0, 2, 1, 2], np.int64)
    seqs = np.array([0, 5, 6, 1 << 33], np.uint64)
    rows = StampBuilder(SPEC, GLOBAL).build(local, seqs, NOW_NS)
    for row, loc, seq in zip(rows, local, seqs, strict=True):
        want = stamp_probe.build_test_packet(
            SPEC, FILLS, target=int(GLOBAL[loc]), seq=int(seq), tx_ns=NOW_NS
        )
        assert row.tobytes() == want


def test_good_replies_decode_with_the_reflector_columns() -> None:
    rows = StampBuilder(SPEC, GLOBAL).build(
        np.array([0, 1], np.int64), np.array([3, 4], np.uint64), NOW_NS
    )
    replies = [
        reflect(rows[0].tobytes(), seq=10),
        reflect(rows[1].tobytes(), rx_ns=NOW_NS + 9_000, seq=11),
    ]
    dec = StampDecoder(SPEC, IPV4)
    out = dec.decode(*as_rows(replies), 2)
    assert out.status.tolist() == [DecodeStatus.REPLY] * 2
    assert out.target.tolist() == [40, 41] and out.seq.tolist() == [3, 4]
    assert out.tx_ns.tolist() == [NOW_NS] * 2
    assert dec.last_t2_ns.tolist() == [NOW_NS + 7_000, NOW_NS + 9_000]
    assert dec.last_t3_ns.tolist() == [NOW_NS + 7_900, NOW_NS + 9_900]
    assert dec.last_reflector_seq.tolist() == [10, 11] and dec.last_ttl.tolist() == [60, 60]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1 << 40), st.integers(-1, 8 * 112 - 1)),
        min_size=1,
        max_size=12,
    )
)
def test_decoder_agrees_with_the_specification(probes: list[tuple[int, int, int]]) -> None:
    builder = StampBuilder(SPEC, GLOBAL)
    datagrams = []
    for loc, seq, bit in probes:
        row = builder.build(np.array([loc], np.int64), np.array([seq], np.uint64), NOW_NS)[0]
        reply = bytearray(reflect(row.tobytes(), seq=seq & 0xFFFF))
        if bit >= 0:
            reply[bit // 8] ^= 0x80 >> (bit % 8)
        datagrams.append(bytes(reply))
    dec = StampDecoder(SPEC, IPV6)
    out = dec.decode(*as_rows(datagrams), len(datagrams))
    mapping = {
        "REPLY": DecodeStatus.REPLY,
        "BITFLIP": DecodeStatus.BITFLIP,
        "FOREIGN": DecodeStatus.FOREIGN,
        "MALFORMED": DecodeStatus.MALFORMED,
    }
    for i, d in enumerate(datagrams):
        want = stamp_probe.decode_reply(d, SPEC, FILLS)
        assert out.status[i] == mapping[want.status.name], (i, want)
        if want.status is stamp_probe.StampStatus.REPLY:
            assert (out.target[i], out.seq[i]) == (want.target, want.seq)
            assert (dec.last_t2_ns[i], dec.last_t3_ns[i]) == (want.t2_ns, want.t3_ns)


def test_short_and_foreign_rows() -> None:
    row = StampBuilder(SPEC, GLOBAL).build(
        np.array([0], np.int64), np.array([1], np.uint64), NOW_NS
    )[0]
    reply = reflect(row.tobytes())
    other = stamp_spec(RUN_ID, SSID + 1, SIZE)
    foreign = reflect(
        StampBuilder(other, GLOBAL)
        .build(np.array([0], np.int64), np.array([1], np.uint64), NOW_NS)[0]
        .tobytes()
    )
    out = StampDecoder(SPEC, IPV4).decode(*as_rows([reply[:50], foreign, b""]), 3)
    assert out.status.tolist() == [
        DecodeStatus.MALFORMED,
        DecodeStatus.FOREIGN,
        DecodeStatus.MALFORMED,
    ]


def test_udp_echo_round_trip_and_damage() -> None:
    builder, dec = UdpEchoBuilder(RUN_ID, SIZE, GLOBAL), UdpEchoDecoder(RUN_ID, SIZE, IPV4)
    rows = builder.build(np.array([1, 2], np.int64), np.array([9, 10], np.uint64), NOW_NS)
    first = rows[0].tobytes()
    assert (
        first
        == icmp.PAYLOAD_HEADER.pack(icmp.MAGIC, RUN_ID, 41, 9, NOW_NS)
        + icmp.fill_patterns(RUN_ID, SIZE - 28)[1]
    )
    flipped = bytearray(rows[1].tobytes())
    flipped[-1] ^= 1
    other_run = icmp.PAYLOAD_HEADER.pack(icmp.MAGIC, RUN_ID + 1, 41, 9, NOW_NS) + bytes(SIZE - 28)
    out = dec.decode(*as_rows([first, bytes(flipped), other_run, first[:40]]), 4)
    assert out.status.tolist() == [
        DecodeStatus.REPLY,
        DecodeStatus.BITFLIP,
        DecodeStatus.FOREIGN,
        DecodeStatus.MALFORMED,
    ]
    assert (out.target[0], out.seq[0], out.tx_ns[0]) == (41, 9, NOW_NS)


# --- with the Class of Service TLV (RFC 8972 4.4) -------------------------------------------

COS_SPEC = stamp_spec(RUN_ID, SSID, SIZE, cos_dscp=46)
COS_FILLS = icmp.fill_patterns(RUN_ID, COS_SPEC.fill_len)


def test_cos_builder_matches_the_scalar_packet() -> None:
    assert COS_SPEC.size == SPEC.size + 8 and COS_SPEC.fill_len == SPEC.fill_len
    rows = StampBuilder(COS_SPEC, GLOBAL).build(
        np.array([0, 2], np.int64), np.array([7, 1 << 34], np.uint64), NOW_NS
    )
    for row, loc, seq in zip(rows, (0, 2), (7, 1 << 34), strict=True):
        want = stamp_probe.build_test_packet(
            COS_SPEC, COS_FILLS, target=int(GLOBAL[loc]), seq=seq, tx_ns=NOW_NS
        )
        assert row.tobytes() == want


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.integers(-1, 8 * 60 - 1), st.booleans()),
        min_size=1,
        max_size=10,
    )
)
def test_cos_columns_agree_with_the_specification(rows: list[tuple[int, int, bool]]) -> None:
    builder = StampBuilder(COS_SPEC, GLOBAL)
    datagrams = []
    for seq, (tos, bit, refuse) in enumerate(rows):
        row = builder.build(np.array([1], np.int64), np.array([seq], np.uint64), NOW_NS)[0]
        permitted: frozenset[int] | None = frozenset() if refuse else None
        out = stamp.reflect(
            row.tobytes(),
            rx_ns=NOW_NS,
            tx_ns=NOW_NS,
            ttl=9,
            tos=tos,
            clock=CLOCK,
            permitted_dscp=permitted,
        )
        reply = bytearray(out.reply)
        if bit >= 0:
            reply[bit // 8] ^= 0x80 >> (bit % 8)
        datagrams.append(bytes(reply))
    dec = StampDecoder(COS_SPEC, IPV4)
    got = dec.decode(*as_rows(datagrams), len(datagrams))
    for i, d in enumerate(datagrams):
        want = stamp_probe.decode_reply(d, COS_SPEC, COS_FILLS)
        if want.status is not stamp_probe.StampStatus.REPLY:
            continue
        assert got.status[i] == DecodeStatus.REPLY
        tos = stamp_probe.NO_VALUE if want.dscp < 0 else want.dscp << 2 | want.ecn
        assert (dec.last_cos_tos[i], dec.last_cos_rp[i]) == (tos, want.rp)
        if rows[i][1] < 0:  # undamaged: exactly what arrived, RP as the policy said
            assert (tos, want.rp) == (rows[i][0], int(rows[i][2]))


def test_a_restamped_batch_carries_the_later_send_time_as_built_then() -> None:
    """The worker reads the send time after building: restamping rows gives exactly the packet
    built at that time (T1 and our payload's copy), which a reflector echoes and we decode."""
    later_ns = NOW_NS + 90_000
    local, seqs = np.array([0, 2], np.int64), np.array([3, 4], np.uint64)
    for spec in (SPEC, COS_SPEC):
        builder = StampBuilder(spec, GLOBAL)
        rows = builder.build(local, seqs, NOW_NS)
        builder.restamp(rows, later_ns)
        assert rows.tobytes() == StampBuilder(spec, GLOBAL).build(local, seqs, later_ns).tobytes()
        replies = [reflect(row.tobytes(), rx_ns=later_ns + 7_000) for row in rows]
        out = StampDecoder(spec, IPV4).decode(*as_rows(replies), 2)
        assert out.status.tolist() == [DecodeStatus.REPLY] * 2
        assert out.tx_ns.tolist() == [later_ns] * 2
    echo = UdpEchoBuilder(RUN_ID, SIZE, GLOBAL)
    rows = echo.build(local, seqs, NOW_NS)
    echo.restamp(rows, later_ns)
    assert (
        rows.tobytes()
        == UdpEchoBuilder(RUN_ID, SIZE, GLOBAL).build(local, seqs, later_ns).tobytes()
    )
