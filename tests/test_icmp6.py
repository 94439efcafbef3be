"""The scalar codec with the IPv6 wire family (RFC 4443): a hand-checked echo request, the
pseudo-header checksum, replies, damage, foreign traffic and every ICMPv6 error type quoting a
probe; fuzzed so garbage never raises and never names a probe. An AF_INET6 raw socket hands
over the ICMPv6 message alone, so the datagrams here have no IP header."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire import icmp
from loadgen.wire.family import IPPROTO_ICMPV6, IPV4, IPV6, Icmp6Type, family_of
from loadgen.wire.icmp import DecodeStatus as S

IDENT = 0x1234
RUN_ID = 0xA5C3_0F01
SIZE = 64
FILLS = icmp.fill_patterns(RUN_ID, SIZE - icmp.MIN_PAYLOAD)
ME = ipaddress.IPv6Address("::1").packed
HOST = ipaddress.IPv6Address("2001:2::7").packed  # RFC 5180 benchmarking range: a lab host
ROUTER = ipaddress.IPv6Address("2001:2::fe").packed
BOUNDED = settings(max_examples=200, deadline=None)
ERRORS = [Icmp6Type.DEST_UNREACH, Icmp6Type.PACKET_TOO_BIG, Icmp6Type.TIME_EXCEEDED]
ERRORS += [Icmp6Type.PARAM_PROBLEM]


def request(seq: int = 5, target: int = 7, size: int = SIZE, ident: int = IDENT) -> bytes:
    fills = FILLS if size == SIZE else icmp.fill_patterns(RUN_ID, size - icmp.MIN_PAYLOAD)
    return icmp.build_echo_request(
        ident=ident,
        run_id=RUN_ID,
        target=target,
        seq=seq,
        tx_ns=-42,
        size=size,
        fills=fills,
        family=IPV6,
    )


def on_wire(seq: int = 5, target: int = 7, size: int = SIZE, ident: int = IDENT) -> bytes:
    """Our request as it leaves: the kernel has written the checksum."""
    return icmp.fill_checksum6(request(seq, target, size, ident), ME, HOST)


def reply(seq: int = 5, target: int = 7) -> bytes:
    return icmp.echo_reply_for(on_wire(seq, target), IPV6)


def decode(datagram: bytes, size: int = SIZE) -> icmp.Decoded:
    fills = FILLS if size == SIZE else icmp.fill_patterns(RUN_ID, size - icmp.MIN_PAYLOAD)
    return icmp.decode(datagram, ident=IDENT, run_id=RUN_ID, size=size, fills=fills, family=IPV6)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def verifies(message: bytes, src: bytes, dst: bytes) -> bool:
    """The receiver's check (RFC 4443 2.3): the sum over pseudo-header and message is 0."""
    pseudo = src + dst + len(message).to_bytes(4, "big") + b"\0\0\0" + bytes([IPPROTO_ICMPV6])
    return icmp.checksum(pseudo + message) == 0


# --- the family ----------------------------------------------------------------------------


def test_family_facts() -> None:
    assert (IPV6.echo_request, IPV6.echo_reply) == (128, 129)
    assert IPV6.error_types == {1, 2, 3, 4}
    assert (IPV4.echo_request, IPV4.echo_reply, IPV4.error_types) == (8, 0, frozenset({3, 11}))
    assert (IPV4.address_len, IPV6.address_len) == (4, 16)
    assert (IPV4.rx_ip_header, IPV6.rx_ip_header) == (True, False)
    assert (IPV4.user_checksum, IPV6.user_checksum) == (True, False)
    assert (IPV4.max_payload, IPV6.max_payload) == (65507, 65527)
    assert family_of(4) is IPV4 and family_of(6) is IPV6 and IPV6.name == "IPv6"
    with pytest.raises(ValueError, match="use 4 or 6"):
        family_of(5)


# --- building ------------------------------------------------------------------------------


