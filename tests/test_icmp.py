"""The scalar ICMPv4 codec: checksum vectors, the probe layout, and the decoder's verdict on good
replies, every kind of damage, foreign traffic and ICMP errors; fuzzed so it never raises."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire import icmp
from loadgen.wire.family import IPPROTO_ICMP
from loadgen.wire.icmp import DecodeStatus as S

IDENT = 0x1234
RUN_ID = 0xA5C3_0F01
SIZE = 64
FILLS = icmp.fill_patterns(RUN_ID, SIZE - icmp.MIN_PAYLOAD)
HOST = 0xC612_0002  # 198.18.0.2, a lab host
ME = 0x7F00_0001
ROUTER = 0xC612_0101
BOUNDED = settings(max_examples=200, deadline=None)


def request(seq: int = 5, target: int = 7, size: int = SIZE, ident: int = IDENT) -> bytes:
    fills = FILLS if size == SIZE else icmp.fill_patterns(RUN_ID, size - icmp.MIN_PAYLOAD)
    return icmp.build_echo_request(
        ident=ident, run_id=RUN_ID, target=target, seq=seq, tx_ns=-42, size=size, fills=fills
    )


def on_wire(message: bytes, src: int = HOST, dst: int = ME) -> bytes:
    return icmp.build_ipv4_packet(src, dst, IPPROTO_ICMP, message)


def reply(seq: int = 5, target: int = 7) -> bytes:
    return on_wire(icmp.echo_reply_for(request(seq, target)))


def decode(datagram: bytes, size: int = SIZE) -> icmp.Decoded:
    fills = FILLS if size == SIZE else icmp.fill_patterns(RUN_ID, size - icmp.MIN_PAYLOAD)
    return icmp.decode(datagram, ident=IDENT, run_id=RUN_ID, size=size, fills=fills)


def refix(message: bytes) -> bytes:
    """The ICMP message with its checksum recomputed, as a faulty rewriting middlebox would."""
    zeroed = message[:2] + b"\0\0" + message[4:]
    return zeroed[:2] + icmp.checksum(zeroed).to_bytes(2, "big") + zeroed[4:]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


# --- checksum -------------------------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (ones' complement).
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


def test_checksum_pads_odd_length_with_zero() -> None:
    assert icmp.checksum(b"\x12\x34\x56") == icmp.checksum(b"\x12\x34\x56\x00")
    assert icmp.checksum(b"") == 0xFFFF


@BOUNDED
@given(st.binary(max_size=300))
def test_checksum_matches_word_by_word_definition_and_verifies(data: bytes) -> None:
    padded = data + b"\0" * (len(data) % 2)
    total = 0
    for i in range(0, len(padded), 2):  # add each word with end-around carry (RFC 1071 4.1)
        total += int.from_bytes(padded[i : i + 2], "big")
        total = (total & 0xFFFF) + (total >> 16)
    assert icmp.checksum(data) == ~total & 0xFFFF
    assert icmp.checksum(padded + icmp.checksum(data).to_bytes(2, "big")) == 0


# --- building -------------------------------------------------------------------------------


def test_fill_patterns_are_deterministic_per_run() -> None:
    seeded, zeros, ones, alternating = icmp.fill_patterns(RUN_ID, 100)
    assert icmp.fill_patterns(RUN_ID, 100) == (seeded, zeros, ones, alternating)
    assert icmp.fill_patterns(RUN_ID + 1, 100)[0] != seeded
    assert (zeros, ones, alternating) == (b"\0" * 100, b"\xff" * 100, b"\x5a" * 100)
    assert len(seeded) == 100 and len(set(seeded)) > 40
    assert icmp.fill_patterns(RUN_ID, 0) == (b"",) * 4


def test_echo_request_layout() -> None:
    msg = request(seq=0x1_0002_0003, target=9)
    assert len(msg) == icmp.ICMP_HEADER_LEN + SIZE
    assert msg[:2] == b"\x08\x00"
    assert msg[4:8] == bytes.fromhex("1234 0003")
    assert msg[8:36] == bytes.fromhex(
        "4c47454e a5c30f01 00000009 0000000100020003 ffffffffffffffd6"
    )
    assert msg[36:] == FILLS[0x1_0002_0003 % 4] == b"\x5a" * 36
    assert icmp.checksum(msg) == 0
    assert icmp.PAYLOAD_HEADER.size == icmp.MIN_PAYLOAD == 28


def test_echo_request_known_vector() -> None:
    # Assembled by hand from RFC 792 and docs/DESIGN.md; checksum by hand:
    # 0800 + 0001 + 0001 + 4c47 + 454e + 0002 + 0003 + 0001 + 0004 = 99a1, complement 665e.
    msg = icmp.build_echo_request(
        ident=1, run_id=2, target=3, seq=1, tx_ns=4, size=28, fills=icmp.fill_patterns(2, 0)
    )
    assert msg.hex() == "0800" + "665e" + "0001" + "0001" + (
        "4c47454e000000020000000300000000000000010000000000000004"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 27}, "out of range"),
        ({"size": 70_000}, "out of range"),
        ({"ident": 0x10000}, "field out of range"),
        ({"run_id": -1}, "field out of range"),
        ({"fills": icmp.fill_patterns(RUN_ID, 3)}, "does not fit"),
    ],
)
def test_echo_request_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "ident": IDENT, "run_id": RUN_ID, "target": 1, "seq": 1, "tx_ns": 0, "size": SIZE,
        "fills": FILLS,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        icmp.build_echo_request(**args)  # type: ignore[arg-type]


def test_ipv4_packet_and_echo_reply_helpers() -> None:
    packet = icmp.build_ipv4_packet(ME, HOST, 1, b"abcd", ttl=3, tos=0x10)
    assert packet[:4] == bytes.fromhex("4510 0018")
    assert packet[8:10] == b"\x03\x01"
    assert packet[12:20] == ME.to_bytes(4, "big") + HOST.to_bytes(4, "big")
    assert icmp.checksum(packet[:20]) == 0 and packet[20:] == b"abcd"
    answer = icmp.echo_reply_for(request())
    assert answer[0] == 0 and answer[4:] == request()[4:] and icmp.checksum(answer) == 0
    with pytest.raises(ValueError, match="too large"):
        icmp.build_ipv4_packet(ME, HOST, 1, b"\0" * 65516)


# --- decoding replies -----------------------------------------------------------------------


def test_good_reply() -> None:
    got = decode(reply(seq=0x2_0000_0001, target=77))
    assert got == icmp.Decoded(S.REPLY, target=77, seq=0x2_0000_0001, tx_ns=-42, src=HOST)


@pytest.mark.parametrize("size", [28, 29, 57, 1472])
def test_good_reply_every_size_and_pattern(size: int) -> None:
    for seq in range(4):
        datagram = on_wire(icmp.echo_reply_for(request(seq=seq, size=size)))
        assert decode(datagram, size) == icmp.Decoded(S.REPLY, 7, seq, -42, HOST)


def test_reply_with_ip_options() -> None:
    message = icmp.echo_reply_for(request())
    header = bytearray(icmp.build_ipv4_packet(HOST, ME, 1, message)[:20])
    header[0] = 0x46  # IHL 6: one word of options (NOP NOP NOP EOL)
    header[2:4] = (24 + len(message)).to_bytes(2, "big")
    header[10:12] = b"\0\0"
    options = b"\x01\x01\x01\x00"
    header[10:12] = icmp.checksum(bytes(header) + options).to_bytes(2, "big")
    assert decode(bytes(header) + options + message).status == S.REPLY


def test_reply_of_other_identifier_or_run_is_foreign() -> None:
    other_ident = on_wire(icmp.echo_reply_for(request(ident=IDENT + 1)))
    assert decode(other_ident) == icmp.Decoded(S.FOREIGN, src=HOST)
    other_run = icmp.build_echo_request(
        ident=IDENT, run_id=RUN_ID ^ 0xFF, target=7, seq=5, tx_ns=1, size=SIZE, fills=FILLS
    )
    assert decode(on_wire(icmp.echo_reply_for(other_run))).status == S.FOREIGN
    # Another program's ping (timeval payload) whose identifier happens to equal ours.
    ping = refix(b"\0\0\0\0" + struct.pack("!HH", IDENT, 1) + bytes(range(SIZE)))
    assert decode(on_wire(ping)).status == S.FOREIGN
    # Another run of ours with another size is still foreign, not malformed.
    assert decode(on_wire(icmp.echo_reply_for(other_run[:-3]))).status == S.FOREIGN


@pytest.mark.parametrize(
    ("offset", "mask"),
    [(8, 0x01), (13, 0x80), (8, 0x03), (12, 0x30)],  # magic: 1 and 2 bits; run_id: 1 and 2 bits
)
def test_slightly_damaged_magic_or_run_id_is_a_bitflip_of_unknown_target(
    offset: int, mask: int
) -> None:
    message = bytearray(icmp.echo_reply_for(request()))
    message[offset] ^= mask
    assert decode(on_wire(refix(bytes(message)))) == icmp.Decoded(S.BITFLIP, src=HOST)
    # Same damage with the checksum left alone: corrupted, still unattributable.
    assert decode(on_wire(bytes(message))) == icmp.Decoded(S.CORRUPTED, src=HOST)


@pytest.mark.parametrize(
    ("offset", "mask"),
    [(36, 0x01), (60, 0x04), (71, 0x80), (7, 0x01), (1, 0x02)],  # fill x3, sequence field, code
)
def test_damaged_fill_or_header_is_a_bitflip_of_known_probe(offset: int, mask: int) -> None:
    message = bytearray(icmp.echo_reply_for(request(seq=6, target=3)))
    message[offset] ^= mask
    code = message[1]
    assert decode(on_wire(refix(bytes(message)))) == icmp.Decoded(
        S.BITFLIP, 3, 6, -42, HOST, icmp_code=code
    )
    assert decode(on_wire(bytes(message))) == icmp.Decoded(
        S.CORRUPTED, 3, 6, -42, HOST, icmp_code=code
    )


def test_fill_of_another_pattern_is_a_bitflip() -> None:
    message = icmp.echo_reply_for(request(seq=1))
    swapped = refix(message[:36] + FILLS[2])
    assert decode(on_wire(swapped)) == icmp.Decoded(S.BITFLIP, 7, 1, -42, HOST)


@pytest.mark.parametrize("cut", [1, 3, SIZE - 28, SIZE - 7, SIZE])
def test_reply_of_wrong_length_is_malformed(cut: int) -> None:
    message = icmp.echo_reply_for(request())
    assert decode(on_wire(refix(message[:-cut]))).status == S.MALFORMED
    assert decode(on_wire(refix(message + b"\0" * cut))).status == S.MALFORMED


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p[:19],  # shorter than an IP header
        lambda p: b"\x65" + p[1:],  # IPv6 version nibble
        lambda p: b"\x44" + p[1:],  # IHL below 5
        lambda p: b"\x4f" + p[1:],  # IHL 15: option bytes that fail the header checksum
        lambda p: b"\x4f" + p[1:2] + b"\0\x28" + p[4:40],  # IHL 15 past the end
        lambda p: p[:-1],  # shorter than its total length (truncated by the receiver)
        lambda p: p + b"\0",  # longer than its total length
        lambda p: flip(p, 8 * 8),  # TTL changed without the header checksum
        lambda p: icmp.build_ipv4_packet(HOST, ME, 1, b"\0\0\0\0"),  # ICMP header cut short
    ],
)
def test_bad_ip_layer_is_malformed(mutate: Callable[[bytes], bytes]) -> None:
    assert decode(mutate(reply())).status == S.MALFORMED


def test_other_protocols_and_types_are_foreign() -> None:
    udp = icmp.build_ipv4_packet(HOST, ME, 17, b"\0" * 16)
    assert decode(udp) == icmp.Decoded(S.FOREIGN, src=HOST)
    own_request = decode(on_wire(request()))  # a raw socket on loopback sees our own probes
    assert own_request == icmp.Decoded(S.FOREIGN, src=HOST, icmp_type=8)
    redirect = on_wire(refix(b"\x05\x01\0\0" + bytes(4) + reply()[:28]))
    assert decode(redirect).status == S.FOREIGN


# --- decoding ICMP errors -------------------------------------------------------------------


def probe_packet(seq: int = 5, target: int = 7, ident: int = IDENT) -> bytes:
    return icmp.build_ipv4_packet(ME, HOST, 1, request(seq, target, ident=ident), ttl=1)


def error(original: bytes, icmp_type: int = 11, code: int = 0, quote_len: int = 548) -> bytes:
    return on_wire(icmp.build_icmp_error(icmp_type, code, original, quote_len=quote_len), ROUTER)


@pytest.mark.parametrize(("icmp_type", "code"), [(11, 0), (3, 1), (3, 4)])
def test_error_quoting_whole_probe(icmp_type: int, code: int) -> None:
    got = decode(error(probe_packet(seq=0x10_0001, target=12), icmp_type, code))
    assert got == icmp.Decoded(S.ICMP_ERROR, 12, 0x10_0001, -42, ROUTER, HOST, icmp_type, code)


@pytest.mark.parametrize("quote_len", [28, 36, 20 + 8 + 27])
def test_error_with_short_quote_has_only_the_16_bit_sequence(quote_len: int) -> None:
    got = decode(error(probe_packet(seq=0x10_0001), quote_len=quote_len))
    assert got == icmp.Decoded(S.ICMP_ERROR, icmp.UNKNOWN_TARGET, 1, 0, ROUTER, HOST, 11, 0, True)


def test_error_with_inner_ip_options() -> None:
    plain = probe_packet()
    inner = bytes([0x46]) + plain[1:20] + b"\x01\x01\x01\x00" + plain[20:]
    got = decode(error(inner))
    assert (got.status, got.target, got.seq, got.quoted_dst) == (S.ICMP_ERROR, 7, 5, HOST)


def test_error_with_bad_checksum_is_corrupted() -> None:
    datagram = error(probe_packet(seq=9))
    damaged = datagram[:-1] + bytes([datagram[-1] ^ 1])
    assert decode(damaged) == icmp.Decoded(S.CORRUPTED, 7, 9, -42, ROUTER, HOST, 11, 0)


def test_errors_about_other_traffic_are_foreign() -> None:
    assert decode(error(probe_packet(ident=IDENT ^ 1))).status == S.FOREIGN
    udp = icmp.build_ipv4_packet(ME, HOST, 17, b"\0" * 16)
    assert decode(error(udp, 3, 3)).status == S.FOREIGN
    reply_quoted = icmp.build_ipv4_packet(ME, HOST, 1, icmp.echo_reply_for(request()))
    assert decode(error(reply_quoted)).status == S.FOREIGN
    other_run = icmp.build_echo_request(
        ident=IDENT, run_id=~RUN_ID & 0xFFFFFFFF, target=7, seq=5, tx_ns=1, size=SIZE, fills=FILLS
    )
    assert decode(error(icmp.build_ipv4_packet(ME, HOST, 1, other_run))).status == S.FOREIGN


@pytest.mark.parametrize("quote_len", [0, 19, 20 + 7])
def test_error_too_short_to_name_a_probe_is_malformed(quote_len: int) -> None:
    got = decode(error(probe_packet(), quote_len=quote_len))
    assert (got.status, got.src, got.icmp_type) == (S.MALFORMED, ROUTER, 11)


# --- fuzzing --------------------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=200))
def test_garbage_never_reads_as_one_of_our_probes(data: bytes) -> None:
    """Random bytes carry neither our magic nor our run id: whatever they look like, they are
    counted as someone else's or as broken, and name no probe."""
    got = decode(data)
    assert got.status in (S.FOREIGN, S.MALFORMED)
    assert (got.target, got.seq, got.tx_ns) == (icmp.UNKNOWN_TARGET, 0, 0)


