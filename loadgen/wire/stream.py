"""Length-prefixed frames: how `messages` travel over a TCP stream instead of a pipe.

A frame is a 4-byte big-endian payload length and the payload (one encoded message). Pure: bytes
in, payloads out; `FrameReader` keeps the partial tail between reads, so a reader never waits
for the rest of a frame. A length past `MAX_FRAME_BYTES` is not a frame of ours and raises
`messages.ProtocolError` (a stray client, or a stream out of step).
"""

from __future__ import annotations

import struct

from loadgen.wire.messages import ProtocolError

HEADER = struct.Struct("!I")
# A frame of 20 ms of records at 1M pps per worker is under 1 MiB; 64 MiB is no frame of ours.
MAX_FRAME_BYTES = 64 << 20


def framed(payload: bytes) -> bytes:
    """One frame: the payload behind its length."""
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"a message of {len(payload)} bytes is past the frame limit")
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into payloads, whatever pieces it arrives in."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = -1  # the current frame's payload length, once its header is in

    @property
    def mid_frame(self) -> bool:
        """Whether part of a frame is held: at a stream's end, it was cut inside one."""
        return self._need >= 0 or bool(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the stream; returns every payload they complete, in order."""
        self._buf += data
        out: list[bytes] = []
        pos = 0
        while True:
            if self._need < 0:
                if len(self._buf) - pos < HEADER.size:
                    break
                (self._need,) = HEADER.unpack_from(self._buf, pos)
                pos += HEADER.size
                if self._need > MAX_FRAME_BYTES:
                    raise ProtocolError(
                        f"a frame of {self._need} bytes announced: not a loadgen worker's stream"
                    )
            if len(self._buf) - pos < self._need:
                break
            out.append(bytes(self._buf[pos : pos + self._need]))
            pos += self._need
            self._need = -1
        del self._buf[:pos]
        return out