def test_echo_request_known_vector() -> None:
    # RFC 4443 section 4.1 layout, our payload header (docs/DESIGN.md), ::1 to ::1. Checksum by
    # hand (RFC 4443 2.3, pseudo-header of RFC 8200 8.1): pseudo-header words 0001 (source) +
    # 0001 (destination) + 0024 (length 36) + 003a (next header 58) = 0060; message words
    # 8000 + 0001 + 0001 + 4c47 + 454e + 0002 + 0003 + 0001 + 0004 = 111a1; total 11201,
    # folded 1202, complement edfd.
    message = icmp.build_echo_request(
        ident=1, run_id=2, target=3, seq=1, tx_ns=4, size=28, fills=icmp.fill_patterns(2, 0),
        family=IPV6,
    )  # fmt: skip
    payload = "4c47454e000000020000000300000000000000010000000000000004"
    assert message.hex() == "8000" + "0000" + "0001" + "0001" + payload
    wire = icmp.fill_checksum6(message, ME, ME)
    assert wire.hex() == "8000" + "edfd" + "0001" + "0001" + payload
    assert icmp.checksum6(ME, ME, message) == 0xEDFD
    assert verifies(wire, ME, ME)


def test_checksum_of_a_captured_linux_ping6() -> None:
    """An echo request and its reply as captured between two link-local hosts (the
    PcapPlusPlus test packets IcmpV6_EchoRequest/Reply): identifier 0x18, sequence 0x14, a
    timeval and iputils' 0x10.. pattern; the capture carries checksums 7a4c and 794c."""
    src = ipaddress.IPv6Address("fe80::215:5dff:fea5:c4c5").packed
    dst = ipaddress.IPv6Address("fe80::dd05:dae0:74bc:7341").packed
    data = bytes.fromhex("bdcecb62 00000000 f3a10900 00000000") + bytes(range(0x10, 0x38))
    request = bytes([128, 0, 0, 0, 0, 0x18, 0, 0x14]) + data
    wire = icmp.fill_checksum6(request, src, dst)
    assert wire[2:4].hex() == "7a4c"
    answer = icmp.echo_reply_for(wire, IPV6)
    assert answer[:4].hex() == "8100794c" and answer[4:] == wire[4:]
    assert verifies(answer, dst, src)


def test_v6_request_differs_from_v4_only_in_type_and_checksum() -> None:
    """Same payload header, fill and sequence field: bitflip detection is the family's
    parameter, not a second format."""
    v4 = icmp.build_echo_request(
        ident=IDENT, run_id=RUN_ID, target=9, seq=0x1_0002_0003, tx_ns=-42, size=SIZE, fills=FILLS
    )
    v6 = request(seq=0x1_0002_0003, target=9)
    assert (v4[0], v6[0]) == (8, 128)
    assert v6[2:4] == b"\0\0"  # left for the kernel
    assert v4[1] == v6[1] == 0 and v4[4:] == v6[4:]


def _word_sum(data: bytes) -> int:
    return sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)) % 0xFFFF


@BOUNDED
@given(st.binary(min_size=8, max_size=200), st.binary(min_size=16, max_size=16))
def test_filled_checksum_verifies_and_covers_the_addresses(message: bytes, src: bytes) -> None:
    wire = icmp.fill_checksum6(message, src, HOST)
    assert wire[:2] == message[:2] and wire[4:] == message[4:]
    assert verifies(wire, src, HOST)
    # From another source it fails, unless the two sources have the same ones' complement sum.
    assert verifies(wire, ROUTER, HOST) == (_word_sum(src) == _word_sum(ROUTER))


def test_checksum6_refuses_short_addresses() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        icmp.checksum6(b"\x7f\0\0\1", HOST, b"")


def test_echo_reply_keeps_a_valid_checksum_for_the_way_back() -> None:
    answer = reply(seq=3)
    assert answer[0] == 129 and answer[4:] == on_wire(seq=3)[4:]
    assert verifies(answer, HOST, ME)  # RFC 1624 update of the request's checksum


