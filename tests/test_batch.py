"""The vectorised codec against the scalar one, for both wire families: every built row
byte-identical to `icmp.build_echo_request`, every decoded row equal to `icmp.decode`, over
random mixes of good, damaged, truncated, foreign and error packets."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.wire import batch, icmp
from loadgen.wire.family import IPPROTO_ICMP, IPV4, IPV6, WireFamily
from loadgen.wire.icmp import DecodeStatus as S

IDENT = 0xBEEF
RUN_ID = 0x0102_0304
HOST = 0xC612_0007  # 198.18.0.7, a lab host
ME = 0x7F00_0001
BOUNDED = settings(max_examples=200, deadline=None)
SIZES = st.sampled_from([28, 29, 33, 56, 64, 201])


def scalar_request(
    size: int, target: int, seq: int, tx_ns: int, ident: int = IDENT, family: WireFamily = IPV4
) -> bytes:
    return icmp.build_echo_request(
        ident=ident,
        run_id=RUN_ID,
        target=target,
        seq=seq,
        tx_ns=tx_ns,
        size=size,
        fills=icmp.fill_patterns(RUN_ID, size - icmp.MIN_PAYLOAD),
        family=family,
    )


def scalar_decode(datagram: bytes, size: int, family: WireFamily = IPV4) -> icmp.Decoded:
    fills = icmp.fill_patterns(RUN_ID, size - icmp.MIN_PAYLOAD)
    return icmp.decode(datagram, ident=IDENT, run_id=RUN_ID, size=size, fills=fills, family=family)


def as_buffer(datagrams: list[bytes], slot: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """A receive buffer as recvmmsg fills it: one datagram per row, cut at the slot width,
    with the datagram's real length (which may exceed the slot) beside it."""
    buf = np.full((len(datagrams) + 2, slot), 0xEE, dtype=np.uint8)  # spare rows hold junk
    for i, datagram in enumerate(datagrams):
        kept = datagram[:slot]
        buf[i, : len(kept)] = np.frombuffer(kept, dtype=np.uint8)
    return buf, np.array([len(d) for d in datagrams] + [slot, slot], dtype=np.int64)


def reply_datagram(message: bytes, src: int = HOST) -> bytes:
    return icmp.build_ipv4_packet(src, ME, IPPROTO_ICMP, icmp.echo_reply_for(message))


def recompute(message: bytes) -> bytes:
    """Checksum recomputed over a damaged ICMP message (a flip the checksum cannot see)."""
    body = message[:2] + b"\0\0" + message[4:]
    return body[:2] + icmp.checksum(body).to_bytes(2, "big") + body[4:]


# --- builder --------------------------------------------------------------------------------


@BOUNDED
@given(
    SIZES,
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)), max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 0xFFFF),
    st.sampled_from([IPV4, IPV6]),
)
def test_built_rows_equal_scalar_requests(
    size: int, probes: list[tuple[int, int]], tx_ns: int, ident: int, family: WireFamily
) -> None:
    builder = batch.EchoBuilder(ident, RUN_ID, size, family=family)
    targets = np.array([t for t, _ in probes], dtype=np.uint32)
    seqs = np.array([s for _, s in probes], dtype=np.uint64)
    rows = builder.build(targets, seqs, tx_ns)
    assert rows.shape == (len(probes), icmp.ICMP_HEADER_LEN + size) and rows.dtype == np.uint8
    assert rows.flags.c_contiguous
    for row, (target, seq) in zip(rows, probes, strict=True):
        assert row.tobytes() == scalar_request(size, target, seq, tx_ns, ident, family)
        assert row[0] == family.echo_request
        if family is IPV6:
            assert row[2] == row[3] == 0  # checksum left to the kernel


def test_builder_checksum_needs_the_full_fold() -> None:
    # All-ones fields push the word sum past 2**17, where a single fold would be wrong.
    builder = batch.EchoBuilder(0xFFFF, 0xFFFF_FFFF, 28)
    rows = builder.build(np.array([0xFFFF_FFFF], np.uint32), np.array([2**64 - 1], np.uint64), -1)
    assert icmp.checksum(rows[0].tobytes()) == 0


