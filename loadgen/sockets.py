"""Raw ICMP sockets and their batched I/O: the only module of loadgen that creates sockets.

Owns the socket options (TTL, TOS, buffers, drop counter, BPF attach), the choice of timestamp
source and the words that report it, sendmmsg/recvmmsg through ctypes over preallocated numpy
buffers, vectorised control-message parsing, and kernel TX timestamps from the error queue.
Kernel interfaces: socket(7), packet timestamping (Documentation/networking/timestamping.rst).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass
from enum import IntFlag, StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.errors import PermissionProblem, SocketProblem, UsageError
from loadgen.records import RecordFlag

# <asm-generic/socket.h>, <linux/in.h>, <linux/sockios.h>: absent from Python's socket module.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # also the SCM type of its cmsg
SO_TIMESTAMPING = 37  # also SCM_TIMESTAMPING (64-bit timespecs on 64-bit kernels)
SO_RXQ_OVFL = 40
SO_MEMINFO = 55
SCM_TS_OPT_ID = 81  # Linux 6.13+: the OPT_ID of one send, chosen by the sender
IP_RECVERR = 11
SIOCSHWTSTAMP = 0x89B0
SIOCGHWTSTAMP = 0x89B1
SO_EE_ORIGIN_TIMESTAMPING = 4
SCM_TSTAMP_SND = 0
BPF_MAXINSNS = 4096
_CMSG_HDR = 16  # struct cmsghdr on LP64: size_t len, int level, int type; data 8-aligned
_RX_CTRL_BYTES = 128  # SCM_TIMESTAMPING (64) + SO_RXQ_OVFL (24), with room to spare
_ERRQ_CTRL_BYTES = 256  # SCM_TIMESTAMPING (64) + IP_RECVERR with offender address (48)
_TX_CTRL_BYTES = 24  # CMSG_SPACE(4): one SCM_TS_OPT_ID per sent message
_SOFT_SEND_ERRNOS = (errno.ENOBUFS, errno.EAGAIN)
_BUG = "please report this line as a bug in loadgen"
_SEND_FIXES = {
    errno.EPERM: "a firewall rule refused the probe: check `nft list ruleset` for output rules",
    errno.EACCES: "the target is a broadcast address: remove it from the targets",
}
_NEED_RAW = (
    "raw ICMP sockets need root or CAP_NET_RAW: run as root, or grant it with "
    "`sudo setcap cap_net_raw+ep <python path>`"
)


class Sof(IntFlag):
    """SOF_TIMESTAMPING_* bits of <linux/net_tstamp.h>."""

    TX_HARDWARE = 1 << 0
    TX_SOFTWARE = 1 << 1
    RX_HARDWARE = 1 << 2
    RX_SOFTWARE = 1 << 3
    SOFTWARE = 1 << 4
    RAW_HARDWARE = 1 << 6
    OPT_ID = 1 << 7
    OPT_TSONLY = 1 << 11


class TimestampMode(StrEnum):
    """Profile key `timestamps`. AUTO uses NIC stamps only if the NIC already makes them."""

    AUTO = "auto"
    HARDWARE = "hardware"  # configures the NIC (SIOCSHWTSTAMP); needs `interface`
    SOFTWARE = "software"
    USER = "user"


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_size_t), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):  # pointers held as integers so numpy can fill them in bulk
    _fields_ = (
        ("name", ctypes.c_size_t),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_size_t),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_size_t),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_IOVEC = np.dtype(_Iovec)
_MMSGHDR = np.dtype(_Mmsghdr)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_sendmmsg: Any = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_recvmmsg: Any = _libc.recvmmsg
_recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """What differs between IPv4 and IPv6 raw ICMP sockets. Only IPv4 is defined so far."""

    family: int
    proto: int
    ip_level: int
    hops_option: int  # IP_TTL / IPV6_UNICAST_HOPS
    class_option: int  # IP_TOS / IPV6_TCLASS
    recverr: tuple[int, int]  # (level, type) of the error-queue cmsg
    sockaddr: np.dtype[Any]  # field `addr` takes the destination column of `send`


IPV4 = FamilySpec(
    family=socket.AF_INET,
    proto=socket.IPPROTO_ICMP,
    ip_level=socket.IPPROTO_IP,
    hops_option=socket.IP_TTL,
    class_option=socket.IP_TOS,
    recverr=(socket.IPPROTO_IP, IP_RECVERR),
    sockaddr=np.dtype([("family", "=u2"), ("port", ">u2"), ("addr", ">u4"), ("zero", "u1", 8)]),
)


def _set_option(sock: socket.socket, level: int, option: int, value: int | bytes) -> None:
    """Every setsockopt goes through here, so tests can make one option fail."""
    sock.setsockopt(level, option, value)


def problem(what: str, err: int, fix: str = "") -> PermissionProblem | SocketProblem:
    """The one-line error for a failed socket call: what failed, why, and what to do."""
    if err in (errno.EPERM, errno.EACCES) and not fix:
        return PermissionProblem(f"{what}: {_NEED_RAW}")
    fixes = {
        errno.ENOPROTOOPT: 'this kernel lacks the option: set timestamps = "user" or upgrade it',
        errno.ENOMEM: "the kernel is short of memory: lower rcvbuf_bytes/sndbuf_bytes",
        errno.ENOBUFS: "the kernel is short of memory: lower rcvbuf_bytes/sndbuf_bytes",
        errno.EMFILE: "too many open files: raise the limit with `ulimit -n`",
        errno.ENFILE: "the system is out of file handles: close other programs and retry",
        errno.EAFNOSUPPORT: "this kernel lacks the address family: use IPv4 targets",
        errno.EHOSTUNREACH: "no route to the target: check it with `ip route get <target>`",
        errno.ENETUNREACH: "no route to the target: check it with `ip route get <target>`",
        errno.EMSGSIZE: "the probe is larger than the path MTU allows: lower the size (-s)",
    }
    name = errno.errorcode.get(err, str(err))
    return SocketProblem(f"{what}: {name} ({os.strerror(err)}); {fix or fixes.get(err, _BUG)}")


@dataclass(frozen=True, slots=True)
class IcmpSocket:
    """An open, configured raw ICMP socket and what its RX timestamps are made of."""

    sock: socket.socket
    spec: FamilySpec
    rx_flags: RecordFlag  # RX_KERNEL, RX_HARDWARE or NONE (user space)
    rx_source: str  # "kernel-software", "hardware", "kernel (SO_TIMESTAMPNS)", "user-space"
    rx_scm: int  # cmsg type carrying RX stamps (SO_TIMESTAMPING/SO_TIMESTAMPNS), 0 if none
    tsflags: Sof  # SO_TIMESTAMPING flags in force (0 unless rx_scm is SO_TIMESTAMPING)
    rcvbuf_bytes: int  # as the kernel reports it (twice the request, capped)
    sndbuf_bytes: int
    interface: str | None
    notes: tuple[str, ...]  # one line per fallback taken, for the run's header

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def open_icmp_v4(
    *,
    ttl: int,
    tos: int,
    rcvbuf_bytes: int = 8 << 20,
    sndbuf_bytes: int = 4 << 20,
    timestamps: TimestampMode,
    bpf_program: bytes | None,
    interface: str | None = None,
) -> IcmpSocket:
    """A non-blocking raw ICMPv4 socket, configured; raises PermissionProblem/SocketProblem.
    `interface` is only used to look at (HARDWARE: configure) the NIC's hardware stamping."""
    spec = IPV4  # everything below is written against the spec, so IPv6 can reuse it
    if not 1 <= ttl <= 255 or not 0 <= tos <= 255:
        raise UsageError(f"ttl must be 1-255 and tos 0-255 (got {ttl}, {tos}): fix -t/-z")
    try:
        sock = socket.socket(spec.family, socket.SOCK_RAW, spec.proto)
    except OSError as exc:
        raise problem("opening a raw ICMP socket", exc.errno or 0) from None
    try:
        sock.setblocking(False)
        notes: list[str] = []
        _configure(sock, spec, ttl, tos, rcvbuf_bytes, sndbuf_bytes, notes)
        if bpf_program is not None:
            _attach_filter(sock, bpf_program)
        flags, source, scm, tsflags = _rx_stamps(sock, timestamps, interface, notes)
        return IcmpSocket(
            sock,
            spec,
            flags,
            source,
            scm,
            tsflags,
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            interface,
            tuple(notes),
        )
    except BaseException:
        sock.close()
        raise