def test_ipv6_packet_layout() -> None:
    packet = icmp.build_ipv6_packet(ME, HOST, IPPROTO_ICMPV6, b"abcd", hop_limit=3, tclass=0xB8)
    assert packet[:8] == bytes.fromhex("6b800000 0004 3a 03")
    assert packet[8:24] == ME and packet[24:40] == HOST and packet[40:] == b"abcd"
    with pytest.raises(ValueError, match="too large"):
        icmp.build_ipv6_packet(ME, HOST, 58, b"\0" * 65536)


@pytest.mark.parametrize(("size", "ok"), [(27, False), (28, True), (65527, True), (65528, False)])
def test_size_range_is_the_family_s(size: int, ok: bool) -> None:
    if ok:
        assert len(request(size=size)) == 8 + size
    else:
        with pytest.raises(ValueError, match="out of range for IPv6"):
            request(size=size)


def test_ipv4_size_limit_is_lower() -> None:
    with pytest.raises(ValueError, match=r"out of range for IPv4: use 28\.\.65507"):
        icmp.check_size(65508)
    icmp.check_size(65508, IPV6)


# --- decoding replies ----------------------------------------------------------------------


def test_good_reply() -> None:
    got = decode(reply(seq=0x2_0000_0001, target=77))
    assert got == icmp.Decoded(S.REPLY, target=77, seq=0x2_0000_0001, tx_ns=-42)
    assert got.src == 0  # not in the datagram: the socket layer reads it from msg_name


@pytest.mark.parametrize("size", [28, 29, 57, 1452])
def test_good_reply_every_size_and_pattern(size: int) -> None:
    for seq in range(4):
        message = icmp.echo_reply_for(request(seq=seq, size=size), IPV6)
        assert decode(message, size) == icmp.Decoded(S.REPLY, 7, seq, -42)


def test_checksum_is_not_checked_the_kernel_did() -> None:
    """A reply the kernel passed had a good checksum; the decoder cannot verify it without the
    addresses and must not claim to: whatever the field holds, the verdict is the same."""
    for value in (b"\0\0", b"\xff\xff", b"\x12\x34"):
        message = reply()
        assert decode(message[:2] + value + message[4:]).status == S.REPLY


def test_reply_of_other_identifier_or_run_is_foreign() -> None:
    other_ident = icmp.echo_reply_for(request(ident=IDENT + 1), IPV6)
    assert decode(other_ident) == icmp.Decoded(S.FOREIGN, icmp_type=129)
    other_run = icmp.build_echo_request(
        ident=IDENT, run_id=RUN_ID ^ 0xFF, target=7, seq=5, tx_ns=1, size=SIZE, fills=FILLS,
        family=IPV6,
    )  # fmt: skip
    assert decode(icmp.echo_reply_for(other_run, IPV6)) == icmp.Decoded(S.FOREIGN)
    ping6 = bytes([129, 0, 0, 0]) + IDENT.to_bytes(2, "big") + b"\0\1" + bytes(range(SIZE))
    assert decode(ping6).status == S.FOREIGN


@pytest.mark.parametrize(("offset", "mask"), [(8, 0x01), (13, 0x80), (8, 0x03), (12, 0x30)])
def test_slightly_damaged_magic_or_run_id_is_a_bitflip_of_unknown_target(
    offset: int, mask: int
) -> None:
    message = bytearray(reply())
    message[offset] ^= mask
    assert decode(bytes(message)) == icmp.Decoded(S.BITFLIP)


@pytest.mark.parametrize(("offset", "mask"), [(36, 0x01), (71, 0x80), (7, 0x01), (1, 0x02)])
def test_damaged_fill_or_header_is_a_bitflip_of_known_probe(offset: int, mask: int) -> None:
    message = bytearray(reply(seq=6, target=3))
    message[offset] ^= mask
    got = decode(bytes(message))
    assert got == icmp.Decoded(S.BITFLIP, 3, 6, -42, icmp_code=message[1])


