"""sendmmsg(2)/recvmmsg(2) over numpy buffers: the socket layer's batch plumbing.

Owns the LP64 layouts of struct iovec, msghdr and mmsghdr (ctypes, and numpy dtypes built from
them), the libc bindings of the two syscalls, and the buffers they fill: a receive ring of one
data and one control slot per message, and send headers pointing at a sockaddr array. Only the
socket modules (`sockets`, `batchio`) and the lab's reflector use it; it opens no socket itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
from typing import Any

import numpy as np
from numpy.typing import NDArray

DONTWAIT, TRUNC, ERRQUEUE = int(socket.MSG_DONTWAIT), int(socket.MSG_TRUNC), 0x2000


class Iovec(ctypes.Structure):
    """struct iovec (<bits/types/struct_iovec.h>), the base pointer held as an integer."""

    _fields_ = (("base", ctypes.c_size_t), ("len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):
    """struct msghdr (<sys/socket.h>): pointers held as integers so numpy can fill them in bulk."""

    _fields_ = (
        ("name", ctypes.c_size_t),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_size_t),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_size_t),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class Mmsghdr(ctypes.Structure):
    """struct mmsghdr: one message of a sendmmsg/recvmmsg batch and the bytes it moved."""

    _fields_ = (("hdr", Msghdr), ("len", ctypes.c_uint))


IOVEC = np.dtype(Iovec)
MMSGHDR = np.dtype(Mmsghdr)  # fields `hdr` (name, namelen, iov, ..., flags) and `len`
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
sendmmsg: Any = _libc.sendmmsg  # (fd, msgs, count, flags) -> sent, or -1 and errno
sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
recvmmsg: Any = _libc.recvmmsg  # (fd, msgs, count, flags, timeout) -> received, or -1
recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)


def send_headers(names: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """(iovecs, mmsghdrs) for len(names) one-buffer messages, message i addressed to names[i].
    The caller fills the iovecs, and keeps `names` alive as long as the headers."""
    rows = len(names)
    index = np.arange(rows, dtype=np.uint64)
    iov = np.zeros(rows, IOVEC)
    msgs = np.zeros(rows, MMSGHDR)
    hdr = msgs["hdr"]
    hdr["name"] = names.ctypes.data + index * names.itemsize
    hdr["namelen"] = names.itemsize
    hdr["iov"] = iov.ctypes.data + index * IOVEC.itemsize
    hdr["iovlen"] = 1
    return iov, msgs


class RecvRing:
    """mmsghdr array for recvmmsg, each row with one data slot and one control slot."""

    def __init__(self, rows: int, slot_bytes: int, ctrl_bytes: int, name_bytes: int = 0) -> None:
        index = np.arange(rows, dtype=np.uint64)
        self.rows, self.ctrl_bytes = rows, ctrl_bytes
        self.data = np.zeros((rows, slot_bytes), np.uint8)
        self.ctrl = np.zeros((rows, ctrl_bytes), np.uint8)
        self.iov = np.zeros(rows, IOVEC)
        self.iov["base"] = self.data.ctypes.data + index * slot_bytes
        self.iov["len"] = slot_bytes
        self.msgs = np.zeros(rows, MMSGHDR)
        hdr = self.msgs["hdr"]
        hdr["iov"] = self.iov.ctypes.data + index * IOVEC.itemsize
        hdr["iovlen"] = 1
        hdr["control"] = self.ctrl.ctypes.data + index * ctrl_bytes
        # With name_bytes, each row also gets the sender's (or, on an error queue, the
        # original destination's) address; the kernel rewrites namelen, so it is reset per call.
        self.names = np.zeros((rows, name_bytes), np.uint8)
        if name_bytes:
            hdr["name"] = self.names.ctypes.data + index * name_bytes
        self._namelen, self._name_bytes = hdr["namelen"], name_bytes
        self.controllen, self.flags, self.lengths = (
            hdr["controllen"],
            hdr["flags"],
            self.msgs["len"],
        )
        self.msgs_ptr = self.msgs.ctypes.data  # numpy's .ctypes costs a microsecond a call
        self.ctrl_words = self.ctrl.view(np.int64)
        self._filled = rows  # rows whose controllen the kernel may have shrunk

    def receive(self, fd: int, flags: int) -> int:
        """Messages read, or -errno."""
        self.controllen[: self._filled] = self.ctrl_bytes  # the kernel shrinks it to what it wrote
        if self._name_bytes:
            self._namelen[: self._filled] = self._name_bytes
        n: int = recvmmsg(fd, self.msgs_ptr, self.rows, flags, None)
        self._filled = max(n, 0)
        return n if n >= 0 else -ctypes.get_errno()
