"""TCP connect probes end to end on loopback (127.0.0.1 and ::1 only), as root and as an
unprivileged user (uid 65534, every capability dropped): an open port the test listens on,
a closed one (bound, never listening: the kernel answers a RST), exact accounting per second.
Every run is bounded by a probe count and a subprocess timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_run_loopback import assert_every_second_accounts

pytestmark = pytest.mark.root

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


def as_nobody() -> list[str]:
    """setpriv as uid 65534 with no capability, except, where this interpreter lives under a
    directory others may not search (pyenv under /root, mode 700), CAP_DAC_READ_SEARCH: it
    reads files and nothing more, so a worker process can start the interpreter too."""
    real = Path(os.path.realpath(sys.executable))
    if all(p.stat().st_mode & 0o001 for p in (real, *real.parents)):
        return AS_NOBODY
    keep = "dac_read_search"
    return [*AS_NOBODY[:-1], f"--inh-caps=-all,+{keep}", f"--ambient-caps=+{keep}"]


LOOPBACK = {4: ("127.0.0.1", socket.AF_INET), 6: ("::1", socket.AF_INET6)}


class Ports:
    """A listener that accepts and closes (in a thread, until closed) and a closed port,
    both on one loopback address."""

    def __init__(self, version: int) -> None:
        address, family = LOOPBACK[version]
        self.address = address
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((address, 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.open = self.listener.getsockname()[1]
        self.unused = socket.socket(family, socket.SOCK_STREAM)
        self.unused.bind((address, 0))  # held, never listening: nobody else takes the port
        self.closed = self.unused.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            select.select([self.listener], [], [], 0.1)
            with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
                while True:
                    conn, _ = self.listener.accept()
                    conn.close()
                    self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        self.unused.close()


@pytest.fixture(params=[4, 6], ids=["v4", "v6"])
def ports(request: pytest.FixtureRequest) -> Iterator[Ports]:
    p = Ports(request.param)
    try:
        yield p
    finally:
        p.close()


def run(
    args: list[str], *, nobody: bool, out: Path
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    cmd = [sys.executable, "-m", "loadgen", "ping", *args, "--plain", "--jsonl", str(out)]
    if nobody:
        cmd = as_nobody() + cmd
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False, env=env)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return res, rows


def outdir(tmp_path: Path) -> Path:
    """A directory the unprivileged user may write its export to."""
    d = tmp_path / "out"
    d.mkdir(mode=0o777, exist_ok=True)
    d.chmod(0o777)
    for parent in (tmp_path, *tmp_path.parents):
        if parent == Path("/"):
            break
        with contextlib.suppress(OSError):
            parent.chmod(parent.stat().st_mode | 0o011)  # searchable by others, nothing more
    return d


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    (summary,) = [r for r in rows if r["type"] == "summary"]
    t: dict[str, Any] = summary["total"]
    return t


@pytest.mark.parametrize("nobody", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("port", ["open", "closed"])
def test_every_connect_answered(ports: Ports, tmp_path: Path, nobody: bool, port: str) -> None:
    """An open port: every connect received; a closed one: every connect refused by a RST,
    which is an answer too (received), counted apart as refused."""
    out = outdir(tmp_path) / f"{port}.jsonl"
    args = [ports.address, "--tcp-connect", str(getattr(ports, port)), "-r", "2000", "-c", "2000"]
    # Timeouts far above any loopback handshake: a busy machine may read a RST late (its RTT
    # is user space), which must not decide the test.
    res, rows = run([*args, "-w", "2s", "-d", "4s"], nobody=nobody, out=out)
    assert res.returncode == 0, res.stderr
    assert_every_second_accounts(rows)
    t = total(rows)
    assert (t["sent"], t["received"] + t["late"], t["lost"], t["errored"]) == (2000, 2000, 0, 0)
    assert t["refused"] == (2000 if port == "closed" else 0)
    if port == "open":
        assert ports.accepted > 0  # the listener saw the handshakes


def test_a_rate_beyond_the_open_file_limit_is_refused_in_one_line(ports: Ports) -> None:
    cmd = ["prlimit", "--nofile=1024:1024", sys.executable, "-m", "loadgen", "ping"]
    cmd += [ports.address, "--tcp-connect", str(ports.open), "-r", "50k", "-c", "10", "-w", "1s"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "open-file limit 1024" in lines[0], res.stderr
    assert ports.accepted == 0  # refused before a probe was sent


def test_the_unprivileged_user_has_no_raw_sockets() -> None:
    """What the nobody runs above prove: their user could not have sent a raw probe."""
    code = "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"
    res = subprocess.run(
        [*as_nobody(), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode != 0 and "PermissionError" in res.stderr, res.stderr
