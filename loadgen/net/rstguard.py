"""The opt-in nftables rule that keeps this host from answering the SYN-ACKs of our SYN probes
with a RST (`suppress_rst`): one table per run, `inet loadgen_rst_<pid>`, dropping outgoing TCP
segments with RST set from the workers' source-port blocks. Removed when the run ends; a table
whose process is gone (the coordinator was killed) is reaped by the next run that suppresses
RSTs and by `loadgen lab down`. The name is the only state: nothing else is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator, Sequence

from loadgen.errors import PermissionProblem, SocketProblem

TABLE_PREFIX = "loadgen_rst_"
_TABLE_RE = re.compile(rf"^table inet ({TABLE_PREFIX}(\d+))$", re.MULTILINE)
_NFT_TIMEOUT_S = 10


def ruleset(table: str, blocks: Sequence[tuple[int, int]]) -> str:
    """The nft script of the table: blocks are inclusive (first, last) source ports."""
    ports = ", ".join(f"{first}-{last}" for first, last in sorted(blocks))
    return (
        f"table inet {table} {{\n"
        "  chain out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    tcp sport {{ {ports} }} tcp flags & rst == rst counter drop\n"
        "  }\n"
        "}\n"
    )


def _nft(args: list[str], script: str | None = None) -> str:
    try:
        done = subprocess.run(
            ["nft", *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=_NFT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise SocketProblem(
            "suppress_rst needs the nft command: install nftables, or leave suppress_rst off"
        ) from None
    if done.returncode:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no reason given"
        if "Operation not permitted" in done.stderr:
            raise PermissionProblem(
                "suppress_rst adds an nftables rule and needs root (CAP_NET_ADMIN): run as "
                "root, or leave suppress_rst off"
            )
        raise SocketProblem(f"nft {' '.join(args)} failed ({why}); see `nft list ruleset`")
    return done.stdout


def _owner_alive(pid: int) -> bool:
    """Whether the loadgen process that made a table is still running (a reused pid of another
    program does not count)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"loadgen" in file.read()
    except OSError:
        return False


def reap_stale() -> list[str]:
    """Delete the RST tables of loadgen processes that are gone; returns their names."""
    listing = _nft(["list", "tables", "inet"])
    reaped = []
    for name, pid in _TABLE_RE.findall(listing):
        if int(pid) != os.getpid() and not _owner_alive(int(pid)):
            with contextlib.suppress(SocketProblem):  # another run reaped it first
                _nft(["delete", "table", "inet", name])
                reaped.append(name)
    return reaped


@contextlib.contextmanager
def suppressing_rsts(blocks: Sequence[tuple[int, int]]) -> Iterator[str]:
    """Drop this host's outgoing RSTs from `blocks` while inside; yields the table name."""
    reap_stale()
    table = f"{TABLE_PREFIX}{os.getpid()}"
    _nft(["-f", "-"], ruleset(table, blocks))
    try:
        yield table
    finally:
        with contextlib.suppress(SocketProblem):
            _nft(["delete", "table", "inet", table])
