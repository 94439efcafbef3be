"""Vectorised builders and decoders of the UDP probe kinds, for the worker's hot path: STAMP test
packets (`stamp_probe`'s layout: 44-byte base, then loadgen's payload in one Extra Padding TLV)
and plain UDP probes (loadgen's payload alone, for an echo service). Rows of our own shape are
decided column-wise; anything else goes to the scalar `stamp_probe.decode_reply`, which stays
the specification. A STAMP decode also keeps the reflector's columns (T2, T3, its sequence, the
TTL it saw) of the last batch for the one-way figures.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.wire import icmp, stamp_probe
from loadgen.wire.batch import DecodedBatch
from loadgen.wire.family import WireFamily
from loadgen.wire.icmp import QueuedError
from loadgen.wire.stamp import (
    BASE_LEN,
    NS_PER_S,
    NTP_ERA_PIVOT_S,
    NTP_UNIX_OFFSET_S,
    TAI_MINUS_UTC_S,
    SenderPacket,
)
from loadgen.wire.stamp_probe import NO_VALUE, StampSpec, StampStatus
from loadgen.wire.stamp_tlv import TLV_HEADER, ClassOfService, TlvFlag, TlvType

COS_AT = BASE_LEN  # our Class of Service TLV, when sent, comes first (`build_test_packet`)
_STATUS = {
    StampStatus.REPLY: icmp.DecodeStatus.REPLY,
    StampStatus.BITFLIP: icmp.DecodeStatus.BITFLIP,
    StampStatus.FOREIGN: icmp.DecodeStatus.FOREIGN,
    StampStatus.MALFORMED: icmp.DecodeStatus.MALFORMED,
}


# What of loadgen's payload header names a probe in a quote (magic, run, target, seq): an
# error's tracking needs no send time.
_QUOTED_HEAD = struct.Struct("!IIIQ")
_IDENTIFIED = _QUOTED_HEAD.size

SEQ_BASE = 1 << 31  # StampSpec.seq_base of loadgen's sender: stateless and stateful told apart


def stamp_spec(run_id: int, ssid: int, size: int, cos_dscp: int = NO_VALUE) -> StampSpec:
    """The STAMP packet that carries a loadgen payload of `size` bytes (profile key size),
    with a Class of Service TLV asking for `cos_dscp` unless NO_VALUE."""
    bare = StampSpec(run_id=run_id, ssid=ssid, size=0, cos_dscp=cos_dscp, seq_base=SEQ_BASE)
    return replace(bare, size=bare.payload_at + size)


def _col(rows: NDArray[np.uint8], at: int, dtype: str) -> NDArray[Any]:
    width = np.dtype(dtype).itemsize
    return rows[:, at : at + width].view(dtype)[:, 0]


def ntp_columns(ns: NDArray[np.int64]) -> NDArray[np.uint64]:
    """`stamp.encode_timestamp(ns, NTP)` for a column (times after 1970, before 2036)."""
    seconds, part = np.divmod(ns, NS_PER_S)
    fraction = ((part << 32) + NS_PER_S // 2) // NS_PER_S
    out: NDArray[np.uint64] = (
        (seconds + NTP_UNIX_OFFSET_S).astype(np.uint64) << np.uint64(32)
    ) + fraction.astype(np.uint64)
    return out


def timestamp_columns(raw: NDArray[np.uint64], ptp: NDArray[np.bool_]) -> NDArray[np.int64]:
    """`stamp.decode_timestamp` for a column, the format per row (the Z bit)."""
    seconds = (raw >> np.uint64(32)).astype(np.int64)
    low = (raw & np.uint64(0xFFFF_FFFF)).astype(np.int64)
    era = np.where(seconds < NTP_ERA_PIVOT_S, 1 << 32, 0)  # NTP era 1 from 2036
    ntp = (seconds + era - NTP_UNIX_OFFSET_S) * NS_PER_S + ((low * NS_PER_S + (1 << 31)) >> 32)
    ptp_ns = (seconds - TAI_MINUS_UTC_S) * NS_PER_S + np.minimum(low, NS_PER_S - 1)
    out: NDArray[np.int64] = np.where(ptp, ptp_ns, ntp)
    return out


class PayloadBuilder:
    """Rows of `prefix` (a fixed header, seq and timestamp written per batch for STAMP) and
    loadgen's payload (magic, run, target, seq, tx_ns, fill pattern seq % 4)."""

    def __init__(
        self, run_id: int, size: int, prefix: bytes, global_index: NDArray[np.uint32]
    ) -> None:
        fills = icmp.fill_patterns(run_id, size - icmp.MIN_PAYLOAD)
        head = icmp.PAYLOAD_HEADER.pack(icmp.MAGIC, run_id, 0, 0, 0)
        self._templates = np.stack([np.frombuffer(prefix + head + f, np.uint8) for f in fills])
        self._at = len(prefix)
        self._rows = np.zeros((0, self._templates.shape[1]), np.uint8)
        self.global_index = global_index

    def rows(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        n = len(seqs)
        if n > len(self._rows):
            self._rows = np.zeros((max(n, 2 * len(self._rows)), self._templates.shape[1]), np.uint8)
        rows = self._rows[:n]
        np.take(self._templates, seqs & 3, axis=0, out=rows)
        at = self._at
        _col(rows, at + 8, ">u4")[:] = self.global_index[local]
        _col(rows, at + 12, ">u8")[:] = seqs
        _col(rows, at + 20, ">i8")[:] = tx_ns
        return rows

    def restamp(self, rows: NDArray[np.uint8], tx_ns: int) -> None:
        """Give rows already built the send time tx_ns instead."""
        _col(rows, self._at + 20, ">i8")[:] = tx_ns


class StampBuilder(PayloadBuilder):
    def __init__(self, spec: StampSpec, global_index: NDArray[np.uint32]) -> None:
        base = SenderPacket(0, 0, spec.error, spec.ssid).pack()
        if spec.cos_dscp != NO_VALUE:
            base += ClassOfService(dscp1=spec.cos_dscp).tlv().pack()
        if spec.timestamp_info:
            raise ValueError("the batch builder sends no Timestamp Information TLV")
        tlv = TLV_HEADER.pack(0, TlvType.EXTRA_PADDING, spec.size - spec.payload_at)
        super().__init__(spec.run_id, spec.size - spec.payload_at, base + tlv, global_index)
        self.spec = spec

    def build(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        rows = self.rows(local, seqs, tx_ns)
        _col(rows, 0, ">u4")[:] = (seqs + self.spec.seq_base) & 0xFFFF_FFFF
        _col(rows, 4, ">u8")[:] = ntp_columns(np.array([tx_ns], np.int64))[0]
        return rows

    def restamp(self, rows: NDArray[np.uint8], tx_ns: int) -> None:
        """T1 (RFC 8762 4.2.1) and our payload's copy of it, as tx_ns."""
        super().restamp(rows, tx_ns)
        _col(rows, 4, ">u8")[:] = ntp_columns(np.array([tx_ns], np.int64))[0]


class UdpEchoBuilder(PayloadBuilder):
    def __init__(self, run_id: int, size: int, global_index: NDArray[np.uint32]) -> None:
        super().__init__(run_id, size, b"", global_index)

    def build(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        return self.rows(local, seqs, tx_ns)


def _fit(address: bytes, width: int) -> bytes:
    """An address from the error queue cut or zero-padded to the family's width."""
    return address[:width].ljust(width, b"\0")


def _empty(n: int, family: WireFamily) -> DecodedBatch:
    return DecodedBatch(
        n=n,
        status=np.full(n, icmp.DecodeStatus.MALFORMED, np.uint8),
        target=np.full(n, icmp.UNKNOWN_TARGET, np.uint32),
        seq=np.zeros(n, np.uint64),
        tx_ns=np.zeros(n, np.int64),
        src=np.zeros(n, family.address_dtype),
        quoted_dst=np.zeros(n, family.address_dtype),
        icmp_type=np.zeros(n, np.uint8),
        icmp_code=np.zeros(n, np.uint8),
        seq16_only=np.zeros(n, bool),
    )


class PayloadDecoder:
    """Rows that hold loadgen's payload at `at`, `length` bytes in all: magic, run and fill
    checked per row; the verdicts of `icmp`'s payload check (bitflip, foreign, malformed)."""

    def __init__(self, run_id: int, size: int, at: int, family: WireFamily) -> None:
        self.run_id, self.at, self.length, self.family = run_id, at, at + size, family
        fills = icmp.fill_patterns(run_id, size - icmp.MIN_PAYLOAD)
        self._fills = np.stack([np.frombuffer(f, np.uint8) for f in fills])

    def payload(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        out = _empty(n, self.family)
        if n == 0 or buf.shape[1] < self.length:
            return out
        rows, at = buf[:n], self.at
        whole = np.asarray(lengths[:n]) == self.length
        magic = _col(rows, at, ">u4") == icmp.MAGIC
        ours = _col(rows, at + 4, ">u4") == self.run_id
        seq = _col(rows, at + 12, ">u8").astype(np.uint64)
        fill_ok = (rows[:, at + icmp.MIN_PAYLOAD : self.length] == self._fills[seq & 3]).all(axis=1)
        out.target[:] = np.where(
            whole & magic & ours, _col(rows, at + 8, ">u4"), icmp.UNKNOWN_TARGET
        )
        out.seq[:] = np.where(whole & magic & ours, seq, 0)
        out.tx_ns[:] = np.where(whole & magic & ours, _col(rows, at + 20, ">i8"), 0)
        status = np.where(fill_ok, icmp.DecodeStatus.REPLY, icmp.DecodeStatus.BITFLIP)
        status = np.where(magic & ~ours, icmp.DecodeStatus.FOREIGN, status)
        status = np.where(~magic, icmp.DecodeStatus.FOREIGN, status)
        out.status[:] = np.where(whole, status, icmp.DecodeStatus.MALFORMED)
        return out

    def decode_queued(self, errors: Sequence[QueuedError]) -> DecodedBatch:
        """ICMP errors about our probes as a UDP socket's error queue gives them (the probe's
        payload after its UDP header, its destination, the error's type, code and sender):
        ICMP_ERROR rows naming target and sequence by loadgen's payload header, FOREIGN where
        that header is not this run's, and where the quote stops before it, what `_short`
        finds, else MALFORMED. Never raises: every entry becomes one row."""
        out = _empty(len(errors), self.family)
        width = self.family.address_len
        out.src[:] = self.family.address_column([_fit(e.offender, width) for e in errors])
        out.quoted_dst[:] = self.family.address_column([_fit(e.destination, width) for e in errors])
        for i, error in enumerate(errors):
            out.icmp_type[i], out.icmp_code[i] = error.icmp_type & 0xFF, error.code & 0xFF
            head = error.echo[self.at : self.at + _IDENTIFIED]
            if len(head) == _IDENTIFIED:  # magic, run, target, seq: the send time is not needed
                magic, run, target, seq = _QUOTED_HEAD.unpack(head)
                ours = magic == icmp.MAGIC and run == self.run_id
                out.status[i] = icmp.DecodeStatus.ICMP_ERROR if ours else icmp.DecodeStatus.FOREIGN
                out.target[i], out.seq[i] = (target, seq) if ours else (icmp.UNKNOWN_TARGET, 0)
                continue
            seq16 = self._short(error.echo)
            if seq16 is not None:  # the tracker finds the target by the destination
                out.status[i], out.seq[i], out.seq16_only[i] = (
                    icmp.DecodeStatus.ICMP_ERROR,
                    seq16,
                    True,
                )
        return out

    def _short(self, quote: bytes) -> int | None:
        """The low 16 bits of the probe's sequence from a quote too short for loadgen's header,
        None where it holds none (plain UDP: the payload is that header)."""
        return None


class UdpEchoDecoder(PayloadDecoder):
    def __init__(self, run_id: int, size: int, family: WireFamily) -> None:
        super().__init__(run_id, size, 0, family)

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        return self.payload(buf, lengths, n)


class StampDecoder(PayloadDecoder):
    """Reflected STAMP packets to the tracker's columns, plus the reflector's (`last_*`):
    last_cos_tos is the TOS byte (DSCP2 << 2 | ECN) the reflector received, NO_VALUE where
    its Class of Service TLV did not come back served; last_cos_rp its RP."""

    def __init__(self, spec: StampSpec, family: WireFamily) -> None:
        at = spec.payload_at
        super().__init__(spec.run_id, spec.size - at, at, family)
        self.spec = spec
        self._fills_scalar = icmp.fill_patterns(spec.run_id, max(spec.fill_len, 0))
        empty = np.zeros(0, np.int64)
        self.last_t2_ns, self.last_t3_ns, self.last_reflector_seq, self.last_ttl = (empty,) * 4
        self.last_cos_tos, self.last_cos_rp = empty, empty
        self.last_stateful = np.zeros(0, bool)  # reply's sequence is the reflector's own

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        out = self.payload(buf, lengths, n)
        rows = buf[:n]
        if n and buf.shape[1] >= self.length:
            good = out.status == icmp.DecodeStatus.REPLY
            good &= _col(rows, 14, ">u2") == self.spec.ssid
            pad_at = self.spec.payload_at - TLV_HEADER.size
            good &= rows[:, pad_at + 1] == TlvType.EXTRA_PADDING
            good &= _col(rows, pad_at + 2, ">u2") == self.spec.size - self.spec.payload_at
            sender_seq = _col(rows, 24, ">u4").astype(np.int64)
            good &= sender_seq == ((out.seq + self.spec.seq_base) & 0xFFFF_FFFF)
            good &= _col(rows, 36, ">u2") == self.spec.error.pack()
            good &= _col(rows, 28, ">u8") == ntp_columns(out.tx_ns)
            ptp = (rows[:, 12] & 0x40) != 0
            self.last_t2_ns = timestamp_columns(_col(rows, 16, ">u8").astype(np.uint64), ptp)
            self.last_t3_ns = timestamp_columns(_col(rows, 4, ">u8").astype(np.uint64), ptp)
            self.last_reflector_seq = _col(rows, 0, ">u4").astype(np.int64)
            self.last_stateful = self.last_reflector_seq != sender_seq
            self.last_ttl = rows[:, 40].astype(np.int64)
            self._cos_columns(rows)
        else:
            good = np.zeros(n, bool)
            self.last_t2_ns = self.last_t3_ns = np.zeros(n, np.int64)
            self.last_reflector_seq = self.last_ttl = np.zeros(n, np.int64)
            self.last_cos_tos, self.last_cos_rp = (
                np.full(n, NO_VALUE, np.int64),
                np.zeros(n, np.int64),
            )
            self.last_stateful = np.zeros(n, bool)
        for i in np.flatnonzero(~good).tolist():  # rare: the specification decides
            self._one(out, i, bytes(rows[i, : min(int(lengths[i]), buf.shape[1])]))
        return out

    def _short(self, quote: bytes) -> int | None:
        """STAMP's own sequence number (RFC 8762 4.2.1, the packet's first 4 bytes) is ours plus
        seq_base, whose low 16 bits are 0: they are the probe's sequence's."""
        if len(quote) < 4:
            return None
        return (int.from_bytes(quote[:4], "big") - self.spec.seq_base) & 0xFFFF

    def _cos_columns(self, rows: NDArray[np.uint8]) -> None:
        """DSCP2/ECN and RP of each row's Class of Service TLV where it came back served (no
        U or M flag: a reflector that does not know it returns our zeros)."""
        n = len(rows)
        self.last_cos_rp = np.zeros(n, np.int64)
        self.last_cos_tos = np.full(n, NO_VALUE, np.int64)
        if self.spec.cos_dscp == NO_VALUE:
            return
        refused = TlvFlag.UNRECOGNIZED | TlvFlag.MALFORMED
        ok = (rows[:, COS_AT] & refused == 0) & (rows[:, COS_AT + 1] == TlvType.CLASS_OF_SERVICE)
        ok &= _col(rows, COS_AT + 2, ">u2") == 4
        word = _col(rows, COS_AT + 4, ">u4").astype(np.int64)
        self.last_cos_tos = np.where(ok, word >> 18 & 0xFF, NO_VALUE)
        self.last_cos_rp = np.where(ok, word >> 16 & 3, 0)

    def _one(self, out: DecodedBatch, i: int, datagram: bytes) -> None:
        reply = stamp_probe.decode_reply(datagram, self.spec, self._fills_scalar)
        out.status[i] = _STATUS[reply.status]
        known = reply.status in (StampStatus.REPLY, StampStatus.BITFLIP)
        out.target[i] = reply.target if known else icmp.UNKNOWN_TARGET
        out.seq[i] = reply.seq if known else 0
        self.last_t2_ns[i], self.last_t3_ns[i] = reply.t2_ns, reply.t3_ns
        self.last_reflector_seq[i], self.last_ttl[i] = reply.reflector_seq, reply.ttl
        cos = NO_VALUE not in (reply.dscp, self.spec.cos_dscp)
        self.last_cos_tos[i] = reply.dscp << 2 | reply.ecn if cos else NO_VALUE
        self.last_cos_rp[i] = reply.rp
        sent = (reply.seq + self.spec.seq_base) & 0xFFFF_FFFF
        self.last_stateful[i] = reply.reflector_seq != sent
