"""ICMP errors quoting our SYN probes: the vectorised decoder of what the second socket of a SYN
worker (a raw ICMP or ICMPv6 socket, filtered by `bpf.tcp_error_filter`) passes. An error
(destination unreachable, time exceeded; ICMPv6 also packet too big and parameter problem)
quotes the invoking IP header and at least 8 bytes of the SYN (RFC 792; RFC 4443 2.4), which
hold both ports and the sequence number: the ISN names the probe as an ack does (`tcp`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.batch import DecodedBatch
from loadgen.wire.family import IPV6_HEADER_LEN, WireFamily
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.tcp import IPPROTO_TCP, PORT_BLOCK, SynPlan, keyed_batch

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
