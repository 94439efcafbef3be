"""Batched send and receive over one open IcmpSocket, with buffers allocated once.

Owns BatchIO: sendmmsg of packet rows to destination columns, recvmmsg of replies with their
RX stamps and the socket's drop counter, and kernel TX stamps read back from the error queue
and matched to sends by OPT_ID. Everything per packet is a numpy column; the syscalls are in
`mmsg`, the control-message parsing in `cmsg`, the socket itself in `sockets`.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.net.cmsg import (
    CMSG_HDR,
    Layout,
    cmsg_key,
    cmsg_offsets,
    layout_holds,
    layout_of,
    lone_stamp,
    read_stamps,
)
from loadgen.net.errqueue import PENDING_ERROR_TRIES, queued_errors
from loadgen.net.mmsg import DONTWAIT, ERRQUEUE, TRUNC, RecvRing, send_headers, sendmmsg
from loadgen.net.sockets import (
    SCM_TS_OPT_ID,
    SCM_TSTAMP_SND,
    SO_EE_ORIGIN_TIMESTAMPING,
    SO_MEMINFO,
    SO_RXQ_OVFL,
    SO_TIMESTAMPING,
    SO_TIMESTAMPNS,
    IcmpSocket,
    Sof,
    kernel_takes_tx_ids,
    problem,
    send_problem,
    start_tx_stamps,
    stop_tx_stamps,
)
from loadgen.wire.icmp import QueuedError
from loadgen.wire.records import RecordFlag

_RX_CTRL_BYTES = 128  # SCM_TIMESTAMPING (64) + SO_RXQ_OVFL (24), with room to spare
_ERRQ_CTRL_BYTES = 256  # SCM_TIMESTAMPING (64) + IP_RECVERR with offender address (48)
_TX_CTRL_BYTES = 24  # CMSG_SPACE(4): one SCM_TS_OPT_ID per sent message
_SOFT_SEND_ERRNOS = (errno.ENOBUFS, errno.EAGAIN)


@dataclass(frozen=True, slots=True)
class SendResult:
    sent: int  # packets the kernel took, from the front of the batch
    errno: int  # 0, or ENOBUFS/EAGAIN: packet `sent` was refused and the rest not tried


@dataclass(frozen=True, slots=True)
class RecvBatch:
    """Rows are views of BatchIO's buffers, valid until its next recv()."""

    n: int
    data: NDArray[np.uint8]  # [n, slot_bytes]: IPv4 header onwards, or the ICMPv6 message
    lengths: NDArray[np.uint32]  # bytes in each row (at most slot_bytes)
    rx_ns: NDArray[np.int64]  # CLOCK_REALTIME; kernel/NIC stamp where rx_flags says so
    rx_flags: NDArray[np.uint8]  # RecordFlag.RX_KERNEL / RX_HARDWARE, 0 = user space
    truncated: int  # rows cut to slot_bytes (MSG_TRUNC)
    dropped_total: int  # socket drop counter (SO_RXQ_OVFL) as of the newest packet that had it


@dataclass(frozen=True, slots=True)
class TxStamps:
    """Kernel TX stamps, views valid until the next read_tx_timestamps()."""

    n: int
    ids: NDArray[np.uint32]  # OPT_ID: the k-th packet sent since enabling has id k (wraps)
    tx_ns: NDArray[np.int64]
    tx_flags: NDArray[np.uint8]  # RecordFlag.TX_KERNEL or TX_HARDWARE
    more: bool  # the error queue may hold more: call again


_DROPS_KEY = cmsg_key(socket.SOL_SOCKET, SO_RXQ_OVFL)
_TIMESTAMPING_KEY = cmsg_key(socket.SOL_SOCKET, SO_TIMESTAMPING)
_RX_SOFT = RecordFlag.RX_KERNEL


_PySocket = socket.socket  # BatchIO's own `socket` property hides the module in its body


