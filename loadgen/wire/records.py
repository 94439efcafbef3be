"""The fixed-width record every worker emits and the coordinator aggregates.

A SENT record per target and send batch (its `probes` field says how many probes to that
target it stands for, all with its tx_ns), one record per probe outcome (exactly one of
RECEIVED, LATE, LOST, ERRORED per probe) and one per side event (DUPLICATE, BITFLIP, CORRUPTED,
ICMP_ERROR, STALE, REFUSED). Records travel as numpy structured arrays, packed into msgpack
frames by `messages`.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

import numpy as np

RECORD_DTYPE = np.dtype(
    [
        ("tx_ns", "<i8"),  # CLOCK_REALTIME send time of the probe; its second is the bucket
        ("rtt_ns", "<i8"),  # RECEIVED, LATE, DUPLICATE, STALE: reply time - send time; else 0
        ("target", "<u4"),  # global target index (the plan's order)
        ("kind", "u1"),  # RecordKind
        ("flags", "u1"),  # RecordFlag
        ("probes", "<u2"),  # SENT: probes to this target it stands for (1..MAX_PROBES); else 0
    ]
)
assert RECORD_DTYPE.itemsize == 24
MAX_PROBES = 0xFFFF  # per SENT record; a larger batch to one target takes several

# A loss burst (`outages`): a run of consecutive lost probes of one target that has ended.
BURST_DTYPE = np.dtype(
    [
        ("start_ns", "<i8"),  # send time of its first lost probe
        ("end_ns", "<i8"),  # send time of the probe that ended it (its last, at the run's end)
        ("target", "<u4"),  # global target index
        ("probes", "<u4"),  # lost probes in a row
    ]
)
assert BURST_DTYPE.itemsize == 24


class RecordKind(IntEnum):
    SENT = 0  # `probes` probes to one target, sent together
    # Outcomes: every SENT probe gets exactly one of these.
    RECEIVED = 1  # a good reply within timeout
    LATE = 2  # a good reply after timeout but before the probe was given up (linger)
    LOST = 3  # no reply, no error, by the end of linger (no RTT: rtt_ns holds its sequence)
    ERRORED = 4  # no good reply, but an ICMP error or a damaged reply came back for it
    # Side events, counted apart from outcomes.
    DUPLICATE = 5  # a further good reply for a probe that already had one
    BITFLIP = 6  # a reply with a valid checksum whose payload differs from what was sent
    CORRUPTED = 7  # a reply with a bad ICMP checksum that could still be attributed
    ICMP_ERROR = 8  # destination unreachable / time exceeded quoting one of our probes
    STALE = 9  # a good reply for a probe already given up (after linger)
    REFUSED = 10  # the answer (RECEIVED or LATE) was a refusal: a TCP RST, the port is closed
    # STAMP probes to a stateful reflector (RFC 8762 4.3): each LOST probe also gets one of
    # these when the reflector's sequence tells which way it was lost (`stamp_figures`).
    LOST_FORWARD = 11  # the reflector never saw it
    LOST_REVERSE = 12  # the reflector answered, the reply never came back
    # STAMP one-way samples of a good reply, the value in rtt_ns (tx_ns: the probe's send time).
    OWD_FWD = 13  # T2 - T1: reflector's receive stamp minus our send time
    OWD_REV = 14  # T4 - T3: our receive stamp minus the reflector's send stamp
    RESIDENCE = 15  # T3 - T2: time the test packet spent in the reflector
    REFLECTOR_TTL = 16  # the TTL / hop limit our probe arrived with at the reflector
    # STAMP with the Class of Service TLV: `probes` good replies of one target that saw one
    # DSCP/ECN observation (sent, at the reflector, back), packed into rtt_ns by `cos`.
    COS = 17


OUTCOME_KINDS = (RecordKind.RECEIVED, RecordKind.LATE, RecordKind.LOST, RecordKind.ERRORED)
ONE_WAY_KINDS = (
    RecordKind.OWD_FWD,
    RecordKind.OWD_REV,
    RecordKind.RESIDENCE,
    RecordKind.REFLECTOR_TTL,
)


class RecordFlag(IntFlag):
    NONE = 0
    REORDERED = 1  # this reply arrived after a reply to a later probe of the same target
    TX_KERNEL = 2  # send time is a kernel software TX timestamp (else user space, per batch)
    TX_HARDWARE = 4  # send time is a NIC hardware TX timestamp
    RX_KERNEL = 8  # receive time is a kernel software RX timestamp (else user space)
    RX_HARDWARE = 16  # receive time is a NIC hardware RX timestamp
