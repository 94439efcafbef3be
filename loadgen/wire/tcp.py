"""TCP SYN probes on the wire: the header (RFC 9293 section 3.1), the probe identity carried in
the initial sequence number, source ports from a worker's own block, the checksum over the
pseudo-header of either family, the vectorised SYN builder and reply decoder, and the decoder
of ICMP errors quoting a SYN (read from a second socket, filtered by `bpf.tcp_error_filter`:
an error quotes at least 8 bytes of the SYN, RFC 792 and RFC 4443 2.4, ports and ISN).

Identity: probe k of a worker (k = seq * n_targets + local, the tracker's numbering) is sent with
ISN = P_key(k mod 2**32), P a keyed permutation of 32-bit words (a Feistel network keyed by the
run id and the worker's ident), and from source port base + (k mod PORT_BLOCK). A SYN-ACK or a
RST(+ACK) acknowledges ISN + 1 (RFC 9293 3.4 and 3.5.2), so P_key^-1(ack - 1) gives back k mod
2**32 and the tracker widens it to k from the probes it sent (sequence-number wraparound). A
reply's ports must match the probe's too. Matching never depends on arrival order. Pure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.batch import DecodedBatch
from loadgen.wire.family import IPV6_HEADER_LEN, WireFamily
from loadgen.wire.icmp import UNKNOWN_TARGET, DecodeStatus

IPPROTO_TCP = 6
# TCP header, RFC 9293 section 3.1 (https://www.rfc-editor.org/rfc/rfc9293#section-3.1):
#    0                   1                   2                   3
#    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
#   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#   |          Source Port          |       Destination Port        |
#   |                        Sequence Number                        |
#   |                    Acknowledgment Number                      |
#   |  Data |       |C|E|U|A|P|R|S|F|                               |
#   | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
#   |           Checksum            |         Urgent Pointer        |
#   |                    Options                    |    Padding    |
# Our SYN carries one option, MSS (kind 2, length 4; section 3.7.1), as a connect() SYN does.
TCP_HEADER = struct.Struct("!HHIIBBHHH")
TCP_HEADER_LEN = TCP_HEADER.size  # 20, without options
SYN_LEN = TCP_HEADER_LEN + 4  # with the MSS option: data offset 6
SYN_MSS = 1460
SYN_WINDOW = 64240  # what Linux offers in a SYN: 44 segments of 1460
_SPORT, _DPORT, _SEQ, _ACK, _FLAGS, _CSUM = 0, 2, 4, 8, 13, 16

# Source ports. Linux hands out ephemeral ports from net.ipv4.ip_local_port_range, 32768-60999
# by default; a worker's block lies outside it, so no connection of this host shares a source
# port with our SYNs: 8 blocks from 61000 (up to 65095), then 32 from 16384 (below 32768).
PORT_BLOCK = 512  # a power of two: k mod PORT_BLOCK is known from k mod 2**32
PORT_BLOCKS = tuple(range(61000, 65535 - PORT_BLOCK + 2, PORT_BLOCK)) + tuple(
    range(16384, 32768, PORT_BLOCK)
)


class TcpFlag(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


def port_base(ident: int) -> int:
    """The first source port of the worker with this ident: consecutive idents (the workers of
    one run) get distinct blocks, up to len(PORT_BLOCKS) workers."""
    return PORT_BLOCKS[ident % len(PORT_BLOCKS)]


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective scramble of 64-bit words."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


_ROUNDS = 4
_MUL = np.uint64(0x45D9F3B)


class IsnCipher:
    """A keyed permutation of 32-bit words: a 4-round Feistel network on 16-bit halves, the
    round keys derived from (run_id, ident). Not cryptographic; it spreads nearby probe numbers
    over the whole sequence space, as RFC 9293 3.4.1 asks of an ISN, and inverts exactly."""

    def __init__(self, run_id: int, ident: int) -> None:
        seed = _mix64((run_id << 16 | ident) + 0x9E3779B97F4A7C15)
        self.keys = [np.uint64((_mix64(seed + i) >> 16) & 0xFFFF) for i in range(_ROUNDS)]

    @staticmethod
    def _f(half: NDArray[np.uint64], key: np.uint64) -> NDArray[np.uint64]:
        x = (half ^ key) * _MUL & np.uint64(0xFFFFFFFF)
        x ^= x >> np.uint64(16)
        x = x * _MUL & np.uint64(0xFFFFFFFF)
        out: NDArray[np.uint64] = (x ^ (x >> np.uint64(16))) & np.uint64(0xFFFF)
        return out

    def encrypt(self, words: NDArray[Any]) -> NDArray[np.uint64]:
        w = np.asarray(words, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
        left, right = w >> np.uint64(16), w & np.uint64(0xFFFF)
        for key in self.keys:
            left, right = right, left ^ self._f(right, key)
        out: NDArray[np.uint64] = (left << np.uint64(16)) | right
        return out

    def decrypt(self, words: NDArray[Any]) -> NDArray[np.uint64]:
        w = np.asarray(words, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
        left, right = w >> np.uint64(16), w & np.uint64(0xFFFF)
        for key in reversed(self.keys):
            left, right = right ^ self._f(left, key), left
        out: NDArray[np.uint64] = (left << np.uint64(16)) | right
        return out


def widen(low: NDArray[Any], newest: NDArray[Any] | int, bits: int) -> NDArray[np.int64]:
    """The full counter value whose low `bits` bits are `low`: the newest one not after `newest`
    (serial-number arithmetic, RFC 1982 spirit). Negative where no such value exists yet."""
    mask = (1 << bits) - 1
    top = np.asarray(newest, dtype=np.int64)
    out: NDArray[np.int64] = top - ((top - np.asarray(low, dtype=np.int64)) & mask)
    return out


def pseudo_sums(sources: list[bytes], dests: list[bytes], family: WireFamily) -> NDArray[np.uint64]:
    """Per target, the 16-bit word sum of the pseudo-header a SYN's checksum covers: RFC 9293
    3.1 (IPv4: source, destination, zero, protocol, TCP length) or RFC 8200 8.1 (IPv6: source,
    destination, upper-layer length as 32 bits, zeros, next header)."""
    rows = []
    for src, dst in zip(sources, dests, strict=True):
        if family.version == 4:
            tail = struct.pack("!BBH", 0, IPPROTO_TCP, SYN_LEN)
        else:
            tail = struct.pack("!I3xB", SYN_LEN, IPPROTO_TCP)
        rows.append(np.frombuffer(src + dst + tail, ">u2").sum(dtype=np.uint64))
    return np.array(rows, dtype=np.uint64)


def checksum_of(words_sum: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The Internet checksum (RFC 1071) from sums of big-endian 16-bit words: fold, complement."""
    total = (words_sum & np.uint64(0xFFFF)) + (words_sum >> np.uint64(16))
    total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    out: NDArray[np.uint64] = ~total & np.uint64(0xFFFF)
    return out


