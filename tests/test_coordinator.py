"""The coordinator's pipe handling: frames larger than a pipe's buffer arrive whole."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from typing import Any

import uvloop

from loadgen.coordinator import watch_connection


def test_a_frame_larger_than_the_pipe_buffer_is_read_whole() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    payload = bytes(range(256)) * 16_384  # 4 MiB: many pipe buffers' worth
    got: list[bytes] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_readable(_: Any) -> None:
            while reader.poll():
                got.append(reader.recv_bytes())
            if len(got) == 2:
                loop.remove_reader(reader.fileno())
                done.set()

        watch_connection(loop, reader, on_readable, None)  # type: ignore[arg-type]

        def send() -> None:
            writer.send_bytes(payload)
            writer.send_bytes(b"end")

        sender = threading.Thread(target=send)
        sender.start()
        await asyncio.wait_for(done.wait(), timeout=20)
        sender.join(timeout=5)

    uvloop.run(main())
    reader.close()
    writer.close()
    assert got == [payload, b"end"]
