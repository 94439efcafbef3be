"""TCP connect probes as rows, so they travel the worker's one path: what the connect I/O takes
(one row per probe: its sequence; the destination column names the local target) and gives back
(one row per finished handshake: local target, sequence, when its connect started, outcome,
errno), the decoder that turns
those rows into the tracker's columns, and how a connect's errno maps to an outcome. Pure.

Outcomes (connect(2), tcp(7)): a SYN-ACK (the socket connects) is received; ECONNREFUSED (a RST)
is received too and counted apart as refused; an error that came back for the SYN (EHOSTUNREACH,
ENETUNREACH, ...) is errored; nothing by the timeout is lost. Errnos that say the SYN never left
this host for want of a local resource are not outcomes: the send was refused and is retried.
"""

from __future__ import annotations

import errno
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.batch import DecodedBatch
from loadgen.wire.icmp import DecodeStatus


class ConnectOutcome(IntEnum):
    ESTABLISHED = 0  # the handshake completed: received
    REFUSED = 1  # ECONNREFUSED, a RST answered the SYN: received, and counted as refused
    ERRORED = 2  # an error came back for the SYN (or the route to the target failed)


# A connect(2) that fails with one of these never sent its SYN: this host ran out of something
# (ephemeral ports, file descriptors, buffers). The probe is not sent; the pacer retries it.
NOT_SENT = frozenset(
    {errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN}
)
IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EALREADY})


def outcome_of(err: int) -> ConnectOutcome | None:
    """The outcome of a connect that finished with `err` (0: connected); None where the SYN
    never left (NOT_SENT) or the connect is still under way."""
    if err == 0:
        return ConnectOutcome.ESTABLISHED
    if err == errno.ECONNREFUSED:
        return ConnectOutcome.REFUSED
    if err in NOT_SENT or err in IN_PROGRESS:
        return None
    return ConnectOutcome.ERRORED


# What the connect I/O takes per probe (the row the builder gives) and gives back per finished
# connect; both little-endian and packed, viewed as bytes on the worker's path.
REQUEST_DTYPE = np.dtype([("seq", "<u8")])
COMPLETION_DTYPE = np.dtype(
    [("local", "<u4"), ("seq", "<u8"), ("tx_ns", "<i8"), ("outcome", "u1"), ("errno", "u1")]
)
assert COMPLETION_DTYPE.itemsize == 22


class ConnectRows:
    """The connect kind's batch builder: one row per probe holding its sequence. The local
    target travels as the destination column (the worker passes `destinations[local]`, and a
    connect worker's destinations are its local indexes); a connect carries no payload, so
    there is no send time to write."""

    def build(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        rows = np.empty(len(seqs), REQUEST_DTYPE)
        rows["seq"] = seqs
        out: NDArray[np.uint8] = rows.view(np.uint8).reshape(len(seqs), REQUEST_DTYPE.itemsize)
        return out


def request_seqs(packets: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """The sequences of a builder's rows (the inverse of `ConnectRows.build`)."""
    seqs: NDArray[np.uint64] = np.ascontiguousarray(packets).view(REQUEST_DTYPE)["seq"].ravel()
    return seqs


# The tracker's status per outcome: a handshake (either answer) is a reply; an error that came
# back for the SYN marks the probe errored, as an ICMP error quoting an echo request does.
_STATUS = np.array(
    [DecodeStatus.REPLY, DecodeStatus.REPLY, DecodeStatus.ICMP_ERROR], dtype=np.uint8
)


class ConnectDecoder:
    """Completion rows -> the tracker's columns. `global_index[local]` is the run's index of
    the worker's local target; `address_dtype` the family's address column (unused by connect
    probes, whose rows name their probe in full)."""

    def __init__(self, global_index: NDArray[np.uint32], address_dtype: Any) -> None:
        self.global_index = np.asarray(global_index, dtype=np.uint32)
        self.address_dtype = np.dtype(address_dtype)

    def rows(self, buf: NDArray[np.uint8], n: int) -> NDArray[np.void]:
        raw = np.ascontiguousarray(buf[:n, : COMPLETION_DTYPE.itemsize])
        rows: NDArray[np.void] = raw.view(COMPLETION_DTYPE).ravel()
        return rows

    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        rows = self.rows(buf, n)
        outcome = rows["outcome"]
        return DecodedBatch(
            n=n,
            status=_STATUS[np.minimum(outcome, len(_STATUS) - 1)],
            target=self.global_index[rows["local"]],
            seq=rows["seq"].astype(np.uint64),
            tx_ns=rows["tx_ns"].astype(np.int64),  # a stale answer's record needs its send time
            src=np.zeros(n, self.address_dtype),
            quoted_dst=np.zeros(n, self.address_dtype),
            icmp_type=np.zeros(n, np.uint8),
            icmp_code=np.zeros(n, np.uint8),
            seq16_only=np.zeros(n, np.bool_),
            refused=outcome == ConnectOutcome.REFUSED,
        )