def _configure(
    sock: socket.socket,
    spec: FamilySpec,
    ttl: int,
    tos: int,
    rcvbuf_bytes: int,
    sndbuf_bytes: int,
    notes: list[str],
) -> None:
    for level, option, value, what in (
        (spec.ip_level, spec.hops_option, ttl, "setting the TTL"),
        (spec.ip_level, spec.class_option, tos, "setting the TOS"),
        (socket.SOL_SOCKET, SO_RXQ_OVFL, 1, "enabling the drop counter (SO_RXQ_OVFL)"),
    ):
        try:
            _set_option(sock, level, option, value)
        except OSError as exc:
            raise problem(what, exc.errno or 0) from None
    for force, plain, size, key, sysctl in (
        (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf_bytes, "rcvbuf_bytes", "net.core.rmem_max"),
        (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf_bytes, "sndbuf_bytes", "net.core.wmem_max"),
    ):
        try:  # FORCE ignores the sysctl cap but needs CAP_NET_ADMIN
            _set_option(sock, socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                _set_option(sock, socket.SOL_SOCKET, plain, size)
            except OSError as exc:
                raise problem(f"setting {key}", exc.errno or 0) from None
            if sock.getsockopt(socket.SOL_SOCKET, plain) < size:
                notes.append(f"{key} capped by {sysctl}: raise it with `sysctl -w {sysctl}={size}`")


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a packed struct sock_filter array, then drop what slipped in before it."""
    count, rest = divmod(len(program), 8)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise ValueError(
            f"a BPF program is 1-{BPF_MAXINSNS} 8-byte instructions, got {len(program)} bytes"
        )
    insns = ctypes.create_string_buffer(program, len(program))  # alive until the kernel copied it
    fprog = _SockFprog(count, ctypes.addressof(insns))
    try:
        _set_option(sock, socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    except OSError as exc:
        raise problem(
            "attaching the BPF filter",
            exc.errno or 0,
            "the kernel rejected the program: this is a bug in loadgen.bpf, report it",
        ) from None
    for _ in range(1 << 16):  # packets queued between socket() and the attach were not filtered
        try:
            sock.recv(1)
        except BlockingIOError:
            break


def _rx_stamps(
    sock: socket.socket, mode: TimestampMode, interface: str | None, notes: list[str]
) -> tuple[RecordFlag, str, int, Sof]:
    """Best RX timestamp source for the mode: SO_TIMESTAMPING, else SO_TIMESTAMPNS, else user."""
    if mode is TimestampMode.USER:
        return RecordFlag.NONE, "user-space", 0, Sof(0)
    hardware = False
    if mode is TimestampMode.HARDWARE and interface is None:
        notes.append("hardware timestamps need `interface`: using kernel software timestamps")
    elif mode in (TimestampMode.HARDWARE, TimestampMode.AUTO) and interface is not None:
        why = nic_stamping(sock, interface, configure=mode is TimestampMode.HARDWARE, tx=False)
        hardware = why is None
        if why is not None and mode is TimestampMode.HARDWARE:
            notes.append(f"no hardware timestamps: {why}; using kernel software timestamps")
    tsflags = Sof.RX_SOFTWARE | Sof.SOFTWARE
    if hardware:
        tsflags |= Sof.RX_HARDWARE | Sof.RAW_HARDWARE
    try:
        _set_option(sock, socket.SOL_SOCKET, SO_TIMESTAMPING, int(tsflags))
    except OSError as exc:
        notes.append(
            f"SO_TIMESTAMPING refused ({os.strerror(exc.errno or 0)}): trying SO_TIMESTAMPNS"
        )
    else:
        if hardware:
            return RecordFlag.RX_HARDWARE, "hardware", SO_TIMESTAMPING, tsflags
        return RecordFlag.RX_KERNEL, "kernel-software", SO_TIMESTAMPING, tsflags
    try:
        _set_option(sock, socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError as exc:
        notes.append(
            f"SO_TIMESTAMPNS refused ({os.strerror(exc.errno or 0)}): using user-space time"
        )
        return RecordFlag.NONE, "user-space", 0, Sof(0)
    return RecordFlag.RX_KERNEL, "kernel (SO_TIMESTAMPNS)", SO_TIMESTAMPNS, Sof(0)


def nic_stamping(sock: socket.socket, interface: str, *, configure: bool, tx: bool) -> str | None:
    """None if `interface` stamps packets in hardware (after SIOCSHWTSTAMP if `configure`),
    else why not. Configuring changes the NIC for every user of it, so AUTO only looks."""
    name = interface.encode()
    if not 0 < len(name) < 16:
        return f"{interface!r} is not an interface name"
    config = (ctypes.c_int * 3)()  # struct hwtstamp_config: flags, tx_type, rx_filter
    ifreq = bytearray(40)  # struct ifreq: name[16], then a pointer to the config
    ifreq[: len(name)] = name
    struct.pack_into("P", ifreq, 16, ctypes.addressof(config))
    try:
        fcntl.ioctl(sock.fileno(), SIOCGHWTSTAMP, ifreq)
        if config[2] != 0 and (config[1] != 0 or not tx):
            return None
    except OSError:
        pass  # older drivers only implement the SET call
    if not configure:
        return f"{interface} is not set up for hardware timestamps"
    config[0], config[1], config[2] = 0, int(tx), 1  # HWTSTAMP_TX_ON?, HWTSTAMP_FILTER_ALL
    try:
        fcntl.ioctl(sock.fileno(), SIOCSHWTSTAMP, ifreq)
    except OSError as exc:
        return f"{interface} cannot stamp in hardware ({os.strerror(exc.errno or 0)})"
    return None


@dataclass(frozen=True, slots=True)
class SendResult:
    sent: int  # packets the kernel took, from the front of the batch
    errno: int  # 0, or ENOBUFS/EAGAIN: packet `sent` was refused and the rest not tried


@dataclass(frozen=True, slots=True)
class RecvBatch:
    """Rows are views of BatchIO's buffers, valid until its next recv()."""

    n: int
    data: NDArray[np.uint8]  # [n, slot_bytes]: IP header onwards (IPv4 raw sockets)
    lengths: NDArray[np.uint32]  # bytes in each row (at most slot_bytes)
    rx_ns: NDArray[np.int64]  # CLOCK_REALTIME; kernel/NIC stamp where rx_flags says so
    rx_flags: NDArray[np.uint8]  # RecordFlag.RX_KERNEL / RX_HARDWARE, 0 = user space
    truncated: int  # rows cut to slot_bytes (MSG_TRUNC)
    dropped_total: int  # socket drop counter (SO_RXQ_OVFL) as of the newest packet that had it

    @property
    def rx_kernel(self) -> NDArray[np.bool_]:
        return np.not_equal(self.rx_flags, 0)


@dataclass(frozen=True, slots=True)
class TxStamps:
    """Kernel TX stamps, views valid until the next read_tx_timestamps()."""

    n: int
    ids: NDArray[np.uint32]  # OPT_ID: the k-th packet sent since enabling has id k (wraps)
    tx_ns: NDArray[np.int64]
    tx_flags: NDArray[np.uint8]  # RecordFlag.TX_KERNEL or TX_HARDWARE
    more: bool  # the error queue may hold more: call again


class _RecvRing:
    """mmsghdr array for recvmmsg, each row with one data slot and one control slot."""

    def __init__(self, rows: int, slot_bytes: int, ctrl_bytes: int) -> None:
        index = np.arange(rows, dtype=np.uint64)
        self.rows, self.ctrl_bytes = rows, ctrl_bytes
        self.data = np.zeros((rows, slot_bytes), np.uint8)
        self.ctrl = np.zeros((rows, ctrl_bytes), np.uint8)
        self.iov = np.zeros(rows, _IOVEC)
        self.iov["base"] = self.data.ctypes.data + index * slot_bytes
        self.iov["len"] = slot_bytes
        self.msgs = np.zeros(rows, _MMSGHDR)
        hdr = self.msgs["hdr"]
        hdr["iov"] = self.iov.ctypes.data + index * _IOVEC.itemsize
        hdr["iovlen"] = 1
        hdr["control"] = self.ctrl.ctypes.data + index * ctrl_bytes
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
        n: int = _recvmmsg(fd, self.msgs_ptr, self.rows, flags, None)
        self._filled = max(n, 0)
        return n if n >= 0 else -ctypes.get_errno()


def cmsg_key(level: int, kind: int) -> int:
    """The cmsghdr (level, type) pair read as one native 64-bit word, for cmsg_offsets."""
    return int(np.array((level, kind), np.int32).view(np.uint64)[0])


def cmsg_offsets(
    ctrl: NDArray[np.uint8], used: NDArray[Any], keys: tuple[int, ...]
) -> list[NDArray[np.int64]]:
    """Byte offset of the data of each wanted cmsg (cmsg_key) in each row, -1 if absent.
    Steps through cmsg positions (one to three), never through rows; a bad length ends a row."""
    rows, width = ctrl.shape
    words = ctrl.reshape(rows, width).view(np.uint64)
    end = used.astype(np.int64)
    found = [np.full(rows, -1, np.int64) for _ in keys]
    # The first cmsg of every row sits at offset 0: read it as columns, without gathers.
    length = words[:, 0].astype(np.int64)
    ok = (end >= _CMSG_HDR) & (length >= _CMSG_HDR) & (length <= end)
    for key, out in zip(keys, found, strict=True):
        np.copyto(out, _CMSG_HDR, where=ok & (words[:, 1] == key))
    at = (length + 7) & ~7  # CMSG_ALIGN
    live = np.flatnonzero(ok & (at + _CMSG_HDR <= end))
    at, end, flat = at[live], end[live], words.reshape(-1)
    while live.size:
        word = live * (width // 8) + at // 8
        length = flat[word].astype(np.int64)
        ok = (length >= _CMSG_HDR) & (at + length <= end)
        level_type = flat[word + 1]
        for key, out in zip(keys, found, strict=True):
            hit = ok & (level_type == key)
            out[live[hit]] = at[hit] + _CMSG_HDR
        at = at + ((length + 7) & ~7)
        keep = ok & (at + _CMSG_HDR <= end)
        live, at, end = live[keep], at[keep], end[keep]
    return found


def read_stamps(
    ctrl: NDArray[np.uint8],
    at: NDArray[np.int64],
    out_ns: NDArray[np.int64],
    out_flags: NDArray[np.uint8],
    soft: RecordFlag,
    hard: RecordFlag | None,
) -> None:
    """Copy the stamp at `at` (-1: none) into out_ns/out_flags where it is nonzero. The first
    timespec is the software one (SCM_TIMESTAMPNS, SCM_TIMESTAMPING ts[0]); when `hard` is
    given, a nonzero SCM_TIMESTAMPING ts[2] (raw hardware) wins over it."""
    words, count = ctrl.view(np.int64), at.size
    span = 6 if hard is not None else 2  # seconds and nanoseconds of ts[0] (ts[1], ts[2])
    rows: NDArray[np.intp] | slice
    if count and at[0] >= 0 and (at == at[0]).all():  # one layout in every row: columns
        rows = slice(0, count)
        grid = words[:count, at[0] // 8 : at[0] // 8 + span]
    else:
        rows = np.flatnonzero(at >= 0)
        grid = words[rows[:, None], (at[rows] // 8)[:, None] + np.arange(span)]
    ns = grid[:, 0] * 1_000_000_000 + grid[:, 1]
    flags: NDArray[np.uint8] | int = int(soft)
    if hard is not None:
        hw_ns = grid[:, 4] * 1_000_000_000 + grid[:, 5]
        is_hw = hw_ns != 0
        ns = np.where(is_hw, hw_ns, ns)
        flags = np.where(is_hw, int(hard), int(soft)).astype(np.uint8)
    good = ns != 0
    if not good.all():  # a stamp of zero means the kernel had none: keep the user-space time
        rows, ns = np.arange(count)[rows][good], ns[good]
        flags = flags if isinstance(flags, int) else flags[good]
    out_ns[rows] = ns
    out_flags[rows] = flags


_DONTWAIT, _TRUNC, _ERRQUEUE = int(socket.MSG_DONTWAIT), int(socket.MSG_TRUNC), 0x2000
_DROPS_KEY = cmsg_key(socket.SOL_SOCKET, SO_RXQ_OVFL)
_TIMESTAMPING_KEY = cmsg_key(socket.SOL_SOCKET, SO_TIMESTAMPING)
_RX_SOFT = RecordFlag.RX_KERNEL


_PySocket = socket.socket  # BatchIO's own `socket` property hides the module in its body


class BatchIO:
    """sendmmsg/recvmmsg over one IcmpSocket with buffers allocated once; owns and closes it."""

    def __init__(self, sock: IcmpSocket, batch: int = 256, slot_bytes: int = 2048) -> None:
        if batch < 1 or slot_bytes < 64:
            raise ValueError("batch must be >= 1 and slot_bytes >= 64")
        self._sock, self._fd, self._batch = sock, sock.fileno(), batch
        index = np.arange(batch, dtype=np.uint64)
        self._index, self._scratch = index, np.zeros(batch, np.uint64)
        self._index32 = np.arange(batch, dtype=np.uint32)
        self._addrs = np.zeros(batch, sock.spec.sockaddr)
        self._addrs["family"] = sock.spec.family
        self._tx_iov = np.zeros(batch, _IOVEC)
        self._tx_msgs = np.zeros(batch, _MMSGHDR)
        hdr = self._tx_msgs["hdr"]
        hdr["name"] = self._addrs.ctypes.data + index * self._addrs.itemsize
        hdr["namelen"] = self._addrs.itemsize
        hdr["iov"] = self._tx_iov.ctypes.data + index * _IOVEC.itemsize
        hdr["iovlen"] = 1
        # One SCM_TS_OPT_ID cmsg per message, attached only once TX stamps are enabled.
        self._tx_ctrl = np.zeros((batch, _TX_CTRL_BYTES // 4), np.uint32)
        self._tx_ctrl.view(np.uint64)[:, 0] = _CMSG_HDR + 4  # CMSG_LEN(sizeof(u32))
        self._tx_ctrl.view(np.uint64)[:, 1] = cmsg_key(socket.SOL_SOCKET, SCM_TS_OPT_ID)
        self._tx_id_col = self._tx_ctrl[:, _CMSG_HDR // 4]
        self._rx = _RecvRing(batch, slot_bytes, _RX_CTRL_BYTES)
        self._rx_ns = np.zeros(batch, np.int64)
        self._rx_flags = np.zeros(batch, np.uint8)
        self._addr_col, self._iov_base = self._addrs["addr"], self._tx_iov["base"]
        self._iov_for = (0, 0, 0)  # (first packet's address, length, rows) the iovecs point at
        # The usual control data of a reply: the stamp cmsg alone, software stamp first.
        self._plain_ctrl = {SO_TIMESTAMPING: _CMSG_HDR + 48, SO_TIMESTAMPNS: _CMSG_HDR + 16}.get(
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
        self._errq: _RecvRing | None = None  # built by enable_tx_timestamps
        self._errq_keys = (_TIMESTAMPING_KEY, cmsg_key(*sock.spec.recverr))
        # (controllen, stamp offset, error offset) every stamp so far had: then columns serve.
        self._errq_layout: tuple[int, int, int] | None = None
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
        if self._errq is not None:
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
        """Send row i of `packets` to dst[i] (IPv4: host-order uint32; after use_link_tx, rows of
        sockaddr_ll bytes), in order, batch by batch.
        With TX stamps on, row i is stamped with OPT_ID first_id + i (mod 2**32): pass the
        number of packets sent since enable_tx_timestamps(). ENOBUFS/EAGAIN end the call with
        what went; other failures raise SocketProblem."""
        if packets.ndim != 2 or packets.dtype != np.uint8 or not packets.flags.c_contiguous:
            raise ValueError("packets must be a C-contiguous uint8 array of shape [n, length]")
        n, length = packets.shape
        if len(dst) != n:
            raise ValueError(f"{n} packets but {len(dst)} destinations")
        base, sent = packets.__array_interface__["data"][0], 0
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
            went: int = _sendmmsg(self._tx_fd, self._tx_msgs_ptr, k, _DONTWAIT)
            if went >= 0:  # short count: the kernel drops the error; the next recv reports it
                sent += went
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in _SOFT_SEND_ERRNOS:
                self._counter_broken("a send was refused")
                return SendResult(sent, err)
            where = self._describe(dst[sent])
            raise problem(f"sending to {where}", err, _SEND_FIXES.get(err, "")) from None
        return SendResult(sent, 0)

    def _describe(self, address: Any) -> str:
        if self._link_tx is not None:
            return "a link-layer next hop"
        if self._sock.spec.family == socket.AF_INET:
            return str(ipaddress.IPv4Address(int(address)))
        return str(address)

    def recv(self) -> RecvBatch:
        """Whatever is queued, up to `batch` packets, without waiting."""
        ring = self._rx
        n = ring.receive(self._fd, _DONTWAIT)
        if n == -errno.ENOBUFS:
            # sendmmsg keeps the error of a partial batch for the socket's next call; the
            # refused packet was retried, so it is counted and the receive done again.
            self.pending_send_errors += 1
            self._counter_broken("a send was refused")
            n = ring.receive(self._fd, _DONTWAIT)
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
        truncated = int(np.count_nonzero(ring.flags[:n] & _TRUNC))
        return RecvBatch(
            n, ring.data[:n], ring.lengths[:n], rx_ns, rx_flags, truncated, self._dropped_total
        )

    def _plain_stamps(self, n: int, rx_ns: NDArray[np.int64], now_ns: int) -> bool:
        """Fill rx_ns if every row's control data is the usual one (the stamp cmsg alone, or
        nothing in user-space mode) and every stamp is set; else leave it to cmsg parsing."""
        ring = self._rx
        if not (ring.controllen[:n] == self._plain_ctrl).all():
            return False
        if not self._plain_ctrl:
            rx_ns[:] = now_ns
            return True
        words = ring.ctrl_words[:n]
        if not (words[:, 1] == self._rx_keys[0]).all():
            return False
        np.multiply(words[:, 2], 1_000_000_000, out=rx_ns)
        rx_ns += words[:, 3]
        return bool(words[:, 2].all())

    def enable_tx_timestamps(self) -> RecordFlag:
        """Ask for a kernel (or NIC) stamp of every packet sent from now on, numbered by OPT_ID
        from 0; returns TX_KERNEL or TX_HARDWARE. Read them with read_tx_timestamps(). On
        Linux 6.13+ each send carries its own id (SCM_TS_OPT_ID), so a refused send cannot
        shift the numbering; older kernels count sends, and after a refusal the stamps are
        given up (read_tx_timestamps() returns none, and a note says so)."""
        sock = self._sock
        if sock.rx_scm == SO_TIMESTAMPNS:
            raise SocketProblem(
                "kernel TX timestamps need SO_TIMESTAMPING, which this kernel "
                "refused: set tx_timestamps = false in the profile"
            )
        tsflags = sock.tsflags | Sof.TX_SOFTWARE | Sof.SOFTWARE | Sof.OPT_ID | Sof.OPT_TSONLY
        self._tx_flag = RecordFlag.TX_KERNEL
        if sock.rx_flags & RecordFlag.RX_HARDWARE and sock.interface is not None:
            why = nic_stamping(sock.sock, sock.interface, configure=True, tx=True)
            if why is None:
                tsflags |= Sof.TX_HARDWARE | Sof.RAW_HARDWARE
                self._tx_flag = RecordFlag.TX_HARDWARE
            else:
                self._notes.append(
                    f"no hardware TX stamps ({why}): RTTs use user-space send times, as "
                    "software TX stamps do not compare with hardware RX stamps"
                )
        try:
            _set_option(sock.sock, socket.SOL_SOCKET, SO_TIMESTAMPING, int(tsflags))
        except OSError as exc:
            raise problem(
                "enabling kernel TX timestamps",
                exc.errno or 0,
                "set tx_timestamps = false in the profile",
            ) from None
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
        self._errq = _RecvRing(self._batch, 64, _ERRQ_CTRL_BYTES)
        return self._tx_flag

    def _counter_broken(self, why: str) -> None:
        """In counter mode a refused send may or may not have used up an OPT_ID: stop."""
        if self._errq is not None and not self._ids_exact and not self._ids_lost:
            self._ids_lost = True
            self._notes.append(f"{why}: kernel TX stamps given up, send times are user-space")
            # No more stamps, or they would fill the receive buffer the replies need.
            with contextlib.suppress(OSError):
                _set_option(self._sock.sock, socket.SOL_SOCKET, SO_TIMESTAMPING, self._sock.tsflags)

    @property
    def tx_stamps_live(self) -> bool:
        """TX stamps are enabled and still matched to sends."""
        return self._errq is not None and not self._ids_lost

    @property
    def tx_stamps_enabled(self) -> bool:
        """enable_tx_timestamps() was called: the error queue must be read (and drained)."""
        return self._errq is not None

    def _errq_offsets(self, ring: _RecvRing, n: int) -> list[NDArray[np.int64]]:
        """Where each stamp message's two cmsgs are: read as columns when every row has the
        layout the stamps so far had (the usual case), else walked (cmsg_offsets)."""
        layout = self._errq_layout
        if layout is not None:
            length, stamp, err = layout
            words = ring.ctrl_words[:n]
            if (
                (ring.controllen[:n] == length).all()
                and (words[:, (stamp - 8) // 8] == self._errq_key_words[0]).all()
                and (words[:, (err - 8) // 8] == self._errq_key_words[1]).all()
            ):
                return [np.full(n, stamp, np.int64), np.full(n, err, np.int64)]
        found = cmsg_offsets(ring.ctrl[:n], ring.controllen[:n], self._errq_keys)
        seen = [_uniform(c) for c in (ring.controllen[:n], *found)]
        if all(v is not None and v > 0 for v in seen):
            self._errq_layout = (int(seen[0] or 0), int(seen[1] or 0), int(seen[2] or 0))
        return found

    def read_tx_timestamps(self) -> TxStamps:
        """Up to `batch` TX stamps from the error queue (MSG_ERRQUEUE), without waiting."""
        ring = self._errq
        if ring is None:
            raise RuntimeError("call enable_tx_timestamps() first")
        n = ring.receive(self._fd, _ERRQUEUE | _DONTWAIT)
        if n < 0:
            if n in (-errno.EAGAIN, -errno.EINTR):
                n = 0
            else:
                raise problem("reading TX timestamps", -n)
        more = n == ring.rows
        if self._ids_lost or n == 0:
            return TxStamps(0, self._tx_ids[:0], self._tx_ns[:0], self._tx_flags[:0], more)
        stamps_at, err_at = self._errq_offsets(ring, n)
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


def _uniform(column: NDArray[Any]) -> int | None:
    """The value every element of a non-empty column holds, or None."""
    first = int(column[0])
    return first if (column == first).all() else None


def kernel_takes_tx_ids() -> bool:
    """Whether sends may name their own OPT_ID (SCM_TS_OPT_ID): asked of a throwaway UDP
    socket talking to itself on loopback, as an unknown cmsg type fails with EINVAL."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", 0))
            probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, int(Sof.OPT_ID | Sof.SOFTWARE))
            cmsg = [(socket.SOL_SOCKET, SCM_TS_OPT_ID, struct.pack("=I", 0))]
            probe.sendmsg([b""], cmsg, 0, probe.getsockname())
        except OSError:
            return False
    return True
