"""Waiting for the kernel to start stamping received packets: owns that wait and nothing else.

Why it is needed: the kernel stamps received packets only while its `netstamp_needed_key`
static key is on, and the first socket that asks for RX stamps (while no other socket of the
machine holds them) turns it on from a work queue (net/core/dev.c, net_enable_timestamp), not
in the setsockopt call. Until that work has run, replies arrive unstamped and loadgen would
fall back to user-space receive times for the first probes of a run: correctly labelled, but
not what the user asked for. On a busy machine the work queue was seen to run only after a
whole short run had been received.

How: a throwaway UDP socket that asks for the same stamps sends a byte to itself on loopback
until that byte comes back stamped. The key is global (one for all network namespaces), so any
loopback that is up tells. Bounded in time; where no loopback answers it gives up at once.
Kernel interface: Documentation/networking/timestamping.rst.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time

SO_TIMESTAMPING = 37  # <asm-generic/socket.h>; also the cmsg type of the stamps
SOF_RX_SOFTWARE_AND_REPORT = (1 << 3) | (1 << 4)  # SOF_TIMESTAMPING_RX_SOFTWARE | _SOFTWARE
_CMSG_SPACE = 64  # one struct scm_timestamping64 (three timespecs) and its header
_LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


def wait_for_rx_stamps(limit_s: float = 1.0) -> bool | None:
    """True once a packet received now carries a kernel software RX stamp, False if none did
    within `limit_s`, None if no loopback could carry the test. Call it while the probe socket
    holds its own RX stamping, so the key stays on after the throwaway socket closes."""
    for family, address in _LOOPBACKS:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
            probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_RX_SOFTWARE_AND_REPORT)
            seen = _stamped_within(probe, limit_s)
            if seen is not None:
                return seen
    return None


def _stamped_within(probe: socket.socket, limit_s: float) -> bool | None:
    deadline = time.monotonic() + limit_s
    own = probe.getsockname()
    while True:
        probe.sendto(b"\0", own)
        # Loopback delivers within the send call (its softirq runs as the call returns); the
        # wait only covers a descheduled softirq. Nothing at all back: this loopback is down.
        if not select.select([probe], [], [], 0.05)[0]:
            return None
        _, ancillary, _, _ = probe.recvmsg(1, socket.CMSG_SPACE(_CMSG_SPACE))
        if any(
            level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING for level, kind, _ in ancillary
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)  # let the work queue that turns the key on run