class BatchIO:
    """sendmmsg/recvmmsg over one IcmpSocket with buffers allocated once; owns and closes it."""

    def __init__(
        self, sock: IcmpSocket, batch: int = 256, slot_bytes: int = 2048, quote_bytes: int = 64
    ) -> None:
        """`quote_bytes`: how much of each quoted probe an error-queue slot keeps (enough to
        reach loadgen's payload header: the ICMP header and it, or a STAMP packet up to it)."""
        if batch < 1 or slot_bytes < 64:
            raise ValueError("batch must be >= 1 and slot_bytes >= 64")
        self._sock, self._fd, self._batch = sock, sock.fileno(), batch
        index = np.arange(batch, dtype=np.uint64)
        self._index, self._scratch = index, np.zeros(batch, np.uint64)
        self._index32 = np.arange(batch, dtype=np.uint32)
        self._addrs = np.zeros(batch, sock.spec.sockaddr)
        self._addrs["family"] = sock.spec.family
        self._tx_iov, self._tx_msgs = send_headers(self._addrs)
        # One SCM_TS_OPT_ID cmsg per message, attached only once TX stamps are enabled.
        self._tx_ctrl = np.zeros((batch, _TX_CTRL_BYTES // 4), np.uint32)
        self._tx_ctrl.view(np.uint64)[:, 0] = CMSG_HDR + 4  # CMSG_LEN(sizeof(u32))
        self._tx_ctrl.view(np.uint64)[:, 1] = cmsg_key(socket.SOL_SOCKET, SCM_TS_OPT_ID)
        self._tx_id_col = self._tx_ctrl[:, CMSG_HDR // 4]
        self._rx = RecvRing(batch, slot_bytes, _RX_CTRL_BYTES)
        self._rx_ns = np.zeros(batch, np.int64)
        self._rx_flags = np.zeros(batch, np.uint8)
        # IPv4 destinations are bare addresses; IPv6 ones whole sockaddr_in6 rows (scope ids).
        self._addr_col = self._addrs if sock.spec.whole_names else self._addrs["addr"]
        self._iov_base = self._tx_iov["base"]
        self._iov_for = (0, 0, 0)  # (first packet's address, length, rows) the iovecs point at
        # The usual control data of a reply: the stamp cmsg alone, software stamp first.
        self._plain_ctrl = {SO_TIMESTAMPING: CMSG_HDR + 48, SO_TIMESTAMPNS: CMSG_HDR + 16}.get(
            sock.rx_scm, 0
        )
        if sock.tsflags & Sof.RAW_HARDWARE:
            self._plain_ctrl = -1  # hardware stamps may be in ts[2]: always the general path
        self._plain_flags = np.full(batch, sock.rx_flags if sock.rx_scm else 0, np.uint8)
        self._plain_flags.flags.writeable = False
        self._tx_msgs_ptr = self._tx_msgs.ctypes.data
        self._rx_keys = (cmsg_key(socket.SOL_SOCKET, sock.rx_scm), _DROPS_KEY)
        self._rx_hard = RecordFlag.RX_HARDWARE if sock.tsflags & Sof.RAW_HARDWARE else None
        self._dropped_total = 0
        # The error queue: TX stamps (enable_tx_timestamps) and, on a datagram socket (ICMP
        # or UDP probes), the ICMP errors about its probes (read_icmp_errors), with their
        # destinations.
        self._datagram = sock.datagram
        self._quote_bytes = quote_bytes
        self._errq: RecvRing | None = None
        if sock.datagram:
            self._errq = RecvRing(batch, quote_bytes, _ERRQ_CTRL_BYTES, sock.spec.sockaddr.itemsize)
        self._queued: list[QueuedError] = []
        self._errq_keys = (_TIMESTAMPING_KEY, cmsg_key(*sock.spec.recverr))
        # (controllen, stamp offset, error offset) every stamp so far had: then columns serve.
        self._errq_layout: Layout | None = None
        self._errq_key_words = np.array(self._errq_keys, np.uint64).view(np.int64)
        self._tx_flag = RecordFlag.NONE
        self._ids_exact = False  # the kernel takes each send's OPT_ID from us (SCM_TS_OPT_ID)
        self._ids_lost = False  # counter-numbered stamps can no longer be trusted
        self._tx_ids = np.zeros(batch, np.uint32)
        self._tx_ns = np.zeros(batch, np.int64)
        self._tx_flags = np.zeros(batch, np.uint8)
        self._notes = list(sock.notes)
        self.pending_send_errors = 0  # ENOBUFS of a partial sendmmsg, reported at the next recv
        self._tx_fd = self._fd
        self._link_tx: _PySocket | None = None

    @property
    def socket(self) -> IcmpSocket:
        return self._sock

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def notes(self) -> tuple[str, ...]:
        """One line per fallback taken by the socket and its TX stamping, for the run header."""
        return tuple(self._notes)

    def fileno(self) -> int:
        return self._fd

    def kernel_drops(self) -> int:
        """The socket's drop counter now (SO_MEMINFO); RecvBatch has it as of the last packet.
        Counts every ICMP packet refused for a full buffer, even ones the filter would drop."""
        info = self._sock.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
        return int(struct.unpack_from("=9I", info)[8])  # SK_MEMINFO_DROPS

    def use_link_tx(self, link: _PySocket, name_bytes: int) -> None:
        """Send through `link` (an AF_PACKET socket, owned from now on) instead: each packet
        is then a whole IPv4 datagram and its destination a sockaddr_ll of name_bytes."""
        if self.tx_stamps_enabled:
            raise ValueError("kernel TX stamps are read from the raw socket: not with link TX")
        names = np.zeros((self._batch, name_bytes), np.uint8)
        hdr = self._tx_msgs["hdr"]
        hdr["name"] = names.ctypes.data + self._index * name_bytes
        hdr["namelen"] = name_bytes
        self._link_names, self._addr_col = names, names
        self._link_tx, self._tx_fd = link, link.fileno()

    def close(self) -> None:
        if self._link_tx is not None:
            self._link_tx.close()
        self._sock.close()

    def __enter__(self) -> BatchIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, packets: NDArray[np.uint8], dst: NDArray[Any], first_id: int = 0) -> SendResult:
        """Send row i of `packets` to dst[i] (IPv4: host-order uint32; IPv6: sockaddr_in6 rows,
        `families.ipv6_names`; after use_link_tx, rows of sockaddr_ll bytes), in order, batch by
        batch.
        With TX stamps on, row i is stamped with OPT_ID first_id + i (mod 2**32): pass the
        number of packets sent since enable_tx_timestamps(). ENOBUFS/EAGAIN end the call with
        what went; other failures raise SocketProblem."""
        if packets.ndim != 2 or packets.dtype != np.uint8 or not packets.flags.c_contiguous:
            raise ValueError("packets must be a C-contiguous uint8 array of shape [n, length]")
        n, length = packets.shape
        if len(dst) != n:
            raise ValueError(f"{n} packets but {len(dst)} destinations")
        base, sent, pending = packets.__array_interface__["data"][0], 0, 0
        while sent < n:
            k = min(self._batch, n - sent)
            self._addr_col[:k] = dst[sent : sent + k]
            at = base + sent * length
            if self._iov_for[0] != at or self._iov_for[1] != length or self._iov_for[2] < k:
                # A builder reuses its buffer: usually the iovecs already point at these rows.
                np.multiply(self._index[:k], length, out=self._scratch[:k])
                self._scratch[:k] += at
                self._iov_base[:k] = self._scratch[:k]
                self._tx_iov["len"][:k] = length
                self._iov_for = (at, length, k)
            if self._ids_exact:
                np.add(self._index32[:k], (first_id + sent) & 0xFFFFFFFF, out=self._tx_id_col[:k])
            went: int = sendmmsg(self._tx_fd, self._tx_msgs_ptr, k, DONTWAIT)
            if went >= 0:  # short count: the kernel drops the error; the next recv reports it
                sent += went
                pending = 0 if went else pending  # the tries are per message, not per call
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in _SOFT_SEND_ERRNOS:
                self._counter_broken("a send was refused")
                return SendResult(sent, err)
            if self._datagram and pending < PENDING_ERROR_TRIES:
                pending += 1  # an ICMP error's pending errno (errqueue.py): it is now cleared
                continue
            where = self._describe(dst[sent])
            raise send_problem(where, err) from None
        return SendResult(sent, 0)

    def _describe(self, address: Any) -> str:
        if self._link_tx is not None:
            return "a link-layer next hop"
        if self._sock.spec.family == socket.AF_INET:
            return str(ipaddress.IPv4Address(int(address)))
        text = str(ipaddress.IPv6Address(bytes(address["addr"])))
        return f"{text}%{address['scope_id']}" if address["scope_id"] else text

    def recv(self) -> RecvBatch:
        """Whatever is queued, up to `batch` packets, without waiting."""
        ring = self._rx
        n = ring.receive(self._fd, DONTWAIT)
        if n == -errno.ENOBUFS:
            # sendmmsg keeps the error of a partial batch for the socket's next call; the
            # refused packet was retried, so it is counted and the receive done again.
            self.pending_send_errors += 1
            self._counter_broken("a send was refused")
            n = ring.receive(self._fd, DONTWAIT)
        for _ in range(PENDING_ERROR_TRIES if self._datagram else 0):
            if n >= 0 or n in (-errno.EAGAIN, -errno.EINTR):
                break
            n = ring.receive(self._fd, DONTWAIT)  # that was an ICMP error's errno (errqueue.py)
        now_ns = time.time_ns()  # the user-space stamp for rows the kernel did not stamp
        if n <= 0:
            if n in (0, -errno.EAGAIN, -errno.EINTR):
                n = 0
            else:
                raise problem("receiving", -n)
        rx_ns, rx_flags = self._rx_ns[:n], self._rx_flags[:n]
        if n and self._plain_stamps(n, rx_ns, now_ns):
            rx_flags = self._plain_flags[:n]
        elif n:
            rx_ns[:] = now_ns
            rx_flags[:] = 0
            stamps_at, drops_at = cmsg_offsets(ring.ctrl[:n], ring.controllen[:n], self._rx_keys)
            if self._sock.rx_scm:
                read_stamps(ring.ctrl, stamps_at, rx_ns, rx_flags, _RX_SOFT, self._rx_hard)
            with_drops = np.flatnonzero(drops_at >= 0)
            if with_drops.size:  # the kernel adds this cmsg only once the counter is nonzero
                last = int(with_drops[-1])
                self._dropped_total = int(ring.ctrl[last].view(np.uint32)[drops_at[last] // 4])
        truncated = int(np.count_nonzero(ring.flags[:n] & TRUNC))
        return RecvBatch(
            n, ring.data[:n], ring.lengths[:n], rx_ns, rx_flags, truncated, self._dropped_total
        )

    def control_bytes(self, key: int, n: int) -> NDArray[np.int64]:
        """The first data byte of cmsg `key` (cmsg_key) in each of the last recv's n rows, -1
        where it is absent: a TOS (IP_TOS is a byte, IPV6_TCLASS a little-endian int)."""
        ring = self._rx
        (at,) = cmsg_offsets(ring.ctrl[:n], ring.controllen[:n], (key,))
        out = np.full(n, -1, np.int64)
        has = np.flatnonzero(at >= 0)
        out[has] = ring.ctrl[has, at[has]]
        return out

    def _plain_stamps(self, n: int, rx_ns: NDArray[np.int64], now_ns: int) -> bool:
        """Fill rx_ns if every row's control data is the usual one (the stamp cmsg alone, or
        nothing in user-space mode) and every stamp is set; else leave it to cmsg parsing."""
        ring = self._rx
        if not (ring.controllen[:n] == self._plain_ctrl).all():
            return False
        if not self._plain_ctrl:
            rx_ns[:] = now_ns
            return True
        return lone_stamp(ring.ctrl_words[:n], self._rx_keys[0], rx_ns)

    def enable_tx_timestamps(self) -> RecordFlag:
        """Ask for a kernel (or NIC) stamp of every packet sent from now on, numbered by OPT_ID
        from 0; returns TX_KERNEL or TX_HARDWARE. Read them with read_tx_timestamps(). On
        Linux 6.13+ each send carries its own id (SCM_TS_OPT_ID), so a refused send cannot
        shift the numbering; older kernels count sends, and after a refusal the stamps are
        given up (read_tx_timestamps() returns none, and a note says so)."""
        self._tx_flag = start_tx_stamps(self._sock, self._notes)
        self._ids_exact = kernel_takes_tx_ids()
        if self._ids_exact:
            hdr = self._tx_msgs["hdr"]
            hdr["control"] = self._tx_ctrl.ctypes.data + self._index * _TX_CTRL_BYTES
            hdr["controllen"] = _TX_CTRL_BYTES
        else:
            self._notes.append(
                "this kernel cannot number sends (SCM_TS_OPT_ID, Linux 6.13+): TX stamps "
                "follow the socket's send counter and are given up after a refused send"
            )
        if self._errq is None:
            self._errq = RecvRing(self._batch, self._quote_bytes, _ERRQ_CTRL_BYTES)
        return self._tx_flag

    def _counter_broken(self, why: str) -> None:
        """In counter mode a refused send may or may not have used up an OPT_ID: stop."""
        if self.tx_stamps_enabled and not self._ids_exact and not self._ids_lost:
            self._ids_lost = True
            self._notes.append(f"{why}: kernel TX stamps given up, send times are user-space")
            stop_tx_stamps(self._sock)

    @property
    def tx_stamps_live(self) -> bool:
        """TX stamps are enabled and still matched to sends."""
        return self.tx_stamps_enabled and not self._ids_lost

    @property
    def tx_stamps_enabled(self) -> bool:
        """enable_tx_timestamps() was called: the error queue must be read (and drained)."""
        return self._tx_flag is not RecordFlag.NONE

    def _errq_offsets(self, ring: RecvRing, n: int) -> list[NDArray[np.int64]]:
        """Where each stamp message's two cmsgs are: read as columns when every row has the
        layout the stamps so far had (the usual case), else walked (cmsg_offsets)."""
        layout, used = self._errq_layout, ring.controllen[:n]
        if layout is not None and layout_holds(
            layout, ring.ctrl_words[:n], used, self._errq_key_words
        ):
            return [np.full(n, at, np.int64) for at in layout[1:]]
        found = cmsg_offsets(ring.ctrl[:n], used, self._errq_keys)
        self._errq_layout = layout_of(used, found) or layout
        return found

    def read_tx_timestamps(self) -> TxStamps:
        """Up to `batch` TX stamps from the error queue (MSG_ERRQUEUE), without waiting."""
        ring = self._errq
        if ring is None or not self.tx_stamps_enabled:
            raise RuntimeError("call enable_tx_timestamps() first")
        n = ring.receive(self._fd, ERRQUEUE | DONTWAIT)
        if n < 0:
            if n in (-errno.EAGAIN, -errno.EINTR):
                n = 0
            else:
                raise problem("reading TX timestamps", -n)
        more = n == ring.rows
        if n == 0:
            return TxStamps(0, self._tx_ids[:0], self._tx_ns[:0], self._tx_flags[:0], more)
        stamps_at, err_at = self._errq_offsets(ring, n)
        if self._datagram:  # ICMP errors share the queue: kept for read_icmp_errors
            self._queued += queued_errors(ring, err_at, self._sock.spec)
        if self._ids_lost:
            return TxStamps(0, self._tx_ids[:0], self._tx_ns[:0], self._tx_flags[:0], more)
        ns, flags = self._tx_ns[:n], self._tx_flags[:n]
        ns[:] = 0
        flags[:] = 0
        hard = RecordFlag.TX_HARDWARE if self._tx_flag is RecordFlag.TX_HARDWARE else None
        read_stamps(ring.ctrl, stamps_at, ns, flags, RecordFlag.TX_KERNEL, hard)
        # struct sock_extended_err: u32 errno; u8 origin, type, code, pad; u32 info; u32 data
        rows = np.flatnonzero(err_at >= 0)
        words = ring.ctrl.view(np.uint32)[rows]
        at = err_at[rows] // 4
        pick = np.arange(rows.size)
        origin = ring.ctrl[rows, err_at[rows] + 4]
        good = (origin == SO_EE_ORIGIN_TIMESTAMPING) & (words[pick, at + 2] == SCM_TSTAMP_SND)
        good &= flags[rows] != 0
        keep = rows[good]
        m = keep.size
        self._tx_ids[:m] = words[pick[good], at[good] + 3]
        self._tx_ns[:m] = ns[keep]
        self._tx_flags[:m] = flags[keep]
        return TxStamps(m, self._tx_ids[:m], self._tx_ns[:m], self._tx_flags[:m], more)

    def read_icmp_errors(self) -> list[QueuedError]:
        """The ICMP errors about our probes queued since the last call: a datagram socket (ICMP
        or UDP probes) gets them on its error queue (a raw one reads them as packets: always
        []). With TX stamps on, read_tx_timestamps drains that queue, so call it first."""
        ring = self._errq
        if ring is not None and self._datagram and not self.tx_stamps_enabled:
            for _ in range(64):
                n = ring.receive(self._fd, ERRQUEUE | DONTWAIT)
                if n in (-errno.EAGAIN, -errno.EINTR, 0):
                    break
                if n < 0:
                    raise problem("reading ICMP errors", -n)
                _, err_at = cmsg_offsets(ring.ctrl[:n], ring.controllen[:n], self._errq_keys)
                self._queued += queued_errors(ring, err_at, self._sock.spec)
                if n < ring.rows:
                    break
        out, self._queued = self._queued, []
        return out
