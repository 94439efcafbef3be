"""recvmmsg(2) / sendmmsg(2) for the reflector, with the message headers kept in numpy arrays.

One syscall moves a whole batch; lengths, flags and destination addresses are read and written
as numpy columns, so no Python runs per packet. The struct layouts are Linux x86-64/aarch64
(LP64) and are checked against ctypes when this module is imported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

import numpy as np
import numpy.typing as npt

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
SO_TIMESTAMPNS = 35  # also the cmsg type (SCM_TIMESTAMPNS): struct timespec, CLOCK_REALTIME
CTRL_BYTES = 32  # struct cmsghdr (16) + struct timespec (16)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.recvmmsg.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_void_p,
]
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


MMSG_DTYPE = np.dtype(
    {
        "names": ["name", "namelen", "iov", "iovlen", "control", "controllen", "flags", "len"],
        "formats": ["<u8", "<u4", "<u8", "<u8", "<u8", "<u8", "<i4", "<u4"],
        "offsets": [
            _MsgHdr.msg_name.offset,
            _MsgHdr.msg_namelen.offset,
            _MsgHdr.msg_iov.offset,
            _MsgHdr.msg_iovlen.offset,
            _MsgHdr.msg_control.offset,
            _MsgHdr.msg_controllen.offset,
            _MsgHdr.msg_flags.offset,
            _MMsgHdr.msg_len.offset,
        ],
        "itemsize": ctypes.sizeof(_MMsgHdr),
    }
)
IOVEC_DTYPE = np.dtype([("base", "<u8"), ("len", "<u8")])
# One SCM_TIMESTAMPNS message: struct cmsghdr, then struct timespec.
STAMP_DTYPE = np.dtype(
    [("len", "<u8"), ("level", "<i4"), ("type", "<i4"), ("sec", "<i8"), ("nsec", "<i8")]
)
# struct sockaddr_in (RFC 3493 names): family in host order, port and address in network order.
SOCKADDR_IN_DTYPE = np.dtype(
    [("family", "<u2"), ("port", ">u2"), ("addr", "u1", (4,)), ("zero", "u1", (8,))]
)
assert ctypes.sizeof(_MMsgHdr) == MMSG_DTYPE.itemsize and IOVEC_DTYPE.itemsize == 16
assert SOCKADDR_IN_DTYPE.itemsize == 16 and STAMP_DTYPE.itemsize == CTRL_BYTES


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


class RecvBatch:
    """A receive buffer of `batch` rows of `snap` bytes, filled by one recvmmsg call, with the
    kernel's receive time of each row when the socket has SO_TIMESTAMPNS on."""

    def __init__(self, batch: int, snap: int) -> None:
        self.snap = snap
        self.buf: npt.NDArray[np.uint8] = np.zeros((batch, snap), dtype=np.uint8)
        self.iov = np.zeros(batch, dtype=IOVEC_DTYPE)
        self.iov["base"] = self.buf.ctypes.data + np.arange(batch, dtype=np.uint64) * snap
        self.iov["len"] = snap
        self.hdr = np.zeros(batch, dtype=MMSG_DTYPE)
        self.hdr["iov"] = self.iov.ctypes.data + np.arange(batch, dtype=np.uint64) * 16
        self.hdr["iovlen"] = 1
        self.ctrl = np.zeros(batch, dtype=STAMP_DTYPE)
        self.hdr["control"] = self.ctrl.ctypes.data + np.arange(batch, dtype=np.uint64) * CTRL_BYTES

    def recv(self, sock: socket.socket) -> int:
        """Receive up to `batch` datagrams without blocking; 0 when none is waiting."""
        self.hdr["controllen"] = CTRL_BYTES  # the kernel shrinks it to what it wrote
        self.ctrl["type"] = 0
        n: int = _libc.recvmmsg(
            sock.fileno(), self.hdr.ctypes.data, len(self.hdr), MSG_DONTWAIT, None
        )
        if n < 0:
            if ctypes.get_errno() in (errno.EAGAIN, errno.EINTR):
                return 0
            _raise_errno("recvmmsg")
        return n

    def lengths(self, n: int) -> npt.NDArray[np.int64]:
        return self.hdr["len"][:n].astype(np.int64)

    def stamps_ns(self, n: int) -> npt.NDArray[np.int64]:
        """Kernel receive times (CLOCK_REALTIME ns) of the last batch's rows; 0 where none."""
        c = self.ctrl[:n]
        ok = (c["level"] == socket.SOL_SOCKET) & (c["type"] == SO_TIMESTAMPNS)
        ok &= self.hdr["controllen"][:n] >= CTRL_BYTES
        out: npt.NDArray[np.int64] = np.where(ok, c["sec"] * 1_000_000_000 + c["nsec"], 0)
        return out

    def truncated(self, n: int) -> npt.NDArray[np.bool_]:
        flags: npt.NDArray[np.int32] = self.hdr["flags"][:n]
        out: npt.NDArray[np.bool_] = (flags & MSG_TRUNC) != 0
        return out


class SendBatch:
    """Up to `batch` IPv4 datagrams pointing at caller-owned memory, sent by sendmmsg."""

    def __init__(self, batch: int) -> None:
        self.iov = np.zeros(batch, dtype=IOVEC_DTYPE)
        self.names = np.zeros(batch, dtype=SOCKADDR_IN_DTYPE)
        self.names["family"] = socket.AF_INET
        self.hdr = np.zeros(batch, dtype=MMSG_DTYPE)
        self.hdr["iov"] = self.iov.ctypes.data + np.arange(batch, dtype=np.uint64) * 16
        self.hdr["iovlen"] = 1
        self.hdr["name"] = self.names.ctypes.data + np.arange(batch, dtype=np.uint64) * 16
        self.hdr["namelen"] = 16

    def send(
        self,
        sock: socket.socket,
        base: npt.NDArray[np.uint64],
        length: npt.NDArray[np.int64],
        dst: npt.NDArray[np.uint8],
    ) -> tuple[int, int]:
        """Send datagrams (base address, length, 4-byte destination); returns (sent, failed).

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
                ptr = self.hdr.ctypes.data + done * MMSG_DTYPE.itemsize
                k: int = _libc.sendmmsg(sock.fileno(), ptr, m - done, 0)
                if k > 0:
                    done += k
                    sent += k
                elif ctypes.get_errno() == errno.EINTR:
                    continue
                else:  # the first message failed (e.g. ENOBUFS): count it and move past it
                    done += 1
                    failed += 1
        return sent, failed
