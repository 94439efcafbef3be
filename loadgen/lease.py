"""The lease between the coordinator and a worker on a TCP stream, decided from `now_ns` alone.

The coordinator sends a `messages.Beat` every `BEAT_INTERVAL_NS`; a worker that has heard
nothing for `LEASE_NS` stops sending, resolves what it can and exits, and the coordinator names
a worker it has heard nothing from for as long (host down, link cut). One rule on both ends:
whoever hears nothing for a lease's length lets go. Pure: no clock, no socket.
"""

from __future__ import annotations

LEASE_NS = 2_000_000_000
# Eight beats per lease: a few late or lost on a loaded machine do not end a run.
BEAT_INTERVAL_NS = 250_000_000


class Lease:
    """Held while the other end is heard at least once every `limit_ns`."""

    def __init__(self, now_ns: int, limit_ns: int = LEASE_NS) -> None:
        self.limit_ns = limit_ns
        self.last_heard_ns = now_ns
        self._lapsed = False

    def heard(self, now_ns: int) -> None:
        """Something arrived from the other end. A lapsed lease stays lapsed: what was let go
        is not taken back."""
        self.last_heard_ns = max(self.last_heard_ns, now_ns)

    def silent_ns(self, now_ns: int) -> int:
        return max(0, now_ns - self.last_heard_ns)

    def expired(self, now_ns: int) -> bool:
        if not self._lapsed and self.silent_ns(now_ns) >= self.limit_ns:
            self._lapsed = True
        return self._lapsed


class BeatClock:
    """When the next heartbeat is due, on a fixed grid from the first: a late tick sends one
    beat, not the ones it missed."""

    def __init__(self, now_ns: int, interval_ns: int = BEAT_INTERVAL_NS) -> None:
        self.interval_ns = interval_ns
        self.next_ns = now_ns
        self.seq = 0

    def due(self, now_ns: int) -> int | None:
        """The sequence number of the beat to send now, or None when none is due."""
        if now_ns < self.next_ns:
            return None
        missed = (now_ns - self.next_ns) // self.interval_ns
        self.next_ns += (missed + 1) * self.interval_ns
        self.seq += 1
        return self.seq

    def wait_ns(self, now_ns: int) -> int:
        return max(0, self.next_ns - now_ns)
