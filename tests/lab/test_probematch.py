"""The shaper's probe filters on bytes: u32 keys read the way the kernel reads them pick our
probes, their replies and errors quoting them, and nothing else. No lab needed."""

from __future__ import annotations

import struct

from loadgen.lab.probematch import (
    FROM_HOST,
    FROM_HOST6,
    TOWARDS_HOST,
    TOWARDS_HOST6,
    u32_keys,
    u32_keys6,
    udp_error,
)
from loadgen.wire.family import IPV4, IPV6, IcmpType
from loadgen.wire.icmp import (
    build_echo_request,
    build_icmp_error,
    build_ipv4_packet,
    build_ipv6_packet,
    echo_reply_for,
    fill_patterns,
)

HOST, PEER = 0xC6120001, 0xC6120000  # 198.18.0.1 and 198.18.0.0
HOST6, PEER6 = bytes.fromhex("20010002" + "0" * 23 + "1"), bytes.fromhex("20010002" + "0" * 24)


def matches(keys: list[str], packet: bytes) -> bool:
    """Every key's bytes of `packet` equal its value under its mask ("value/mask+offset")."""
    for key in keys:
        value_mask, offset = key.split("+")
        value, mask = (int(x, 0) for x in value_mask.split("/"))
        width = (mask.bit_length() + 7) // 8
        at = int(offset)
        if at + width > len(packet):
            return False
        if int.from_bytes(packet[at : at + width], "big") & mask != value:
            return False
    return True


def probe(seq: int = 1, size: int = 64) -> bytes:
    fills = fill_patterns(7, size - 28)
    icmp = build_echo_request(ident=1, run_id=7, target=0, seq=seq, tx_ns=0, size=size, fills=fills)
    return build_ipv4_packet(PEER, HOST, 1, icmp)


def test_the_filters_pick_probes_and_the_answers_to_them_only() -> None:
    request = probe()
    reply = build_ipv4_packet(HOST, PEER, 1, echo_reply_for(request[20:]))
    unreachable = build_ipv4_packet(HOST, PEER, 1, build_icmp_error(3, 1, request))
    expired = build_ipv4_packet(HOST, PEER, 1, build_icmp_error(11, 0, request))
    towards = [u32_keys(t) for t in TOWARDS_HOST]
    back = [u32_keys(t) for t in FROM_HOST]
    assert any(matches(k, request) for k in towards)
    for answer in (reply, unreachable, expired):
        assert any(matches(k, answer) for k in back)
        assert not any(matches(k, answer) for k in towards)
    assert not any(matches(k, request) for k in back)

    not_ours = bytearray(request)
    not_ours[28:32] = b"PING"  # an echo request of another program
    udp = build_ipv4_packet(PEER, HOST, 17, b"\x00\x09\x00\x09" + bytes(4) + b"LGEN")
    port_unreachable = build_ipv4_packet(HOST, PEER, 1, build_icmp_error(3, 3, udp))
    short_quote = build_ipv4_packet(HOST, PEER, 1, build_icmp_error(3, 1, request, quote_len=28))
    for other in (bytes(not_ours), udp, port_unreachable, short_quote):
        assert not any(matches(k, other) for k in towards + back), other.hex()


def test_only_whole_option_less_first_fragments_match() -> None:
    keys = u32_keys(IcmpType.ECHO_REQUEST)
    first = probe()
    assert matches(keys, first)
    later = bytearray(first)
    later[6:8] = (185).to_bytes(2, "big")  # a fragment offset: its bytes are not an ICMP header
    assert not matches(keys, bytes(later))
    with_options = bytearray(first)
    with_options[0] = 0x46  # one word of options moves everything after the IP header
    assert not matches(keys, bytes(with_options))


def probe6(size: int = 64) -> bytes:
    fills = fill_patterns(7, size - 28)
    icmp = build_echo_request(
        ident=1, run_id=7, target=0, seq=1, tx_ns=0, size=size, fills=fills, family=IPV6
    )
    return build_ipv6_packet(PEER6, HOST6, 58, icmp)


def test_the_ipv6_filters_pick_probes_and_the_answers_to_them_only() -> None:
    request = probe6()
    reply = build_ipv6_packet(HOST6, PEER6, 58, echo_reply_for(request[40:], IPV6))
    errors = [
        build_ipv6_packet(HOST6, PEER6, 58, build_icmp_error(t, 0, request, family=IPV6))
        for t in (1, 2, 3, 4)
    ]
    towards = [u32_keys6(t) for t in TOWARDS_HOST6]
    back = [u32_keys6(t) for t in FROM_HOST6]
    assert any(matches(k, request) for k in towards)
    assert not any(matches(k, request) for k in back)
    for answer in (reply, *errors):
        assert any(matches(k, answer) for k in back)
        assert not any(matches(k, answer) for k in towards)
    # IPv4's filters never take an IPv6 probe (tc runs them for their own protocol anyway).
    assert not any(matches(u32_keys(t), request) for t in TOWARDS_HOST)

    not_ours = bytearray(request)
    not_ours[48:52] = b"PING"
    udp = build_ipv6_packet(PEER6, HOST6, 17, b"\x00\x09\x00\x09" + bytes(4) + b"LGEN")
    port_unreachable = build_ipv6_packet(HOST6, PEER6, 58, build_icmp_error(1, 4, udp, family=IPV6))
    short_quote = build_ipv6_packet(
        HOST6, PEER6, 58, build_icmp_error(1, 3, request, quote_len=48, family=IPV6)
    )
    solicitation = build_ipv6_packet(PEER6, HOST6, 58, bytes([135, 0]) + bytes(22))
    for other in (bytes(not_ours), udp, port_unreachable, short_quote, solicitation):
        assert not any(matches(k, other) for k in towards + back), other.hex()


def nft_th_matches(match: str, icmp: bytes) -> bool:
    """Every `@th,bit offset,bit width value` clause of an nft match holds for `icmp` (the
    message from its ICMP header on); the type set before them is not checked here."""
    for clause in match.split(" @th,")[1:]:
        where, value = clause.split(" ")[:2]
        bit, width = (int(x) for x in where.split(","))
        field = int.from_bytes(icmp, "big") >> (len(icmp) * 8 - bit - width)
        if bit + width > len(icmp) * 8 or field & ((1 << width) - 1) != int(value, 0):
            return False
    return True


def test_the_udp_error_match_picks_errors_quoting_our_udp_and_stamp_probes() -> None:
    port, other = 18790, 18791
    payload = bytes(8) + probe()[28:]  # loadgen's header 8 bytes into the payload
    for version, (src, dst) in ((4, (PEER, HOST)), (6, (PEER6, HOST6))):
        for magic_at, body in ((8, payload), (0, payload[8:])):
            family = IPV4 if version == 4 else IPV6
            ours = struct.pack("!HHHH", 40000, port, 8 + len(body), 0) + body
            theirs = struct.pack("!HHHH", 40000, other, 8 + len(body), 0) + body
            packets = [
                build_ipv4_packet(src, dst, 17, udp)  # type: ignore[arg-type]
                if version == 4
                else build_ipv6_packet(src, dst, 17, udp)  # type: ignore[arg-type]
                for udp in (ours, theirs)
            ]
            errors = [
                build_icmp_error(3 if version == 4 else 1, 3, p, family=family) for p in packets
            ]
            match = udp_error(version, port, magic_at)
            assert nft_th_matches(match, errors[0])
            assert not nft_th_matches(match, errors[1])  # another port
            assert not nft_th_matches(udp_error(version, port, magic_at + 4), errors[0])
