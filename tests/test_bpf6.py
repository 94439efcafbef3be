"""The IPv6 side of the socket filters: the per-worker classic BPF program on what an AF_INET6
raw ICMPv6 socket's filter sees (the ICMPv6 message from offset 0, no IP header), cross-checked
against the decoder, and the ICMP6_FILTER bitmap against RFC 3542's bit layout."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire import bpf, icmp
from loadgen.wire.family import IPV4, IPV6
from loadgen.wire.icmp import DecodeStatus as S

IDENT = 0x4C47
RUN_ID = 77
SIZE = 40
FILLS = icmp.fill_patterns(RUN_ID, SIZE - icmp.MIN_PAYLOAD)
PROG = bpf.echo_filter_v6(IDENT)
ME = ipaddress.IPv6Address("::1").packed
HOST = ipaddress.IPv6Address("2001:2::3").packed
ROUTER = ipaddress.IPv6Address("fe80::fe").packed
BOUNDED = settings(max_examples=200, deadline=None)


def request(ident: int = IDENT, seq: int = 3) -> bytes:
    message = icmp.build_echo_request(
        ident=ident, run_id=RUN_ID, target=1, seq=seq, tx_ns=0, size=SIZE, fills=FILLS,
        family=IPV6,
    )  # fmt: skip
    return icmp.fill_checksum6(message, ME, HOST)


def reply(ident: int = IDENT) -> bytes:
    return icmp.echo_reply_for(request(ident), IPV6)


def ip6(message: bytes, next_header: int = 58) -> bytes:
    return icmp.build_ipv6_packet(ME, HOST, next_header, message, hop_limit=1)


def error_about(inner: bytes, icmp_type: int = 3, quote_len: int | None = None) -> bytes:
    message = icmp.build_icmp_error(icmp_type, 0, inner, quote_len=quote_len, family=IPV6)
    return icmp.fill_checksum6(message, ROUTER, ME)


OUR_REQUEST = ip6(request())
ACCEPTED = {
    "our reply": reply(),
    "our reply, damaged": reply()[:-1] + b"\x99",
    "unreachable quoting ours": error_about(OUR_REQUEST, 1),
    "packet too big quoting ours": error_about(OUR_REQUEST, 2),
    "time exceeded quoting ours": error_about(OUR_REQUEST, 3),
    "parameter problem quoting ours": error_about(OUR_REQUEST, 4),
    "error with an 8-byte quote": error_about(OUR_REQUEST, quote_len=48),
}
REJECTED = {
    "reply to another identifier": reply(IDENT + 1),
    "our own echo request": request(),
    "someone's echo request": request(IDENT + 1),
    "neighbour solicitation": bytes([135, 0, 0, 0, 0, 0, 0, 0]) + HOST,
    "router advertisement": bytes([134, 0, 0, 0, 64, 0, 0x07, 0x08]) + bytes(8),
    "MLD report": bytes([143, 0, 0, 0, 0, 0, 0, 1]) + bytes(20),
    "IPv4 numbers: time exceeded": bytes([11]) + error_about(OUR_REQUEST)[1:],
    "error type 5": bytes([5]) + error_about(OUR_REQUEST)[1:],
    "error quoting another identifier": error_about(ip6(request(IDENT ^ 0x100))),
    "error quoting a reply": error_about(ip6(reply())),
    "error quoting UDP": error_about(ip6(b"\0" * 16, 17), 1),
    "error quoting a fragment header": error_about(
        ip6(bytes([58, 0, 0, 1]) + bytes(4) + request(), 44)
    ),
    "error quoting IPv4": error_about(icmp.build_ipv4_packet(1, 2, 58, request() + bytes(20))),
    "reply behind an IPv6 header": ip6(reply()),
    "empty": b"",
}


VERDICTS = [(name, bpf.ACCEPT) for name in ACCEPTED] + [(name, bpf.REJECT) for name in REJECTED]


@pytest.mark.parametrize(("name", "verdict"), VERDICTS)
def test_filter_verdicts(name: str, verdict: int) -> None:
    assert bpf.run(PROG, {**ACCEPTED, **REJECTED}[name]) == verdict


def test_the_program_reads_the_icmpv6_header_at_offset_0() -> None:
    """The one assumption that differs from IPv4: no IP header in front. Our reply passes bare
    and is dropped behind an IPv6 header; the IPv4 program, which expects one, drops it bare."""
    assert bpf.run(PROG, reply()) == bpf.ACCEPT
    assert bpf.run(PROG, ip6(reply())) == bpf.REJECT
    assert bpf.run(bpf.echo_filter_v4(IDENT), reply()) == bpf.REJECT
    assert PROG[0] == (bpf.LD | bpf.B | bpf.ABS, 0, 0, 0)  # ldb [0]: the ICMPv6 type


@pytest.mark.parametrize("name", ACCEPTED)
def test_truncated_packets_are_rejected_until_the_filter_has_its_bytes(name: str) -> None:
    packet = ACCEPTED[name]
    needed = 6 if packet[0] == IPV6.echo_reply else 8 + 40 + 6  # reply / quoted identifier
    verdicts = [bpf.run(PROG, packet[:cut]) for cut in range(len(packet) + 1)]
    assert verdicts == [bpf.REJECT] * needed + [bpf.ACCEPT] * (len(packet) + 1 - needed)


def test_program_is_valid_and_dispatch_follows_the_family() -> None:
    assert len(bpf.pack(PROG)) == 8 * len(PROG)
    assert bpf.echo_filter(IPV6, IDENT) == PROG
    assert bpf.echo_filter(IPV4, IDENT) == bpf.echo_filter_v4(IDENT)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        bpf.echo_filter_v6(-1)


def test_filters_for_two_workers_are_disjoint() -> None:
    mine, theirs = bpf.echo_filter_v6(1), bpf.echo_filter_v6(2)
    for ident, expected in ((1, (bpf.ACCEPT, 0)), (2, (0, bpf.ACCEPT)), (3, (0, 0))):
        for packet in (reply(ident), error_about(ip6(request(ident)))):
            assert (bpf.run(mine, packet), bpf.run(theirs, packet)) == expected


@BOUNDED
@given(st.binary(max_size=120))
def test_filter_never_raises(packet: bytes) -> None:
    assert bpf.run(PROG, packet) in (bpf.ACCEPT, bpf.REJECT)


@BOUNDED
@given(
    st.sampled_from([p for p in [*ACCEPTED.values(), *REJECTED.values()] if p]),
    st.integers(0, 1000),
    st.integers(0, 255),
)
def test_filter_keeps_everything_the_decoder_attributes(
    original: bytes, at: int, value: int
) -> None:
    """What the decoder ties to our probes gets past the filter (no blind spot here: the
    decoder counts quoted extension headers as malformed); what it calls another kind of
    packet, or a reply of another identifier, does not."""
    at %= len(original)
    packet = original[:at] + bytes([value]) + original[at + 1 :]
    verdict = bpf.run(PROG, packet)
    got = icmp.decode(packet, ident=IDENT, run_id=RUN_ID, size=SIZE, fills=FILLS, family=IPV6)
    if got.status in (S.REPLY, S.BITFLIP, S.ICMP_ERROR):
        assert verdict == bpf.ACCEPT
    elif got.status == S.FOREIGN and packet[0] not in (129, 1, 2, 3, 4):
        assert verdict == bpf.REJECT
    elif got.status == S.FOREIGN and packet[0] == 129:
        ident = int.from_bytes(packet[4:6], "big")
        assert verdict == (bpf.ACCEPT if ident == IDENT else bpf.REJECT)


# --- ICMP6_FILTER --------------------------------------------------------------------------


def will_pass(value: bytes, icmp_type: int) -> bool:
    """glibc's ICMP6_FILTER_WILLPASS (netinet/icmp6.h): the type's bit is clear."""
    words: tuple[int, ...] = struct.unpack("=8I", value)
    return words[icmp_type >> 5] & (1 << (icmp_type & 31)) == 0


def test_icmp6_filter_passes_exactly_replies_and_quoting_errors() -> None:
    value = bpf.icmp6_filter()
    assert len(value) == 32  # sizeof(struct icmp6_filter)
    assert [t for t in range(256) if will_pass(value, t)] == [1, 2, 3, 4, 129]
    words = struct.unpack("=8I", value)
    # Types 1-4 are bits 1-4 of word 0; 129 is bit 1 of word 4 (128..159).
    assert words == (0xFFFFFFE1, *[0xFFFFFFFF] * 3, 0xFFFFFFFD, *[0xFFFFFFFF] * 3)


def test_icmp6_filter_of_other_types_and_bounds() -> None:
    assert bpf.icmp6_filter([]) == b"\xff" * 32  # blocks everything
    assert [t for t in range(256) if will_pass(bpf.icmp6_filter([0, 31, 32, 255]), t)] == [
        0, 31, 32, 255,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"0\.\.255"):
        bpf.icmp6_filter([256])


def test_icmp6_filter_and_bpf_program_agree_on_types() -> None:
    """A type ICMP6_FILTER blocks is never one the BPF program could accept, and the reverse:
    the two layers pass the same types (the program then also checks the identifier)."""
    value = bpf.icmp6_filter()
    for icmp_type in range(256):
        ours = bytes([icmp_type]) + ACCEPTED["time exceeded quoting ours"][1:]
        if icmp_type == 129:
            ours = reply()
        assert will_pass(value, icmp_type) == (bpf.run(PROG, ours) == bpf.ACCEPT), icmp_type
