"""ICMP errors on a datagram socket's error queue, read into `icmp.QueuedError` values.

A datagram ICMP socket with IP_RECVERR / IPV6_RECVERR gets an ICMP error about one of its probes
as an error-queue message (net/ipv4/ping.c, ping_err; ip_icmp_error): the data is the quoted
probe from its ICMP header on (a UDP probe socket's, __udp4_lib_err / __udp6_lib_err: the quoted
payload after the UDP header), msg_name the probe's destination, and the cmsg a struct
sock_extended_err (origin SO_EE_ORIGIN_ICMP or _ICMP6, the error's type and code) followed by the
offender's sockaddr. The kernel also stores the error's errno as the socket's pending error
(sk_err), which the next send or receive returns once: `batchio` retries that call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from loadgen.net.families import FamilySpec
from loadgen.net.mmsg import RecvRing
from loadgen.wire.icmp import QueuedError

SO_EE_ORIGIN_ICMP = 2  # <linux/errqueue.h>
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR_BYTES = 16  # u32 errno; u8 origin, type, code, pad; u32 info; u32 data
# Where the address sits in a sockaddr_in (after family and port) and a sockaddr_in6 (after
# family, port and flow info).
_ADDRESS_AT = {4: 4, 6: 8}
# How many times a send or receive is tried again after returning a pending ICMP error: each
# try takes one pending error (sock_error clears it), so only errors arriving faster than the
# tries run could use them all up; then the failure is real.
PENDING_ERROR_TRIES = 16


def queued_errors(ring: RecvRing, err_at: NDArray[np.int64], spec: FamilySpec) -> list[QueuedError]:
    """The ICMP errors among the first len(err_at) rows of an error-queue ring read with names
    (err_at: where each row's sock_extended_err begins in its control data, -1 where it has
    none). Found column-wise: with TX stamps on, nearly every row is a stamp."""
    n = len(err_at)
    origin = ring.ctrl[np.arange(n), np.maximum(err_at, 0) + 4]
    icmp = (err_at >= 0) & ((origin == SO_EE_ORIGIN_ICMP) | (origin == SO_EE_ORIGIN_ICMP6))
    out = []
    at = _ADDRESS_AT[spec.version]
    width = 4 if spec.version == 4 else 16
    for row in np.flatnonzero(icmp).tolist():
        ctrl, err = ring.ctrl[row], int(err_at[row])
        offender = ctrl[err + _EXTENDED_ERR_BYTES + at : err + _EXTENDED_ERR_BYTES + at + width]
        length = min(int(ring.lengths[row]), ring.data.shape[1])
        out.append(
            QueuedError(
                icmp_type=int(ctrl[err + 5]),
                code=int(ctrl[err + 6]),
                offender=offender.tobytes(),
                destination=ring.names[row, at : at + width].tobytes(),
                echo=ring.data[row, :length].tobytes(),
            )
        )
    return out
