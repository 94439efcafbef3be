"""The lab's record of what it built: one JSON state file per lab under /run/loadgen-lab.

Written before the first kernel object is created and updated as reflectors start, so a crash
at any point leaves enough behind for `lab_down(prefix)` to remove everything. A lock file
serialises address allocation between labs brought up at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadgen.errors import LabError
from loadgen.lab.spec import TCP_PORT_KEYS, DropBy, Impairments, JitterDist

STATE_DIR = Path("/run/loadgen-lab")
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class LabHost:
    """One test host: where it is, what it does, who answers its echo requests."""

    index: int
    name: str
    group: str
    address: str  # the address loadgen probes
    peer_address: str  # the root-namespace end of its link
    prefixlen: int
    netns: str
    root_ifname: str
    ns_ifname: str
    nft_table: str  # in the host's namespace: counters, and the drops when impaired
    impairments: Impairments
    responder: str  # "kernel" or "reflector"
    control_path: str | None = None  # reflector control socket
    reflector_pid: int | None = None
    # IPv6: every host has an address of each family (empty in state files of older labs).
    address6: str = ""
    peer_address6: str = ""
    prefixlen6: int = 0
    control_path6: str | None = None  # the IPv6 reflector's control socket
    reflector_pid6: int | None = None
    listener_pid: int | None = None  # the TCP listener of `impairments.tcp_open`, if any
    relay_pid: int | None = None  # the STAMP delay relay of `impairments.stamp_port`, if any
    relay_control_path: str | None = None  # its control socket

    def address_of(self, version: int) -> str:
        """The host's address of IP `version` (4 or 6)."""
        return self.address if version == 4 else self.address6

    def control_path_of(self, version: int) -> str | None:
        return self.control_path if version == 4 else self.control_path6


@dataclass(frozen=True, slots=True)
class LabState:
    prefix: str
    family: int
    subnet: str
    seed: int
    owner_pid: int  # the process that brought the lab up
    detached: bool  # True: reflectors outlive their starter (`loadgen lab up`)
    hosts: tuple[LabHost, ...]
    subnet6: str = ""  # the IPv6 block of the hosts' second addresses


def state_path(prefix: str, state_dir: Path = STATE_DIR) -> Path:
    return state_dir / f"{prefix}.json"


def run_dir(prefix: str, state_dir: Path = STATE_DIR) -> Path:
    """Per-lab directory: reflector control sockets, logs and final stats."""
    return state_dir / prefix


def save_state(state: LabState, state_dir: Path = STATE_DIR) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(state.prefix, state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": STATE_VERSION, **asdict(state)}, indent=1))
    os.replace(tmp, path)
    return path


def _host(raw: dict[str, Any]) -> LabHost:
    imp = dict(raw["impairments"])
    imp["drop_by"] = DropBy(imp["drop_by"])
    imp["jitter_dist"] = JitterDist(imp["jitter_dist"])
    for key in TCP_PORT_KEYS:  # JSON lists back to tuples
        imp[key] = tuple(imp.get(key, ()))
    return LabHost(**{**raw, "impairments": Impairments(**imp)})


def load_state(path: Path) -> LabState:
    try:
        raw = json.loads(path.read_text())
        if raw.pop("version") != STATE_VERSION:
            raise ValueError("another state version")
        hosts = tuple(_host(h) for h in raw.pop("hosts"))
        return LabState(**raw, hosts=hosts)  # older files lack the IPv6 keys: defaults
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(
            f"lab state {path} is unreadable ({exc}); remove the lab with `loadgen lab down --all`"
        ) from exc


def held_blocks(path: Path) -> list[str]:
    """The address blocks a state file holds, read even from a file that `load_state` refuses
    (another loadgen version, another schema): a lab being built by another version must not
    get its block handed out twice. Unreadable files hold nothing."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(raw, dict):
        return []
    return [b for b in (raw.get("subnet"), raw.get("subnet6")) if isinstance(b, str) and b]


def list_states(state_dir: Path = STATE_DIR) -> list[Path]:
    if not state_dir.is_dir():
        return []
    return sorted(state_dir.glob("lg*.json"))


@contextlib.contextmanager
def locked(state_dir: Path = STATE_DIR) -> Iterator[None]:
    """Hold the lab lock: one lab at a time allocates addresses and names."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