@BOUNDED
@given(st.binary(min_size=8, max_size=120), st.sampled_from([0, 3, 8, 11]))
def test_decoder_never_raises_on_plausible_icmp(body: bytes, icmp_type: int) -> None:
    message = refix(bytes([icmp_type]) + body[1:])
    got = decode(on_wire(message))
    assert got.src == HOST and got.icmp_type in (0, icmp_type)


@BOUNDED
@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 2),
    st.integers(0, (20 + 8 + SIZE) * 8 - 1),
)
def test_single_bit_flip_is_never_a_good_reply(seq: int, target: int, bit: int) -> None:
    good = reply(seq, target)
    assert decode(good) == icmp.Decoded(S.REPLY, target, seq, -42, HOST)
    assert decode(flip(good, bit)).status != S.REPLY


# Bits of a reply message that a flip with a recomputed checksum must not get past: type, code,
# the sequence field, magic, run_id and fill. Identifier flips make it foreign; target, seq and
# tx_ns carry no redundancy here (the tracker checks them against what it sent).
CHECKED_BITS = [*range(0, 16), *range(48, 128), *range(288, (8 + SIZE) * 8)]


@BOUNDED
@given(st.integers(0, 2**64 - 1), st.sampled_from(CHECKED_BITS))
def test_checksum_compensated_flip_is_a_bitflip(seq: int, bit: int) -> None:
    got = decode(on_wire(refix(flip(icmp.echo_reply_for(request(seq=seq)), bit))))
    if bit < 8:  # type 0 becomes another type: no longer a reply at all
        assert got.status == S.FOREIGN
    else:
        assert got.status == S.BITFLIP
        assert (got.target, got.seq) == (
            (7, seq) if bit < 64 or bit >= 128 else (icmp.UNKNOWN_TARGET, 0)
        )


def test_compensated_flip_in_target_is_invisible_here() -> None:
    """Pinned so the tracker knows to check replies against what it sent: nothing in the packet
    is redundant with the target index, so a recomputed-checksum flip there reads as good."""
    message = icmp.echo_reply_for(request(seq=5, target=7))
    got = decode(on_wire(refix(flip(message, 19 * 8 + 7))))
    assert (got.status, got.target, got.seq) == (S.REPLY, 6, 5)
