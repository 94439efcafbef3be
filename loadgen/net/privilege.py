"""Reads the facts `icmppath` decides on, for this process in its network namespace: user,
effective and supplementary groups, net.ipv4.ping_group_range (per network namespace) and
whether CAP_NET_RAW is in the effective capability set (/proc/self/status, CapEff).
"""

from __future__ import annotations

import os

from loadgen.icmppath import CLOSED_RANGE, Privileges

CAP_NET_RAW = 13  # <linux/capability.h>
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"
STATUS = "/proc/self/status"


def read_privileges() -> Privileges:
    return Privileges(
        uid=os.geteuid(),
        egid=os.getegid(),
        groups=tuple(os.getgroups()),
        ping_range=ping_group_range(),
        net_raw=has_net_raw(),
    )


def ping_group_range(path: str = PING_GROUP_RANGE) -> tuple[int, int]:
    """The sysctl's two numbers; a kernel without it (or an unreadable file) admits nobody."""
    try:
        with open(path, encoding="ascii") as file:
            low, high = (int(word) for word in file.read().split())
    except (OSError, ValueError):
        return CLOSED_RANGE
    return low, high


def has_net_raw(path: str = STATUS) -> bool:
    """CAP_NET_RAW in the effective set (what the kernel checks for a raw socket)."""
    try:
        with open(path, encoding="ascii") as file:
            for line in file:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0
