"""The delay relay's decisions, sans-IO: which senders it serves, when each held packet is due,
and what it actually did (the hold of every packet sent: send time minus kernel receive stamp).

Rule: a packet is due at its receive stamp plus its direction's delay and never leaves before;
the truth is the hold recorded when it left, so a late timer shows in the truth, not as an
error of the prober. Per test packet answered it also keeps what it saw of each one-way delay,
read with its own reading of RFC 8762's layout (not loadgen's codec): forward T2 - T1 whole,
reverse from T3 to its own send. Only lab addresses (198.18.0.0/15, 2001:2::/48) get a session:
the relay is never a traffic source to anyone else. Times are CLOCK_REALTIME ns, passed in.
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

LAB_SENDERS = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:2::/48"))
MAX_SESSIONS = 64  # senders (address, port) with an upstream socket each; beyond: refused
MAX_SAMPLES = 200_000  # packets kept (per direction); beyond, counted but not kept
MAX_INFLIGHT = 100_000  # test packets passed on whose reply has not come back
MAX_QUEUED = 1_000_000  # packets held at once (rate x delay); beyond, dropped and counted
NTP_UNIX_S = 2_208_988_800  # RFC 5905: 1900-01-01 to 1970-01-01
# RFC 8762 4.2.1 (test packet) and 4.3.1 (reply): byte offsets of what the relay reads.
SEQ, TIMESTAMP, ERROR_ESTIMATE = 0, 4, 12  # both: sequence, T1 (or T3), S|Z|scale
RECEIVE_TIMESTAMP, SENDER_SEQ = 16, 24  # reply: T2, the test packet's sequence
REPLY_LEN = 44
QUANTILES = {"p50": 0.5, "p75": 0.75, "p99": 0.99}

Sender = tuple[int, str, int]  # (IP version, address, port)


class Way(IntEnum):
    FWD = 0  # a test packet on its way to the reflector
    REV = 1  # a reply on its way back to the sender


@dataclass(frozen=True, slots=True, order=True)
class Held:
    due_ns: int
    order: int  # ties keep arrival order
    way: Way = field(compare=False)
    sender: Sender = field(compare=False)
    payload: bytes = field(compare=False)
    rx_ns: int = field(compare=False)


def stamp_ns(packet: bytes, at: int) -> int:
    """The RFC 8762 timestamp at `at` in realtime ns: NTP (seconds since 1900, 2^-32 s
    fraction) or, with the Z bit of the packet's own error estimate set, PTP (s, ns)."""
    sec, frac = (int(v) for v in struct.unpack_from("!II", packet, at))
    if packet[ERROR_ESTIMATE] & 0x40:  # Z: PTPv2 truncated, seconds since 1970
        return sec * 1_000_000_000 + frac
    return (sec - NTP_UNIX_S) * 1_000_000_000 + (frac * 1_000_000_000 >> 32)


