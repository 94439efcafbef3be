"""Echo requests in, replies and ICMP errors out, a whole batch at a time with numpy.

Owns the reflector's view of the wire: IPv4 (RFC 791) datagrams as a raw ICMP socket hands
them over, echo and echo reply (RFC 792), destination unreachable and time exceeded quoting the
request the way Linux does (as much as fits in 576 bytes: RFC 1812 4.3.2), and the Internet
checksum (RFC 1071), computed for every row of a batch at once. ICMPv6 (RFC 4443) too: a raw
ICMPv6 socket hands over the message alone (the kernel has checked its checksum, and fills in
the checksum of what we send), and an error quotes an IPv6 header that is rebuilt for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from loadgen.lab.impair import FLIP_FROM
from loadgen.wire.family import IPPROTO_ICMPV6, IPV6, Icmp6Type, IcmpType
from loadgen.wire.icmp import MAGIC, build_icmp_error, build_ipv6_packet

U8Array = npt.NDArray[np.uint8]
IntArray = npt.NDArray[np.int64]

IP_MIN_HEADER = 20
ICMP_HEADER = 8
ERROR_MAX_TOTAL = 576  # Linux icmp_send(): an error datagram is at most 576 bytes
ERROR_QUOTE_MAX = ERROR_MAX_TOTAL - IP_MIN_HEADER - ICMP_HEADER
_MAGIC = np.frombuffer(MAGIC.to_bytes(4, "big"), dtype=np.uint8)  # opens a probe's payload


UNREACHABLE_HOST = 1  # code of destination unreachable: host unreachable
UNREACHABLE_ADDRESS6 = 3  # ICMPv6 destination unreachable: address unreachable (RFC 4443 3.1)
HOP_LIMIT = 64  # the hop limit an error's rebuilt IPv6 header quotes (the Linux default)


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of `data` (odd lengths padded with a zero byte)."""
    if len(data) % 2:
        data += b"\0"
    total = int(np.frombuffer(data, dtype=">u2").sum(dtype=np.uint64))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ones_sums(
    buf: U8Array, rows: IntArray, start: IntArray, end: IntArray
) -> npt.NDArray[np.uint64]:
    """Folded 16-bit one's-complement sum of buf[rows[i], start[i]:end[i]] for every i.

    `start` must be even (ICMP starts at IHL*4). Bytes outside the range count as zero, so an
    odd end gets the RFC 1071 zero pad for free.
    """
    width = int(end.max(initial=0))
    width += width % 2
    cols = np.arange(width)
    inside = (cols >= start[:, None]) & (cols < end[:, None])
    data = np.where(inside, buf[:, :width][rows], 0).astype(np.uint64)
    total = ((data[:, 0::2] << 8) | data[:, 1::2]).sum(axis=1, dtype=np.uint64)
    for _ in range(3):  # 64-bit sum of <= 32k words folds to 16 bits in three steps
        total = (total & 0xFFFF) + (total >> 16)
    folded: npt.NDArray[np.uint64] = total
    return folded


@dataclass(frozen=True, slots=True)
class Batch:
    """The valid echo requests of a received batch: `rows` indexes the receive buffer."""

    rows: IntArray
    icmp_off: IntArray  # where ICMP starts in the row (IHL * 4)
    end: IntArray  # the IP total length: where the datagram ends in the row
    malformed: int  # datagrams received that are not well-formed echo requests
    foreign: int = 0  # well-formed echo requests that are not our probes (no magic)


def parse_batch(buf: U8Array, lengths: IntArray, truncated: npt.NDArray[np.bool_]) -> Batch:
    """Find our probes among n received datagrams: well-formed echo requests (with a good
    checksum) whose payload opens with our magic. Other echo requests are `foreign`."""
    n = len(lengths)
    rows = buf[:n]
    ihl = (rows[:, 0] & 0x0F).astype(np.int64)
    off = ihl * 4
    end = (rows[:, 2].astype(np.int64) << 8) | rows[:, 3]
    ok = ~truncated & (lengths >= IP_MIN_HEADER) & (rows[:, 0] >> 4 == 4) & (ihl >= 5)
    ok &= (end <= lengths) & (end >= off + ICMP_HEADER)
    idx = np.flatnonzero(ok)
    kind = rows[idx, off[idx]]
    code = rows[idx, off[idx] + 1]
    idx = idx[(kind == IcmpType.ECHO_REQUEST) & (code == 0)]
    good = ones_sums(buf, idx, off[idx], end[idx]) == 0xFFFF
    idx = idx[good]
    magic_at = off[idx] + ICMP_HEADER
    room = end[idx] >= magic_at + len(_MAGIC)
    cols = np.minimum(magic_at[:, None] + np.arange(len(_MAGIC)), buf.shape[1] - 1)
    ours = room & (buf[idx[:, None], cols] == _MAGIC).all(axis=1)
    probes = idx[ours]
    foreign = len(idx) - len(probes)
    return Batch(
        rows=probes,
        icmp_off=off[probes],
        end=end[probes],
        malformed=n - len(idx),
        foreign=foreign,
    )


