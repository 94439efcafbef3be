"""Filters that let a worker's raw sockets see only its own traffic: classic BPF programs passing
echo replies carrying its identifier and errors quoting its echo requests, TCP answers to its
SYNs' source ports and errors quoting those SYNs, and the ICMP6_FILTER type bitmap. Also the
encoding the kernel takes (struct sock_filter) and an exact interpreter of classic BPF, so
filters are tested on packets without sockets. Opcodes and semantics:
include/uapi/linux/filter.h, linux/bpf_common.h, Documentation/networking/filter.rst.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from loadgen.wire.family import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPV4,
    IPV6,
    IPV6_HEADER_LEN,
    WireFamily,
)

Instr = tuple[int, int, int, int]  # (code, jt, jf, k) as in struct sock_filter
_Asm = tuple[int, int | str, int | str, int]  # jt/jf may name a label

# Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = range(0x00, 0xB0, 0x10)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80
MAXINSNS = 4096  # BPF_MAXINSNS
MEMWORDS = 16  # BPF_MEMWORDS
ACCEPT = 0xFFFFFFFF  # keep the whole packet (the kernel trims to min(ret, length))
REJECT = 0

_SOCK_FILTER = struct.Struct("HBBI")  # native: the kernel reads it as a C struct
_WIDTH = {W: 4, H: 2, B: 1}
_U32 = 0xFFFFFFFF


def _by_type(family: WireFamily) -> list[_Asm | str]:
    """With the ICMP type in A: on to "reply" for an echo reply, "error" for the family's
    errors that quote a probe, else "reject"."""
    *errors, last = sorted(family.error_types)
    return [
        (JMP | JEQ | K, "reply", 0, family.echo_reply),
        *[(JMP | JEQ | K, "error", 0, t) for t in errors],
        (JMP | JEQ | K, "error", "reject", last),
    ]


_VERDICTS: list[_Asm | str] = ["accept", (RET | K, 0, 0, ACCEPT), "reject", (RET | K, 0, 0, REJECT)]


def echo_filter_v4(ident: int) -> list[Instr]:
    """Accept IPv4 ICMP echo replies with identifier `ident`, and destination unreachable /
    time exceeded quoting an IPv4 (IHL 5) ICMP echo request with that identifier. A raw IPv4
    socket's filter sees the packet from the IP header (RFC 791), so the ICMP header (RFC 792)
    starts at X = 4 * IHL. Our own outgoing requests (type 8, seen on loopback) are refused."""
    if not 0 <= ident <= 0xFFFF:
        raise ValueError(f"ICMP identifier {ident} is out of range: use 0..65535")
    # Offsets from the ICMP header: type 0, identifier 4; in errors the quoted IP header is at 8
    # (protocol at 8+9) and the quoted echo header at 8+20 (type), identifier at 8+20+4.
    program: list[_Asm | str] = [
        (LD | B | ABS, 0, 0, 0),  # version/IHL byte
        (ALU | AND | K, 0, 0, 0xF0),
        (JMP | JEQ | K, 0, "reject", 0x40),  # IPv4
        (LD | B | ABS, 0, 0, 9),
        (JMP | JEQ | K, 0, "reject", IPPROTO_ICMP),
        (LDX | B | MSH, 0, 0, 0),  # X = 4 * IHL: options may be present
        (LD | B | IND, 0, 0, 0),  # ICMP type
        *_by_type(IPV4),
        "reply",
        (LD | H | IND, 0, 0, 4),
        (JMP | JEQ | K, "accept", "reject", ident),
        "error",
        (LD | B | IND, 0, 0, 8),
        (JMP | JEQ | K, 0, "reject", 0x45),  # quoted IPv4 without options
        (LD | B | IND, 0, 0, 8 + 9),
        (JMP | JEQ | K, 0, "reject", IPPROTO_ICMP),
        (LD | B | IND, 0, 0, 8 + 20),
        (JMP | JEQ | K, 0, "reject", IPV4.echo_request),
        (LD | H | IND, 0, 0, 8 + 20 + 4),
        (JMP | JEQ | K, "accept", "reject", ident),
        *_VERDICTS,
    ]
    return _assemble(program)


def echo_filter_v6(ident: int) -> list[Instr]:
    """Accept ICMPv6 echo replies with identifier `ident`, and the errors of IPV6.error_types
    quoting an ICMPv6 echo request with that identifier right after a 40-byte IPv6 header (no
    extension headers: our probes carry none). An AF_INET6 raw socket's filter sees the ICMPv6
    message from its first byte, no IP header (net/ipv6/raw.c). ICMP6_FILTER already passes
    only these types; the types are checked here too so the program stands on its own."""
    if not 0 <= ident <= 0xFFFF:
        raise ValueError(f"ICMPv6 identifier {ident} is out of range: use 0..65535")
    # Offsets from the ICMPv6 header (RFC 4443 2.1): type 0, identifier 4; in errors the
    # quoted IPv6 header is at 8 (RFC 8200 3: version in the top nibble, next header at 8+6)
    # and the quoted echo header at 8+40 (type), identifier at 8+40+4.
    echo = 8 + IPV6_HEADER_LEN
    program: list[_Asm | str] = [
        (LD | B | ABS, 0, 0, 0),  # ICMPv6 type
        *_by_type(IPV6),
        "reply",
        (LD | H | ABS, 0, 0, 4),
        (JMP | JEQ | K, "accept", "reject", ident),
        "error",
        (LD | B | ABS, 0, 0, 8),
        (ALU | AND | K, 0, 0, 0xF0),
        (JMP | JEQ | K, 0, "reject", 0x60),  # quoted IPv6
        (LD | B | ABS, 0, 0, 8 + 6),
        (JMP | JEQ | K, 0, "reject", IPPROTO_ICMPV6),
        (LD | B | ABS, 0, 0, echo),
        (JMP | JEQ | K, 0, "reject", IPV6.echo_request),
        (LD | H | ABS, 0, 0, echo + 4),
        (JMP | JEQ | K, "accept", "reject", ident),
        *_VERDICTS,
    ]
    return _assemble(program)


def echo_filter(family: WireFamily, ident: int) -> list[Instr]:
    """The per-worker program for a raw socket of `family` (attach with SO_ATTACH_FILTER)."""
    return echo_filter_v4(ident) if family is IPV4 else echo_filter_v6(ident)


def tcp_filter(family: WireFamily, first_port: int, ports: int) -> list[Instr]:
    """Accept TCP segments with ACK set (a SYN-ACK or RST+ACK can answer a SYN; our own SYNs,
    seen on loopback, cannot) to a destination port in [first_port, first_port + ports): the
    replies to one worker's SYN probes. An IPv4 raw socket's filter sees the IP header first
    (a later fragment holds no ports and is refused); an IPv6 one the segment alone."""
    if ports <= 0 or first_port <= 0 or first_port + ports > 0x10000:
        raise ValueError(f"ports {first_port}+{ports} do not fit 1..65535")
    ack = 0x10  # RFC 9293 3.1: the ACK bit of the flags byte at offset 13
    head: list[_Asm | str] = [(LDX | W | IMM, 0, 0, 0)]  # X = 0: the segment starts the packet
    if family is IPV4:
        head = [
            (LD | B | ABS, 0, 0, 9),
            (JMP | JEQ | K, 0, "reject", 6),  # IPPROTO_TCP
            (LD | H | ABS, 0, 0, 6),
            (JMP | JSET | K, "reject", 0, 0x1FFF),  # fragment offset
            (LDX | B | MSH, 0, 0, 0),  # X = 4 * IHL
        ]
    program: list[_Asm | str] = [
        *head,
        (LD | H | IND, 0, 0, 2),  # destination port
        (JMP | JGE | K, 0, "reject", first_port),
        (JMP | JGE | K, "reject", 0, first_port + ports),
        (LD | B | IND, 0, 0, 13),
        (JMP | JSET | K, "accept", "reject", ack),
        *_VERDICTS,
    ]
    return _assemble(program)


def tcp_error_filter(family: WireFamily, first_port: int, ports: int) -> list[Instr]:
    """Accept the family's errors quoting a TCP segment from a source port in
    [first_port, first_port + ports) behind an option-less quoted IP header (our SYNs carry no
    options). IPv4: the filter sees the IP header first; IPv6: the ICMPv6 message alone."""
    if ports <= 0 or first_port <= 0 or first_port + ports > 0x10000:
        raise ValueError(f"ports {first_port}+{ports} do not fit 1..65535")
    *errors, last = sorted(family.error_types)
    by_type: list[_Asm | str] = [
        *[(JMP | JEQ | K, "error", 0, t) for t in errors],
        (JMP | JEQ | K, "error", "reject", last),
    ]
    if family is IPV4:
        head: list[_Asm | str] = [
            (LD | B | ABS, 0, 0, 9),
            (JMP | JEQ | K, 0, "reject", IPPROTO_ICMP),
            (LDX | B | MSH, 0, 0, 0),  # X = 4 * IHL
            (LD | B | IND, 0, 0, 0),  # ICMP type
            *by_type,
            "error",
            (LD | B | IND, 0, 0, 8),
            (JMP | JEQ | K, 0, "reject", 0x45),  # quoted IPv4, no options
            (LD | B | IND, 0, 0, 8 + 9),
            (JMP | JEQ | K, 0, "reject", 6),  # quoted TCP
            (LD | H | IND, 0, 0, 8 + 20),  # quoted source port
        ]
    else:
        head = [
            (LD | B | ABS, 0, 0, 0),  # ICMPv6 type
            *by_type,
            "error",
            (LD | B | ABS, 0, 0, 8),
            (ALU | AND | K, 0, 0, 0xF0),
            (JMP | JEQ | K, 0, "reject", 0x60),  # quoted IPv6
            (LD | B | ABS, 0, 0, 8 + 6),
            (JMP | JEQ | K, 0, "reject", 6),  # quoted TCP, no extension headers
            (LD | H | ABS, 0, 0, 8 + IPV6_HEADER_LEN),
        ]
    program: list[_Asm | str] = [
        *head,
        (JMP | JGE | K, 0, "reject", first_port),
        (JMP | JGE | K, "reject", "accept", first_port + ports),
        *_VERDICTS,
    ]
    return _assemble(program)


ICMP6_FILTER_WORDS = 8  # struct icmp6_filter { uint32_t icmp6_filt[8]; } (RFC 3542 3.2)


def icmp6_filter(passing: Iterable[int] = (IPV6.echo_reply, *IPV6.error_types)) -> bytes:
    """The ICMP6_FILTER option value (level IPPROTO_ICMPV6, RFC 3542 section 3.2) passing only
    the ICMPv6 types in `passing`: by default echo replies and the errors that can quote our
    probes. Bit (type & 31) of word (type >> 5), native byte order; on Linux (net/ipv6/raw.c,
    icmpv6_filter) and in glibc's ICMP6_FILTER_WILLPASS a set bit BLOCKS the type."""
    words = [0xFFFFFFFF] * ICMP6_FILTER_WORDS
    for icmp_type in passing:
        if not 0 <= icmp_type <= 255:
            raise ValueError(f"ICMPv6 type {icmp_type} is out of range: use 0..255")
        words[icmp_type >> 5] &= ~(1 << (icmp_type & 31)) & 0xFFFFFFFF
    return struct.pack(f"={ICMP6_FILTER_WORDS}I", *words)


