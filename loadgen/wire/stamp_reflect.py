"""The session-reflector's replies to a whole batch at once, vectorised (the reflector's hot
path): which received test packets are plain (`plain_rows`: the base packet, zero padding, one
Extra Padding TLV, or loadgen's Class of Service TLV then nothing or Extra Padding) and their
replies written into an output array (`write_replies`), byte for byte what `stamp.reflect` makes
of each (tests hold the two equal). Anything else is `stamp.reflect`'s, one at a time.
"""

from __future__ import annotations

import functools
import struct

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.stamp import (
    AUTH_MBZ,
    AUTH_MIN_LEN,
    BASE_LEN,
    COS_HEAD,
    COS_TLV_LEN,
    NS_PER_S,
    NTP_UNIX_OFFSET_S,
    TAI_MINUS_UTC_S,
    ReflectorClock,
    TimestampFormat,
    encode_timestamp,
    padding_from,
    returned_as_is,
)
from loadgen.wire.stamp_tlv import NO_TOS, TLV_HEADER_LEN, TlvType

_COS_AT = BASE_LEN + TLV_HEADER_LEN  # the CoS value: DSCP1 | DSCP2 | ECN | RP | Reserved
_PAD_AT = BASE_LEN + COS_TLV_LEN  # where an Extra Padding TLV after the CoS TLV starts
_T3_ERROR = struct.Struct("!QH")  # the reply's Timestamp (T3) and Error Estimate, 4..14


@functools.lru_cache(maxsize=8)
def _sender_dtype(slot_bytes: int) -> np.dtype[np.void]:
    """A row of a (rows, slot_bytes) uint8 array seen as RFC 8762 4.2.1's sender packet."""
    return np.dtype(
        {
            "names": ["seq", "ts", "err", "ssid"],
            "formats": [">u4", ">u8", ">u2", ">u2"],
            "offsets": [0, 4, 12, 14],
            "itemsize": slot_bytes,
        }
    )


def sender_view(data: NDArray[np.uint8]) -> NDArray[np.void]:
    """The (rows, slot) received datagrams as sender-packet records (a view, no copy)."""
    return data.view(_sender_dtype(data.shape[1]))[:, 0]


