"""The send schedule of one worker: an absolute timetable on the monotonic clock.

Probe k is due at `start_ns + k * 1e9 / rate_pps`; each tick the worker asks how many are due
and sends them. Because the timetable is absolute, small delays are caught up exactly and the
long-run rate never drifts. Catch-up is capped at `max_burst` per tick so a stall never turns
into a one-second burst; after falling more than `max_lag_ns` behind, the timetable is moved
forward and the time given up is counted (`skipped_ns`), so achieved rate stays honest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Due:
    count: int  # probes to send now
    lag_ns: int  # how far behind the timetable the oldest due probe is


class Pacer:
    def __init__(
        self,
        *,
        rate_pps: float,
        start_ns: int,
        total: int | None = None,
        max_burst: int = 1024,
        max_lag_ns: int = 50_000_000,
    ) -> None:
        if rate_pps <= 0:
            raise ValueError("rate_pps must be positive")
        self.rate_pps = rate_pps
        self._interval_ns = 1e9 / rate_pps
        self._origin_ns = start_ns
        self._base = 0  # probes already accounted for when the origin last moved
        self.total = total
        self.max_burst = max_burst
        self.max_lag_ns = max_lag_ns
        self.sent = 0
        self.skipped_ns = 0

    @property
    def finished(self) -> bool:
        return self.total is not None and self.sent >= self.total

    def due(self, now_ns: int) -> Due:
        """How many probes are due at `now_ns` (at most max_burst and what is left)."""
        if self.finished or now_ns < self._origin_ns:
            return Due(0, 0)
        scheduled = self._base + int((now_ns - self._origin_ns) * self.rate_pps / 1e9) + 1
        behind = scheduled - self.sent
        if behind <= 0:
            return Due(0, 0)
        lag_ns = int(behind * self._interval_ns)
        if lag_ns > self.max_lag_ns:
            # Give up the backlog: restart the timetable from now, remember what was given up.
            self.skipped_ns += lag_ns
            self._origin_ns = now_ns
            self._base = self.sent
            behind, lag_ns = 1, 0
        count = min(behind, self.max_burst)
        if self.total is not None:
            count = min(count, self.total - self.sent)
        return Due(count, lag_ns)

    def commit(self, sent: int) -> None:
        """Record that `sent` of the due probes really went out."""
        self.sent += sent

    def next_due_ns(self) -> int:
        """Monotonic time at which the next probe is due."""
        return self._origin_ns + int((self.sent - self._base) * self._interval_ns)
