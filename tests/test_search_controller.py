"""The search controller against simulated devices of known capacity: it converges to within
the goal's width of the truth, absorbs noise by the exceed ratio, always tries the maximum, and
never takes a trial loadgen could not generate as the device's loss."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.search.controller import (
    Search,
    SearchConfig,
    StopReason,
    TrialRequest,
    TrialResult,
)
from loadgen.search.goals import Bound, Goal, Trial, classify, conditional_throughput

S = 1_000_000_000


def goal(
    name: str = "ndr",
    loss: float = 0.0,
    *,
    exceed: float = 0.5,
    final_s: float = 10,
    sum_s: float = 30,
    width: float = 0.005,
) -> Goal:
    return Goal(name, loss, exceed, round(final_s * S), round(sum_s * S), width)


@dataclass
class Device:
    """Forwards up to `capacity_pps`; beyond it, the excess is lost. `noise(i, k)` adds a loss
    ratio to the i-th trial, the k-th at its load; loads above `generator_pps` cannot be
    generated (invalid trials)."""

    capacity_pps: float
    generator_pps: float = float("inf")
    noise: Callable[[int, int], float] = lambda i, k: 0.0
    done: list[TrialRequest] = field(default_factory=list)

    def run(self, req: TrialRequest) -> TrialResult:
        index = len(self.done)
        kth = sum(r.load_pps == req.load_pps for r in self.done)
        self.done.append(req)
        seconds = req.duration_ns / S
        sent = round(req.load_pps * seconds)
        if req.load_pps > self.generator_pps:
            # loadgen fell short: it says so, whatever came back
            achieved = self.generator_pps
            return TrialResult(req.load_pps, req.duration_ns, sent, sent // 2, False, achieved)
        passed = min(sent, round(self.capacity_pps * seconds))
        lost = sent - passed + round(self.noise(index, kth) * passed)
        return TrialResult(req.load_pps, req.duration_ns, sent, lost, True, req.load_pps)


def run_search(device: Device, config: SearchConfig) -> Search:
    search = Search(config)
    elapsed_ns = 0
    for _ in range(config.max_trials + 1):
        req = search.next_trial(elapsed_ns)
        if req is None:
            break
        search.record(device.run(req))
        elapsed_ns += req.duration_ns
    assert search.stopped is not None
    return search


def config(*goals: Goal, low: float = 1_000, high: float = 100_000, **kw: int) -> SearchConfig:
    return SearchConfig(
        goals=goals or (goal(),),
        min_rate_pps=low,
        max_rate_pps=high,
        initial_ns=kw.get("initial_ns", S),
        max_trials=kw.get("max_trials", 200),
        max_time_ns=kw.get("max_time_ns", 10**6 * S),
    )


def test_classification_follows_rfc_9971() -> None:
    g = goal(exceed=0.5, final_s=10, sum_s=30)
    low, high = Trial(10 * S, 0.0), Trial(10 * S, 0.1)
    assert classify(g, []) is Bound.UNDECIDED
    assert classify(g, [low]) is Bound.UNDECIDED  # 20 s missing could all be high-loss
    assert classify(g, [low, low]) is Bound.LOWER  # 10 s missing: at most a third high-loss
    assert classify(g, [high]) is Bound.UNDECIDED
    assert classify(g, [high, high]) is Bound.UPPER
    assert classify(g, [low, high, low]) is Bound.LOWER
    assert classify(g, [high, low, high]) is Bound.UPPER
    # Short trials only push a load up, and only after their low-loss time is balanced.
    short_low, short_high = Trial(S, 0.0), Trial(S, 0.1)
    assert classify(g, [short_low] * 30) is Bound.UNDECIDED
    assert classify(g, [short_high] * 16) is Bound.UPPER
    assert classify(g, [short_high] * 16 + [short_low] * 2) is Bound.UNDECIDED
    strict = goal(exceed=0.0, final_s=60, sum_s=60)  # RFC 2544
    assert classify(strict, [Trial(60 * S, 0.0)]) is Bound.LOWER
    assert classify(strict, [Trial(60 * S, 1e-6)]) is Bound.UPPER
    assert classify(strict, [Trial(S, 1e-6)]) is Bound.UPPER


def test_conditional_throughput_forgives_the_worst_trials_within_the_exceed_ratio() -> None:
    g = goal("pdr:10%", 0.1, exceed=0.5, final_s=10, sum_s=30)
    trials = [Trial(10 * S, 0.05), Trial(10 * S, 0.0), Trial(10 * S, 0.01)]
    # 15 s of the 30 are forgiven: the 5 % trial; the 1 % one is at the quantile.
    assert conditional_throughput(g, 1000.0, trials) == pytest.approx(990.0)
    assert conditional_throughput(g, 1000.0, [Trial(S, 0.0)]) is None


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.floats(2_000, 90_000),
    width=st.sampled_from([0.005, 0.01, 0.02]),
    initial_s=st.sampled_from([1, 2, 10]),
)
def test_ndr_converges_to_within_the_width_of_the_capacity(
    capacity: float, width: float, initial_s: int
) -> None:
    device = Device(capacity)
    search = run_search(device, config(goal(width=width), initial_ns=initial_s * S))
    assert search.stopped is StopReason.DONE
    (result,) = search.results()
    assert result.converged and not result.generator_limited
    assert result.lower_pps is not None and result.upper_pps is not None
    # (to within one probe of a trial: the device passes whole probes)
    assert result.lower_pps <= capacity * (1 + 1e-4) and result.upper_pps > capacity * (1 - 1e-4)
    assert (result.upper_pps - result.lower_pps) / result.upper_pps <= width
    assert device.done[0].load_pps == 100_000  # the maximum is always tried, first
    assert device.done[0].duration_ns == initial_s * S  # short far from the answer
    assert device.done[-1].duration_ns == 10 * S  # full-length near it


@settings(max_examples=40, deadline=None)
@given(capacity=st.floats(2_000, 80_000), pdr=st.sampled_from([0.005, 0.05, 0.1]))
def test_ndr_and_pdr_in_one_pass(capacity: float, pdr: float) -> None:
    goals = (goal(width=0.01), goal(f"pdr:{pdr:%}", pdr, width=0.01))
    search = run_search(Device(capacity), config(*goals))
    ndr, result = search.results()
    assert ndr.lower_pps is not None and result.lower_pps is not None
    truth = capacity / (1 - pdr)  # above it, more than `pdr` of the load is lost
    assert truth * 0.99 * (1 - 1e-4) <= result.lower_pps <= truth * (1 + 1e-4)
    assert ndr.lower_pps <= capacity * (1 + 1e-4)
    assert result.conditional_pps is not None
    assert result.conditional_pps <= result.lower_pps


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.floats(20_000, 90_000),
    generator=st.floats(2_000, 19_000),
)
def test_a_generator_limited_trial_is_never_taken_as_device_loss(
    capacity: float, generator: float
) -> None:
    device = Device(capacity, generator_pps=generator)
    search = run_search(device, config(goal(width=0.01)))
    (result,) = search.results()
    assert result.generator_limited
    # Nothing below the device's capacity was ever judged an upper bound...
    assert result.upper_pps is None or result.upper_pps > capacity
    # ...and the answer is "at least" a load loadgen could generate.
    assert result.lower_pps is not None and result.lower_pps <= generator
    assert result.lower_pps >= generator * 0.9 * 0.99


def test_the_generator_limit_below_the_minimum_rate_stops_the_search() -> None:
    search = run_search(Device(50_000, generator_pps=500), config(goal(), low=1_000))
    assert search.stopped is StopReason.GENERATOR
    (result,) = search.results()
    assert result.lower_pps is None and result.generator_limited


def test_a_device_faster_than_the_maximum_gives_the_maximum() -> None:
    search = run_search(Device(1e9), config(goal(), high=50_000))
    (result,) = search.results()
    assert (result.lower_pps, result.upper_pps) == (50_000, None)
    assert result.converged and not result.generator_limited


def test_a_device_slower_than_the_minimum_has_no_lower_bound() -> None:
    search = run_search(Device(500), config(goal(), low=1_000))
    (result,) = search.results()
    assert result.lower_pps is None and result.upper_pps == 1_000 and result.converged


def test_the_exceed_ratio_absorbs_noise_that_strict_rfc_2544_does_not() -> None:
    # The second trial at every load loses 1 % somewhere: one trial in three of a decision.
    def second_lossy(i: int, k: int) -> float:
        return 0.01 if k == 1 else 0.0

    tolerant = run_search(Device(30_000, noise=second_lossy), config(goal(width=0.01)))
    (result,) = tolerant.results()
    assert result.lower_pps is not None and result.converged
    assert 30_000 * 0.99 * (1 - 1e-4) <= result.lower_pps <= 30_000 * (1 + 1e-4)

    # Strict RFC 2544 decides each load by one trial: a lossy first trial makes it an upper
    # bound, however clean the device is otherwise.
    def first_lossy(i: int, k: int) -> float:
        return 0.01 if k == 0 else 0.0

    strict = goal(exceed=0.0, final_s=10, sum_s=10, width=0.01)
    search = run_search(Device(30_000, noise=first_lossy), config(strict, initial_ns=10 * S))
    (strict_result,) = search.results()
    assert strict_result.lower_pps is None and strict_result.upper_pps == 1_000


@settings(max_examples=30, deadline=None)
@given(capacity=st.floats(5_000, 90_000), seed=st.integers(0, 2**32), p=st.floats(0, 0.15))
def test_random_noise_never_lifts_the_result_above_the_capacity(
    capacity: float, seed: int, p: float
) -> None:
    rng = random.Random(seed)
    device = Device(capacity, noise=lambda i, k: 0.02 if rng.random() < p else 0.0)
    search = run_search(device, config(goal(width=0.01), max_trials=120))
    (result,) = search.results()
    assert len(search.trials) <= 120
    assert result.lower_pps is None or result.lower_pps <= capacity * (1 + 1e-4)


def test_max_trials_and_max_time_bound_the_search() -> None:
    search = run_search(Device(33_333), config(goal(), max_trials=5))
    assert search.stopped is StopReason.MAX_TRIALS and len(search.trials) == 5
    assert not search.results()[0].converged
    timed = run_search(Device(33_333), config(goal(), max_time_ns=12 * S))
    assert timed.stopped is StopReason.MAX_TIME
    assert sum(t.duration_ns for t in timed.trials) < 12 * S + 10 * S


def test_rfc_2544_preset_uses_one_full_trial_per_load() -> None:
    strict = goal(exceed=0.0, final_s=60, sum_s=60, width=0.01)
    device = Device(25_000)
    search = run_search(device, config(strict, initial_ns=60 * S))
    loads = [r.load_pps for r in device.done]
    assert len(loads) == len(set(loads))  # every load decided by its one trial
    assert all(r.duration_ns == 60 * S for r in device.done)
    (result,) = search.results()
    assert result.lower_pps is not None and result.lower_pps <= 25_000 < (result.upper_pps or 0)


def test_a_busy_moment_is_retried_not_taken_as_the_generator_limit() -> None:
    """Every third trial is generator-limited whatever its load (a machine busy elsewhere): a
    load the generator has shown it can do is tried again, and the search converges."""

    @dataclass
    class Busy(Device):
        def run(self, req: TrialRequest) -> TrialResult:
            result = super().run(req)
            if len(self.done) % 3 == 2:
                return TrialResult(req.load_pps, req.duration_ns, result.sent, 0, False, 0.0)
            return result

    device = Busy(30_000)
    search = run_search(device, config(goal(width=0.01)))
    (result,) = search.results()
    assert not result.generator_limited and result.converged
    assert result.lower_pps is not None
    assert 30_000 * 0.99 * (1 - 1e-4) <= result.lower_pps <= 30_000 * (1 + 1e-4)
    assert any(not t.valid for t in search.trials)
