"""The reflector's column-wise path equals the one-at-a-time one: `plain_rows` accepts exactly
the tails `stamp.reflect` returns as is or answers as CoS, `write_replies` writes its bytes and
TOS, and `Reflector.decide_batch` answers, refuses, numbers and counts as `handle` would."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.reflect_core import Reflector, ReflectorConfig, parse_allow
from loadgen.wire import stamp, stamp_tlv
from loadgen.wire.stamp_reflect import encode_timestamps, plain_rows, write_replies

SLOT = 256
NOW = 10**12
TX_NS = 1_764_000_000_123_456_789
PAD = stamp_tlv.TlvType.EXTRA_PADDING


def base(seq: int, ssid: int = 7) -> bytes:
    return struct.pack(">IQHH28x", seq, (3_900_000_000 << 32) | seq, 0x8001, ssid)


def tails(draw_dscp: int) -> dict[str, tuple[bytes, bool]]:
    """Tails by name: (bytes, whether the column-wise path takes them)."""
    cos = stamp_tlv.ClassOfService(dscp1=draw_dscp).tlv().pack()
    padding = stamp_tlv.Tlv(0, PAD, bytes(range(12))).pack()
    return {
        "none": (b"", True),
        "zeros": (bytes(20), True),
        "padding": (padding, True),
        "cos": (cos, True),
        "cos+padding": (cos + padding, True),
        "cos+junk": (cos + b"\x01\x02", False),
        "flagged cos": (b"\x80" + cos[1:], False),
        "unknown tlv": (stamp_tlv.Tlv(0, 200, b"abcd").pack(), False),
        "nonzero": (b"\x00\x00\x07", False),
        "auth-like": (bytes(112 - 44), True),  # whole packet: zeros at 4..16 too, see below
    }


def rows_of(datagrams: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    data = np.zeros((len(datagrams), SLOT), np.uint8)
    for i, d in enumerate(datagrams):
        data[i, : len(d)] = np.frombuffer(d, np.uint8)
    return data, np.array([len(d) for d in datagrams], np.int64)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(tails(0))),
            st.integers(0, 63),
            st.integers(-1, 255),
            st.integers(-1, 255),
            st.booleans(),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([None, frozenset({0, 46})]),
    st.sampled_from(list(stamp.TimestampFormat)),
    st.booleans(),
)
def test_write_replies_equals_reflect(
    items: list[tuple[str, int, int, int, bool]],
    permitted: frozenset[int] | None,
    fmt: stamp.TimestampFormat,
    stateful: bool,
) -> None:
    datagrams, expected_plain = [], []
    for i, (name, dscp, _, _, _) in enumerate(items):
        tail, plain = tails(dscp)[name]
        head = base(i)
        if name == "auth-like":  # 12 zero bytes at 4..16 and 112 long: authenticated mode
            head, plain = head[:4] + bytes(12) + head[16:], False
        datagrams.append(head + tail)
        expected_plain.append(plain)
    data, lengths = rows_of(datagrams)
    assert plain_rows(data, lengths).tolist() == expected_plain
    rows = np.flatnonzero(plain_rows(data, lengths))
    if not len(rows):
        return
    rx = np.array([0 if item[4] else TX_NS - 5_000 - r for r, item in enumerate(items)], np.int64)
    ttl = np.array([item[2] for item in items], np.int64)
    tos = np.array([item[3] for item in items], np.int64)
    seq = np.arange(len(rows), dtype=np.int64) + 0xFFFF_FFFE if stateful else None
    clock = stamp.ReflectorClock(fmt=fmt)
    out = np.zeros((len(rows), SLOT), np.uint8)
    reply_tos = write_replies(
        out,
        data[rows],
        lengths[rows],
        reflector_seq=seq,
        rx_ns=rx[rows],
        tx_ns=TX_NS,
        ttl=ttl[rows],
        tos=tos[rows],
        clock=clock,
        permitted_dscp=permitted,
    )
    for k, r in enumerate(rows.tolist()):
        want = stamp.reflect(
            datagrams[r],
            rx_ns=int(rx[r]) or TX_NS,
            tx_ns=TX_NS,
            ttl=max(int(ttl[r]), 0),
            tos=max(int(tos[r]), 0),
            clock=clock,
            reflector_seq=None if seq is None else int(seq[k]),
            permitted_dscp=permitted,
        )
        assert want.status is stamp.ReflectStatus.REFLECTED
        assert out[k, : lengths[r]].tobytes() == want.reply
        assert int(reply_tos[k]) == want.tos


@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=8))
def test_encode_timestamps_equals_encode_timestamp(times: list[int]) -> None:
    for fmt in stamp.TimestampFormat:
        got = encode_timestamps(np.array(times, np.int64), fmt).tolist()
        assert got == [stamp.encode_timestamp(t, fmt) for t in times]


SENDERS = [
    (ipaddress.ip_address("127.0.0.2").packed, 5000),
    (ipaddress.ip_address("127.0.0.2").packed, 5001),
    (ipaddress.ip_address("127.0.0.3").packed, 5000),
    (ipaddress.ip_address("198.18.0.9").packed, 6000),  # outside --allow below
    (ipaddress.ip_address("127.0.0.4").packed, 0),  # port 0: never answered
]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=40),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([1e9, 300.0, 50.0]),
    st.booleans(),
    st.sampled_from([None, "127.0.0.0/8"]),
)
def test_decide_batch_counts_as_handle(
    batches: list[list[tuple[int, int]]], rate: float, stateful: bool, allow: str | None
) -> None:
    config = ReflectorConfig(max_rate_pps=rate, stateful=stateful, allow=parse_allow(allow))
    one, many = Reflector(config), Reflector(config)
    for b, batch in enumerate(batches):
        now = NOW + b * 3_000_000
        want_answered, want_seq = [], []
        for sender, ssid in batch:
            addr, port = SENDERS[sender]
            out = one.handle(base(0, ssid), addr, port, rx_ns=1, tx_ns=2, ttl=64, tos=0, now_ns=now)
            want_answered.append(out is not None)
            if out is not None:
                want_seq.append(struct.unpack_from(">I", out.reply)[0])
        addrs = np.array([list(SENDERS[s][0]) for s, _ in batch], np.uint8)
        ports = np.array([SENDERS[s][1] for s, _ in batch], np.int64)
        ssids = np.array([s for _, s in batch], np.int64)
        answered, seq = many.decide_batch(addrs, ports, ssids, now)
        assert answered.tolist() == want_answered
        if stateful:
            assert seq is not None and seq.tolist() == want_seq
        else:
            assert seq is None
    assert many.totals == one.totals
    assert sorted(map(bytes, many.snapshot())) == sorted(map(bytes, one.snapshot()))


SAME_LENGTH = {  # 8-byte tails: (bytes, whether the column-wise path takes them)
    "cos": (stamp_tlv.ClassOfService(dscp1=46).tlv().pack(), True),
    "zeros": (bytes(8), True),
    "padding": (stamp_tlv.Tlv(0, PAD, b"wxyz").pack(), True),
    "flagged cos": (b"\x80" + stamp_tlv.ClassOfService(dscp1=46).tlv().pack()[1:], False),
    "nonzero": (b"\x00" * 7 + b"\x01", False),
    "unknown tlv": (stamp_tlv.Tlv(0, 200, b"abcd").pack(), False),
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(SAME_LENGTH)), min_size=1, max_size=12))
def test_a_batch_of_one_length_is_judged_row_by_row(names: list[str]) -> None:
    """The shortcut for batches whose datagrams are all one length (the usual ones) judges
    each row as the column-wise walk does, whatever the first row is."""
    data, lengths = rows_of([base(i) + SAME_LENGTH[name][0] for i, name in enumerate(names)])
    assert plain_rows(data, lengths).tolist() == [SAME_LENGTH[name][1] for name in names]


def test_datagrams_shorter_than_the_base_packet_are_never_plain() -> None:
    for length in (0, 10, 43):
        data, lengths = rows_of([bytes(length)] * 3)
        assert not plain_rows(data, lengths).any()