def quantile(ordered: list[int], q: float) -> float:
    """numpy's "linear" quantile of an ascending list (as loadgen's own percentiles)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(samples: list[int]) -> dict[str, Any]:
    """count, min, max, avg and the QUANTILES of a list of ns values (all None when empty)."""
    if not samples:
        return {"count": 0, "min_ns": None, "max_ns": None, "avg_ns": None} | {
            f"{k}_ns": None for k in QUANTILES
        }
    ordered = sorted(samples)
    out: dict[str, Any] = {
        "count": len(ordered),
        "min_ns": ordered[0],
        "max_ns": ordered[-1],
        "avg_ns": sum(ordered) / len(ordered),
    }
    return out | {f"{k}_ns": quantile(ordered, q) for k, q in QUANTILES.items()}


class Holds:
    """The relay's queue of held packets and the record of what it did with each."""

    def __init__(self, delay_fwd_ns: int, delay_rev_ns: int) -> None:
        self.delay_ns = (delay_fwd_ns, delay_rev_ns)
        self.queue: list[Held] = []
        self.order = 0
        self.sessions: set[Sender] = set()
        self.holds: tuple[list[int], list[int]] = ([], [])
        # (sender, sequence) -> (T1, the forward hold) of test packets passed on
        self.inflight: dict[tuple[Sender, int], tuple[int, int]] = {}
        # per answered test packet: forward hold, T2 - T1, reverse hold, send - T3
        self.seen: list[tuple[int, int, int, int]] = []
        self.counts = {
            "received_fwd": 0,
            "received_rev": 0,
            "sent_fwd": 0,
            "sent_rev": 0,
            "unkept": 0,  # holds past MAX_SAMPLES
            "refused": 0,  # from an address outside the lab
            "sessions_full": 0,
            "unstamped": 0,  # no kernel receive stamp: held from the user-space read instead
            "send_errors": 0,
            "unmatched": 0,  # replies to no test packet the relay passed on (or too short)
            "overflow": 0,  # dropped: MAX_QUEUED packets held already
        }

    def admit(self, sender: Sender) -> bool:
        """Whether to relay a test packet from `sender` (a new one opens a session)."""
        if sender in self.sessions:
            return True
        if not any(ipaddress.ip_address(sender[1]) in net for net in LAB_SENDERS):
            self.counts["refused"] += 1
            return False
        if len(self.sessions) >= MAX_SESSIONS:
            self.counts["sessions_full"] += 1
            return False
        self.sessions.add(sender)
        return True

    def hold(self, way: Way, sender: Sender, payload: bytes, rx_ns: int, stamped: bool) -> None:
        """Queue a packet received at `rx_ns` until its direction's delay has passed."""
        self.counts["received_fwd" if way is Way.FWD else "received_rev"] += 1
        self.counts["unstamped"] += not stamped
        if len(self.queue) >= MAX_QUEUED:
            self.counts["overflow"] += 1
            return
        self.order += 1
        held = Held(rx_ns + self.delay_ns[way], self.order, way, sender, payload, rx_ns)
        heapq.heappush(self.queue, held)

    def due(self, now_ns: int) -> list[Held]:
        """The packets due by `now_ns`, in due order; the caller sends each, then `sent`s it."""
        out = []
        while self.queue and self.queue[0].due_ns <= now_ns:
            out.append(heapq.heappop(self.queue))
        return out

    def sent(self, held: Held, sent_ns: int, ok: bool) -> None:
        """`held` went out at `sent_ns` (the clock read just before its send)."""
        if not ok:
            self.counts["send_errors"] += 1
            return
        self.counts["sent_fwd" if held.way is Way.FWD else "sent_rev"] += 1
        hold_ns = sent_ns - held.rx_ns
        samples = self.holds[held.way]
        if len(samples) < MAX_SAMPLES:
            samples.append(hold_ns)
        else:
            self.counts["unkept"] += 1
        if held.way is Way.FWD:
            self._passed_on(held, hold_ns)
        else:
            self._answered(held, hold_ns, sent_ns)

    def _passed_on(self, held: Held, hold_ns: int) -> None:
        p = held.payload
        if len(p) < ERROR_ESTIMATE + 2:
            return  # no test packet: nothing to match a reply with
        if len(self.inflight) >= MAX_INFLIGHT:  # the oldest was lost on the way: forget it
            del self.inflight[next(iter(self.inflight))]
        key = (held.sender, struct.unpack_from("!I", p, SEQ)[0])
        self.inflight[key] = (stamp_ns(p, TIMESTAMP), hold_ns)

    def _answered(self, held: Held, hold_ns: int, sent_ns: int) -> None:
        p = held.payload
        seq = struct.unpack_from("!I", p, SENDER_SEQ)[0] if len(p) >= REPLY_LEN else -1
        fwd = self.inflight.pop((held.sender, seq), None)
        if fwd is None:
            self.counts["unmatched"] += 1
            return
        t1, fwd_hold_ns = fwd
        t2, t3 = stamp_ns(p, RECEIVE_TIMESTAMP), stamp_ns(p, TIMESTAMP)
        if len(self.seen) < MAX_SAMPLES:
            self.seen.append((fwd_hold_ns, t2 - t1, hold_ns, sent_ns - t3))

    def next_due_ns(self) -> int | None:
        return self.queue[0].due_ns if self.queue else None

    def summary(self) -> dict[str, Any]:
        """What the relay did: its counts, and the spread of the holds of each direction."""
        fwd, rev = self.holds
        seen_fwd = [s[1] for s in self.seen]
        seen_rev = [s[3] for s in self.seen]
        return {
            **self.counts,
            "pending": len(self.queue),
            "sessions": len(self.sessions),
            "delay_fwd_ns": self.delay_ns[Way.FWD],
            "delay_rev_ns": self.delay_ns[Way.REV],
            "hold_fwd": spread(fwd),
            "hold_rev": spread(rev),
            "seen_fwd": spread(seen_fwd),  # T2 - T1 of each answered test packet
            "seen_rev": spread(seen_rev),  # T3 to the reply's send: all of T4 - T3 but a hop
        }

    def per_packet(self) -> dict[str, list[int]]:
        """Each answered test packet's forward hold, T2 - T1, reverse hold and send - T3."""
        columns = ("hold_fwd", "seen_fwd", "hold_rev", "seen_rev")
        return {name: [s[i] for s in self.seen] for i, name in enumerate(columns)}