@pytest.mark.parametrize("cut", [1, 3, SIZE - 28, SIZE - 7, SIZE, SIZE + 2])
def test_reply_of_wrong_length_is_malformed(cut: int) -> None:
    message = reply()
    assert decode(message[:-cut]).status == S.MALFORMED
    assert decode(message + b"\0" * cut).status == S.MALFORMED


def test_other_types_are_foreign() -> None:
    assert decode(on_wire()) == icmp.Decoded(S.FOREIGN, icmp_type=128)  # our own request
    solicitation = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + HOST  # RFC 4861 4.3
    assert decode(solicitation) == icmp.Decoded(S.FOREIGN, icmp_type=135)
    v4_type = bytes([11]) + reply()[1:]  # IPv4's time exceeded number means nothing here
    assert decode(v4_type).status == S.FOREIGN


def test_families_do_not_read_each_other() -> None:
    v4_reply = icmp.build_ipv4_packet(
        0xC612_0007, 0x7F00_0001, 1, icmp.echo_reply_for(bytes([8]) + reply()[1:])
    )
    assert decode(v4_reply).status in (S.FOREIGN, S.MALFORMED)
    assert icmp.decode(reply(), ident=IDENT, run_id=RUN_ID, size=SIZE, fills=FILLS).status == (
        S.MALFORMED
    )


def test_shorter_than_an_icmp_header_is_malformed() -> None:
    for cut in range(8):
        assert decode(reply()[:cut]) == icmp.Decoded(S.MALFORMED)


# --- decoding ICMPv6 errors ----------------------------------------------------------------

HOST_INT = int.from_bytes(HOST, "big")


def probe_packet(seq: int = 5, target: int = 7, ident: int = IDENT, next_header: int = 58) -> bytes:
    return icmp.build_ipv6_packet(ME, HOST, next_header, on_wire(seq, target, ident=ident))


def error(
    original: bytes, icmp_type: int = 3, code: int = 0, quote_len: int | None = None
) -> bytes:
    message = icmp.build_icmp_error(icmp_type, code, original, quote_len=quote_len, family=IPV6)
    return icmp.fill_checksum6(message, ROUTER, ME)


@pytest.mark.parametrize("icmp_type", ERRORS)
def test_every_error_type_quoting_a_whole_probe(icmp_type: int) -> None:
    got = decode(error(probe_packet(seq=0x10_0001, target=12), icmp_type, 1))
    assert got == icmp.Decoded(S.ICMP_ERROR, 12, 0x10_0001, -42, 0, HOST_INT, icmp_type, 1)


def test_default_quote_is_as_much_as_fits_the_minimum_mtu() -> None:
    big = icmp.build_ipv6_packet(ME, HOST, 58, on_wire(size=1400, seq=9), hop_limit=1)
    message = icmp.build_icmp_error(3, 0, big, family=IPV6)
    assert len(message) == 1280 - 40
    got = decode(message, size=1400)
    assert (got.status, got.target, got.seq, got.quoted_dst) == (S.ICMP_ERROR, 7, 9, HOST_INT)


@pytest.mark.parametrize("quote_len", [48, 56, 40 + 8 + 27])
def test_error_with_short_quote_has_only_the_16_bit_sequence(quote_len: int) -> None:
    got = decode(error(probe_packet(seq=0x10_0001), quote_len=quote_len))
    assert got == icmp.Decoded(S.ICMP_ERROR, icmp.UNKNOWN_TARGET, 1, 0, 0, HOST_INT, 3, 0, True)


