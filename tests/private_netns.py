"""Run a function in a network namespace of its own: a forked child unshares its network
namespace (net.ipv4.ping_group_range is per namespace), brings lo up, sets the range and
sends back what the function returned or raised. Nothing outside the namespace changes, so
the machine's own ping_group_range (and other engineers' runs) are never touched; the namespace
goes away with the child.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
OPEN_RANGE = "0 2147483647"
WORKTREE = Path(__file__).resolve().parents[1]
# An ordinary user: uid and gid 65534 (nobody, nogroup), no supplementary groups, no
# capabilities (setpriv(1) arguments).
NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


def _unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")


def enter_private_netns(ping_range: str) -> None:
    """Move this process into a new network namespace with lo up and the given range."""
    _unshare_net()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    with open("/proc/sys/net/ipv4/ping_group_range", "w", encoding="ascii") as file:
        file.write(ping_range)


def _child(conn: Connection, fn: Callable[[], object], ping_range: str) -> None:
    try:
        enter_private_netns(ping_range)
        conn.send(("ok", fn()))
    except BaseException as exc:  # sent back and raised in the test
        conn.send(("raised", exc))
    finally:
        conn.close()


def in_private_netns(
    fn: Callable[[], T], *, ping_range: str = OPEN_RANGE, timeout_s: float = 120
) -> T:
    """fn() in a forked child inside a fresh network namespace; killed after timeout_s."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(there, fn, ping_range), name="private-netns")
    child.start()
    there.close()
    try:
        if not here.poll(timeout_s):
            raise AssertionError(f"the private-namespace child did not finish in {timeout_s} s")
        kind, value = here.recv()
    finally:
        if child.is_alive():
            child.terminate()
            child.join(5)
        if child.is_alive():
            child.kill()
        child.join(5)
        here.close()
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


@functools.cache
def nobody_loadgen() -> tuple[list[str], dict[str, str]] | str:
    """How uid 65534 runs loadgen here: the venv's own entry point where that user can run its
    interpreter (the workers re-execute it), else the system interpreter of the same version
    with the venv's packages on PYTHONPATH; a string says why neither works."""
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing: install util-linux to run loadgen as nobody"
    probe = (
        "import subprocess, sys; "
        "subprocess.run([sys.executable, '-c', 'import loadgen'], check=True)"
    )
    site = next(p for p in sys.path if p.endswith("site-packages"))
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    env = {**os.environ, "PYTHONPATH": f"{WORKTREE}{os.pathsep}{site}"}
    for argv, environ in (
        ([str(WORKTREE / ".venv/bin/loadgen")], dict(os.environ)),
        ([system, "-m", "loadgen"], env),
    ):
        python = sys.executable if argv[0].endswith("loadgen") else argv[0]
        check = subprocess.run(
            ["setpriv", *NOBODY, python, "-c", probe],
            env=environ,
            capture_output=True,
            timeout=60,
            check=False,
            cwd="/",
        )
        if check.returncode == 0:
            return argv, environ
    return f"uid 65534 cannot run {sys.executable} nor {system} with loadgen's packages"
