"""UDP sockets for STAMP and plain UDP probes, and the reflector's batched I/O on them.

Owns opening and binding (SO_REUSEPORT for one socket per reflector worker, errno turned into one
line: port taken, privileged, not an address here), the receive options a reflector reports
(kernel RX stamps, TTL / hop limit, TOS / traffic class as cmsgs) and `UdpBatch`: recvmmsg with
each datagram's source and those cmsgs as columns, sendmmsg of replies to chosen sources, each
with its own TOS / traffic class where one is asked for (an IP_TOS / IPV6_TCLASS cmsg).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.errors import PermissionProblem, SocketProblem, UsageError
from loadgen.net import families, sockets
from loadgen.net.batchio import BatchIO, RecvBatch
from loadgen.net.cmsg import CMSG_HDR, Layout, cmsg_key, cmsg_offsets, layout_holds, layout_of
from loadgen.net.mmsg import DONTWAIT, MMSGHDR, TRUNC, RecvRing, send_headers, sendmmsg

# <linux/in.h>, <linux/in6.h>, <asm-generic/socket.h>: not all in Python's socket module.
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32
IP_TOS, IP_TTL, IP_RECVTTL, IP_RECVTOS = 1, 2, 12, 13
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT, IPV6_RECVTCLASS, IPV6_TCLASS = 51, 52, 66, 67
NAME_BYTES = 28  # sockaddr_in6; a sockaddr_in (16) fits the same slot
CTRL_BYTES = 128  # timespec (32) + ttl (24) + tos (24), with room to spare
TOS_CTRL_BYTES = 24  # CMSG_SPACE(sizeof(int)): one IP_TOS / IPV6_TCLASS per sent reply
SLOT_BYTES = 9216  # a jumbo frame's datagram; a longer one is counted malformed, never cut


@dataclass(frozen=True, slots=True)
class Keys:
    stamp: int
    ttl: int
    tos: int


_KEYS = {
    socket.AF_INET: Keys(
        cmsg_key(socket.SOL_SOCKET, SO_TIMESTAMPNS),
        cmsg_key(socket.IPPROTO_IP, IP_TTL),
        cmsg_key(socket.IPPROTO_IP, IP_TOS),
    ),
    socket.AF_INET6: Keys(
        cmsg_key(socket.SOL_SOCKET, SO_TIMESTAMPNS),
        cmsg_key(socket.IPPROTO_IPV6, IPV6_HOPLIMIT),
        cmsg_key(socket.IPPROTO_IPV6, IPV6_TCLASS),
    ),
}


def bind_error(exc: OSError, addr: str, port: int) -> Exception:
    """One line that says what to do about a failed bind."""
    if exc.errno == errno.EADDRINUSE:
        return SocketProblem(
            f"UDP port {port} on {addr} is taken by another program: stop it or pick another --port"
        )
    if exc.errno == errno.EACCES:
        return PermissionProblem(
            f"UDP port {port} is privileged: use --port 1024 or above, or grant the "
            "capability with `sudo setcap cap_net_bind_service+ep <python path>`"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"{addr} is not an address of this host: give one of `ip -brief addr`")
    return SocketProblem(f"cannot bind UDP {addr} port {port}: {exc.strerror or exc}")


def check_port_free(addr: str, port: int) -> None:
    """Bind once without SO_REUSEPORT: another reflector holding the port with it would
    otherwise share it silently with ours."""
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError as exc:
            raise bind_error(exc, addr, port) from None


def open_reflector_socket(addr: str, port: int) -> socket.socket:
    """A UDP socket bound to (addr, port) with SO_REUSEPORT, reporting kernel RX stamps, TTL
    and TOS of every datagram."""
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
        for opt, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            except PermissionError:  # without CAP_NET_ADMIN: as much as rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, plain, 8 << 20)
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        raise bind_error(exc, addr, port) from None
    # Blocking for sends (a full buffer waits rather than failing: a short sendmmsg count then
    # always means the next message failed); receives never wait (MSG_DONTWAIT).
    return sock


class UdpBatch:
    """recvmmsg into `rows` slots with sources and cmsgs; sendmmsg of replies."""

    def __init__(self, sock: socket.socket, rows: int = 64) -> None:
        self.sock, self.rows = sock, rows
        self.keys = _KEYS[sock.family]
        self._ring = RecvRing(rows, SLOT_BYTES, CTRL_BYTES)
        self.names = np.zeros((rows, NAME_BYTES), np.uint8)
        index = np.arange(rows, dtype=np.uint64)
        hdr = self._ring.msgs["hdr"]
        hdr["name"] = self.names.ctypes.data + index * NAME_BYTES
        self._namelen = hdr["namelen"]
        self._out = np.zeros((rows, SLOT_BYTES), np.uint8)
        self._out_names = np.zeros(rows, np.dtype((np.void, NAME_BYTES)))
        self._iov, self._msgs = send_headers(self._out_names)
        self._iov["base"] = self._out.ctypes.data + index * SLOT_BYTES
        # Per reply: an int TOS / traffic class cmsg (the kernel takes an int for both), passed
        # only for a reply that asks for one (RFC 8972 Class of Service: per test packet).
        self._tos_ctrl = np.zeros((rows, TOS_CTRL_BYTES // 8), np.uint64)
        self._tos_ctrl[:, 0] = CMSG_HDR + 4  # CMSG_LEN(sizeof(int))
        self._tos_ctrl[:, 1] = self.keys.tos
        self._tos_col = self._tos_ctrl.view(np.int32)[:, CMSG_HDR // 4]
        self._msgs["hdr"]["control"] = self._tos_ctrl.ctypes.data + index * TOS_CTRL_BYTES
        self._layout: Layout | None = None  # the cmsg layout of the last batch walked
        keys = (self.keys.stamp, self.keys.ttl, self.keys.tos)
        self._key_words = np.array(keys, np.uint64).view(np.int64)

    def receive(self) -> int:
        """Datagrams waiting, read without blocking (0 when none)."""
        self._namelen[:] = NAME_BYTES
        n = self._ring.receive(self.sock.fileno(), DONTWAIT)
        if n < 0:
            if -n in (errno.EAGAIN, errno.EINTR):
                return 0
            raise SocketProblem(f"recvmmsg on the reflector socket: {os.strerror(-n)}")
        return n

    def rows_of(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(kernel RX ns or 0, TTL or -1, TOS or -1) of the last n datagrams, as columns."""
        ring = self._ring
        used, words = ring.controllen[:n], ring.ctrl_words[:n]
        layout = self._layout
        if layout is not None and layout_holds(layout, words, used, self._key_words):
            # The usual batch: every row's cmsgs where the last walked batch had them.
            sec = layout[1] // 8
            return (
                words[:, sec] * 1_000_000_000 + words[:, sec + 1],
                ring.ctrl[:n].view(np.int32)[:, layout[2] // 4].astype(np.int64),
                ring.ctrl[:n, layout[3]].astype(np.int64),
            )
        found = cmsg_offsets(ring.ctrl[:n], used, (self.keys.stamp, self.keys.ttl, self.keys.tos))
        self._layout = layout_of(used, found)
        stamp_at, ttl_at, tos_at = found
        rx_ns, ttl, tos = np.zeros(n, np.int64), np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        rows = np.arange(n)
        has = stamp_at >= 0
        words = ring.ctrl[:n].view(np.int64)
        at = stamp_at[has] // 8
        rx_ns[has] = words[rows[has], at] * 1_000_000_000 + words[rows[has], at + 1]
        has = ttl_at >= 0
        ttl[has] = ring.ctrl[:n].view(np.int32)[rows[has], ttl_at[has] // 4]
        has = tos_at >= 0
        tos[has] = ring.ctrl[rows[has], tos_at[has]]  # IP_TOS: a byte; IPV6_TCLASS: an int, LE
        return rx_ns, ttl, tos

    def datagrams(self, n: int) -> list[bytes | None]:
        """The last n datagrams; None for one that did not fit its slot."""
        ring = self._ring
        cut = (ring.flags[:n] & TRUNC) != 0
        lengths = ring.lengths[:n].tolist()
        return [
            None if c else ring.data[i, :length].tobytes()
            for i, (c, length) in enumerate(zip(cut.tolist(), lengths, strict=True))
        ]

    def received(self, n: int) -> tuple[NDArray[np.uint8], NDArray[np.int64], bool]:
        """The last n datagrams as rows (a view, as wide as the longest), their lengths, and
        whether every one fitted its slot."""
        ring = self._ring
        lengths = ring.lengths[:n].astype(np.int64)
        whole = not (ring.flags[:n] & TRUNC).any()
        return ring.data[:n, : max(int(lengths.max(initial=0)), 1)], lengths, whole

    def source_columns(self, n: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """(address bytes as (n, 4 or 16) rows, port) each of the last n datagrams came from."""
        names = self.names[:n]
        ports = names[:, 2].astype(np.int64) << 8 | names[:, 3]
        width, at = (16, 8) if self.sock.family == socket.AF_INET6 else (4, 4)
        return names[:, at : at + width], ports

    @property
    def out(self) -> NDArray[np.uint8]:
        """The reply slots `send_written` sends from, one row per reply."""
        return self._out

    def sources(self, n: int) -> tuple[list[bytes], list[int]]:
        """(address bytes, port) each of the last n datagrams came from."""
        names = self.names[:n]
        ports = (names[:, 2].astype(np.int64) << 8 | names[:, 3]).tolist()
        width, at = (16, 8) if self.sock.family == socket.AF_INET6 else (4, 4)
        raw = names[:, at : at + width].tobytes()
        return [raw[i : i + width] for i in range(0, n * width, width)], ports

    def send(self, replies: list[tuple[int, bytes, int]]) -> tuple[int, int]:
        """Send each (i, data, tos) to the source of received row i, with that TOS / traffic
        class byte (NO_TOS: the socket's); (sent, failed)."""
        total = len(replies)
        rows = [i for i, _, _ in replies]
        self._out_names.view(np.uint8).reshape(self.rows, NAME_BYTES)[:total] = self.names[rows]
        self._iov["len"][:total] = [len(data) for _, data, _ in replies]
        tos = np.array([t for _, _, t in replies], np.int32)
        self._tos_col[:total] = tos
        self._msgs["hdr"]["controllen"][:total] = np.where(tos >= 0, TOS_CTRL_BYTES, 0)
        for k, (_, data, _) in enumerate(replies):
            self._out[k, : len(data)] = np.frombuffer(data, np.uint8)
        return self._send_all(total)

    def send_written(
        self, rows: NDArray[np.intp], lengths: NDArray[np.int64], tos: NDArray[np.int32]
    ) -> tuple[int, int]:
        """Send out[k] (lengths[k] bytes, already written) to the source of received row
        rows[k], with TOS byte tos[k] (NO_TOS: the socket's); (sent, failed)."""
        total = len(rows)
        self._out_names.view(np.uint8).reshape(self.rows, NAME_BYTES)[:total] = self.names[rows]
        self._iov["len"][:total] = lengths
        self._tos_col[:total] = tos
        self._msgs["hdr"]["controllen"][:total] = np.where(tos >= 0, TOS_CTRL_BYTES, 0)
        return self._send_all(total)

    def _send_all(self, total: int) -> tuple[int, int]:
        """sendmmsg the first `total` prepared replies; (sent, failed)."""
        sent = failed = done = 0
        while done < total:
            ptr = self._msgs.ctypes.data + done * MMSGHDR.itemsize
            k = int(sendmmsg(self.sock.fileno(), ptr, total - done, 0))
            if k > 0:
                done, sent = done + k, sent + k
                # A short count on this blocking socket: the next message failed (the
                # kernel drops its error). It is counted and skipped, never sent again: a
                # firewall's drop is final, and a retry would pass the filter a second time.
                if done < total:
                    done, failed = done + 1, failed + 1
            elif k < 0 and ctypes.get_errno() == errno.EINTR:
                continue
            else:  # the first one failed (ENOBUFS, EPERM from a firewall): count, move on
                done, failed = done + 1, failed + 1
        return sent, failed


# The probe sockets of the UDP kinds: the raw sockets' family specs with UDP as protocol, and
# whole sockaddr rows as destinations (each carries its target's port).
UDP_SPECS = {
    4: replace(families.IPV4, proto=socket.IPPROTO_UDP, whole_names=True),
    6: replace(families.IPV6, proto=socket.IPPROTO_UDP),
}


def open_udp_probe(
    *,
    family: int,
    ttl: int,
    tos: int,
    timestamps: sockets.TimestampMode,
    interface: str | None = None,
    source: str | None = None,
) -> sockets.IcmpSocket:
    """A non-blocking UDP socket on an ephemeral port for STAMP or UDP-echo probes, configured
    like the raw ones (TTL, TOS, buffers, drop counter, RX stamps): no root needed. ICMP errors
    about its probes are queued on its error queue (IP_RECVERR / IPV6_RECVERR): without it the
    kernel drops them on an unconnected socket, and a probe they answer would look lost."""
    spec = UDP_SPECS[family]
    sock = socket.socket(spec.family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        notes: list[str] = []
        sockets._configure(sock, spec, ttl, tos, 8 << 20, 4 << 20, notes)
        sockets._bind(sock, interface, None)
        try:
            sock.bind((source or ("::" if family == 6 else "0.0.0.0"), 0))
        except OSError as exc:
            raise bind_error(exc, source or "any address", 0) from None
        try:
            sock.setsockopt(spec.recverr[0], spec.recverr[1], 1)
        except OSError as exc:
            raise sockets.problem("asking for ICMP errors (IP_RECVERR)", exc.errno or 0) from None
        return sockets.with_rx_stamps(sock, spec, timestamps, interface, notes, datagram=True)
    except BaseException:
        sock.close()
        raise


def udp_destinations(addresses: list[str], ports: list[int], family: int) -> NDArray[Any]:
    """Whole sockaddr rows (address and port) of the targets, the column `BatchIO.send` takes
    for a UDP kind."""
    if family == 6:
        names = families.ipv6_names(addresses)
    else:
        names = np.zeros(len(addresses), UDP_SPECS[4].sockaddr)
        names["family"] = socket.AF_INET
        names["addr"] = [int(ipaddress.IPv4Address(a)) for a in addresses]
    names["port"] = ports
    return names


class UdpBatchIO(BatchIO):
    """BatchIO over a UDP probe socket. The socket has IP_RECVERR / IPV6_RECVERR: an ICMP error
    about a probe (port unreachable from a target with nothing on its port, host unreachable,
    time exceeded) waits on its error queue with the probe's payload (`read_icmp_errors`), and
    the errno the kernel also leaves pending is taken by BatchIO's retries, as on a datagram
    ICMP socket. After `read_tos()`, `last_tos` holds the TOS / traffic class each datagram of
    the last receive arrived with (-1 where the kernel did not say)."""

    _tos_key = 0
    last_tos: NDArray[np.int64] = np.zeros(0, np.int64)

    def read_tos(self) -> None:
        """Ask the kernel for the TOS / traffic class of every datagram received from now on
        (IP_RECVTOS / IPV6_RECVTCLASS)."""
        sock = self.socket.sock
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
        self._tos_key = _KEYS[sock.family].tos

    def recv(self) -> RecvBatch:
        got = super().recv()
        if self._tos_key:
            self.last_tos = self.control_bytes(self._tos_key, got.n)
        return got

    def _describe(self, address: Any) -> str:
        family = socket.AF_INET6 if self.socket.spec.version == 6 else socket.AF_INET
        raw = bytes(np.asarray(address)["addr"].tobytes())
        if family == socket.AF_INET:
            raw = int(np.asarray(address)["addr"]).to_bytes(4, "big")
        return f"{ipaddress.ip_address(raw)} port {int(np.asarray(address)['port'])}"
