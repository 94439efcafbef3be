"""What every lab process inside a namespace does alike: die with the lab's owner, answer one
request on its unix SEQPACKET control socket ("stop", or a command its owner answers), and
write its stats file whole (a reader never sees half a file). Light: no numpy, no pyroute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
ANSWER_TIMEOUT_S = 1.0


def die_with_parent() -> bool:
    """Have the kernel send SIGTERM when the parent goes; False if it has gone already."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() != 1


def write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def serve_control(listener: socket.socket, answer: Callable[[bytes], dict[str, Any]]) -> bool:
    """Answer one control request with `answer(command)`; returns False when asked to stop."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return True
    with conn:
        conn.settimeout(ANSWER_TIMEOUT_S)
        with contextlib.suppress(OSError):  # the asker went away; nothing to answer
            cmd = conn.recv(64).strip()
            if cmd == b"stop":
                conn.sendall(b"{}")
                return False
            conn.sendall(json.dumps(answer(cmd)).encode())
    return True
