"""TCP connect probes through the kernel: one non-blocking socket per probe, completion by epoll.

`ConnectIO` is the connect kind's I/O, with the methods of `BatchIO` the worker uses: `send`
starts a batch of connects (the rows of `wire.connect`), `recv` gives finished ones back as
completion rows with their times, and connects still pending at the probe timeout are closed
(the tracker calls them lost at linger). Every socket is closed with SO_LINGER 0: a RST, so no
TIME_WAIT holds its port. The RTT is the kernel's own handshake RTT (TCP_INFO tcpi_rtt, in µs,
from the SYN leaving to the SYN-ACK) where it has one, else user space; `local_limits` reads what
`connlimits` checks a run against.
"""

from __future__ import annotations

import collections
import contextlib
import resource
import select
import socket
import struct
import time

import numpy as np
from numpy.typing import NDArray

from loadgen.connlimits import HostLimits
from loadgen.errors import SocketProblem
from loadgen.net.batchio import RecvBatch, SendResult, TxStamps
from loadgen.wire.connect import (
    COMPLETION_DTYPE,
    IN_PROGRESS,
    NOT_SENT,
    ConnectOutcome,
    outcome_of,
    request_seqs,
)
from loadgen.wire.records import RecordFlag

_FAILED = select.EPOLLERR | select.EPOLLHUP
IP_RECVERR, IPV6_RECVERR = 11, 25  # <linux/in.h>, <linux/in6.h>
# struct sock_extended_err (<linux/errqueue.h>): ee_errno u32, origin, type, code, pad u8 ...
_EXTENDED_ERR = struct.Struct("<I")
ERRQUEUE_CONTROL = 512


def _error_of(sock: socket.socket) -> int:
    """The socket's error: SO_ERROR, else the errno of an ICMP error in its error queue
    (IP_RECVERR), else 0."""
    err = sock.getsockopt(SOL_SOCKET, SO_ERROR)
    if err:
        return err
    try:
        _, ancillary, _, _ = sock.recvmsg(0, ERRQUEUE_CONTROL, socket.MSG_ERRQUEUE)
    except (BlockingIOError, InterruptedError):
        return 0
    for _, _, data in ancillary:
        if len(data) >= _EXTENDED_ERR.size:
            (ee_errno,) = _EXTENDED_ERR.unpack_from(data)
            return int(ee_errno)
    return 0


LINGER_RST = struct.pack("ii", 1, 0)  # l_onoff 1, l_linger 0: close() sends a RST
SO_BINDTODEVICE = 25
# struct tcp_info (<linux/tcp.h>): u8 tcpi_state at 0; u32 tcpi_rtt at 68 (smoothed RTT, µs:
# right after the handshake, its one sample), u32 tcpi_total_retrans at 100.
TCP_INFO_BYTES = 104
_TCPI = struct.Struct("<B67xI28xI")  # tcpi_state, tcpi_rtt, tcpi_total_retrans
TCP_ESTABLISHED, TCP_SYN_SENT = 1, 2  # tcpi_state (<net/tcp_states.h>)
SOL_SOCKET, SO_ERROR = socket.SOL_SOCKET, socket.SO_ERROR
assert _TCPI.size == TCP_INFO_BYTES
_KERNEL_RTT = np.uint8(RecordFlag.TX_KERNEL | RecordFlag.RX_KERNEL)
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_NO_TX_STAMPS = TxStamps(
    0, np.zeros(0, np.uint32), np.zeros(0, np.int64), np.zeros(0, np.uint8), more=False
)
RX_SOURCE = "kernel (TCP_INFO tcpi_rtt, µs: SYN out to SYN-ACK in), else user space"


DEFAULT_TTL4 = "/proc/sys/net/ipv4/ip_default_ttl"
DEFAULT_HOPS6 = "/proc/sys/net/ipv6/conf/default/hop_limit"


def _kernel_default(path: str) -> int:
    """A sysctl's value, or 0 (never a TTL) where it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def connect_name(address: str, port: int) -> tuple[object, ...]:
    """The sockaddr tuple connect() takes for `address` (IPv6 with a %scope too) and `port`."""
    if ":" not in address:
        return (address, port)
    host, _, scope = address.partition("%")
    return (host, port, 0, socket.if_nametoindex(scope) if scope else 0)


def local_limits() -> HostLimits:
    """This host's open-file hard limit and ephemeral port range, for `connlimits`."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open(PORT_RANGE, encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # the kernel's default range
    fds = hard if hard != resource.RLIM_INFINITY else 1 << 20
    return HostLimits(fd_limit=fds, ephemeral_ports=high - low + 1)


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard one; returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


