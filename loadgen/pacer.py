"""The send schedule of one worker: an absolute timetable on the monotonic clock.

Probe k is due at `start_ns + k * 1e9 / rate_pps`; each tick the worker asks how many are due
and sends them. Because the timetable is absolute, small delays are caught up exactly and the
long-run rate never drifts. Catch-up is capped at `max_burst` per tick so a stall never turns
into a one-second burst; after falling more than `max_lag_ns` behind, the timetable is moved
forward and the time given up is counted (`skipped_ns`), so achieved rate stays honest.
`TickGrid` places the ticks: a batch holds the probes due by its grid point, however late the
turn that sends it, so lateness moves a batch's send time but never its size.
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


@dataclass(frozen=True, slots=True)
class TickGrid:
    """Turns fall on grid points a quarter tick after each tick mark of the run (origin + i
    ticks), and a turn sends what is due by the next mark: probes go at most 3/4 tick early,
    and however late the turn runs (under 3/4 tick), the probes sent in each tenth of a second
    are exactly those due in it. Every `ticks_per_mark` ticks is a mark (100 ms): the grid
    point just before one is the turn whose timing decides that, so the turns before it stay
    light."""

    origin_ns: int
    tick_ns: int = 1_000_000
    ticks_per_mark: int = 100

    @property
    def _offset_ns(self) -> int:
        return self.tick_ns // 4

    def _index(self, now_ns: int) -> int:
        """Index of the latest grid point at or before now_ns (-1 before the first)."""
        return (now_ns - self.origin_ns - self._offset_ns) // self.tick_ns

    def batch_end(self, now_ns: int) -> int:
        """What a turn at now_ns sends is due by this instant: just before the tick mark that
        follows the latest grid point (a probe due on a mark belongs to the next tick)."""
        return self.origin_ns + (self._index(now_ns) + 1) * self.tick_ns - 1

    def next_after(self, now_ns: int) -> int:
        """The first grid point after now_ns."""
        return self.origin_ns + self._offset_ns + (self._index(now_ns) + 1) * self.tick_ns

    def before_mark(self, now_ns: int) -> bool:
        """One of the next two grid points is the last one before a mark: keep the time to it
        free of long work (two points, as a long turn can push the next one late too)."""
        return (self._index(now_ns) + 3) % self.ticks_per_mark < 2
