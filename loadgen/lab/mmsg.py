"""recvmmsg(2) / sendmmsg(2) for the reflector, with the message headers kept in numpy arrays.

One syscall moves a whole batch; lengths, flags and destination addresses are read and written
as numpy columns, so no Python runs per packet. The struct layouts and syscall bindings are the
socket layer's (`loadgen.net.mmsg`); this module adds the reflector's stamp cmsg and the
socket names of either IP version (an IPv6 raw socket gives a request's source only there),
and opens the raw socket they serve.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

import numpy as np
import numpy.typing as npt

from loadgen.net.mmsg import MMSGHDR, RecvRing, send_headers, sendmmsg
from loadgen.wire.family import IPPROTO_ICMPV6, Icmp6Type, IcmpType

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
SO_TIMESTAMPNS = 35  # also the cmsg type (SCM_TIMESTAMPNS): struct timespec, CLOCK_REALTIME
CTRL_BYTES = 32  # struct cmsghdr (16) + struct timespec (16)
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1  # at level IPPROTO_ICMPV6: 256 bits, a set bit blocks that type
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33

# One SCM_TIMESTAMPNS message: struct cmsghdr, then struct timespec.
STAMP_DTYPE = np.dtype(
    [("len", "<u8"), ("level", "<i4"), ("type", "<i4"), ("sec", "<i8"), ("nsec", "<i8")]
)
# struct sockaddr_in (RFC 3493 names): family in host order, port and address in network order.
SOCKADDR_IN_DTYPE = np.dtype(
    [("family", "<u2"), ("port", ">u2"), ("addr", "u1", (4,)), ("zero", "u1", (8,))]
)
# struct sockaddr_in6 (RFC 3493): family, port, flow info, address, scope id.
SOCKADDR_IN6_DTYPE = np.dtype(
    [
        ("family", "<u2"),
        ("port", ">u2"),
        ("flowinfo", ">u4"),
        ("addr", "u1", (16,)),
        ("scope_id", "<u4"),
    ]
)
SOCKADDR = {4: (socket.AF_INET, SOCKADDR_IN_DTYPE), 6: (socket.AF_INET6, SOCKADDR_IN6_DTYPE)}
assert SOCKADDR_IN_DTYPE.itemsize == 16 and STAMP_DTYPE.itemsize == CTRL_BYTES
assert SOCKADDR_IN6_DTYPE.itemsize == 28


def open_raw_socket(version: int = 4) -> socket.socket:
    """The reflector's raw socket of IP `version`: echo requests only, big buffers, kernel
    receive stamps."""
    if version == 6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_ICMPV6)
        blocked = [0xFFFFFFFF] * 8  # ICMP6_FILTER blocks what is set: pass echo requests only
        blocked[Icmp6Type.ECHO_REQUEST >> 5] &= ~(1 << (Icmp6Type.ECHO_REQUEST & 31))
        sock.setsockopt(IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        # ICMP_FILTER is a mask of types to *block*: let only echo requests through.
        sock.setsockopt(
            SOL_RAW, ICMP_FILTER, struct.pack("I", ~(1 << IcmpType.ECHO_REQUEST) & 0xFFFFFFFF)
        )
    for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
        sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    # The kernel's receive time of each request: hold times start when a request arrived,
    # not when this process got round to reading it.
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return sock


class RecvBatch:
    """A receive buffer of `batch` rows of `snap` bytes, filled by one recvmmsg call, with the
    kernel's receive time of each row when the socket has SO_TIMESTAMPNS on. IPv6 (`version`
    6): each row's source address is in `names` (the datagram starts at the ICMPv6 header)."""

    def __init__(self, batch: int, snap: int, version: int = 4) -> None:
        self.snap = snap
        self._ring = RecvRing(batch, snap, CTRL_BYTES)
        self.buf: npt.NDArray[np.uint8] = self._ring.data
        self.ctrl = self._ring.ctrl.view(STAMP_DTYPE)[:, 0]  # one stamp cmsg per row
        self.names = np.zeros(batch if version == 6 else 0, dtype=SOCKADDR_IN6_DTYPE)
        if version == 6:  # the kernel writes each source here; its length stays 28
            hdr = self._ring.msgs["hdr"]
            index = np.arange(batch, dtype=np.uint64)
            hdr["name"] = self.names.ctypes.data + index * SOCKADDR_IN6_DTYPE.itemsize
            hdr["namelen"] = SOCKADDR_IN6_DTYPE.itemsize

    def recv(self, sock: socket.socket) -> int:
        """Receive up to `batch` datagrams without blocking; 0 when none is waiting."""
        self.ctrl["type"] = 0
        n = self._ring.receive(sock.fileno(), MSG_DONTWAIT)
        if n < 0:
            if -n in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(-n, f"recvmmsg: {os.strerror(-n)}")
        return n

    def lengths(self, n: int) -> npt.NDArray[np.int64]:
        return self._ring.lengths[:n].astype(np.int64)

    def stamps_ns(self, n: int) -> npt.NDArray[np.int64]:
        """Kernel receive times (CLOCK_REALTIME ns) of the last batch's rows; 0 where none."""
        c = self.ctrl[:n]
        ok = (c["level"] == socket.SOL_SOCKET) & (c["type"] == SO_TIMESTAMPNS)
        ok &= self._ring.controllen[:n] >= CTRL_BYTES
        out: npt.NDArray[np.int64] = np.where(ok, c["sec"] * 1_000_000_000 + c["nsec"], 0)
        return out

    def truncated(self, n: int) -> npt.NDArray[np.bool_]:
        flags: npt.NDArray[np.int32] = self._ring.flags[:n]
        out: npt.NDArray[np.bool_] = (flags & MSG_TRUNC) != 0
        return out


class SendBatch:
    """Up to `batch` datagrams of IP `version` pointing at caller-owned memory, sent by
    sendmmsg."""

    def __init__(self, batch: int, version: int = 4) -> None:
        family, dtype = SOCKADDR[version]
        self.names = np.zeros(batch, dtype=dtype)
        self.names["family"] = family
        self.iov, self.hdr = send_headers(self.names)

    def send(
        self,
        sock: socket.socket,
        base: npt.NDArray[np.uint64],
        length: npt.NDArray[np.int64],
        dst: npt.NDArray[np.uint8],
    ) -> tuple[int, int]:
        """Send datagrams (base address, length, 4- or 16-byte destination); returns (sent,
        failed).

        The memory behind `base` must stay alive and unchanged until this returns.
        """
        total = len(base)
        sent = failed = 0
        cap = len(self.hdr)
        for start in range(0, total, cap):
            m = min(cap, total - start)
            self.iov["base"][:m] = base[start : start + m]
            self.iov["len"][:m] = length[start : start + m]
            self.names["addr"][:m] = dst[start : start + m]
            done = 0
            while done < m:
                ptr = self.hdr.ctypes.data + done * MMSGHDR.itemsize
                k: int = sendmmsg(sock.fileno(), ptr, m - done, 0)
                if k > 0:
                    done += k
                    sent += k
                elif ctypes.get_errno() == errno.EINTR:
                    continue
                else:  # the first message failed (e.g. ENOBUFS): count it and move past it
                    done += 1
                    failed += 1
        return sent, failed
