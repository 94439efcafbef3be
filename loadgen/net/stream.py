"""TCP streams between the coordinator and workers: `wire.stream` frames over a socket.

`StreamLink` is the worker's end, shaped like the pipe `Connection` it replaces (send_bytes,
recv_bytes, fileno, close) so the worker loop is the same over both. It holds the worker's
lease: every message heard renews it, and a blocking read or write waits at most what is left
of it (a cut-off worker's writes fill the socket buffer and then block: never past the lease).
`StreamPeer` is the coordinator's end: non-blocking, it reads what has arrived and keeps a
partial frame for later, so a link cut mid-frame never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import socket
import time

from loadgen.errors import UsageError
from loadgen.lease import LEASE_NS, Lease
from loadgen.wire.stream import HEADER, FrameReader, framed

READ_BYTES = 1 << 20  # per recv: a few frames at high rates
READS_PER_WAKE = 8  # recv calls per readable wake before the loop gets a turn
MAX_PENDING_BYTES = 1 << 20  # unsent control bytes to a peer that stopped reading: give up
# Past its lease a worker still ships what it resolves, to a stream that takes it at once.
LAPSED_WAIT_S = 0.1


def listen(host: str, port: int) -> socket.socket:
    """The coordinator's listening socket for workers to connect back to."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen for workers on {host} port {port} ({exc.strerror}): give an "
            "address of this host and a free port"
        ) from exc
    sock.setblocking(False)
    return sock


def _tune(sock: socket.socket) -> None:
    # Heartbeats and control messages are tiny: send each at once, not behind Nagle's wait.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StreamLink:
    """A worker's stream to its coordinator, under a lease of `lease_ns`."""

    def __init__(self, address: tuple[str, int], lease_ns: int = LEASE_NS) -> None:
        self.sock = socket.create_connection(address, timeout=lease_ns / 1e9)
        _tune(self.sock)
        self.lease = Lease(time.monotonic_ns(), lease_ns)

    def _wait_at_most(self) -> None:
        left_ns = self.lease.limit_ns - self.lease.silent_ns(time.monotonic_ns())
        self.sock.settimeout(max(left_ns / 1e9, LAPSED_WAIT_S))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_bytes(self, payload: bytes) -> None:
        """Raises TimeoutError when the stream takes nothing for the rest of the lease."""
        self._wait_at_most()
        self.sock.sendall(framed(payload))

    def recv_bytes(self) -> bytes:
        """One whole message. Raises EOFError when the coordinator closed the stream and
        TimeoutError when nothing came for the rest of the lease."""
        self._wait_at_most()
        (size,) = HEADER.unpack(self._exactly(HEADER.size))
        payload = self._exactly(size)
        self.lease.heard(time.monotonic_ns())
        return payload

    def _exactly(self, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            chunk = self.sock.recv(size - len(buf))
            if not chunk:
                raise EOFError("the coordinator closed the stream")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()


class StreamPeer:
    """The coordinator's end of one worker's stream."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        _tune(sock)
        self.sock = sock
        self.reader = FrameReader()
        self.closed = False  # end of stream or an error: nothing more will come
        self._out = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[bytes]:
        """The messages that arrived, as far as they are whole; sets `closed` at the stream's
        end (what was complete before it is returned). Raises ProtocolError on garbage."""
        out: list[bytes] = []
        for _ in range(READS_PER_WAKE):
            try:
                data = self.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ECONNRESET, ETIMEDOUT: the stream is gone
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            out += self.reader.feed(data)
            if len(data) < READ_BYTES:
                break
        return out

    def send_bytes(self, payload: bytes) -> None:
        """Queue one message and send what the socket takes now; the rest goes with the next
        send. A peer that takes nothing for a megabyte's worth is treated as gone."""
        self._out += framed(payload)
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.closed = True
            return
        del self._out[:sent]
        if len(self._out) > MAX_PENDING_BYTES:
            self.closed = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
