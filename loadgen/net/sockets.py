"""Raw ICMP and ICMPv6 sockets: the only module of loadgen that creates sockets.

Owns the socket options of both families (hop limit, traffic class, buffers, drop counter, BPF
attach, ICMP6_FILTER), written once against a `families.FamilySpec`, the choice of RX and TX
timestamp sources and the words that report them, NIC stamping, and the errno-to-error mapping.
Batched I/O over an open socket is `batchio`; its syscall plumbing is `mmsg`, its cmsg parsing
`cmsg`. Kernel interfaces: socket(7), Documentation/networking/timestamping.rst.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntFlag, StrEnum

from loadgen.errors import PermissionProblem, SocketProblem, UsageError
from loadgen.icmppath import CAP_FIX, OPEN_RANGE_FIX, IcmpPath
from loadgen.net.families import SPECS, FamilySpec
from loadgen.net.netstamp import wait_for_rx_stamps
from loadgen.wire import bpf
from loadgen.wire.records import RecordFlag

# <asm-generic/socket.h>, <linux/in.h>, <linux/sockios.h>: absent from Python's socket module.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # also the SCM type of its cmsg
SO_TIMESTAMPING = 37  # also SCM_TIMESTAMPING (64-bit timespecs on 64-bit kernels)
SO_RXQ_OVFL = 40
SO_MEMINFO = 55
SO_BINDTODEVICE = 25
SCM_TS_OPT_ID = 81  # Linux 6.13+: the OPT_ID of one send, chosen by the sender
ICMP6_FILTER = 1  # <linux/icmpv6.h>, level IPPROTO_ICMPV6
SIOCSHWTSTAMP = 0x89B0
SIOCGHWTSTAMP = 0x89B1
SO_EE_ORIGIN_TIMESTAMPING = 4
SCM_TSTAMP_SND = 0
BPF_MAXINSNS = 4096
_BUG = "please report this line as a bug in loadgen"
_SOURCE_FIX = "give an address of this host (see `ip -brief addr`) to -S/--source"
_SEND_FIXES = {
    errno.EPERM: "a firewall rule refused the probe: check `nft list ruleset` for output rules",
    errno.EACCES: "the target is a broadcast address: remove it from the targets",
}
_DATAGRAM_FIX = (
    f"net.ipv4.ping_group_range admits none of this process's groups: {CAP_FIX}, or "
    f"`{OPEN_RANGE_FIX}`"
)
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


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


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


def send_problem(where: str, err: int) -> PermissionProblem | SocketProblem:
    """The error for a send to `where` that the kernel refused for good (not ENOBUFS/EAGAIN)."""
    return problem(f"sending to {where}", err, _SEND_FIXES.get(err, ""))


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
    # A datagram ICMP socket (icmppath.IcmpPath.DATAGRAM): `ident` is the echo identifier the
    # kernel picked for it (its bound "port"); it rewrites every request's identifier to it,
    # delivers only echo replies carrying it, without the IPv4 header, and ICMP errors about
    # its probes on the error queue (IP_RECVERR/IPV6_RECVERR), not as packets.
    datagram: bool = False
    ident: int | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def open_icmp(
    *,
    family: int = 4,
    ttl: int,
    tos: int,
    rcvbuf_bytes: int = 8 << 20,
    sndbuf_bytes: int = 4 << 20,
    timestamps: TimestampMode,
    bpf_program: bytes | None,
    interface: str | None = None,
    source: str | None = None,
    datagram: bool = False,
    protocol: int | None = None,
) -> IcmpSocket:
    """A non-blocking raw socket for ICMP echo of `family` (4 or 6), configured (a datagram
    ICMP socket with `datagram`: no BPF program or ICMP6_FILTER, see _datagram); raises
    PermissionProblem/SocketProblem. `ttl` is the hop limit and `tos` the traffic class for
    IPv6. With `interface` it sends and receives on that interface only (SO_BINDTODEVICE; its error
    queue, where TX stamps come back, is the same socket's), and it is the NIC whose hardware
    stamping is looked at (HARDWARE: configured). With `source` the probes leave from that
    address and only replies to it are received. IPv6 sockets pass only echo replies and the
    errors that can quote a probe (ICMP6_FILTER) before the BPF program sees them. `protocol`
    opens a raw socket of another IP protocol with the same options (TCP SYN probes)."""
    spec = SPECS[family]
    proto = spec.proto if protocol is None else protocol
    what = "ICMP" if proto == spec.proto else f"IP protocol {proto}"
    if not 1 <= ttl <= 255 or not 0 <= tos <= 255:
        raise UsageError(f"ttl must be 1-255 and tos 0-255 (got {ttl}, {tos}): fix -t/-z")
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_RAW
    try:
        sock = socket.socket(spec.family, kind, proto)
    except OSError as exc:
        err = exc.errno or 0
        what = f"opening a {'datagram' if datagram else 'raw'} {spec.name} {what} socket"
        if datagram and err in (errno.EACCES, errno.EPERM):
            raise PermissionProblem(str(problem(what, err, _DATAGRAM_FIX))) from None
        raise problem(what, err) from None
    try:
        sock.setblocking(False)
        notes: list[str] = []
        _configure(sock, spec, ttl, tos, rcvbuf_bytes, sndbuf_bytes, notes)
        _bind(sock, interface, source)
        ident = None
        if datagram:
            ident = _datagram(sock, spec, source)
        elif proto == socket.IPPROTO_ICMPV6:
            try:
                _set_option(sock, socket.IPPROTO_ICMPV6, ICMP6_FILTER, bpf.icmp6_filter())
            except OSError as exc:
                raise problem("setting the ICMPv6 type filter", exc.errno or 0) from None
        if bpf_program is not None:
            _attach_filter(sock, bpf_program)
        return with_rx_stamps(sock, spec, timestamps, interface, notes, datagram, ident)
    except BaseException:
        sock.close()
        raise


def _datagram(sock: socket.socket, spec: FamilySpec, source: str | None) -> int:
    """Set up a datagram ICMP socket and return its echo identifier: bound now, so the kernel
    picks it (read back with getsockname), with ICMP errors about its probes queued on its
    error queue. The kernel demultiplexes replies by that identifier itself, so no filter is
    needed (nor taken: ICMP6_FILTER is a raw-socket option)."""
    if source is None:
        try:
            sock.bind(("::" if spec.version == 6 else "0.0.0.0", 0))
        except OSError as exc:
            raise problem("binding the datagram ICMP socket", exc.errno or 0) from None
    try:
        _set_option(sock, spec.recverr[0], spec.recverr[1], 1)
    except OSError as exc:
        raise problem("asking for ICMP errors (IP_RECVERR)", exc.errno or 0) from None
    return int(sock.getsockname()[1])


def with_rx_stamps(
    sock: socket.socket,
    spec: FamilySpec,
    timestamps: TimestampMode,
    interface: str | None,
    notes: list[str],
    datagram: bool = False,
    ident: int | None = None,
) -> IcmpSocket:
    """A configured, bound socket with its RX stamp source chosen, as an IcmpSocket (the raw
    ICMP sockets here, the UDP probe sockets of `udp`)."""
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
        datagram,
        ident,
    )


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


def _bind(sock: socket.socket, interface: str | None, source: str | None) -> None:
    if interface is not None:
        try:
            _set_option(sock, socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        except OSError as exc:
            fix = "pick one from `ip -brief link`" if exc.errno == errno.ENODEV else ""
            raise problem(f"binding to interface {interface!r}", exc.errno or 0, fix) from None
    if source is not None:
        try:
            sock.bind((source, 0))
        except OSError as exc:
            raise problem(f"binding to source {source}", exc.errno or 0, _SOURCE_FIX) from None


def check_source(source: str) -> None:
    """Refuse a source address this host does not have, before any worker starts: a UDP
    socket of its family bound to it and closed again."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((source, 0))
        except OSError as exc:
            raise UsageError(
                f"source {source}: {os.strerror(exc.errno or 0)}; {_SOURCE_FIX}"
            ) from None


def socket_refusal(path: IcmpPath) -> int:
    """Open and close one IPv4 ICMP socket of `path`'s kind: its errno, or 0 if it opened.
    (One socket answers for both families: the same capability and range govern both.)"""
    kind = socket.SOCK_RAW if path is IcmpPath.RAW else socket.SOCK_DGRAM
    try:
        socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
    except OSError as exc:
        return exc.errno or -1
    return 0


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
            "the kernel rejected the program: this is a bug in loadgen.wire.bpf, report it",
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
        _await_stamping(notes)
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
    _await_stamping(notes)
    return RecordFlag.RX_KERNEL, "kernel (SO_TIMESTAMPNS)", SO_TIMESTAMPNS, Sof(0)


def _await_stamping(notes: list[str]) -> None:
    """The kernel turns RX stamping on from a work queue: wait for it (see `netstamp`)."""
    if wait_for_rx_stamps() is False:  # None: no loopback up here to tell
        notes.append(
            "the kernel was not yet stamping received packets: the first replies may carry "
            "user-space receive times, labelled as such"
        )


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


def start_tx_stamps(sock: IcmpSocket, notes: list[str]) -> RecordFlag:
    """Ask for a kernel (or NIC) stamp of every packet sent from now on, numbered by OPT_ID
    from 0, read from the error queue; returns TX_KERNEL or TX_HARDWARE. A fallback taken is
    added to `notes`; a socket that cannot do it raises SocketProblem."""
    if sock.rx_scm == SO_TIMESTAMPNS:
        raise SocketProblem(
            "kernel TX timestamps need SO_TIMESTAMPING, which this kernel "
            "refused: set tx_timestamps = false in the profile"
        )
    tsflags = sock.tsflags | Sof.TX_SOFTWARE | Sof.SOFTWARE | Sof.OPT_ID | Sof.OPT_TSONLY
    flag = RecordFlag.TX_KERNEL
    if sock.rx_flags & RecordFlag.RX_HARDWARE and sock.interface is not None:
        why = nic_stamping(sock.sock, sock.interface, configure=True, tx=True)
        if why is None:
            tsflags |= Sof.TX_HARDWARE | Sof.RAW_HARDWARE
            flag = RecordFlag.TX_HARDWARE
        else:
            notes.append(
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
    return flag


def stop_tx_stamps(sock: IcmpSocket) -> None:
    """Back to the RX stamps alone, if the kernel lets us: TX stamps nobody reads would fill the
    receive buffer the replies need."""
    with contextlib.suppress(OSError):
        _set_option(sock.sock, socket.SOL_SOCKET, SO_TIMESTAMPING, sock.tsflags)


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