def test_builder_accepts_other_integer_dtypes_and_empty_batches() -> None:
    builder = batch.EchoBuilder(IDENT, RUN_ID, 40)
    rows = builder.build(np.array([3, 4], np.int64), np.array([9, 10], np.int64), 5)
    assert rows[1].tobytes() == scalar_request(40, 4, 10, 5)
    assert builder.build(np.zeros(0, np.uint32), np.zeros(0, np.uint64), 0).shape == (0, 48)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: batch.EchoBuilder(IDENT, RUN_ID, 27), "out of range"),
        (lambda: batch.EchoBuilder(0x10000, RUN_ID, 64), "out of range"),
        (lambda: batch.EchoBuilder(IDENT, -1, 64), "out of range"),
        (lambda: batch.ReplyDecoder(IDENT, RUN_ID, 65508), "out of range"),
        (
            lambda: batch.EchoBuilder(IDENT, RUN_ID, 64).build(
                np.zeros(2, np.uint32), np.zeros(3, np.uint64), 0
            ),
            "must be equal",
        ),
        (
            lambda: batch.EchoBuilder(IDENT, RUN_ID, 64).build(
                np.zeros(1, np.uint32), np.zeros(1, np.uint64), 2**63
            ),
            "signed 64-bit",
        ),
    ],
)
def test_bad_arguments_are_refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- decoder --------------------------------------------------------------------------------


def test_round_trip_of_a_built_batch() -> None:
    size = 56
    builder, decoder = (
        batch.EchoBuilder(IDENT, RUN_ID, size),
        batch.ReplyDecoder(IDENT, RUN_ID, size),
    )
    targets = np.arange(100, dtype=np.uint32) * 3
    seqs = np.arange(100, dtype=np.uint64) + 2**40
    requests = builder.build(targets, seqs, 123)
    buf, lens = as_buffer([reply_datagram(r.tobytes()) for r in requests], 2048)
    got = decoder.decode(buf, lens, 100)
    assert got.n == 100 and len(got.status) == 100
    assert (got.status == S.REPLY).all()
    np.testing.assert_array_equal(got.target, targets)
    np.testing.assert_array_equal(got.seq, seqs)
    assert (got.tx_ns == 123).all() and (got.src == HOST).all()
    assert not got.seq16_only.any() and not got.quoted_dst.any()
    assert got.row(5) == icmp.Decoded(S.REPLY, 15, 2**40 + 5, 123, HOST)


def test_decodes_only_the_first_n_rows() -> None:
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, 64)
    good = reply_datagram(scalar_request(64, 1, 2, 3))
    buf, lens = as_buffer([good, good, good], 256)
    assert decoder.decode(buf, lens, 2).n == 2
    assert len(decoder.decode(buf, lens, 0).status) == 0


def test_slot_narrower_than_a_reply_is_decoded_as_cut_short() -> None:
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, 64)
    good = reply_datagram(scalar_request(64, 1, 2, 3))
    buf, lens = as_buffer([good, good[:40]], 60)
    got = decoder.decode(buf, lens, 2)
    assert list(got.status) == [S.MALFORMED, S.MALFORMED]
    assert got.row(0) == scalar_decode(good[:60], 64)


def test_strided_buffer_and_python_int_lengths() -> None:
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, 64)
    good = reply_datagram(scalar_request(64, 8, 9, 10))
    buf, lens = as_buffer([good] * 4, 128)
    strided = buf[::2]  # rows 0 and 2: not contiguous
    got = decoder.decode(strided, np.array(lens[::2].tolist()), 2)
    assert list(got.target) == [8, 8] and (got.status == S.REPLY).all()


def test_decode_refuses_a_bad_buffer() -> None:
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, 64)
    with pytest.raises(ValueError, match="uint8"):
        decoder.decode(np.zeros((2, 100), np.uint16), np.zeros(2, np.int64), 2)
    with pytest.raises(ValueError, match="n=3"):
        decoder.decode(np.zeros((2, 100), np.uint8), np.zeros(2, np.int64), 3)