def _assemble(program: Sequence[_Asm | str]) -> list[Instr]:
    """Resolve label names in jt/jf (a str item marks a label) to forward offsets."""
    labels: dict[str, int] = {}
    count = 0
    for item in program:
        if isinstance(item, str):
            labels[item] = count
        else:
            count += 1
    out: list[Instr] = []
    for item in program:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        here = len(out) + 1
        out.append(
            (
                code,
                labels[jt] - here if isinstance(jt, str) else jt,
                labels[jf] - here if isinstance(jf, str) else jf,
                int(k),
            )
        )
    return out


def validate(prog: Sequence[Instr]) -> None:
    """Refuse what the kernel's classic checker refuses (bpf_check_classic): empty or too long
    programs, unknown opcodes, jumps out of the program, scratch memory out of range, division
    by a constant zero, constant shifts of 32 or more, a last instruction that is not a return;
    and what this interpreter does not model (ancillary loads)."""
    if not 0 < len(prog) <= MAXINSNS:
        raise ValueError(f"a BPF program needs 1..{MAXINSNS} instructions, not {len(prog)}")
    for pc, (code, jt, jf, k) in enumerate(prog):
        if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= _U32):
            raise ValueError(f"instruction {pc} has a field out of range: {code, jt, jf, k}")
        if code not in _KNOWN:
            raise ValueError(f"instruction {pc}: opcode {code:#06x} is not supported")
        cls = code & 0x07
        if cls == JMP:
            reach = k if code & 0xF0 == JA else max(jt, jf)
            if pc + 1 + reach >= len(prog):
                raise ValueError(f"instruction {pc} jumps out of the program")
        if ((code & 0xE0 == MEM and cls in (LD, LDX)) or cls in (ST, STX)) and k >= MEMWORDS:
            raise ValueError(f"instruction {pc} uses scratch word {k}: only 0..{MEMWORDS - 1}")
        if code in (ALU | DIV | K, ALU | MOD | K) and k == 0:
            raise ValueError(f"instruction {pc} divides by the constant 0")
        if code in (ALU | LSH | K, ALU | RSH | K) and k >= 32:
            raise ValueError(f"instruction {pc} shifts by {k}: at most 31")
        if code & 0xE0 in (ABS, IND) and cls == LD and k >= 0x80000000:
            # Negative offsets select the kernel's ancillary data (SKF_AD_OFF, SKF_NET_OFF).
            raise ValueError(f"instruction {pc}: ancillary loads are not supported here")
    if prog[-1][0] & 0x07 != RET:
        raise ValueError("a BPF program must end with a return instruction")