@dataclass(frozen=True, slots=True)
class SynPlan:
    """What a worker's SYNs are made of: per local target its destination port and its
    pseudo-header sum; the worker's port base, and its ISN cipher."""

    dports: NDArray[np.uint16]
    pseudo: NDArray[np.uint64]
    base: int
    cipher: IsnCipher


class SynBuilder:
    """Rows of SYN segments (TCP header and MSS option; the kernel writes the IP header) for
    probes k = seq * n + local, into one reused buffer."""

    def __init__(self, plan: SynPlan) -> None:
        self.plan, self.n = plan, len(plan.dports)
        template = TCP_HEADER.pack(0, 0, 0, 0, (SYN_LEN // 4) << 4, TcpFlag.SYN, SYN_WINDOW, 0, 0)
        self._template = np.frombuffer(template + struct.pack("!BBH", 2, 4, SYN_MSS), np.uint8)
        self._rows = np.zeros((0, SYN_LEN), np.uint8)

    def build(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int = 0
    ) -> NDArray[np.uint8]:
        """Row i the SYN of probe (local[i], seqs[i]); tx_ns is not carried (a SYN has no
        payload: the tracker keeps send times). Valid until the next build."""
        n = len(local)
        if n > len(self._rows):
            self._rows = np.zeros((max(n, 2 * len(self._rows)), SYN_LEN), np.uint8)
        rows = self._rows[:n]
        rows[:] = self._template
        k = np.asarray(seqs, np.uint64) * np.uint64(self.n) + np.asarray(local, np.uint64)
        words = rows.view(">u2")
        words[:, _SPORT // 2] = np.uint64(self.plan.base) + (k & np.uint64(PORT_BLOCK - 1))
        words[:, _DPORT // 2] = self.plan.dports[local]
        rows[:, _SEQ : _SEQ + 4].view(">u4")[:, 0] = self.plan.cipher.encrypt(k)
        total = words.sum(axis=1, dtype=np.uint64) + self.plan.pseudo[local]
        words[:, _CSUM // 2] = checksum_of(total)
        return rows


def syn_segment(plan: SynPlan, local: int, seq: int) -> bytes:
    """One SYN, built field by field: the specification the builder must match."""
    k = seq * len(plan.dports) + local
    isn = int(plan.cipher.encrypt(np.array([k]))[0])
    sport = plan.base + k % PORT_BLOCK
    offset, flags = (SYN_LEN // 4) << 4, TcpFlag.SYN
    head = TCP_HEADER.pack(sport, int(plan.dports[local]), isn, 0, offset, flags, SYN_WINDOW, 0, 0)
    segment = head + struct.pack("!BBH", 2, 4, SYN_MSS)
    total = np.frombuffer(segment, ">u2").sum(dtype=np.uint64) + plan.pseudo[local]
    csum = int(checksum_of(np.array([total], np.uint64))[0])
    return segment[:_CSUM] + struct.pack("!H", csum) + segment[_CSUM + 2 :]


def ip_offsets(rows: NDArray[np.uint8], family: WireFamily) -> NDArray[np.int64]:
    """Where the TCP header starts in each received row: after the IPv4 header (its IHL), or
    at 0 (an AF_INET6 raw socket delivers the segment alone)."""
    if not family.rx_ip_header:
        return np.zeros(len(rows), np.int64)
    out: NDArray[np.int64] = (rows[:, 0] & 0x0F).astype(np.int64) * 4
    return out


def keyed_batch(
    status: NDArray[np.uint8],
    k32: NDArray[np.uint64],
    *,
    src: NDArray[Any],
    quoted_dst: NDArray[Any] | None = None,
    icmp: NDArray[np.uint8] | None = None,
    refused: NDArray[np.bool_] | None = None,
) -> DecodedBatch:
    """The tracker's columns for packets that name their probe by number (`probe_k32`):
    target and seq are the tracker's to find; `icmp` holds type and code columns of errors."""
    n = len(status)
    types = np.zeros((n, 2), np.uint8) if icmp is None else icmp
    return DecodedBatch(
        n=n,
        status=status,
        target=np.full(n, UNKNOWN_TARGET, np.uint32),
        seq=np.zeros(n, np.uint64),
        tx_ns=np.zeros(n, np.int64),
        src=src,
        quoted_dst=np.zeros(n, src.dtype) if quoted_dst is None else quoted_dst,
        icmp_type=types[:, 0].copy(),
        icmp_code=types[:, 1].copy(),
        seq16_only=np.zeros(n, bool),
        probe_k32=k32,
        refused=refused,
    )


class SegmentDecoder:
    """Decodes batches of TCP segments as a worker's raw socket delivers them (IPv4 header
    first, or the segment alone for IPv6) into the tracker's columns: a SYN-ACK or a RST+ACK
    acknowledging one of our ISNs from the port our SYN went to is a REPLY (a RST also
    `refused`), with `probe_k32` its probe number mod 2**32; anything else is FOREIGN, and
    what is too short to hold a TCP header MALFORMED. The TCP checksum is not verified: on
    loopback the kernel leaves it partial (CHECKSUM_PARTIAL), and the identity checks (a
    32-bit keyed ack and both ports) already reject what is not an answer to our probes."""

    def __init__(self, plan: SynPlan, family: WireFamily) -> None:
        self.plan, self.family = plan, family
        self._target_ports = np.unique(plan.dports)
        self._cols = np.arange(TCP_HEADER_LEN, dtype=np.int64)

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        if buf.ndim != 2 or buf.dtype != np.uint8 or not 0 <= n <= min(len(buf), len(lengths)):
            raise ValueError(f"decode needs a 2-d uint8 buffer with at least n={n} rows/lengths")
        rows, fam = buf[:n], self.family
        lens = np.minimum(np.asarray(lengths[:n], np.int64), buf.shape[1])
        start = ip_offsets(rows, fam)
        whole = lens >= start + TCP_HEADER_LEN
        src = np.zeros(n, fam.address_dtype)
        if fam.rx_ip_header:
            # Only a first fragment holds the ports (fragment offset 0); options move the header.
            frag = rows[:, 6:8].view(">u2")[:, 0] & 0x1FFF
            whole &= (rows[:, 0] >> 4 == 4) & (rows[:, 9] == IPPROTO_TCP) & (frag == 0)
            src[:] = rows[:, 12:16].view(">u4")[:, 0]
        at = np.minimum(start[:, None] + self._cols, buf.shape[1] - 1)
        head = np.take_along_axis(rows, at, axis=1)
        sport = head[:, _SPORT : _SPORT + 2].view(">u2")[:, 0]
        dport = head[:, _DPORT : _DPORT + 2].view(">u2")[:, 0].astype(np.uint64)
        ack = head[:, _ACK : _ACK + 4].view(">u4")[:, 0].astype(np.uint64)
        flags = head[:, _FLAGS]
        k32 = self.plan.cipher.decrypt(ack - np.uint64(1))
        synack = (flags & (TcpFlag.SYN | TcpFlag.ACK | TcpFlag.RST)) == TcpFlag.SYN | TcpFlag.ACK
        # A RST answering a SYN carries ACK and acknowledges it (RFC 9293 3.10.7.1)  # not a target
        rst = (flags & (TcpFlag.RST | TcpFlag.ACK)) == TcpFlag.RST | TcpFlag.ACK
        ours = dport == np.uint64(self.plan.base) + (k32 & np.uint64(PORT_BLOCK - 1))
        ours &= np.isin(sport, self._target_ports) & whole & (synack | rst)
        status = np.where(ours, DecodeStatus.REPLY, DecodeStatus.FOREIGN).astype(np.uint8)
        status[~whole] = DecodeStatus.MALFORMED
        return keyed_batch(status, k32, src=src, refused=rst & ours)


_QUOTED_TCP = 8  # bytes of the SYN an error must quote: ports and sequence number


class ErrorDecoder:
    """Decodes batches from a SYN worker's ICMP socket: an error quoting one of our SYNs (its
    ISN names a probe whose source port is the quoted one) is ICMP_ERROR with `probe_k32`,
    its type, code and quoted destination; anything else FOREIGN, or MALFORMED if too short."""

    def __init__(self, plan: SynPlan, family: WireFamily) -> None:
        self.plan, self.family = plan, family
        self._width = family.address_len

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        if buf.ndim != 2 or buf.dtype != np.uint8 or not 0 <= n <= min(len(buf), len(lengths)):
            raise ValueError(f"decode needs a 2-d uint8 buffer with at least n={n} rows/lengths")
        rows, fam, width = buf[:n], self.family, buf.shape[1]
        lens = np.minimum(np.asarray(lengths[:n], np.int64), width)
        if fam.rx_ip_header:
            icmp_at = (rows[:, 0] & 0x0F).astype(np.int64) * 4
            inner_len = np.full(n, 20, np.int64)
            dst_at, proto_at = 16, 9
        else:
            icmp_at = np.zeros(n, np.int64)
            inner_len = np.full(n, IPV6_HEADER_LEN, np.int64)
            dst_at, proto_at = 24, 6
        tcp_at = icmp_at + 8 + inner_len
        whole = lens >= tcp_at + _QUOTED_TCP

        def take(at: NDArray[np.int64], size: int) -> NDArray[np.uint8]:
            cols = np.minimum(at[:, None] + np.arange(size), width - 1)
            return np.take_along_axis(rows, cols, axis=1)

        icmp = take(icmp_at, 2)
        inner = take(icmp_at + 8, 40)
        seg = take(tcp_at, _QUOTED_TCP)
        sport = seg[:, 0:2].view(">u2")[:, 0].astype(np.uint64)
        k32 = self.plan.cipher.decrypt(seg[:, 4:8].view(">u4")[:, 0])
        ours = whole & np.isin(icmp[:, 0], sorted(fam.error_types))
        ours &= inner[:, proto_at] == IPPROTO_TCP
        # The quoted header is option-less IPv4 or plain IPv6 (no extension headers), as ours are.
        ours &= (inner[:, 0] == 0x45) if fam.rx_ip_header else (inner[:, 0] >> 4 == 6)
        ours &= sport == np.uint64(self.plan.base) + (k32 & np.uint64(PORT_BLOCK - 1))
        status = np.where(ours, DecodeStatus.ICMP_ERROR, DecodeStatus.FOREIGN).astype(np.uint8)
        status[~whole] = DecodeStatus.MALFORMED
        dst = np.ascontiguousarray(inner[:, dst_at : dst_at + self._width])
        if self._width == 4:
            quoted: NDArray[np.generic] = dst.view(">u4")[:, 0].astype(np.uint32)
        else:
            quoted = dst.view("V16")[:, 0]
        return keyed_batch(
            status, k32, src=np.zeros(n, fam.address_dtype), quoted_dst=quoted, icmp=icmp
        )