def damaged_reply(size: int, seq: int, target: int, bit: int, keep_checksum: bool) -> bytes:
    message = bytearray(icmp.echo_reply_for(scalar_request(size, target, seq, 77)))
    bit %= len(message) * 8
    message[bit // 8] ^= 0x80 >> (bit % 8)
    return icmp.build_ipv4_packet(
        HOST, ME, 1, bytes(message) if keep_checksum else recompute(bytes(message))
    )


def icmp_error(size: int, seq: int, quote_len: int, ident: int) -> bytes:
    probe = icmp.build_ipv4_packet(ME, HOST, 1, scalar_request(size, 3, seq, 77, ident), ttl=1)
    message = icmp.build_icmp_error(11, 0, probe, quote_len=quote_len)
    return icmp.build_ipv4_packet(0xC612_0101, ME, 1, message)


def with_ip_options(datagram: bytes) -> bytes:
    inner = datagram[20:]
    header = bytearray(icmp.build_ipv4_packet(HOST, ME, 1, b"\0" * (4 + len(inner)))[:20])
    header[0], header[10:12] = 0x46, b"\0\0"
    header[10:12] = icmp.checksum(bytes(header) + b"\1\1\1\0").to_bytes(2, "big")
    return bytes(header) + b"\1\1\1\0" + inner


def rewrite_ip_byte(datagram: bytes, at: int, value: int) -> bytes:
    """One byte of the IP header changed and the header checksum made to match it again:
    legitimate rewrites (TTL, ID, TOS) and lying ones (total length, protocol, version)."""
    header = bytearray(datagram[:20])
    header[at % 20], header[10:12] = value, b"\0\0"
    header[10:12] = icmp.checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + datagram[20:]


def packets(size: int) -> st.SearchStrategy[bytes]:
    """One datagram of any kind a raw ICMP socket could hand the decoder."""
    seq, target = st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)
    good = st.builds(lambda s, t: reply_datagram(scalar_request(size, t, s, 77)), seq, target)
    bits = st.integers(0, 10_000)
    return st.one_of(
        good,
        st.builds(lambda s, t, b: damaged_reply(size, s, t, b, True), seq, target, bits),
        st.builds(lambda s, t, b: damaged_reply(size, s, t, b, False), seq, target, bits),
        st.builds(lambda s, t, b: damaged_reply(size, s, t, 64 + b % 64, False), seq, target, bits),
        st.builds(lambda p, c: p[: max(0, len(p) - c)], good, st.integers(1, 40)),
        st.builds(lambda p, x: p + x, good, st.binary(min_size=1, max_size=9)),
        st.builds(lambda p, b: p[: b % 20] + bytes([p[b % 20] ^ 1]) + p[b % 20 + 1 :], good, bits),
        st.builds(with_ip_options, good),
        st.builds(
            rewrite_ip_byte, good, st.sampled_from([0, 1, 2, 3, 4, 8, 9]), st.integers(0, 255)
        ),
        st.builds(lambda s: reply_datagram(scalar_request(size, 1, s, 77, IDENT ^ 4)), seq),
        st.builds(
            lambda s: icmp.build_ipv4_packet(ME, HOST, 1, scalar_request(size, 1, s, 0)), seq
        ),
        st.builds(icmp_error, st.just(size), seq, st.integers(0, 600), st.sampled_from([IDENT, 7])),
        st.binary(max_size=300),
    )


@BOUNDED
@given(st.data(), SIZES, st.sampled_from([64, 128, 300]))
def test_decoded_rows_equal_scalar_decoding(data: st.DataObject, size: int, slot: int) -> None:
    datagrams = data.draw(st.lists(packets(size), max_size=12))
    buf, lens = as_buffer(datagrams, slot)
    got = batch.ReplyDecoder(IDENT, RUN_ID, size).decode(buf, lens, len(datagrams))
    assert got.n == len(datagrams)
    for i, datagram in enumerate(datagrams):
        assert got.row(i) == scalar_decode(datagram[:slot], size), i


@BOUNDED
@given(SIZES, st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8), st.integers(0, 10**6))
def test_damage_in_the_common_shape_is_decided_like_the_scalar(
    size: int, seqs: list[int], bit: int
) -> None:
    """Damaged replies of the common shape take the vectorised path: pin its verdicts."""
    datagrams = [damaged_reply(size, s, i, bit + i, i % 2 == 0) for i, s in enumerate(seqs)]
    datagrams += [reply_datagram(scalar_request(size, 9, s, 77)) for s in seqs]
    buf, lens = as_buffer(datagrams, 512)
    got = batch.ReplyDecoder(IDENT, RUN_ID, size).decode(buf, lens, len(datagrams))
    for i, datagram in enumerate(datagrams):
        assert got.row(i) == scalar_decode(datagram, size)
    assert (got.status[len(seqs) :] == S.REPLY).all()


