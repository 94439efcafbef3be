"""The worker's turn policy, driven by a simulated clock: what each turn sends, receives and
ships, when the next turn is, and when and why the loop ends."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.turns import (
    ALL_SENT,
    DEADLINE,
    DURATION_SLACK_NS,
    FRAME_INTERVAL_NS,
    STOPPED,
    TICK_NS,
    Turn,
    TurnPolicy,
)

MS = 1_000_000
S = 1_000_000_000
START = 7 * S  # the origin on the worker's clock; nothing may assume it is 0
G0 = START + TICK_NS // 4  # the first grid point: nothing is due before it on the grid


def policy(
    rate_pps: float = 2000.0,
    probes: int | None = None,
    duration_ns: int | None = None,
    *,
    linger_ns: int = S,
    kernel_rx_stamps: bool = False,
    rx_batch: int = 64,
) -> TurnPolicy:
    return TurnPolicy(
        start_ns=START,
        rate_pps=rate_pps,
        probes=probes,
        duration_ns=duration_ns,
        linger_ns=linger_ns,
        max_batch=1024,
        rx_batch=rx_batch,
        kernel_rx_stamps=kernel_rx_stamps,
    )


@dataclass
class Sim:
    """A worker's loop without the I/O: replies come back `rtt_ns` after their probe (never,
    if None); each turn runs `late(i)` after the wake-up the policy asked for."""

    policy: TurnPolicy
    rtt_ns: int | None = 100 * MS
    late: Callable[[int], int] = lambda _: 0
    refuse: Callable[[int], int] = lambda _: 0  # probes the kernel refuses in turn i
    sends: list[tuple[int, int]] = field(default_factory=list)  # (time, count)
    turns: list[tuple[int, Turn]] = field(default_factory=list)
    now_ns: int = START

    def unresolved(self) -> int:
        if self.rtt_ns is None:
            return sum(n for _, n in self.sends)
        return sum(n for t, n in self.sends if t + self.rtt_ns > self.now_ns)

    def run(self, max_turns: int = 100_000) -> int:
        """Runs to the end; returns the end time."""
        for i in range(max_turns):
            turn = self.policy.turn(self.now_ns, unresolved=self.unresolved())
            self.turns.append((self.now_ns, turn))
            if turn.end:
                return self.now_ns
            if turn.send:
                went = max(0, turn.send - self.refuse(i))
                self.policy.sent(went, self.now_ns)
                if went:
                    self.sends.append((self.now_ns, went))
            wake = self.policy.wake_ns()
            assert wake >= self.now_ns, "a turn never asks to go back in time"
            self.now_ns = max(wake, self.now_ns + 1) + self.late(i)
        raise AssertionError("the loop did not end")

    @property
    def sent(self) -> int:
        return sum(n for _, n in self.sends)


def test_2k_pps_for_5_s_sends_its_10000_probes_inside_the_5_s() -> None:
    sim = Sim(policy(2000.0, probes=10_000, duration_ns=5 * S))
    end = sim.run()
    assert sim.sent == 10_000
    assert max(t for t, _ in sim.sends) < START + 5 * S
    assert sim.policy.done_reason() == ALL_SENT
    # It ends once the last reply is in, not at linger.
    assert end <= max(t for t, _ in sim.sends) + 100 * MS + FRAME_INTERVAL_NS


def test_one_probe_per_second_for_one_second_is_one_probe_at_the_start() -> None:
    sim = Sim(policy(1.0, probes=1, duration_ns=S))
    sim.run()
    assert sim.sends == [(START, 1)]


def test_a_batch_holds_what_is_due_by_the_next_tick_mark() -> None:
    pol = policy(10_000.0)  # 10 per tick
    assert pol.turn(START, unresolved=0).send == 0  # the start itself is before the grid
    pol.sent(0, START)
    assert pol.wake_ns() == G0
    first = pol.turn(G0, unresolved=0)
    assert first.send == 10  # due at 0, 0.1, ... 0.9 ms
    pol.sent(10, G0)
    assert pol.wake_ns() == G0 + TICK_NS
    late = pol.turn(G0 + TICK_NS + 600_000, unresolved=10)  # a late turn: same size
    assert late.send == 10


def test_below_a_probe_per_tick_each_probe_has_its_own_turn() -> None:
    pol = policy(100.0)
    assert pol.turn(START, unresolved=0).send == 1
    pol.sent(1, START)
    assert pol.wake_ns() == START + 10 * MS  # the next probe, not the next millisecond
    assert pol.turn(START + 10 * MS, unresolved=1).send == 1


def test_refused_probes_are_offered_again_and_do_not_move_the_linger() -> None:
    pol = policy(10_000.0, probes=10)
    assert pol.turn(G0, unresolved=0).send == 10
    pol.sent(4, G0)  # the kernel took 4
    assert pol.turn(G0 + TICK_NS, unresolved=4).send == 6
    pol.sent(0, G0 + TICK_NS)
    assert pol.last_send_ns == G0


def test_the_deadline_cuts_a_generator_behind_its_timetable() -> None:
    # Every turn runs 3 ms late: the pacer gives up time, and the deadline ends sending.
    sim = Sim(policy(2000.0, probes=10_000, duration_ns=S), late=lambda _: 60 * MS)
    sim.run()
    assert sim.sent < 10_000
    assert max(t for t, _ in sim.sends) < START + S + DURATION_SLACK_NS
    assert sim.policy.done_reason() == DEADLINE
    assert sim.policy.pacer.skipped_ns > 0


def test_after_sending_it_waits_for_replies_at_most_linger() -> None:
    sim = Sim(policy(1000.0, probes=5, linger_ns=2 * S), rtt_ns=None)
    end = sim.run()
    last = max(t for t, _ in sim.sends)
    assert last + 2 * S < end <= last + 2 * S + FRAME_INTERVAL_NS
    waiting = [turn for t, turn in sim.turns if t > last and not turn.end]
    # While waiting: no sends, a receive every turn, a frame every 20 ms.
    assert waiting and all(t.send == 0 and t.receive for t in waiting)
    assert sum(t.ship for t in waiting) >= 2 * S // FRAME_INTERVAL_NS - 1


def test_stop_ends_sending_at_once_and_the_loop_once_all_is_resolved() -> None:
    pol = policy(1000.0)
    assert pol.turn(G0, unresolved=0).send == 1
    pol.sent(1, G0)
    pol.stop()
    waiting = pol.turn(G0 + MS, unresolved=1)
    assert (waiting.send, waiting.receive, waiting.end) == (0, True, False)
    assert pol.wake_ns() == START + FRAME_INTERVAL_NS  # no send turns left: frames pace it
    assert pol.turn(G0 + 2 * MS, unresolved=0).end
    assert pol.done_reason() == STOPPED


def test_the_turns_before_a_tenth_of_a_second_mark_are_light() -> None:
    pol = policy(10_000.0, kernel_rx_stamps=True, rx_batch=1)  # receive every turn if let
    light = []
    now = G0
    for _ in range(200):
        turn = pol.turn(now, unresolved=0)
        pol.sent(turn.send, now)
        assert turn.send == 10  # light turns still send
        if not (turn.receive or turn.ship):
            light.append((now - START) // TICK_NS)
        now = pol.wake_ns()
    assert light == [97, 98, 197, 198]


@pytest.mark.parametrize(
    ("rate_pps", "interval_ns"),
    [(1000.0, 5 * MS - TICK_NS // 2), (20_000.0, 3 * MS + 200_000 - TICK_NS // 2)],
)
def test_with_kernel_stamps_replies_are_read_about_once_per_receive_batch(
    rate_pps: float, interval_ns: int
) -> None:
    pol = policy(rate_pps, kernel_rx_stamps=True)
    assert pol.rx_interval_ns == interval_ns
    assert pol.turn(G0, unresolved=0).receive
    pol.sent(1, G0)
    # The next turns come before the interval is over: no receive.
    assert not pol.turn(G0 + TICK_NS, unresolved=1).receive
    assert pol.turn(G0 + interval_ns, unresolved=1).receive


def test_without_kernel_stamps_sending_turns_leave_replies_to_the_waits() -> None:
    """Replies are drained while the worker waits; a sending turn never reads them, so the
    frames (which a receiving turn would put off) go out on time."""
    pol = policy(10_000.0)
    ships = []
    now = G0
    for _ in range(100):
        turn = pol.turn(now, unresolved=5)
        assert not turn.receive
        pol.sent(turn.send, now)
        if turn.ship:
            ships.append(now)
        now = pol.wake_ns()
    assert [t - G0 for t in ships] == [20 * MS, 40 * MS, 60 * MS, 80 * MS]


def test_the_worst_lag_is_kept_until_a_frame_takes_it() -> None:
    pol = policy(1000.0, probes=100)
    pol.turn(G0, unresolved=0)
    pol.sent(1, G0)
    turn = pol.turn(G0 + 5 * MS, unresolved=1)  # 5 probes behind
    assert turn.lag_ns >= 4 * MS
    assert pol.take_max_lag() == turn.lag_ns
    assert pol.take_max_lag() == 0


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([3.0, 250.0, 1000.0, 7777.0, 50_000.0]),
    seconds=st.floats(0.001, 1.5),
    lateness=st.lists(st.integers(0, 2 * MS), min_size=1, max_size=50),
    refusals=st.lists(st.integers(0, 3), min_size=1, max_size=50),
    kernel=st.booleans(),
)
def test_every_planned_probe_goes_out_once_whatever_the_lateness(
    rate: float, seconds: float, lateness: list[int], refusals: list[int], kernel: bool
) -> None:
    probes = max(1, int(rate * seconds))
    sim = Sim(
        policy(rate, probes=probes, kernel_rx_stamps=kernel),
        late=lambda i: lateness[i % len(lateness)],
        refuse=lambda i: refusals[i % len(refusals)] if i % 2 else 0,  # never forever
    )
    sim.run(max_turns=20_000)
    assert sim.sent == probes
    assert sim.policy.done_reason() == ALL_SENT
    for _, turn in sim.turns:
        # A sending turn never both receives and ships (each takes most of a tick).
        assert not (turn.send and turn.receive and turn.ship)
    # No send turn carries more than two ticks' worth after a stall.
    assert max(n for _, n in sim.sends) <= 2 * -(-int(rate) // 1000) + 1