def pack(prog: Sequence[Instr]) -> bytes:
    """The program as an array of struct sock_filter, for SO_ATTACH_FILTER's sock_fprog."""
    validate(prog)
    return b"".join(_SOCK_FILTER.pack(*instr) for instr in prog)


def _load(packet: bytes, offset: int, width: int) -> int | None:
    """A big-endian load as the kernel does it; None when it reads past the packet (the
    program then returns 0)."""
    if offset + width > len(packet):
        return None
    return int.from_bytes(packet[offset : offset + width], "big")


def run(prog: Sequence[Instr], packet: bytes) -> int:
    """Run a classic BPF program over `packet` and return its verdict (bytes to keep; 0 drops).
    Jumps only go forward, so every run ends."""
    validate(prog)
    a = x = 0
    mem = [0] * MEMWORDS
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls, op = code & 0x07, code & 0xF0
        if cls in (LD, LDX) and code & 0xE0 in (ABS, IND, MSH):
            offset = k + x if code & 0xE0 == IND else k
            value = _load(packet, offset & _U32, 1 if code & 0xE0 == MSH else _WIDTH[code & 0x18])
            if value is None:
                return REJECT
            if cls == LDX:
                x = (value & 0x0F) * 4
            else:
                a = value
        elif cls in (LD, LDX):
            mode = code & 0xE0
            value = k if mode == IMM else len(packet) if mode == LEN else mem[k]
            if cls == LD:
                a = value
            else:
                x = value
        elif cls in (ST, STX):
            mem[k] = a if cls == ST else x
        elif cls == ALU:
            src = x if code & X else k
            if op in (DIV, MOD) and src == 0:
                return REJECT  # the kernel ends the program with 0 on division by X = 0
            a = _alu(op, a, src) & _U32
        elif cls == JMP:
            src = x if code & X else k
            if op == JA:
                pc += k
            else:
                taken = {JEQ: a == src, JGT: a > src, JGE: a >= src, JSET: bool(a & src)}[op]
                pc += jt if taken else jf
        elif cls == RET:
            return a if code & 0x18 == RET_A else k
        elif code & 0xF8 == TXA:  # MISC
            a = x
        else:
            x = a


def _alu(op: int, a: int, src: int) -> int:
    if op == NEG:
        return -a
    if op in (LSH, RSH):
        src &= 31  # the shift count is taken modulo 32
    return {
        ADD: a + src, SUB: a - src, MUL: a * src, DIV: a // src if src else 0,
        MOD: a % src if src else 0, OR: a | src, AND: a & src, XOR: a ^ src,
        LSH: a << src, RSH: a >> src,
    }[op]  # fmt: skip


_KNOWN = frozenset(
    [LD | size | mode for size in (W, H, B) for mode in (ABS, IND)]
    + [LD | W | IMM, LD | W | MEM, LD | W | LEN, LDX | W | IMM, LDX | W | MEM, LDX | W | LEN]
    + [LDX | B | MSH, ST, STX, RET | K, RET | RET_A, MISC | TAX, MISC | TXA, ALU | NEG]
    + [ALU | op | src for op in (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR) for src in (K, X)]
    + [JMP | JA]
    + [JMP | op | src for op in (JEQ, JGT, JGE, JSET) for src in (K, X)]
)
