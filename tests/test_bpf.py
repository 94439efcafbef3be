"""Classic BPF: the interpreter's semantics on small hand-checked programs, the checker, the
struct sock_filter encoding, and the echo filter's verdict on the traffic a raw ICMP socket
sees, cross-checked against the decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire import bpf, icmp
from loadgen.wire.bpf import (
    ABS,
    ADD,
    ALU,
    AND,
    DIV,
    IND,
    JA,
    JEQ,
    JGE,
    JGT,
    JMP,
    JSET,
    LD,
    LDX,
    LEN,
    LSH,
    MEM,
    MISC,
    MOD,
    MSH,
    MUL,
    NEG,
    OR,
    RET,
    RET_A,
    RSH,
    ST,
    STX,
    SUB,
    TAX,
    TXA,
    XOR,
    B,
    H,
    K,
    W,
    X,
)  # fmt: skip
from loadgen.wire.family import IPPROTO_ICMP
from loadgen.wire.icmp import DecodeStatus as S

IDENT = 0x4C47
RUN_ID = 77
SIZE = 40
FILLS = icmp.fill_patterns(RUN_ID, SIZE - icmp.MIN_PAYLOAD)
PROG = bpf.echo_filter_v4(IDENT)
HOST, ME, ROUTER = 0xC612_0003, 0x7F00_0001, 0xC612_00FE
BOUNDED = settings(max_examples=200, deadline=None)


def request(ident: int = IDENT, seq: int = 3) -> bytes:
    return icmp.build_echo_request(
        ident=ident, run_id=RUN_ID, target=1, seq=seq, tx_ns=0, size=SIZE, fills=FILLS
    )


def ip(message: bytes, src: int = HOST, proto: int = IPPROTO_ICMP) -> bytes:
    return icmp.build_ipv4_packet(src, ME, proto, message)


def error_about(inner: bytes, icmp_type: int = 11, quote_len: int = 548) -> bytes:
    return ip(icmp.build_icmp_error(icmp_type, 0, inner, quote_len=quote_len), ROUTER)


def ret_a(*body: bpf.Instr) -> list[bpf.Instr]:
    return [*body, (RET | RET_A, 0, 0, 0)]


# --- the interpreter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "packet", "expected"),
    [
        ([(LD | W | ABS, 0, 0, 1)], b"\x00\x01\x02\x03\x04", 0x01020304),
        ([(LD | H | ABS, 0, 0, 3)], b"\x00\x01\x02\x03\x04", 0x0304),
        ([(LD | W | LEN, 0, 0, 0)], b"12345", 5),
        ([(LDX | W | LEN, 0, 0, 0), (MISC | TXA, 0, 0, 0)], b"123", 3),
        ([(LDX | B | MSH, 0, 0, 1), (MISC | TXA, 0, 0, 0)], b"\x00\x47", 28),
        ([(LDX | W, 0, 0, 2), (LD | B | IND, 0, 0, 1)], b"\x00\x01\x02\x03\x04", 3),
        ([(LD | W, 0, 0, 10), (ST, 0, 0, 3), (LD | W, 0, 0, 0), (LD | MEM, 0, 0, 3)], b"", 10),
        ([(LD | W, 0, 0, 6), (MISC | TAX, 0, 0, 0), (STX, 0, 0, 0), (LDX | MEM, 0, 0, 0),
          (ALU | MUL | X, 0, 0, 0)], b"", 36),
        ([(LD | W, 0, 0, 7), (ALU | ADD | K, 0, 0, 0xFFFFFFFF)], b"", 6),  # wraps at 32 bits
        ([(LD | W, 0, 0, 7), (ALU | SUB | K, 0, 0, 9)], b"", 0xFFFFFFFE),
        ([(LD | W, 0, 0, 7), (ALU | DIV | K, 0, 0, 2)], b"", 3),
        ([(LD | W, 0, 0, 7), (ALU | MOD | K, 0, 0, 4)], b"", 3),
        ([(LD | W, 0, 0, 0xF0), (ALU | OR | K, 0, 0, 0x0F), (ALU | XOR | K, 0, 0, 0xFF)], b"", 0),
        ([(LD | W, 0, 0, 0xF0), (ALU | AND | K, 0, 0, 0x3C)], b"", 0x30),
        ([(LD | W, 0, 0, 0x80000001), (ALU | LSH | K, 0, 0, 1)], b"", 2),
        ([(LD | W, 0, 0, 0x80), (ALU | RSH | K, 0, 0, 7)], b"", 1),
        ([(LD | W, 0, 0, 1), (ALU | NEG, 0, 0, 0)], b"", 0xFFFFFFFF),
        ([(LDX | W, 0, 0, 33), (LD | W, 0, 0, 1), (ALU | LSH | X, 0, 0, 0)], b"", 2),
        ([(LD | W, 0, 0, 5), (JMP | JA, 0, 0, 1), (LD | W, 0, 0, 6)], b"", 5),
        ([(LD | W, 0, 0, 5), (JMP | JGT | K, 1, 0, 5), (LD | W, 0, 0, 9)], b"", 9),
        ([(LD | W, 0, 0, 5), (JMP | JGE | K, 1, 0, 5), (LD | W, 0, 0, 9)], b"", 5),
        ([(LD | W, 0, 0, 6), (JMP | JSET | K, 1, 0, 2), (LD | W, 0, 0, 9)], b"", 6),
        ([(LD | W, 0, 0, 6), (JMP | JSET | K, 1, 0, 1), (LD | W, 0, 0, 9)], b"", 9),
        ([(LDX | W, 0, 0, 6), (LD | W, 0, 0, 6), (JMP | JEQ | X, 0, 1, 0), (LD | W, 0, 0, 1)],
         b"", 1),
    ],
)  # fmt: skip
def test_interpreter_semantics(body: list[bpf.Instr], packet: bytes, expected: int) -> None:
    assert bpf.run(ret_a(*body), packet) == expected


@pytest.mark.parametrize(
    "body",
    [
        [(LD | W | ABS, 0, 0, 2)],  # 4 bytes from offset 2 of a 5-byte packet
        [(LD | H | ABS, 0, 0, 4)],
        [(LD | B | ABS, 0, 0, 5)],
        [(LDX | W, 0, 0, 0xFFFFFFF0), (LD | B | IND, 0, 0, 2)],  # offset -14 to the kernel
        [(LDX | B | MSH, 0, 0, 5)],
        [(LD | W, 0, 0, 1), (ALU | DIV | X, 0, 0, 0)],  # X is 0
        [(LD | W, 0, 0, 1), (ALU | MOD | X, 0, 0, 0)],
    ],
)
def test_out_of_bounds_loads_and_division_by_zero_end_with_zero(body: list[bpf.Instr]) -> None:
    assert bpf.run([(LD | W, 0, 0, 99), *body, (RET | K, 0, 0, 1)], b"12345") == 0


@pytest.mark.parametrize(
    ("prog", "message"),
    [
        ([], "1..4096"),
        ([(RET | K, 0, 0, 0)] * 4097, "1..4096"),
        ([(LD | W | ABS, 0, 0, 0)], "end with a return"),
        ([(JMP | JEQ | K, 1, 0, 0), (RET | K, 0, 0, 0)], "out of the program"),
        ([(JMP | JA, 0, 0, 1), (RET | K, 0, 0, 0)], "out of the program"),
        ([(0xFFFF, 0, 0, 0), (RET | K, 0, 0, 0)], "not supported"),
        ([(RET | X, 0, 0, 0)], "not supported"),
        ([(ST, 0, 0, 16), (RET | K, 0, 0, 0)], "scratch word 16"),
        ([(LD | MEM, 0, 0, 16), (RET | K, 0, 0, 0)], "scratch word 16"),
        ([(ALU | DIV | K, 0, 0, 0), (RET | K, 0, 0, 0)], "constant 0"),
        ([(ALU | LSH | K, 0, 0, 32), (RET | K, 0, 0, 0)], "at most 31"),
        ([(LD | W | ABS, 0, 0, 0xFFFFF000), (RET | K, 0, 0, 0)], "ancillary"),
        ([(RET | K, 0, 256, 0)], "out of range"),
        ([(RET | K, 0, 0, 2**32)], "out of range"),
    ],
)
def test_checker_refuses_what_the_kernel_refuses(prog: list[bpf.Instr], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bpf.validate(prog)
    with pytest.raises(ValueError, match=message):
        bpf.pack(prog)


def test_pack_is_struct_sock_filter() -> None:
    packed = bpf.pack(PROG)
    assert len(packed) == 8 * len(PROG)
    assert list(struct.iter_unpack("HBBI", packed)) == PROG
    assert packed[:8] == struct.pack("=HBBI", 0x30, 0, 0, 0)  # ldb [0], as tcpdump -d has it
    assert PROG[-2:] == [(RET | K, 0, 0, bpf.ACCEPT), (RET | K, 0, 0, 0)]


def test_identifier_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        bpf.echo_filter_v4(65536)


# --- the echo filter ------------------------------------------------------------------------


def with_options(packet: bytes) -> bytes:
    """The same datagram with 8 bytes of IP options (NOPs), header checksum redone."""
    header = bytearray(packet[:20])
    header[0] = 0x47
    header[2:4] = (len(packet) + 8).to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = icmp.checksum(bytes(header) + b"\1" * 8).to_bytes(2, "big")
    return bytes(header) + b"\1" * 8 + packet[20:]


OUR_REQUEST_ON_WIRE = icmp.build_ipv4_packet(ME, HOST, 1, request(), ttl=1)
ACCEPTED = {
    "our reply": ip(icmp.echo_reply_for(request())),
    "our reply, IP options": with_options(ip(icmp.echo_reply_for(request()))),
    "our reply, damaged": ip(icmp.echo_reply_for(request())[:-1] + b"\x99"),
    "time exceeded quoting ours": error_about(OUR_REQUEST_ON_WIRE),
    "unreachable quoting ours": error_about(OUR_REQUEST_ON_WIRE, 3),
    "error with an 8-byte quote": error_about(OUR_REQUEST_ON_WIRE, quote_len=28),
    "error, outer IP options": with_options(error_about(OUR_REQUEST_ON_WIRE)),
}
REJECTED = {
    "reply to another identifier": ip(icmp.echo_reply_for(request(IDENT + 1))),
    "our own echo request": OUR_REQUEST_ON_WIRE,
    "someone's echo request": ip(request(IDENT + 1)),
    "error quoting another identifier": error_about(
        icmp.build_ipv4_packet(ME, HOST, 1, request(IDENT ^ 0x100))
    ),
    "error quoting a reply": error_about(
        icmp.build_ipv4_packet(ME, HOST, 1, icmp.echo_reply_for(request()))
    ),
    "error quoting UDP": error_about(icmp.build_ipv4_packet(ME, HOST, 17, b"\0" * 16), 3),
    "error quoting inner IP options": error_about(with_options(OUR_REQUEST_ON_WIRE)),
    "parameter problem quoting ours": error_about(OUR_REQUEST_ON_WIRE, 12),
    "not ICMP": ip(icmp.echo_reply_for(request()), proto=17),
    "IPv6 version nibble": b"\x65" + ip(icmp.echo_reply_for(request()))[1:],
    "error quoting version 6": error_about(b"\x65" + OUR_REQUEST_ON_WIRE[1:]),
    "empty": b"",
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_filter_accepts(name: str) -> None:
    assert bpf.run(PROG, ACCEPTED[name]) == bpf.ACCEPT


@pytest.mark.parametrize("name", REJECTED)
def test_filter_rejects(name: str) -> None:
    assert bpf.run(PROG, REJECTED[name]) == bpf.REJECT


@pytest.mark.parametrize("name", ACCEPTED)
def test_truncated_packets_are_rejected_until_the_filter_has_its_bytes(name: str) -> None:
    """Every prefix too short to hold a byte the filter reads is dropped; longer prefixes pass
    (the decoder then counts them as malformed rather than the kernel hiding them)."""
    packet = ACCEPTED[name]
    ihl = (packet[0] & 0x0F) * 4
    needed = ihl + (6 if packet[ihl] == 0 else 8 + 20 + 6)  # reply ident / quoted ident
    verdicts = [bpf.run(PROG, packet[:cut]) for cut in range(len(packet) + 1)]
    assert verdicts == [bpf.REJECT] * needed + [bpf.ACCEPT] * (len(packet) + 1 - needed)


@BOUNDED
@given(st.binary(max_size=120))
def test_filter_never_raises(packet: bytes) -> None:
    assert bpf.run(PROG, packet) in (bpf.ACCEPT, bpf.REJECT)


def mutate(packet: bytes, at: int, value: int) -> bytes:
    at %= len(packet)
    return packet[:at] + bytes([value]) + packet[at + 1 :]


@BOUNDED
@given(
    st.sampled_from([p for p in [*ACCEPTED.values(), *REJECTED.values()] if p]),
    st.integers(0, 1000),
    st.integers(0, 255),
)
def test_filter_keeps_everything_the_decoder_attributes(
    original: bytes, at: int, value: int
) -> None:
    """Whatever the decoder would tie to our probes must get past the filter; whatever it
    sees as another identifier's traffic or another kind of packet must not."""
    packet = mutate(original, at, value)
    verdict = bpf.run(PROG, packet)
    got = icmp.decode(packet, ident=IDENT, run_id=RUN_ID, size=SIZE, fills=FILLS)
    icmp_at = (packet[0] & 0x0F) * 4
    if got.status in (S.REPLY, S.BITFLIP, S.CORRUPTED, S.ICMP_ERROR):
        # The one documented blind spot: errors quoting an IP header with options.
        if got.icmp_type == 0 or packet[icmp_at + 8] == 0x45:
            assert verdict == bpf.ACCEPT
    elif got.status == S.FOREIGN and got.icmp_type not in (0, 3, 11):
        assert verdict == bpf.REJECT
    elif got.status == S.FOREIGN and got.icmp_type == 0 and packet[9] == IPPROTO_ICMP:
        ident = int.from_bytes(packet[icmp_at + 4 : icmp_at + 6], "big")
        assert verdict == (bpf.ACCEPT if ident == IDENT else bpf.REJECT)


def test_filters_for_two_workers_are_disjoint() -> None:
    mine, theirs = bpf.echo_filter_v4(1), bpf.echo_filter_v4(2)
    for ident, expected in ((1, (bpf.ACCEPT, 0)), (2, (0, bpf.ACCEPT)), (3, (0, 0))):
        packet = ip(icmp.echo_reply_for(request(ident)))
        assert (bpf.run(mine, packet), bpf.run(theirs, packet)) == expected
