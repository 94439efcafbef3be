"""The worker's turn policy: what each turn of its loop does, decided from `now_ns` alone.

Owns the worker's pacer, its 1 ms send grid, the receive and frame cadences, the deadline and
the linger after the last send. The worker reads the clock, asks `turn(now_ns)`, does the I/O
the answer names, reports what really went with `sent`, and sleeps until `wake_ns()`. Pure: no
clock, no socket; every decision is tested in `tests/test_turns.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen.pacer import Pacer, TickGrid

FRAME_INTERVAL_NS = 20_000_000  # each frame costs both ends a fixed share: not too many
TICK_NS = 1_000_000  # one send batch per tick at most, so no burst exceeds a tick's probes
MAX_RX_INTERVAL_NS = 5_000_000  # kernel-stamped replies wait in the socket at most this long
END_OF_TIME_NS = 2**62
# The deadline only cuts a generator that has fallen behind its timetable: a duration already
# counts its probes (plan.probes_within), so a worker on time finishes before it.
DURATION_SLACK_NS = 100_000_000

STOPPED = "stopped"
ALL_SENT = "every planned probe sent"
DEADLINE = "deadline passed before every planned probe was sent"


@dataclass(frozen=True, slots=True)
class Turn:
    """What one turn does, in this order: send, receive, ship (or end the loop)."""

    send: int  # probes to send now
    lag_ns: int  # how far behind its timetable the oldest of them is
    receive: bool  # drain the socket
    ship: bool  # expire probes, ship a frame, read the control pipe
    end: bool = False  # sending is over and nothing is left to wait for: finish the run


_END = Turn(0, 0, receive=False, ship=False, end=True)


class TurnPolicy:
    """`start_ns` is the run's origin on the worker's clock; `probes` what it sends in all
    (None: until stopped); `duration_ns` its deadline (None: none). `rx_batch` is the receive
    batch; with `kernel_rx_stamps` replies keep their arrival stamp in the socket, so they are
    read about once per batch's worth of replies instead of as they come."""

    def __init__(
        self,
        *,
        start_ns: int,
        rate_pps: float,
        probes: int | None,
        duration_ns: int | None,
        linger_ns: int,
        max_batch: int,
        rx_batch: int,
        kernel_rx_stamps: bool,
    ) -> None:
        # One tick's probes per turn; after a stall, two ticks' worth until caught up.
        per_tick = rate_pps * TICK_NS / 1e9
        burst = min(2 * math.ceil(per_tick) + 1, max_batch)
        self.pacer = Pacer(rate_pps=rate_pps, start_ns=start_ns, total=probes, max_burst=burst)
        # Below a probe per tick each probe has its own turn, at its due time.
        self.grid = TickGrid(start_ns, TICK_NS) if per_tick >= 1 else None
        self.end_ns = start_ns + duration_ns + DURATION_SLACK_NS if duration_ns else END_OF_TIME_NS
        self.linger_ns = linger_ns
        self.kernel_rx_stamps = kernel_rx_stamps
        self.rx_interval_ns = 0
        if kernel_rx_stamps:
            fill_ns = int(rx_batch * 1e9 / rate_pps)
            self.rx_interval_ns = max(TICK_NS, min(MAX_RX_INTERVAL_NS, fill_ns)) - TICK_NS // 2
        self.next_rx_ns = start_ns
        self.next_frame_ns = start_ns + FRAME_INTERVAL_NS
        self.last_send_ns = start_ns
        self.stop_requested = False
        self.max_lag_ns = 0  # worst lag since the last frame (taken by `take_max_lag`)
        self._turn_ns = start_ns
        self._sending = True

    def sending(self, now_ns: int) -> bool:
        return not (self.stop_requested or self.pacer.finished or now_ns >= self.end_ns)

    def turn(self, now_ns: int, *, unresolved: int) -> Turn:
        """The turn at now_ns, given how many probes are still waiting for their outcome."""
        sending = self.sending(now_ns)
        send = lag_ns = 0
        if sending:
            # On the grid a batch is what is due by the next tick mark, however late this turn.
            due = self.pacer.due(self.grid.batch_end(now_ns) if self.grid else now_ns)
            send, lag_ns = due.count, due.lag_ns
            if send:
                self.max_lag_ns = max(self.max_lag_ns, lag_ns)
        elif unresolved == 0 or now_ns > self.last_send_ns + self.linger_ns:
            return _END
        # Receiving and shipping take most of a tick: never both in one sending turn, and
        # neither right before the batch that closes a tenth of a second.
        light = sending and self.grid is not None and self.grid.before_mark(now_ns)
        # Without kernel stamps the waits between turns drain replies as they come: a sending
        # turn need not (and reading every turn would starve the frames).
        rx_due = self.kernel_rx_stamps and now_ns >= self.next_rx_ns
        receive = not light and (rx_due or not sending)
        if receive:
            self.next_rx_ns = now_ns + self.rx_interval_ns
        ship = not light and now_ns >= self.next_frame_ns and not (receive and sending)
        if ship:
            self.next_frame_ns = now_ns + FRAME_INTERVAL_NS
        self._turn_ns, self._sending = now_ns, sending
        return Turn(send, lag_ns, receive, ship)

    def sent(self, count: int, now_ns: int) -> None:
        """`count` of the turn's probes went out at now_ns (the kernel may refuse the rest:
        the timetable keeps them due, so the next turn retries them)."""
        self.pacer.commit(count)
        if count:
            self.last_send_ns = now_ns

    def wake_ns(self) -> int:
        """When the next turn is: the next grid point, or the next probe or frame if later;
        once sending is over, the next frame."""
        if not self._sending:
            return self.next_frame_ns
        turn = self._turn_ns
        next_turn = self.grid.next_after(turn) if self.grid else turn
        return max(next_turn, min(self.next_frame_ns, self.pacer.next_due_ns()))

    def take_max_lag(self) -> int:
        """The worst lag since the last call (one frame's figure)."""
        lag, self.max_lag_ns = self.max_lag_ns, 0
        return lag

    def stop(self) -> None:
        """The coordinator said stop: no more sends, wait for what is out."""
        self.stop_requested = True

    def done_reason(self) -> str:
        if self.stop_requested:
            return STOPPED
        return ALL_SENT if self.pacer.finished else DEADLINE