def test_error_checksum_is_not_checked() -> None:
    datagram = error(probe_packet(seq=9))
    damaged = datagram[:2] + bytes([datagram[2] ^ 1]) + datagram[3:]
    assert decode(damaged) == icmp.Decoded(S.ICMP_ERROR, 7, 9, -42, 0, HOST_INT, 3, 0)


def test_errors_about_other_traffic_are_foreign() -> None:
    assert decode(error(probe_packet(ident=IDENT ^ 1))).status == S.FOREIGN
    udp = icmp.build_ipv6_packet(ME, HOST, 17, b"\0" * 16)
    assert decode(error(udp, 1, 4)).status == S.FOREIGN
    answer = icmp.build_ipv6_packet(ME, HOST, 58, reply())
    assert decode(error(answer)).status == S.FOREIGN
    other_run = icmp.build_echo_request(
        ident=IDENT, run_id=~RUN_ID & 0xFFFFFFFF, target=7, seq=5, tx_ns=1, size=SIZE,
        fills=FILLS, family=IPV6,
    )  # fmt: skip
    assert decode(error(icmp.build_ipv6_packet(ME, HOST, 58, other_run))).status == S.FOREIGN


@pytest.mark.parametrize("next_header", [0, 43, 44, 60])
def test_error_quoting_extension_headers_is_malformed(next_header: int) -> None:
    """Our probes carry none; a fragment header appears on a probe over the path MTU. Not
    walked: counted as malformed (and the BPF filter drops it before we would see it)."""
    got = decode(error(probe_packet(next_header=next_header), 1))
    assert (got.status, got.icmp_type) == (S.MALFORMED, 1)


@pytest.mark.parametrize("quote_len", [0, 39, 40 + 7])
def test_error_too_short_to_name_a_probe_is_malformed(quote_len: int) -> None:
    got = decode(error(probe_packet(), quote_len=quote_len))
    assert (got.status, got.icmp_type) == (S.MALFORMED, 3)


def test_error_quoting_an_ipv4_header_is_malformed() -> None:
    v4 = icmp.build_ipv4_packet(0x7F00_0001, 0xC612_0007, 58, on_wire() + bytes(40))
    assert decode(error(v4)).status == S.MALFORMED


# --- fuzzing -------------------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=200))
def test_garbage_never_reads_as_one_of_our_probes(data: bytes) -> None:
    got = decode(data)
    assert got.status in (S.FOREIGN, S.MALFORMED)
    assert (got.target, got.seq, got.tx_ns, got.quoted_dst) == (icmp.UNKNOWN_TARGET, 0, 0, 0)


@BOUNDED
@given(st.binary(min_size=8, max_size=1300), st.sampled_from([1, 2, 3, 4, 128, 129, 135]))
def test_decoder_never_raises_and_never_says_corrupted(body: bytes, icmp_type: int) -> None:
    got = decode(bytes([icmp_type]) + body[1:])
    assert got.status != S.CORRUPTED
    assert got.icmp_type in (0, icmp_type) and got.src == 0


# Bits a flip must not get past: type, code, the sequence field, magic, run_id and fill. The
# checksum field is the kernel's; identifier flips make it foreign; target, seq and tx_ns
# carry no redundancy (the tracker checks them against what it sent).
CHECKED_BITS = [*range(0, 16), *range(48, 128), *range(288, (8 + SIZE) * 8)]


@BOUNDED
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 2), st.sampled_from(CHECKED_BITS))
def test_single_bit_flip_is_a_bitflip_never_a_good_reply(seq: int, target: int, bit: int) -> None:
    good = reply(seq, target)
    assert decode(good) == icmp.Decoded(S.REPLY, target, seq, -42)
    got = decode(flip(good, bit))
    if bit < 8:
        assert got.status in (S.FOREIGN, S.MALFORMED)  # now another type, maybe an error
    else:
        assert got.status == S.BITFLIP
        known = bit < 64 or bit >= 128
        assert (got.target, got.seq) == ((target, seq) if known else (icmp.UNKNOWN_TARGET, 0))
