"""How many sockets a TCP connect run holds open, and whether this host can give it that many.

A connect probe holds one socket (one file descriptor, one ephemeral port towards its target's
address and port) from its connect until its handshake finishes or its timeout passes; closed
with a RST (SO_LINGER 0) it leaves no TIME_WAIT behind. So a worker holds about rate x timeout
sockets, and one target about its own rate x timeout ports. Pure: the limits come in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen.errors import ProfileError
from loadgen.units import format_duration, format_rate

# Beyond rate x timeout: a frame's worth of completions not yet read, the pacer's catch-up
# burst, and the worker's own descriptors (pipes, epoll, shared libraries).
HOLD_MARGIN = 1.2
BASE_FDS = 64


@dataclass(frozen=True, slots=True)
class HostLimits:
    """What this host allows a connect worker: RLIMIT_NOFILE's hard limit (the worker raises
    its soft limit to it) and the size of net.ipv4.ip_local_port_range."""

    fd_limit: int
    ephemeral_ports: int


def sockets_held(rate_pps: float, timeout_ns: int) -> int:
    """Sockets open at once at `rate_pps` with a `timeout_ns` hold, with the margin."""
    return math.ceil(rate_pps * timeout_ns / 1e9 * HOLD_MARGIN)


def check_connect_capacity(
    *, worker_rate_pps: float, target_rate_pps: float, timeout_ns: int, limits: HostLimits
) -> None:
    """Refuse, in one line, a rate and timeout that need more descriptors per worker, or more
    ephemeral ports per target, than this host has."""
    fds = sockets_held(worker_rate_pps, timeout_ns) + BASE_FDS
    ports = sockets_held(target_rate_pps, timeout_ns)
    timeout = format_duration(timeout_ns)
    if fds > limits.fd_limit:
        fit = (limits.fd_limit - BASE_FDS) / HOLD_MARGIN / (timeout_ns / 1e9)
        raise ProfileError(
            f"tcp-connect at {format_rate(worker_rate_pps)} per worker with a {timeout} timeout "
            f"holds ~{fds} sockets, over the open-file limit {limits.fd_limit}: raise it "
            f"(ulimit -n), lower the timeout, add workers, or stay under "
            f"{format_rate(fit)} per worker"
        )
    if ports > limits.ephemeral_ports:
        fit = limits.ephemeral_ports / HOLD_MARGIN / (timeout_ns / 1e9)
        raise ProfileError(
            f"tcp-connect at {format_rate(target_rate_pps)} per target with a {timeout} timeout "
            f"holds ~{ports} ephemeral ports per target, over the {limits.ephemeral_ports} of "
            "net.ipv4.ip_local_port_range: widen it, lower the timeout, add targets or ports, "
            f"or stay under {format_rate(fit)} per target"
        )