class _Socket:
    """What `ConnectIO` stands in for as the worker's socket: its RX source words."""

    rx_scm = 0  # completions are read as they come (their refused RTTs are user space)
    rx_source = RX_SOURCE


class ConnectIO:
    """Connects to `names[local]` (sockaddr tuples of one family), each abandoned `hold_ns`
    after its start. `ttl`/`tos` as IP_TTL/IP_TOS (IPV6_UNICAST_HOPS/IPV6_TCLASS), `source`
    binds the local address, `interface` the device."""

    def __init__(
        self,
        family: int,
        names: list[tuple[object, ...]],
        *,
        hold_ns: int,
        ttl: int,
        tos: int,
        source: str | None = None,
        interface: str | None = None,
        batch: int = 256,
    ) -> None:
        self.family = socket.AF_INET6 if family == 6 else socket.AF_INET
        self.names = names
        self.hold_ns = hold_ns
        self._opts = self._options(family, ttl, tos, interface)
        self._source = (source, 0) if source else None
        self._ep = select.epoll()
        self._batch = batch
        # fd -> (socket, local, seq, realtime at the start of its batch)
        self._pending: dict[int, tuple[socket.socket, int, int, int]] = {}
        self._order: collections.deque[tuple[int, int, socket.socket]] = collections.deque()
        self._ready: list[tuple[int, int, int, int, int]] = []  # finished at connect()
        self._rows = np.zeros(batch, COMPLETION_DTYPE)
        self._rx_ns = np.zeros(batch, np.int64)
        self._rx_flags = np.zeros(batch, np.uint8)
        self._notes: list[str] = []
        self.socket = _Socket()
        self.pending_send_errors = 0
        self.abandoned = 0  # connects closed unfinished at their timeout
        self.fd_limit = raise_fd_limit()

    @staticmethod
    def _options(
        family: int, ttl: int, tos: int, interface: str | None
    ) -> list[tuple[int, int, int | bytes]]:
        # Each option is a syscall per probe: the TTL and TOS only where they differ from what
        # the kernel sets anyway (connect rates are bound by syscalls).
        # IP_RECVERR: an ICMP error quoting the SYN reaches the socket's error queue even where
        # the kernel takes it as soft and keeps sending SYNs (IPv6 unreachables, RFC 1122
        # section 4.2.3.9), or drops it because it came while connect()  # not a target
        # still held the socket (a target on this host): either way the probe is errored,
        # not lost.
        recverr = (
            (socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            if family == 6
            else (socket.IPPROTO_IP, IP_RECVERR, 1)
        )
        opts: list[tuple[int, int, int | bytes]] = [
            (socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST),
            recverr,
        ]
        if family == 6:
            if ttl != _kernel_default(DEFAULT_HOPS6):
                opts.append((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl))
            if tos:
                opts.append((socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos))
        else:
            if ttl != _kernel_default(DEFAULT_TTL4):
                opts.append((socket.IPPROTO_IP, socket.IP_TTL, ttl))
            if tos:
                opts.append((socket.IPPROTO_IP, socket.IP_TOS, tos))
        if interface:
            opts.append((socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode()))
        return opts

    # -- the parts of BatchIO the worker uses ------------------------------------------------

    batch = property(lambda self: self._batch)
    notes = property(lambda self: tuple(self._notes))
    tx_stamps_enabled = tx_stamps_live = False

    def fileno(self) -> int:
        return self._ep.fileno()

    def kernel_drops(self) -> int:
        return 0

    def enable_tx_timestamps(self) -> RecordFlag:
        """No TX stamps of a SYN reach user space: the RTT is the kernel's own, or user space."""
        return RecordFlag.NONE

    def read_tx_timestamps(self) -> TxStamps:
        return _NO_TX_STAMPS

    def send(
        self, packets: NDArray[np.uint8], dst: NDArray[np.generic], first_id: int = 0
    ) -> SendResult:
        """Start one connect per row: `dst` holds each probe's local target. Stops at the first
        connect this host could not start (NOT_SENT errnos): those probes were not sent."""
        seqs = request_seqs(packets).tolist()
        locals_ = dst.tolist()
        now_rt, now_mono = time.time_ns(), time.monotonic_ns()
        for i, (local, seq) in enumerate(zip(locals_, seqs, strict=True)):
            err = self._start(local, seq, now_rt, now_mono)
            if err:
                return SendResult(sent=i, errno=err)
        return SendResult(sent=len(seqs), errno=0)

    def _start(self, local: int, seq: int, now_rt: int, now_mono: int) -> int:
        """One connect; returns a NOT_SENT errno, else 0 (started, or already finished)."""
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno in NOT_SENT:
                return exc.errno
            raise SocketProblem(
                f"cannot open a TCP socket: {exc.strerror}; check the host"
            ) from exc
        try:
            for level, opt, value in self._opts:
                sock.setsockopt(level, opt, value)
            if self._source:
                sock.bind(self._source)
            err = sock.connect_ex(self.names[local])
        except OSError as exc:
            sock.close()
            if exc.errno in NOT_SENT:
                return exc.errno
            raise SocketProblem(f"TCP connect setup failed: {exc.strerror}; check -S/-I") from exc
        if err in IN_PROGRESS:
            fd = sock.fileno()
            self._pending[fd] = (sock, local, seq, now_rt)
            self._order.append((now_mono + self.hold_ns, fd, sock))
            self._ep.register(fd, select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP)
            return 0
        if err in NOT_SENT:
            sock.close()
            return err
        self._ready.append((local, seq, err, now_rt, self._info(sock)[1] if err == 0 else 0))
        sock.close()
        return 0

    @staticmethod
    def _info(sock: socket.socket) -> tuple[int, int]:
        """(tcpi_state, the kernel's handshake RTT in ns or 0): 0 where it has none (a refused
        or failed connect, or a SYN sent more than once: its sample is not the first SYN's)."""
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
            state, rtt_us, retrans = _TCPI.unpack(info)
        except (OSError, struct.error):
            return 0, 0
        return state, rtt_us * 1000 if retrans == 0 and state == TCP_ESTABLISHED else 0

    def recv(self) -> RecvBatch:
        """Finished connects (up to a batch), each closed with a RST; connects past their hold
        closed unfinished."""
        n = 0
        rows, rx_ns, rx_flags = self._rows, self._rx_ns, self._rx_flags
        while self._ready and n < self._batch:
            local, seq, err, start_rt, rtt = self._ready.pop()  # rtt: from _info
            at_ns = start_rt + rtt if rtt else time.time_ns()
            n = self._row(n, local, seq, err, start_rt, at_ns, rtt)
        events = self._ep.poll(0, self._batch - n) if n < self._batch else []
        now_rt = time.time_ns()
        for fd, mask in events:
            sock, local, seq, start_rt = self._pending[fd]
            # Only a failed connect raises EPOLLERR: a connected one needs no SO_ERROR read.
            err = _error_of(sock) if mask & _FAILED else 0
            if err in IN_PROGRESS or not (err or mask & select.EPOLLOUT):
                continue  # still under way (a spurious wake-up)
            del self._pending[fd]
            rtt = self._info(sock)[1] if err == 0 else 0
            sock.close()  # also leaves the epoll set: this was the file's one descriptor
            n = self._row(n, local, seq, err, start_rt, start_rt + rtt if rtt else now_rt, rtt)
        n = self._expire(n, time.monotonic_ns())
        return RecvBatch(
            n=n,
            data=rows.view(np.uint8).reshape(len(rows), COMPLETION_DTYPE.itemsize),
            lengths=np.full(len(rows), COMPLETION_DTYPE.itemsize, np.uint32),
            rx_ns=rx_ns,
            rx_flags=rx_flags,
            truncated=0,
            dropped_total=0,
        )

    def _row(self, n: int, local: int, seq: int, err: int, tx_ns: int, at_ns: int, rtt: int) -> int:
        # An error that came later than connect() is the SYN's, whatever its errno.
        outcome = outcome_of(err)
        if outcome is None:
            outcome = ConnectOutcome.ERRORED
        self._rows[n] = (local, seq, tx_ns, int(outcome), min(err, 255))
        self._rx_ns[n] = at_ns
        self._rx_flags[n] = _KERNEL_RTT if rtt else 0
        return n + 1

    def _expire(self, n: int, now_mono: int) -> int:
        """Settle connects whose hold has passed, oldest first, while the batch has room: one
        whose handshake finished unread (a busy worker) is a completion like any other, and
        the kernel's RTT says when it finished; one still sending its SYN is closed unfinished
        (its probe is lost, at linger). Returns the batch's rows."""
        order = self._order
        while order and order[0][0] <= now_mono and n < self._batch:
            _, fd, sock = order.popleft()
            held = self._pending.get(fd)
            if held is None or held[0] is not sock:
                continue  # finished earlier: the descriptor is gone, or another socket's now
            del self._pending[fd]
            _, local, seq, start_rt = held
            state, rtt = self._info(sock)
            err = 0 if state == TCP_ESTABLISHED else _error_of(sock)
            if state in (TCP_SYN_SENT, 0) and not err:
                self.abandoned += 1
            else:
                n = self._row(
                    n, local, seq, err, start_rt, start_rt + rtt if rtt else time.time_ns(), rtt
                )
            sock.close()
        return n

    @property
    def open_sockets(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for sock, *_ in self._pending.values():
            sock.close()
        self._pending.clear()
        self._order.clear()
        self._ep.close()