@BOUNDED
@given(
    SIZES,
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)), min_size=1),
    st.integers(0, 10**6),
    st.integers(0, 255),
    st.booleans(),
    st.sampled_from([IPV4, IPV6]),
)
def test_one_changed_byte_in_a_batch_of_good_replies_is_decided_like_the_scalar(
    size: int,
    probes: list[tuple[int, int]],
    where: int,
    value: int,
    change: bool,
    family: WireFamily,
) -> None:
    """A batch of good replies takes the one-comparison fast path; any single changed byte,
    anywhere in any row (checksums left as they are), must leave it for the general path
    or be decoded exactly as the scalar decoder would."""
    v6 = family is IPV6
    datagrams = [
        reply6(size, t, s) if v6 else reply_datagram(scalar_request(size, t, s, 77))
        for t, s in probes
    ]
    if change:
        row = where % len(datagrams)
        at = where % len(datagrams[row])
        d = datagrams[row]
        datagrams[row] = d[:at] + bytes([value]) + d[at + 1 :]
    buf, lens = as_buffer(datagrams, 256)
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, size, family=family)
    want = [scalar_decode(datagram, size, family) for datagram in datagrams]
    for _ in range(2):  # the second call reuses the first one's arrays
        got = decoder.decode(buf, lens, len(datagrams))
        assert [got.row(i) for i in range(got.n)] == want


# --- IPv6: the same builder and decoder with the other wire family -----------------------

ME6 = ipaddress.IPv6Address("::1").packed
HOST6 = ipaddress.IPv6Address("2001:2::7").packed  # RFC 5180 benchmarking range
ROUTER6 = ipaddress.IPv6Address("2001:2::fe").packed


def reply6(size: int, target: int, seq: int, ident: int = IDENT) -> bytes:
    request = icmp.fill_checksum6(scalar_request(size, target, seq, 77, ident, IPV6), ME6, HOST6)
    return icmp.echo_reply_for(request, IPV6)


def error6(size: int, seq: int, quote_len: int, ident: int, icmp_type: int) -> bytes:
    probe = icmp.build_ipv6_packet(ME6, HOST6, 58, scalar_request(size, 3, seq, 77, ident, IPV6))
    message = icmp.build_icmp_error(icmp_type, 0, probe, quote_len=quote_len, family=IPV6)
    return icmp.fill_checksum6(message, ROUTER6, ME6)


def test_v6_round_trip_of_a_built_batch() -> None:
    size = 56
    builder = batch.EchoBuilder(IDENT, RUN_ID, size, family=IPV6)
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, size, family=IPV6)
    assert decoder.datagram_len == 8 + size  # no IP header on an AF_INET6 raw socket
    targets = np.arange(50, dtype=np.uint32) * 3
    seqs = np.arange(50, dtype=np.uint64) + 2**40
    requests = builder.build(targets, seqs, 123)
    replies = [icmp.echo_reply_for(r.tobytes(), IPV6) for r in requests]
    buf, lens = as_buffer(replies, 2048)
    for _ in range(2):  # the fast path's reused arrays
        got = decoder.decode(buf, lens, 50)
        assert (got.status == S.REPLY).all()
        assert not got.status.flags.writeable  # decided by the one-comparison fast path
        np.testing.assert_array_equal(got.target, targets)
        np.testing.assert_array_equal(got.seq, seqs)
        assert got.src.dtype == got.quoted_dst.dtype == np.dtype("V16")
        assert got.row(7) == icmp.Decoded(S.REPLY, 21, 2**40 + 7, 123)


def test_v6_error_rows_carry_the_quoted_128_bit_destination() -> None:
    decoder = batch.ReplyDecoder(IDENT, RUN_ID, 64, family=IPV6)
    datagrams = [error6(64, 9, 1232, IDENT, 3), error6(64, 0x10_0002, 50, IDENT, 1)]
    buf, lens = as_buffer(datagrams, 2048)
    got = decoder.decode(buf, lens, 2)
    assert got.quoted_dst[0].tobytes() == HOST6
    assert got.row(0) == icmp.Decoded(S.ICMP_ERROR, 3, 9, 77, 0, int.from_bytes(HOST6), 3, 0)
    assert got.row(1) == scalar_decode(datagrams[1], 64, IPV6)
    assert got.row(1).seq16_only and got.row(1).seq == 2