def parse_batch6(buf: U8Array, lengths: IntArray, truncated: npt.NDArray[np.bool_]) -> Batch:
    """`parse_batch` for n ICMPv6 messages from a raw ICMPv6 socket (no IP header; checksums
    already checked by the kernel, which drops a bad one before we see it)."""
    n = len(lengths)
    rows = buf[:n]
    ok = ~truncated & (lengths >= ICMP_HEADER)
    ok &= (rows[:, 0] == Icmp6Type.ECHO_REQUEST) & (rows[:, 1] == 0)
    idx = np.flatnonzero(ok)
    room = lengths[idx] >= ICMP_HEADER + len(_MAGIC)
    ours = room & (buf[idx, ICMP_HEADER : ICMP_HEADER + len(_MAGIC)] == _MAGIC).all(axis=1)
    probes = idx[ours]
    return Batch(
        rows=probes,
        icmp_off=np.zeros(len(probes), dtype=np.int64),
        end=lengths[probes],
        malformed=n - len(idx),
        foreign=len(idx) - len(probes),
    )


def make_replies(
    buf: U8Array,
    batch: Batch,
    sel: npt.NDArray[np.bool_],
    flip: npt.NDArray[np.bool_],
    flip_unit: npt.NDArray[np.float64],
    corrupt: npt.NDArray[np.bool_],
    version: int = 4,
) -> tuple[IntArray, int]:
    """Turn the selected requests into echo replies in place in `buf`.

    Where `flip`, one bit of the fill after our probe header is inverted before the checksum
    is computed (so the checksum is valid); where `corrupt`, the checksum is broken after.
    IPv6 (`version` 6): the kernel writes the checksum on send, so it is left alone here and
    `corrupt` cannot apply. Returns the rows turned into replies and how many bit flips were
    skipped because the payload had no fill to flip.
    """
    rows, off, end = batch.rows[sel], batch.icmp_off[sel], batch.end[sel]
    flip, flip_unit, corrupt = flip[sel], flip_unit[sel], corrupt[sel]
    buf[rows, off] = IcmpType.ECHO_REPLY if version == 4 else Icmp6Type.ECHO_REPLY
    fill_len = end - off - FLIP_FROM
    can_flip = flip & (fill_len > 0)
    skipped = int(np.count_nonzero(flip & ~can_flip))
    if can_flip.any():
        f_rows = rows[can_flip]
        bit = (flip_unit[can_flip] * fill_len[can_flip] * 8).astype(np.int64)
        byte_at = off[can_flip] + FLIP_FROM + bit // 8
        buf[f_rows, byte_at] ^= (1 << (bit % 8)).astype(np.uint8)
    if version == 6:
        return rows, skipped
    buf[rows, off + 2] = 0
    buf[rows, off + 3] = 0
    csum = ~ones_sums(buf, rows, off, end) & 0xFFFF
    # XOR with 1 moves the one's-complement sum by exactly one: never valid again.
    csum ^= corrupt.astype(np.uint64)
    buf[rows, off + 2] = (csum >> 8).astype(np.uint8)
    buf[rows, off + 3] = (csum & 0xFF).astype(np.uint8)
    return rows, skipped


def icmp_error(icmp_type: IcmpType, code: int, datagram: bytes) -> bytes:
    """An ICMP error message quoting `datagram` (IP header first) as Linux would."""
    body = bytes((icmp_type, code, 0, 0, 0, 0, 0, 0)) + datagram[:ERROR_QUOTE_MAX]
    csum = checksum(body)
    return body[:2] + csum.to_bytes(2, "big") + body[4:]


def error_for(version: int, unreachable: bool, request: bytes, src: bytes, local: bytes) -> bytes:
    """The ICMP error (destination unreachable or time exceeded) answering `request`. IPv4:
    `request` is the datagram as received, header first. IPv6: it is the ICMPv6 message, and
    the IPv6 header it came with (from `src` to `local`) is rebuilt for the quote; the kernel
    fills the checksum in."""
    if version == 4:
        if unreachable:
            return icmp_error(IcmpType.DEST_UNREACH, UNREACHABLE_HOST, request)
        return icmp_error(IcmpType.TIME_EXCEEDED, 0, request)
    quoted = build_ipv6_packet(src, local, IPPROTO_ICMPV6, request, hop_limit=HOP_LIMIT)
    if unreachable:
        return build_icmp_error(Icmp6Type.DEST_UNREACH, UNREACHABLE_ADDRESS6, quoted, family=IPV6)
    return build_icmp_error(Icmp6Type.TIME_EXCEEDED, 0, quoted, family=IPV6)
