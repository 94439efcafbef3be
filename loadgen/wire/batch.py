"""Vectorised echo-request builder and reply decoder for the hot path: whole batches of probes
in and out of numpy arrays, no per-packet Python for the common packet, IPv4 or IPv6 (the
`family.WireFamily` a parameter). The wire format and every verdict are those of `icmp`, which
stays the specification: echo replies of ours in the plain shape (good or damaged) are decided
here column-wise, anything else (ICMP errors, IP options, wrong lengths, foreign traffic: rare
behind the filters) goes to `icmp.decode`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.wire import icmp
from loadgen.wire.family import IPPROTO_ICMP, IPV4, IPV4_HEADER_LEN, WireFamily
from loadgen.wire.icmp import QueuedError

_HDR = icmp.ICMP_HEADER_LEN
_IP = IPV4_HEADER_LEN
# Offsets inside the ICMP message (RFC 792 echo header, then our payload header).
_CSUM, _SEQ16 = 2, 6
_MAGIC, _TARGET, _SEQ, _TX, _FILL = _HDR, _HDR + 8, _HDR + 12, _HDR + 20, _HDR + icmp.MIN_PAYLOAD


_HALVES = np.array([0, _IP // 2])  # IPv4 header and ICMP message, in 16-bit words
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _fold(total: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Ones' complement fold of per-row word sums below 2**32 (RFC 1071 section 2)."""
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def _le_sums(rows: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """Per-row sum of little-endian 16-bit words, an odd last byte padded with zero. The ones'
    complement sum does not depend on byte order (RFC 1071 section 2(B)): this is the
    big-endian sum byte-swapped, without a byte swap per word."""
    width = rows.shape[1]
    even = width & ~1
    total: NDArray[np.uint64] = rows[:, :even].view("<u2").sum(axis=1, dtype=np.uint64)
    if width % 2:
        total += rows[:, even]  # the zero pad byte is the high half of a little-endian word
    return total


def _checksum_ok(rows: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Rows whose Internet checksum verifies (the all-ones test is symmetric in byte order)."""
    ok: NDArray[np.bool_] = _fold(_le_sums(rows)) == 0xFFFF
    return ok


def _field(rows: NDArray[np.uint8], at: int, dtype: str) -> NDArray[Any]:
    """The big-endian field at byte offset `at` of every row, as a 1-d array."""
    width = np.dtype(dtype).itemsize
    return rows[:, at : at + width].view(dtype)[:, 0]


def _address_of(value: Any) -> int:
    """One element of an address column (u32 or V16) as the scalar decoder's integer."""
    if isinstance(value, np.void):
        return int.from_bytes(value.tobytes(), "big")
    return int(value)


def _address_item(value: int, family: WireFamily) -> Any:
    """The scalar decoder's integer as an element of the family's address column."""
    if family.address_dtype.kind == "V":
        return np.void(value.to_bytes(family.address_len, "big"))
    return value


class EchoBuilder:
    """Builds batches of echo requests for one (ident, run_id, size) into one reused buffer:
    a row gather from four templates (one per fill pattern), four column writes and one
    checksum pass, whatever the batch size (IPv6: no checksum pass, the kernel writes it).
    With `headroom`, each row starts with that many bytes left for a header the caller writes
    (Ipv4Headers for link-layer sending)."""

    def __init__(
        self, ident: int, run_id: int, size: int, headroom: int = 0, family: WireFamily = IPV4
    ) -> None:
        icmp.check_size(size, family)
        if not 0 <= ident <= 0xFFFF or not 0 <= run_id <= 0xFFFFFFFF:
            raise ValueError(f"ident {ident} or run_id {run_id} out of range: u16 and u32")
        self.ident, self.run_id, self.size, self.headroom = ident, run_id, size, headroom
        self.family = family
        fills = icmp.fill_patterns(run_id, size - icmp.MIN_PAYLOAD)
        # Template p: the request for pattern p with target, seq, tx_ns, sequence and checksum 0.
        self._templates = np.stack(
            [
                np.frombuffer(
                    bytes(headroom)
                    + icmp.ICMP_HEADER.pack(family.echo_request, 0, 0, ident, 0)
                    + icmp.PAYLOAD_HEADER.pack(icmp.MAGIC, run_id, 0, 0, 0)
                    + fill,
                    dtype=np.uint8,
                )
                for fill in fills
            ]
        )
        self._rows = np.zeros((0, self._templates.shape[1]), dtype=np.uint8)

    def build(
        self, targets: NDArray[np.integer], seqs: NDArray[np.integer], tx_ns: int
    ) -> NDArray[np.uint8]:
        """Rows of ICMP messages (after `headroom` bytes), row i for (targets[i], seqs[i]), all
        stamped tx_ns; identical to `icmp.build_echo_request` row by row. The rows live in the
        builder's buffer: valid until the next build."""
        targets = np.asarray(targets, dtype=np.uint32)
        seqs = np.asarray(seqs, dtype=np.uint64)
        if targets.shape != seqs.shape or targets.ndim != 1:
            raise ValueError(f"targets {targets.shape} and seqs {seqs.shape} must be equal 1-d")
        try:
            tx_bytes = np.frombuffer(struct.pack("!q", tx_ns), dtype=np.uint8)
        except struct.error:
            raise ValueError(f"tx_ns {tx_ns} does not fit a signed 64-bit field") from None
        n = len(seqs)
        if n > len(self._rows):
            self._rows = np.zeros((max(n, 2 * len(self._rows)), self._rows.shape[1]), np.uint8)
        rows = self._rows[:n]
        np.take(self._templates, seqs & 3, axis=0, out=rows)
        out = rows[:, self.headroom :]
        out[:, _SEQ16 : _SEQ16 + 2].view(">u2")[:, 0] = seqs & 0xFFFF
        out[:, _TARGET : _TARGET + 4].view(">u4")[:, 0] = targets
        out[:, _SEQ : _SEQ + 8].view(">u8")[:, 0] = seqs
        out[:, _TX : _TX + 8] = tx_bytes
        if not self.family.user_checksum:
            return rows  # the kernel computes the ICMPv6 checksum (RFC 3542 section 3.1)
        # RFC 1071 2(B): summed as little-endian words the checksum comes out byte-swapped,
        # and is stored little-endian, which swaps it back. The folded sum of a nonzero total
        # is (total - 1) % 0xFFFF + 1, and the checksum its complement.
        out[:, _CSUM : _CSUM + 2].view("<u2")[:, 0] = 0xFFFE - (_le_sums(out) - 1) % 0xFFFF
        return rows


class Ipv4Headers:
    """Option-less IPv4 headers (RFC 791 section 3.1, https://www.rfc-editor.org/rfc/rfc791)
    for link-layer sending, where the kernel adds none: one precomputed header per target
    (source, destination, TTL, TOS, DF, protocol ICMP, identification 0, checksum), gathered
    per batch; the identification is then set to each probe's low 16 sequence bits and the
    checksum adjusted for it (RFC 1624 eqn. 3, https://www.rfc-editor.org/rfc/rfc1624)."""

    DONT_FRAGMENT = 0x4000

    def __init__(
        self,
        sources: NDArray[np.integer],
        dests: NDArray[np.integer],
        *,
        ttl: int,
        tos: int,
        total_len: int,
    ) -> None:
        if len(sources) != len(dests) or not 0 < ttl <= 255 or not 0 <= tos <= 255:
            raise ValueError("one source per destination, ttl 1-255 and tos 0-255")
        fixed = struct.pack(
            "!BBHHHBBH", 0x45, tos, total_len, 0, self.DONT_FRAGMENT, ttl, IPPROTO_ICMP, 0
        )
        table = np.zeros((len(dests), _IP), np.uint8)
        table[:, :12] = np.frombuffer(fixed, np.uint8)
        table[:, 12:16].view(">u4")[:, 0] = np.asarray(sources, np.uint32)
        table[:, 16:20].view(">u4")[:, 0] = np.asarray(dests, np.uint32)
        table[:, 10:12].view("<u2")[:, 0] = 0xFFFE - (_le_sums(table) - 1) % 0xFFFF
        self._table = table
        # The stored checksum's complement (~HC of RFC 1624) per target, big-endian order.
        self._not_sum = (~table[:, 10:12].view(">u2")[:, 0]).astype(np.uint32) & 0xFFFF

    def write(
        self, rows: NDArray[np.uint8], local: NDArray[np.integer], seqs: NDArray[np.integer]
    ) -> None:
        """Write the header of target local[i] into rows[i, :20], identification seqs[i]."""
        ident = (np.asarray(seqs) & 0xFFFF).astype(np.uint32)
        np.take(self._table, local, axis=0, out=rows[:, :_IP])
        rows[:, 4:6].view(">u2")[:, 0] = ident
        total = self._not_sum[local] + ident  # HC' = ~(~HC + ~m + m'), m = 0 and ~m = 0xFFFF
        total = (total & 0xFFFF) + (total >> 16)
        rows[:, 10:12].view(">u2")[:, 0] = ~total & 0xFFFF


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Column-wise `icmp.Decoded` for n datagrams; row i describes datagram i."""

    n: int
    status: NDArray[np.uint8]  # icmp.DecodeStatus
    target: NDArray[np.uint32]
    seq: NDArray[np.uint64]
    tx_ns: NDArray[np.int64]
    # Addresses in the family's address_dtype: uint32 (IPv4, host order) or V16 (IPv6,
    # network order; src is all zeros there, the socket layer has it from msg_name).
    src: NDArray[Any]
    quoted_dst: NDArray[Any]
    icmp_type: NDArray[np.uint8]
    icmp_code: NDArray[np.uint8]
    seq16_only: NDArray[np.bool_]
    # Kinds that identify a probe by its number k mod 2**32 (TCP: the ISN) give it here instead
    # of target and seq; the tracker widens it from the probes it sent.
    probe_k32: NDArray[np.uint64] | None = None
    refused: NDArray[np.bool_] | None = None  # answers that refuse (TCP: a RST)

    def row(self, i: int) -> icmp.Decoded:
        """Row i as the scalar decoder's value (for tests and diagnostics, not the hot path)."""
        return icmp.Decoded(
            status=icmp.DecodeStatus(int(self.status[i])),
            target=int(self.target[i]),
            seq=int(self.seq[i]),
            tx_ns=int(self.tx_ns[i]),
            src=_address_of(self.src[i]),
            quoted_dst=_address_of(self.quoted_dst[i]),
            icmp_type=int(self.icmp_type[i]),
            icmp_code=int(self.icmp_code[i]),
            seq16_only=bool(self.seq16_only[i]),
        )


class ReplyDecoder:
    """Decodes batches of received datagrams for one (ident, run_id, size) of one family, as
    that family's raw socket delivers them (IPv4 header first, or the ICMPv6 message alone);
    with `ip_header=False` as a datagram ICMP socket does (the ICMP message alone, either
    family; `ident` is then the one the kernel picked for the socket)."""

    def __init__(
        self,
        ident: int,
        run_id: int,
        size: int,
        family: WireFamily = IPV4,
        ip_header: bool | None = None,
    ) -> None:
        icmp.check_size(size, family)
        self.ident, self.run_id, self.size, self.family = ident, run_id, size, family
        self._ip_header = family.rx_ip_header if ip_header is None else ip_header
        self._ip = _IP if self._ip_header else 0  # where the ICMP message starts
        self.datagram_len = self._ip + _HDR + size
        self._fills = icmp.fill_patterns(run_id, size - icmp.MIN_PAYLOAD)
        self._fill_rows = np.stack([np.frombuffer(f, dtype=np.uint8) for f in self._fills])
        self._magic_run = np.frombuffer(struct.pack("!II", icmp.MAGIC, run_id), dtype=np.uint8)
        self._init_fast_path()

    def _init_fast_path(self) -> None:
        """Every byte a good reply fixes, as 64-bit words: (row & mask) == expect[seq % 4]
        checks the IP version, header length, total length and protocol (IPv4), the ICMP type,
        code and identifier, magic, run id and fill of a whole row in one comparison."""
        length, ip = self.datagram_len, self._ip
        self._words = (length + 7) // 8
        mask = np.zeros(self._words * 8, np.uint8)
        expect = np.zeros((icmp.N_PATTERNS, self._words * 8), np.uint8)
        fixed = {
            ip: bytes([self.family.echo_reply, 0]),
            ip + 4: struct.pack("!H", self.ident),
            ip + _MAGIC: self._magic_run.tobytes(),
        }
        if self._ip_header:
            fixed |= {0: bytes([0x45]), 2: struct.pack("!H", length), 9: bytes([IPPROTO_ICMP])}
        for at, value in fixed.items():
            mask[at : at + len(value)] = 0xFF
            expect[:, at : at + len(value)] = np.frombuffer(value, np.uint8)
        mask[ip + _FILL : length] = 0xFF
        expect[:, ip + _FILL : length] = self._fill_rows
        self._mask, self._expect = mask.view(np.uint64), expect.view(np.uint64)
        # Outputs of the fast path: reused per call; the constant columns are read-only.
        self._cap = 0
        self._grow(256)

    def _grow(self, n: int) -> None:
        self._cap = n
        self._target = np.zeros(n, np.uint32)
        self._seq = np.zeros(n, np.uint64)
        self._tx = np.zeros(n, np.int64)
        self._src = np.zeros(n, self.family.address_dtype)
        self._all_reply = np.full(n, icmp.DecodeStatus.REPLY, np.uint8)
        self._zero_u8 = np.zeros(n, np.uint8)
        self._zero_address = np.zeros(n, self.family.address_dtype)
        self._false = np.zeros(n, bool)
        for constant in (self._all_reply, self._zero_u8, self._zero_address, self._false):
            constant.flags.writeable = False

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        """Decode rows 0..n-1 of buf; row i holds lengths[i] valid bytes (a length beyond the
        row means the datagram was cut short and is decoded as what the row holds). A batch
        of nothing but good replies (the usual one) comes back in arrays the decoder reuses:
        valid until the next decode."""
        if buf.ndim != 2 or buf.dtype != np.uint8 or not 0 <= n <= min(len(buf), len(lengths)):
            raise ValueError(f"decode needs a 2-d uint8 buffer with at least n={n} rows/lengths")
        fast = self._all_good_replies(buf, lengths, n)
        if fast is not None:
            return fast
        buf = np.ascontiguousarray(buf[:n])
        lens = np.clip(np.asarray(lengths[:n], dtype=np.int64), 0, buf.shape[1])
        out = self._undecided(n)
        done = self._decode_echo_replies(buf, lens, out)
        for i in np.flatnonzero(~done).tolist():
            self._decode_one(out, i, bytes(buf[i, : lens[i]]))
        return out

    def _all_good_replies(
        self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int
    ) -> DecodedBatch | None:
        """The batch decoded, if every row is a good reply of the plain shape; else None (and
        the general path decides). Verdicts are those of `icmp._decode_reply`."""
        length, width, ip = self.datagram_len, self._words * 8, self._ip
        if n == 0 or buf.shape[1] < width or buf.strides[1] != 1:
            return None
        if not (np.asarray(lengths[:n]) == length).all():
            return None
        rows = buf[:n]
        if n > self._cap:
            self._grow(max(n, 2 * self._cap))
        seq = self._seq[:n]
        seq[:] = rows[:, ip + _SEQ : ip + _SEQ + 8].view(">u8")[:, 0]
        words = rows[:, :width].view(np.uint64)
        if not ((words & self._mask) == self._expect[seq & 3]).all():
            return None
        if not (rows[:, ip + _SEQ16 : ip + _SEQ16 + 2].view(">u2")[:, 0] == (seq & 0xFFFF)).all():
            return None
        zero_u8, zero_address = self._zero_u8[:n], self._zero_address[:n]
        src = zero_address  # IPv6: not in the datagram
        if self._ip_header:
            # Both checksums in one pass. A nonzero ones' complement sum verifies when it is a
            # multiple of 0xFFFF (its fold is then 0xFFFF); the fixed bytes make both nonzero.
            # (IPv6: the kernel verified the checksum and dropped what failed.)
            even = length & ~1
            sums = np.add.reduceat(rows[:, :even].view("<u2"), _HALVES, axis=1, dtype=np.uint64)
            if length % 2:
                sums[:, 1] += rows[:, even]
            if (sums % 0xFFFF).any():
                return None
            src = self._src[:n]
            src[:] = rows[:, 12:16].view(">u4")[:, 0]
        target, tx = self._target[:n], self._tx[:n]
        target[:] = rows[:, ip + _TARGET : ip + _TARGET + 4].view(">u4")[:, 0]
        tx[:] = rows[:, ip + _TX : ip + _TX + 8].view(">i8")[:, 0]
        return DecodedBatch(
            n,
            self._all_reply[:n],
            target,
            seq,
            tx,
            src,
            zero_address,
            zero_u8,
            zero_u8,
            self._false[:n],
        )

    def _decode_echo_replies(
        self, buf: NDArray[np.uint8], lens: NDArray[np.int64], out: DecodedBatch
    ) -> NDArray[np.bool_]:
        """Decode in place the rows in the common shape: an option-less IPv4 datagram of exactly
        our length with a good header (IPv6: an ICMPv6 message of exactly our length), carrying
        an echo reply with our identifier, damaged or not. Returns the mask of rows decided;
        verdicts are those of `icmp._decode_reply`."""
        length = self.datagram_len
        if buf.shape[1] < length:
            return np.zeros(len(buf), dtype=bool)
        rows = buf[:, :length]
        msg = rows[:, self._ip :]
        shape: NDArray[np.bool_] = lens == length
        if self._ip_header:
            shape &= (rows[:, 0] == 0x45) & (rows[:, 9] == IPPROTO_ICMP)
            shape &= (_field(rows, 2, ">u2") == length) & _checksum_ok(rows[:, :_IP])
        shape &= (msg[:, 0] == self.family.echo_reply) & (_field(msg, 4, ">u2") == self.ident)
        # IPv6: every message here passed the kernel's checksum check (family.py).
        valid = _checksum_ok(msg) if self.family.user_checksum else np.ones(len(msg), bool)
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
        if self._ip_header:
            np.copyto(out.src, _field(rows, 12, ">u4"), where=shape)
        np.copyto(out.icmp_code, msg[:, 1], where=shape)
        known = shape & intact  # intact implies near: never foreign
        np.copyto(out.target, _field(msg, _TARGET, ">u4"), where=known)
        np.copyto(out.seq, seq, where=known)
        np.copyto(out.tx_ns, _field(msg, _TX, ">i8"), where=known)
        return shape

    def _decode_one(self, out: DecodedBatch, i: int, datagram: bytes) -> None:
        got = icmp.decode(
            datagram,
            ident=self.ident,
            run_id=self.run_id,
            size=self.size,
            fills=self._fills,
            family=self.family,
            ip_header=self._ip_header,
        )
        self._store(out, i, got)

    def decode_queued(self, errors: Sequence[QueuedError]) -> DecodedBatch:
        """ICMP errors a datagram socket queued on its error queue, as rows of the same kind as
        errors read from a raw socket (`icmp.decode_quoted`)."""
        out = self._undecided(len(errors))
        for i, error in enumerate(errors):
            got = icmp.decode_quoted(
                error.echo,
                icmp_type=error.icmp_type,
                code=error.code,
                src=int.from_bytes(error.offender, "big"),
                quoted_dst=int.from_bytes(error.destination, "big"),
                ident=self.ident,
                run_id=self.run_id,
                family=self.family,
            )
            self._store(out, i, got)
        return out

    def _undecided(self, n: int) -> DecodedBatch:
        """n rows of fresh columns, every row MALFORMED until decided."""
        return DecodedBatch(
            n=n,
            status=np.full(n, icmp.DecodeStatus.MALFORMED, dtype=np.uint8),
            target=np.full(n, icmp.UNKNOWN_TARGET, dtype=np.uint32),
            seq=np.zeros(n, dtype=np.uint64),
            tx_ns=np.zeros(n, dtype=np.int64),
            src=np.zeros(n, dtype=self.family.address_dtype),
            quoted_dst=np.zeros(n, dtype=self.family.address_dtype),
            icmp_type=np.zeros(n, dtype=np.uint8),
            icmp_code=np.zeros(n, dtype=np.uint8),
            seq16_only=np.zeros(n, dtype=bool),
        )

    def _store(self, out: DecodedBatch, i: int, got: icmp.Decoded) -> None:
        out.status[i] = got.status
        out.target[i] = got.target
        out.seq[i] = got.seq
        out.tx_ns[i] = got.tx_ns
        out.src[i] = _address_item(got.src, self.family)
        out.quoted_dst[i] = _address_item(got.quoted_dst, self.family)
        out.icmp_type[i] = got.icmp_type
        out.icmp_code[i] = got.icmp_code
        out.seq16_only[i] = got.seq16_only
