"""Which kind of socket carries a run's ICMP echo probes: a raw socket (root or CAP_NET_RAW) or
a datagram ICMP socket (any user whose group net.ipv4.ping_group_range admits; the one sysctl
governs IPv4 and IPv6 alike). Pure: the caller reads the facts (`net.privilege`) and this module
decides, exactly as the kernel will (net/ipv4/ping.c, ping_init_sock: the effective group or
any supplementary group within the range), and words the path and the way out when none is open.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from loadgen.errors import PermissionProblem, UsageError

# The range the kernel ships (`1 0`: nobody) and the one that admits every group.
CLOSED_RANGE = (1, 0)
OPEN_RANGE_FIX = 'sysctl -w net.ipv4.ping_group_range="0 2147483647"'
CAP_FIX = "run as root, or grant the interpreter `sudo setcap cap_net_raw+ep <python path>`"


class IcmpPath(StrEnum):
    """Profile key `icmp_socket`; RAW and DATAGRAM are also what a plan decides."""

    AUTO = "auto"  # raw where the process may open one, else datagram where the range admits
    RAW = "raw"
    DATAGRAM = "datagram"


LABELS = {
    IcmpPath.RAW: "ICMP via raw socket",
    IcmpPath.DATAGRAM: "ICMP via datagram socket (ping_group_range)",
}

# What a run on the datagram path should know (the Hello's note says it once).
DATAGRAM_NOTE = (
    "the kernel picks each worker's echo identifier and drops a reply whose checksum fails "
    "(counted lost, not corrupted); ICMP errors come from the error queue"
)


@dataclass(frozen=True, slots=True)
class Privileges:
    """What decides the path: the process's user and groups, the namespace's ping range and
    whether CAP_NET_RAW is in its effective set (root has it unless it was dropped)."""

    uid: int
    egid: int
    groups: tuple[int, ...]  # supplementary groups
    ping_range: tuple[int, int]  # net.ipv4.ping_group_range, inclusive; low > high admits none
    net_raw: bool

    def admitted_gid(self) -> int | None:
        """The first of the effective and supplementary groups within the range, if any."""
        low, high = self.ping_range
        return next((g for g in (self.egid, *self.groups) if low <= g <= high), None)


def choose(requested: IcmpPath | str, privileges: Privileges) -> IcmpPath:
    """RAW or DATAGRAM for `requested` (auto, raw or datagram); raises PermissionProblem with
    one line naming what to change when the requested path (or, for auto, every path) is shut."""
    wanted = IcmpPath(requested)
    raw_ok = privileges.net_raw
    datagram_ok = privileges.admitted_gid() is not None
    if wanted is IcmpPath.RAW and not raw_ok:
        raise PermissionProblem(
            f'icmp_socket = "raw" needs root or CAP_NET_RAW (uid {privileges.uid} has '
            f'neither): {CAP_FIX}, or set icmp_socket = "auto"'
        )
    if wanted is IcmpPath.DATAGRAM and not datagram_ok:
        raise PermissionProblem(
            f'icmp_socket = "datagram": {_range_words(privileges)}; widen it with '
            f"`{OPEN_RANGE_FIX}`"
        )
    if wanted is IcmpPath.AUTO:
        if raw_ok:
            return IcmpPath.RAW
        if not datagram_ok:
            raise PermissionProblem(no_path_line(privileges))
        return IcmpPath.DATAGRAM
    return wanted


def settle(
    requested: IcmpPath | str, privileges: Privileges, refusal: Callable[[IcmpPath], int]
) -> IcmpPath:
    """`choose`, confirmed by the kernel: refusal(path) opens and closes one socket of that
    kind and returns its errno (0: it opened). A path the kernel refuses although the facts
    admit it (a security module or seccomp filter, a range changed since it was read) gives
    way in auto mode to the other path if that one opens; else PermissionProblem, one line."""
    first = choose(requested, privileges)
    err = refusal(first)
    if not err:
        return first
    other = IcmpPath.DATAGRAM if first is IcmpPath.RAW else IcmpPath.RAW
    if IcmpPath(requested) is IcmpPath.AUTO and not refusal(other):
        return other
    name = errno.errorcode.get(err, str(err))
    return _raise(
        f"the kernel refused a {first} ICMP socket ({name}) that uid {privileges.uid} should "
        f"be allowed: {CAP_FIX}; or `{OPEN_RANGE_FIX}`; or look for a security module or "
        "seccomp policy that forbids it"
    )


def _raise(line: str) -> NoReturn:
    raise PermissionProblem(line)


def no_path_line(privileges: Privileges) -> str:
    """The one line for a process that may open neither kind of ICMP socket."""
    return (
        f"ICMP needs a raw socket (root or CAP_NET_RAW) or a datagram ICMP socket, and "
        f"{_range_words(privileges)}: {CAP_FIX}; or open datagram sockets to every group "
        f"with `{OPEN_RANGE_FIX}`"
    )


def _range_words(privileges: Privileges) -> str:
    low, high = privileges.ping_range
    groups = ", ".join(str(g) for g in dict.fromkeys((privileges.egid, *privileges.groups)))
    shown = "admits no group" if low > high else f"admits groups {low}-{high}"
    return (
        f"net.ipv4.ping_group_range ({low} {high}) {shown}, not this process's "
        f"(uid {privileges.uid}, groups {groups})"
    )


def check_tx_path(path: IcmpPath, tx_path: str) -> None:
    """tx_path = "packet" writes to the link through AF_PACKET, which needs CAP_NET_RAW."""
    if path is IcmpPath.DATAGRAM and tx_path == "packet":
        raise UsageError(
            'tx_path = "packet" needs root or CAP_NET_RAW (it sends through an AF_PACKET '
            'socket and reads replies from a raw one): set tx_path = "ip", or run as root '
            'with icmp_socket = "auto"'
        )