def encode_timestamps(realtime_ns: NDArray[np.int64], fmt: TimestampFormat) -> NDArray[np.uint64]:
    """`stamp.encode_timestamp` of a column of times after 1970 (the same rounding, the same
    wrap), in place on a copy: few numpy calls, each costs more than its arithmetic."""
    seconds, ns = np.divmod(realtime_ns.astype(np.uint64), np.uint64(NS_PER_S))
    if fmt is TimestampFormat.PTP:
        seconds += np.uint64(TAI_MINUS_UTC_S)
        seconds &= np.uint64(0xFFFF_FFFF)
    else:  # NTP: seconds since 1900, fraction in 2**-32 s rounded to nearest
        seconds += np.uint64(NTP_UNIX_OFFSET_S)
        ns <<= np.uint64(32)
        ns += np.uint64(NS_PER_S // 2)
        ns //= np.uint64(NS_PER_S)
    seconds <<= np.uint64(32)
    seconds += ns
    return seconds


def plain_rows(data: NDArray[np.uint8], lengths: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which of the (rows, slot) datagrams of `lengths` bytes (none cut short) this module
    answers: unauthenticated, and a tail `stamp.reflect` returns as is or answers as CoS."""
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.bool_)
    shortest, widest = int(lengths.min()), int(lengths.max())
    if shortest == widest == BASE_LEN:  # the bare base packet: the blaster's, and RFC 8762's
        return np.ones(n, np.bool_)
    if shortest == widest > BASE_LEN and _alike(data, shortest):  # one sender's packets, all alike
        return np.ones(n, np.bool_)
    ok = lengths >= BASE_LEN
    auth = (lengths >= AUTH_MIN_LEN) & ~data[:, AUTH_MBZ].any(axis=1)
    ok &= ~auth
    tail_len = lengths - BASE_LEN
    if widest <= BASE_LEN:
        return ok
    tail = data[:, BASE_LEN:widest]
    # Tail all zeros (RFC 8762 padding) or one Extra Padding TLV filling it, flags clear.
    inside = np.arange(widest - BASE_LEN) < tail_len[:, None]
    zeros = ~(tail.astype(np.bool_) & inside).any(axis=1)
    ok_tail = (tail_len == 0) | zeros | _padding_tlv(data, BASE_LEN, lengths)
    # loadgen's own: a CoS TLV with flags clear, then nothing or one Extra Padding TLV.
    if widest >= _PAD_AT:
        head = np.frombuffer(COS_HEAD, np.uint8)
        cos = (data[:, BASE_LEN:_COS_AT] == head).all(axis=1) & (tail_len >= COS_TLV_LEN)
        cos &= (lengths == _PAD_AT) | _padding_tlv(data, _PAD_AT, lengths)
        ok_tail |= cos
    plain: NDArray[np.bool_] = ok & ok_tail
    return plain


def _alike(data: NDArray[np.uint8], length: int) -> bool:
    """Rows all `length` long are all plain if the first is and every row has its bytes where
    they decide (TLV headers; zeros). False: let the column-wise walk decide."""
    first = data[0, :length].tobytes()
    tail = first[BASE_LEN:]
    if length >= AUTH_MIN_LEN and not data[:, AUTH_MBZ].any(axis=1).all():
        return False
    if tail.startswith(COS_HEAD) and padding_from(tail, COS_TLV_LEN):
        marks = [*range(BASE_LEN, _COS_AT), *range(_PAD_AT, min(_PAD_AT + 4, length))]
    elif tail.count(0) == len(tail):
        return not data[:, BASE_LEN:length].any()
    elif returned_as_is(tail):  # one Extra Padding TLV: its header decides
        marks = list(range(BASE_LEN, _COS_AT))
    else:
        return False
    return bool((data[:, marks] == data[0, marks]).all())


def cos_rows(data: NDArray[np.uint8], lengths: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Of rows `plain_rows` accepted, those whose tail opens with the CoS TLV."""
    if data.shape[1] < _COS_AT or not (lengths >= _PAD_AT).any():
        return np.zeros(len(lengths), np.bool_)
    head = np.frombuffer(COS_HEAD, np.uint8)
    cos: NDArray[np.bool_] = (lengths >= _PAD_AT) & (data[:, BASE_LEN:_COS_AT] == head).all(axis=1)
    return cos


def _padding_tlv(data: NDArray[np.uint8], at: int, lengths: NDArray[np.int64]) -> NDArray[np.bool_]:
    """One Extra Padding TLV (flags clear) from `at` to the datagram's end."""
    if data.shape[1] < at + TLV_HEADER_LEN:
        return np.zeros(len(lengths), np.bool_)
    declared = data[:, at + 2].astype(np.int64) << 8 | data[:, at + 3]
    padding: NDArray[np.bool_] = (
        (lengths >= at + TLV_HEADER_LEN)
        & (data[:, at] == 0)
        & (data[:, at + 1] == TlvType.EXTRA_PADDING)
        & (declared == lengths - at - TLV_HEADER_LEN)
    )
    return padding


def write_replies(
    out: NDArray[np.uint8],
    data: NDArray[np.uint8],
    lengths: NDArray[np.int64],
    *,
    reflector_seq: NDArray[np.int64] | None,
    rx_ns: NDArray[np.int64],
    tx_ns: int,
    ttl: NDArray[np.int64],
    tos: NDArray[np.int64],
    clock: ReflectorClock,
    permitted_dscp: frozenset[int] | None,
) -> NDArray[np.int32]:
    """Write the replies to the k plain datagrams `data` (k rows, all `plain_rows`) into
    out[:k] (each as long as its datagram); the TOS byte to send each with (NO_TOS: the
    socket's). rx_ns and tx_ns are T2 (0: none, T3 is used) and T3; ttl and tos as received
    (-1: unknown); reflector_seq the stateful sequence numbers, None: stateless."""
    k = len(lengths)
    widest = int(lengths.max())
    if widest > BASE_LEN:  # padding and TLVs go back as they came; the CoS one is answered below
        out[:k, BASE_LEN:widest] = data[:, BASE_LEN:widest]
    # RFC 8762 4.3.1 by byte ranges: the sender's sequence, timestamp and error estimate go
    # back as they came (24..38, from 0..14), T3 and our error estimate are the batch's.
    head = out[:k, :BASE_LEN]
    head[:, 24:38] = data[:, 0:14]
    head[:, 14:16] = data[:, 14:16]  # SSID
    if reflector_seq is None:
        head[:, 0:4] = data[:, 0:4]
    else:
        head[:, 0:4] = (reflector_seq & 0xFFFF_FFFF).astype(">u4").view(np.uint8).reshape(k, 4)
    t3 = encode_timestamp(tx_ns, clock.fmt)
    head[:, 4:14] = np.frombuffer(_T3_ERROR.pack(t3, clock.error_word), np.uint8)
    t2 = encode_timestamps(np.where(rx_ns != 0, rx_ns, tx_ns), clock.fmt)
    head[:, 16:24] = t2.astype(">u8").view(np.uint8).reshape(k, 8)
    head[:, 38:BASE_LEN] = 0  # MBZ, TTL, MBZ
    head[:, 40] = np.maximum(ttl, 0) & 0xFF
    reply_tos = np.full(k, NO_TOS, np.int32)
    cos = cos_rows(data, lengths)
    if cos.any():
        got = np.maximum(tos[cos], 0)
        dscp1 = data[cos, _COS_AT].astype(np.int64) >> 2
        refused = np.zeros(len(dscp1), np.bool_)
        if permitted_dscp is not None:
            refused = ~np.isin(dscp1, np.array(sorted(permitted_dscp), np.int64))
        value = out[:k, _COS_AT : _COS_AT + 4]  # DSCP2/ECN as received, RP, Reserved zero
        value[cos, 0] = dscp1 << 2 | got >> 6 & 3
        value[cos, 1] = (got >> 2 & 0xF) << 4 | (got & 3) << 2 | refused
        value[cos, 2] = value[cos, 3] = 0
        reply_tos[cos] = np.where(refused, got >> 2 & 0x3F, dscp1) << 2
    return reply_tos
