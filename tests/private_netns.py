"""Run a function in a network namespace of its own: a forked child unshares its network
namespace (net.ipv4.ping_group_range is per namespace), brings lo up, sets the range and
sends back what the function returned or raised. Nothing outside the namespace changes, so
the machine's own ping_group_range (and other engineers' runs) are never touched; the namespace
goes away with the child.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import subprocess
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
OPEN_RANGE = "0 2147483647"


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
