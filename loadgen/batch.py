"""Vectorised echo-request builder and reply decoder for the hot path: whole batches of probes
in and out of numpy arrays, no per-packet Python for the common packet. The wire format and
every verdict are those of `icmp`, which stays the specification: echo replies of ours in the
plain shape (good or damaged) are decided here column-wise, anything else (ICMP errors, IP
options, wrong lengths, foreign traffic: rare behind the BPF filter) goes to `icmp.decode_ipv4`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen import icmp

_HDR = icmp.ICMP_HEADER_LEN
_IP = icmp.IPV4_HEADER_LEN
# Offsets inside the ICMP message (RFC 792 echo header, then our payload header).
_CSUM, _SEQ16 = 2, 6
_MAGIC, _TARGET, _SEQ, _TX, _FILL = _HDR, _HDR + 8, _HDR + 12, _HDR + 20, _HDR + icmp.MIN_PAYLOAD


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _fold(total: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Ones' complement fold of per-row word sums below 2**32 (RFC 1071 section 2)."""
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def _word_sums(rows: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """Per-row sum of big-endian 16-bit words, an odd last byte padded with zero."""
    width = rows.shape[1]
    even = width & ~1
    total: NDArray[np.uint64] = rows[:, :even].view(">u2").sum(axis=1, dtype=np.uint64)
    if width % 2:
        total += rows[:, even].astype(np.uint64) << 8
    return total


def _checksum_ok(rows: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Rows whose Internet checksum verifies. The ones' complement sum does not depend on byte
    order (RFC 1071 section 2(B)) and the all-ones test is symmetric, so the words are read
    little-endian, skipping a byte swap per word."""
    width = rows.shape[1]
    even = width & ~1
    total: NDArray[np.uint64] = rows[:, :even].view("<u2").sum(axis=1, dtype=np.uint64)
    if width % 2:
        total += rows[:, even]  # the zero pad byte is the high half of a little-endian word
    ok: NDArray[np.bool_] = _fold(total) == 0xFFFF
    return ok


def _be(values: NDArray[Any], dtype: str) -> NDArray[np.uint8]:
    """Values as rows of big-endian bytes, ready to assign into a packet column range."""
    width = np.dtype(dtype).itemsize
    return np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(len(values), width)


def _field(rows: NDArray[np.uint8], at: int, dtype: str) -> NDArray[Any]:
    """The big-endian field at byte offset `at` of every row, as a 1-d array."""
    width = np.dtype(dtype).itemsize
    return rows[:, at : at + width].view(dtype)[:, 0]


def _check_size(size: int) -> None:
    if not icmp.MIN_PAYLOAD <= size <= icmp.MAX_PAYLOAD:
        raise ValueError(
            f"probe size {size} is out of range: use {icmp.MIN_PAYLOAD}..{icmp.MAX_PAYLOAD}"
        )


class EchoBuilder:
    """Builds batches of echo requests for one (ident, run_id, size): four templates (one per
    fill pattern) with their checksum partial sums, so a batch costs a row gather, a few column
    writes and an O(n) checksum update."""

    def __init__(self, ident: int, run_id: int, size: int) -> None:
        _check_size(size)
        if not 0 <= ident <= 0xFFFF or not 0 <= run_id <= 0xFFFFFFFF:
            raise ValueError(f"ident {ident} or run_id {run_id} out of range: u16 and u32")
        self.ident, self.run_id, self.size = ident, run_id, size
        fills = icmp.fill_patterns(run_id, size - icmp.MIN_PAYLOAD)
        # Template p: the request for pattern p with target, seq, tx_ns, sequence and checksum 0;
        # build() adds those fields to the template word sum (seq16 twice: ICMP header and payload).
        self._templates = np.stack(
            [
                np.frombuffer(
                    icmp.ICMP_HEADER.pack(icmp.IcmpType.ECHO_REQUEST, 0, 0, ident, 0)
                    + icmp.PAYLOAD_HEADER.pack(icmp.MAGIC, run_id, 0, 0, 0)
                    + fill,
                    dtype=np.uint8,
                )
                for fill in fills
            ]
        )
        self._template_sums = _word_sums(self._templates)

    def build(
        self, targets: NDArray[np.uint32], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        """Rows of ICMP messages (no IP header), row i for (targets[i], seqs[i]), all stamped
        tx_ns; identical to `icmp.build_echo_request` row by row."""
        targets = np.asarray(targets, dtype=np.uint32)
        seqs = np.asarray(seqs, dtype=np.uint64)
        if targets.shape != seqs.shape or targets.ndim != 1:
            raise ValueError(f"targets {targets.shape} and seqs {seqs.shape} must be equal 1-d")
        try:
            tx_bytes = struct.pack("!q", tx_ns)
        except struct.error:
            raise ValueError(f"tx_ns {tx_ns} does not fit a signed 64-bit field") from None
        out = self._templates[(seqs & 3).astype(np.intp)]
        seq16 = seqs & 0xFFFF
        out[:, _SEQ16 : _SEQ16 + 2] = _be(seq16, ">u2")
        out[:, _TARGET : _TARGET + 4] = _be(targets, ">u4")
        out[:, _SEQ : _SEQ + 8] = _be(seqs, ">u8")
        out[:, _TX : _TX + 8] = np.frombuffer(tx_bytes, dtype=np.uint8)
        tx_words = sum(struct.unpack("!4H", tx_bytes))
        t64 = targets.astype(np.uint64)
        total = (
            self._template_sums[(seqs & 3).astype(np.intp)]
            + np.uint64(tx_words)
            + seq16
            + (t64 >> 16)
            + (t64 & 0xFFFF)
            + (seqs >> 48)
            + ((seqs >> 32) & 0xFFFF)
            + ((seqs >> 16) & 0xFFFF)
            + seq16
        )
        out[:, _CSUM : _CSUM + 2] = _be(~_fold(total) & 0xFFFF, ">u2")
        return out


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Column-wise `icmp.Decoded` for n datagrams; row i describes datagram i."""

    n: int
    status: NDArray[np.uint8]  # icmp.DecodeStatus
    target: NDArray[np.uint32]
    seq: NDArray[np.uint64]
    tx_ns: NDArray[np.int64]
    src: NDArray[np.uint32]
    quoted_dst: NDArray[np.uint32]
    icmp_type: NDArray[np.uint8]
    icmp_code: NDArray[np.uint8]
    seq16_only: NDArray[np.bool_]

    def row(self, i: int) -> icmp.Decoded:
        """Row i as the scalar decoder's value (for tests and diagnostics, not the hot path)."""
        return icmp.Decoded(
            status=icmp.DecodeStatus(int(self.status[i])),
            target=int(self.target[i]),
            seq=int(self.seq[i]),
            tx_ns=int(self.tx_ns[i]),
            src=int(self.src[i]),
            quoted_dst=int(self.quoted_dst[i]),
            icmp_type=int(self.icmp_type[i]),
            icmp_code=int(self.icmp_code[i]),
            seq16_only=bool(self.seq16_only[i]),
        )


class ReplyDecoder:
    """Decodes batches of received datagrams for one (ident, run_id, size)."""

    def __init__(self, ident: int, run_id: int, size: int) -> None:
        _check_size(size)
        self.ident, self.run_id, self.size = ident, run_id, size
        self.datagram_len = _IP + _HDR + size
        self._fills = icmp.fill_patterns(run_id, size - icmp.MIN_PAYLOAD)
        self._fill_rows = np.stack([np.frombuffer(f, dtype=np.uint8) for f in self._fills])
        self._magic_run = np.frombuffer(struct.pack("!II", icmp.MAGIC, run_id), dtype=np.uint8)

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        """Decode rows 0..n-1 of buf; row i holds lengths[i] valid bytes (a length beyond the
        row means the datagram was cut short and is decoded as what the row holds)."""
        if buf.ndim != 2 or buf.dtype != np.uint8 or not 0 <= n <= min(len(buf), len(lengths)):
            raise ValueError(f"decode needs a 2-d uint8 buffer with at least n={n} rows/lengths")
        buf = np.ascontiguousarray(buf[:n])
        lens = np.clip(np.asarray(lengths[:n], dtype=np.int64), 0, buf.shape[1])
        out = DecodedBatch(
            n=n,
            status=np.full(n, icmp.DecodeStatus.MALFORMED, dtype=np.uint8),
            target=np.full(n, icmp.UNKNOWN_TARGET, dtype=np.uint32),
            seq=np.zeros(n, dtype=np.uint64),
            tx_ns=np.zeros(n, dtype=np.int64),
            src=np.zeros(n, dtype=np.uint32),
            quoted_dst=np.zeros(n, dtype=np.uint32),
            icmp_type=np.zeros(n, dtype=np.uint8),
            icmp_code=np.zeros(n, dtype=np.uint8),
            seq16_only=np.zeros(n, dtype=bool),
        )
        done = self._decode_echo_replies(buf, lens, out)
        for i in np.flatnonzero(~done).tolist():
            self._decode_one(out, i, bytes(buf[i, : lens[i]]))
        return out

    def _decode_echo_replies(
        self, buf: NDArray[np.uint8], lens: NDArray[np.int64], out: DecodedBatch
    ) -> NDArray[np.bool_]:
        """Decode in place the rows in the common shape: an option-less IPv4 datagram of exactly
        our length with a good header, carrying an echo reply with our identifier, damaged or
        not. Returns the mask of rows decided; verdicts are those of `icmp._decode_reply`."""
        length = self.datagram_len
        if buf.shape[1] < length:
            return np.zeros(len(buf), dtype=bool)
        rows = buf[:, :length]
        msg = rows[:, _IP:]
        shape: NDArray[np.bool_] = (
            (lens == length) & (rows[:, 0] == 0x45) & (rows[:, 9] == icmp.IPPROTO_ICMP)
        )
        shape &= (_field(rows, 2, ">u2") == length) & _checksum_ok(rows[:, :_IP])
        shape &= (msg[:, 0] == icmp.IcmpType.ECHO_REPLY) & (_field(msg, 4, ">u2") == self.ident)
        valid = _checksum_ok(msg)
        damage = msg[:, _MAGIC : _MAGIC + 8] ^ self._magic_run
        bits = _POPCOUNT[damage]
        near = (bits[:, :4].sum(axis=1) <= icmp.MAX_DAMAGED_BITS) & (
            bits[:, 4:].sum(axis=1) <= icmp.MAX_DAMAGED_BITS
        )
        intact = ~damage.any(axis=1)
        seq = _field(msg, _SEQ, ">u8")
        good = intact & (msg[:, 1] == 0) & (_field(msg, _SEQ16, ">u2") == (seq & 0xFFFF))
        if self.size > icmp.MIN_PAYLOAD:
            good &= (msg[:, _FILL:] == self._fill_rows[(seq & 3).astype(np.intp)]).all(axis=1)
        status = np.select(
            [valid & ~near, ~valid, good],
            [icmp.DecodeStatus.FOREIGN, icmp.DecodeStatus.CORRUPTED, icmp.DecodeStatus.REPLY],
            icmp.DecodeStatus.BITFLIP,
        ).astype(np.uint8)
        # Fields are read from every row and kept where they apply: cheaper than gathering.
        np.copyto(out.status, status, where=shape)
        np.copyto(out.src, _field(rows, 12, ">u4"), where=shape)
        np.copyto(out.icmp_code, msg[:, 1], where=shape)
        known = shape & intact  # intact implies near: never foreign
        np.copyto(out.target, _field(msg, _TARGET, ">u4"), where=known)
        np.copyto(out.seq, seq, where=known)
        np.copyto(out.tx_ns, _field(msg, _TX, ">i8"), where=known)
        return shape

    def _decode_one(self, out: DecodedBatch, i: int, datagram: bytes) -> None:
        got = icmp.decode_ipv4(
            datagram, ident=self.ident, run_id=self.run_id, size=self.size, fills=self._fills
        )
        out.status[i] = got.status
        out.target[i] = got.target
        out.seq[i] = got.seq
        out.tx_ns[i] = got.tx_ns
        out.src[i] = got.src
        out.quoted_dst[i] = got.quoted_dst
        out.icmp_type[i] = got.icmp_type
        out.icmp_code[i] = got.icmp_code
        out.seq16_only[i] = got.seq16_only