def flip_bit(packet: bytes, bit: int) -> bytes:
    bit %= len(packet) * 8
    return (
        packet[: bit // 8] + bytes([packet[bit // 8] ^ (0x80 >> bit % 8)]) + packet[bit // 8 + 1 :]
    )


def packets6(size: int) -> st.SearchStrategy[bytes]:
    """One datagram of any kind an AF_INET6 raw ICMPv6 socket could hand the decoder."""
    seq, target = st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)
    good = st.builds(lambda s, t: reply6(size, t, s), seq, target)
    bits = st.integers(0, 10_000)
    return st.one_of(
        good,
        st.builds(flip_bit, good, bits),
        st.builds(lambda p, c: p[: max(0, len(p) - c)], good, st.integers(1, 40)),
        st.builds(lambda p, x: p + x, good, st.binary(min_size=1, max_size=9)),
        st.builds(lambda s: reply6(size, 1, s, IDENT ^ 4), seq),
        st.builds(
            lambda s: scalar_request(size, 1, s, 0, family=IPV6), seq
        ),  # our own, seen on loopback
        st.builds(
            error6,
            st.just(size),
            seq,
            st.integers(0, 1300),
            st.sampled_from([IDENT, 7]),
            st.sampled_from([1, 2, 3, 4, 11]),
        ),
        st.builds(
            lambda t, b: bytes([t]) + b, st.sampled_from([1, 3, 129]), st.binary(max_size=300)
        ),
        st.binary(max_size=300),
    )


@BOUNDED
@given(st.data(), SIZES, st.sampled_from([64, 128, 300]))
def test_decoded_v6_rows_equal_scalar_decoding(data: st.DataObject, size: int, slot: int) -> None:
    datagrams = data.draw(st.lists(packets6(size), max_size=12))
    buf, lens = as_buffer(datagrams, slot)
    got = batch.ReplyDecoder(IDENT, RUN_ID, size, family=IPV6).decode(buf, lens, len(datagrams))
    for i, datagram in enumerate(datagrams):
        assert got.row(i) == scalar_decode(datagram[:slot], size, IPV6), i
        assert got.status[i] != S.CORRUPTED


def test_v6_size_range_is_the_family_s() -> None:
    batch.ReplyDecoder(IDENT, RUN_ID, 65527, family=IPV6)
    with pytest.raises(ValueError, match="out of range for IPv6"):
        batch.EchoBuilder(IDENT, RUN_ID, 65528, family=IPV6)


@pytest.mark.parametrize(
    ("family", "hosts"),
    [
        (IPV4, ["198.18.0.9", "127.0.0.1", "198.18.0.7"]),
        (IPV6, ["2001:2::9", "::1", "2001:2::7", "fe80::7"]),
    ],
)
def test_address_column_matches_the_decoded_quoted_destination(
    family: WireFamily, hosts: list[str]
) -> None:
    """The targets' column and an error's quoted destination are the same values, so sorting
    one and searching the other finds the target (as the tracker does for short quotes)."""
    packed = [ipaddress.ip_address(h).packed for h in hosts]
    column = family.address_column(packed)
    assert column.dtype == family.address_dtype and len(column) == len(hosts)
    want = {ipaddress.ip_address(h).packed for h in hosts}
    order = np.argsort(column)
    assert [packed[i] for i in order] == sorted(want)  # bytewise order, either family
    v6 = family is IPV6
    quoted = error6(64, 1, 50, IDENT, 3) if v6 else icmp_error(64, 1, 36, IDENT)
    got = batch.ReplyDecoder(IDENT, RUN_ID, 64, family=family).decode(*as_buffer([quoted], 256), 1)
    host = HOST6 if v6 else HOST.to_bytes(4, "big")
    pos = np.searchsorted(column[order], got.quoted_dst[:1])[0]
    assert packed[order[pos]] == host
    with pytest.raises(ValueError, match="bytes each"):
        family.address_column([b"\0" * 5])
