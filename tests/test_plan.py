"""Worker plans: how many workers, which targets and CPU each gets, identifiers, rates that add
up to the (capped) total, and the text `loadgen check` prints."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import ProfileError, TargetError
from loadgen.plan import RunPlan, describe, make_plan, probes_within
from loadgen.profile import Profile, parse_profile
from loadgen.targets import Target

S = 1_000_000_000


def profile(**data: Any) -> Profile:
    return parse_profile({"targets": ["198.18.0.0/24"], **data}, source="plan.toml")


def targets(n: int) -> tuple[Target, ...]:
    return tuple(
        Target(index=i, address=f"198.18.{i // 250}.{i % 250 + 1}", family=4, name=f"h{i}")
        for i in range(n)
    )


def plan(n_targets: int = 10, available: tuple[int, ...] = (0, 1), **data: Any) -> RunPlan:
    return make_plan(
        profile(**data),
        targets(n_targets),
        cpus_available=available,
        run_id=0x1234,
        ident_base=100,
    )


def test_one_worker_per_available_cpu_by_default() -> None:
    assert [w.cpu for w in plan(available=(0, 1)).workers] == [0, 1]
    assert [w.cpu for w in plan(available=(2, 5, 7)).workers] == [2, 5, 7]


def test_workers_key_and_more_workers_than_cpus() -> None:
    run = plan(available=(0, 1), workers=4)
    assert [w.cpu for w in run.workers] == [0, 1, 0, 1]
    assert [w.index for w in run.workers] == [0, 1, 2, 3]


def test_cpus_key_chooses_the_cpus_and_the_default_worker_count() -> None:
    assert [w.cpu for w in plan(available=(0, 1, 2, 3), cpus=[3, 1]).workers] == [3, 1]


def test_never_more_workers_than_targets() -> None:
    assert len(plan(n_targets=3, workers=8).workers) == 3
    assert len(plan(n_targets=1, available=(0, 1, 2, 3)).workers) == 1


def test_without_a_cpu_list_one_unpinned_worker() -> None:
    run = plan(available=())
    assert [(w.cpu, len(w.targets)) for w in run.workers] == [(None, 10)]
    assert [w.cpu for w in plan(available=(), workers=3).workers] == [None, None, None]


def test_unavailable_cpu_is_a_profile_error_naming_the_key() -> None:
    with pytest.raises(ProfileError) as err:
        plan(available=(0, 1), cpus=[1, 5])
    message = str(err.value)
    assert message.startswith("plan.toml: key 'cpus' = [1, 5]: CPU 5 is not available")
    assert "(allowed: 0, 1); pick CPUs from that list" in message


def test_targets_are_dealt_round_robin_each_to_exactly_one_worker() -> None:
    run = plan(n_targets=7, workers=3)
    assert [[t.index for t in w.targets] for w in run.workers] == [[0, 3, 6], [1, 4], [2, 5]]
    assert run.targets == targets(7)


def test_rate_is_split_evenly_per_target() -> None:
    run = plan(n_targets=3, rate="2k")
    assert run.rate_pps == 2000.0
    assert [len(w.targets) for w in run.workers] == [2, 1]
    assert math.isclose(run.workers[0].rate_pps, 2000 * 2 / 3)
    assert math.isclose(run.workers[1].rate_pps, 2000 / 3)
    assert run.workers[0].rate_per_target_pps == pytest.approx(run.workers[1].rate_per_target_pps)


def test_per_target_cap() -> None:
    capped = plan(n_targets=15, rate="100k", rate_per_target="1k")
    assert capped.rate_pps == 15_000.0
    assert capped.rate_per_target_pps == 1000.0
    assert all(w.rate_per_target_pps == pytest.approx(1000.0) for w in capped.workers)
    loose = plan(n_targets=15, rate="10k", rate_per_target="1k")
    assert loose.rate_pps == 10_000.0


@settings(max_examples=200, deadline=None)
@given(
    n_targets=st.integers(1, 300),
    workers=st.integers(1, 40),
    rate=st.floats(min_value=0.01, max_value=1e7),
    cap=st.one_of(st.none(), st.floats(min_value=0.01, max_value=1e6)),
)
def test_shares_add_up_to_the_total_and_every_target_is_planned_once(
    n_targets: int, workers: int, rate: float, cap: float | None
) -> None:
    run = plan(n_targets=n_targets, workers=workers, rate=rate, rate_per_target=cap)
    expected = rate if cap is None else min(rate, cap * n_targets)
    assert run.rate_pps == expected
    assert math.isclose(sum(w.rate_pps for w in run.workers), expected, rel_tol=1e-12)
    for w in run.workers:
        assert math.isclose(w.rate_per_target_pps, expected / n_targets, rel_tol=1e-12)
    planned = sorted(t.index for w in run.workers for t in w.targets)
    assert planned == list(range(n_targets))
    assert len(run.workers) == min(workers, n_targets)
    assert all(w.targets for w in run.workers)
    assert len({w.ident for w in run.workers}) == len(run.workers)


def test_idents_are_distinct_and_wrap_at_16_bits() -> None:
    run = make_plan(
        profile(workers=4), targets(8), cpus_available=(0, 1), run_id=1, ident_base=0xFFFE
    )
    assert [w.ident for w in run.workers] == [0xFFFE, 0xFFFF, 0x0000, 0x0001]


def test_worker_plans_carry_the_probe_settings() -> None:
    run = plan(count=5, size=100, ttl=9, tos=16, timeout="300ms", delay="1s", tx_timestamps=True)
    worker = run.workers[0]
    assert (worker.run_id, worker.probes, worker.duration_ns) == (0x1234, 25, None)
    got = worker.settings
    assert (got.size, got.ttl, got.tos) == (100, 9, 16)
    assert (got.timeout_ns, got.linger_ns) == (300_000_000, S)
    assert (got.timestamps, got.tx_timestamps, got.interface) == ("auto", True, None)
    assert all(w.settings is got for w in run.workers)  # one copy, shared


def test_send_time() -> None:
    assert plan(duration="5s").send_ns == 5 * S
    assert plan(n_targets=10, rate="1k", count=50).send_ns == S // 2  # 100 pps per target
    assert plan(n_targets=10, rate="1k", count=500, duration="2s").send_ns == 2 * S
    assert plan().send_ns is None


def test_bad_inputs() -> None:
    with pytest.raises(TargetError, match="no targets"):
        make_plan(profile(), [], cpus_available=(0,), run_id=1, ident_base=0)
    with pytest.raises(ValueError, match="run_id"):
        make_plan(profile(), targets(1), cpus_available=(0,), run_id=2**32, ident_base=0)
    shuffled = (targets(2)[1], targets(2)[0])
    with pytest.raises(ValueError, match="indexes"):
        make_plan(profile(), shuffled, cpus_available=(0,), run_id=1, ident_base=0)


def test_describe_mentions_every_worker_and_the_totals() -> None:
    run = plan(n_targets=12, available=(0, 1), workers=3, rate="3k", count=10)
    text = describe(run)
    assert "targets: 12: h0 (198.18.0.1), h1 (198.18.0.2)" in text
    assert "and 7 more" in text
    assert "rate: 3k pps in total, 250 pps per target" in text
    assert "stop: after 10 probes per target; sending takes about 40ms" in text
    assert "timeout: 1s" in text and "delay: 2s" in text
    for worker in run.workers:
        row = next(line for line in text.splitlines() if f"0x{worker.ident:04x}" in line)
        assert row.split()[:4] == [str(worker.index), str(worker.cpu), f"0x{worker.ident:04x}", "4"]
        assert "1k pps" in row and row.endswith("  IPv4")
    assert text.splitlines()[-1].split() == ["total", "12", "3k", "pps"]
    mixed_text = describe(mixed_plan(2, 2))
    assert [line.split()[-1] for line in mixed_text.splitlines()[-3:-1]] == ["IPv4", "IPv6"]


def test_describe_says_when_the_cap_applies_and_when_the_run_is_open_ended() -> None:
    text = describe(plan(n_targets=2, rate="10k", rate_per_target=100))
    assert "rate 10k pps capped by rate_per_target 100 pps" in text
    assert "stop: when interrupted" in text
    assert "capped" not in describe(plan(n_targets=2, rate="100"))


def test_plans_survive_pickling_for_worker_processes() -> None:
    run = plan(n_targets=5, workers=2, lab={"hosts": 1})
    assert pickle.loads(pickle.dumps(run)) == run
    assert pickle.loads(pickle.dumps(run.workers[0])) == run.workers[0]


@pytest.mark.parametrize(
    ("duration_ns", "rate_pps", "probes"),
    [
        (5 * S, 2000.0, 10_000),  # `make run`: probe 10,000 is due at 5 s, after the run
        (1 * S, 1.0, 1),  # one probe at 0; the next is due at 1 s
        (1 * S, 3.0, 3),
        (S // 2, 3.0, 2),  # due at 0 and 1/3 s; the third at 2/3 s is out
        (10 * S, 0.1, 1),  # 0.1 x 10 is a hair above 1 in floats: still one probe
        (3 * S, 1 / 3, 1),
        (S + 1, 1.0, 2),  # a nanosecond past the second takes the probe due on it
        (S - 1, 1.0, 1),
        (1, 1e6, 1),
        (0, 1e6, 0),
        (7 * S, 1e6 / 7, 1_000_000),
    ],
)
def test_a_duration_is_the_half_open_interval(
    duration_ns: int, rate_pps: float, probes: int
) -> None:
    assert probes_within(duration_ns, rate_pps) == probes


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(0, 3))
def test_half_open_count_matches_integer_arithmetic(rate: int, ms: int, decimals: int) -> None:
    """A rate with up to three decimals (as written in a profile) for `ms` milliseconds: the
    probes k with k / rate < duration, counted in integers."""
    scale = 10**decimals
    exact = -(-ms * rate // (1000 * scale))  # ceil(ms/1000 * rate/scale)
    assert probes_within(ms * 1_000_000, rate / scale) == exact


def test_make_run_sends_exactly_rate_times_duration_split_over_workers() -> None:
    # The default profile: 2k pps over three targets for 5 s, on two workers (2 and 1 targets).
    run = plan(n_targets=3, available=(0, 1), rate="2k", duration="5s")
    assert [w.probes for w in run.workers] == [3334 + 3333, 3333]
    assert run.probes == 10_000


def test_rates_that_do_not_divide_evenly_still_add_up() -> None:
    run = plan(n_targets=7, available=(0, 1, 2), rate="1k", duration="1s")
    assert run.probes == 1000  # 142 per target, targets 0-5 one more
    assert [w.probes for w in run.workers] == [143 * 2 + 142, 143 * 2, 143 * 2]


def test_count_and_duration_together_the_smaller_wins_per_target() -> None:
    assert plan(n_targets=10, rate="1k", count=50, duration="2s").probes == 500
    assert plan(n_targets=10, rate="1k", count=300, duration="1s").probes == 1000
    # 1001 probes in 1 s at 1001 pps: the first target gets 101, the count caps it at 100.
    assert plan(n_targets=10, rate=1001, count=100, duration="1s").probes == 1000
    assert plan(n_targets=10, count=7).probes == 70
    assert plan(n_targets=10).probes is None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 8),
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.one_of(st.none(), st.integers(1, 2000)),
)
def test_worker_totals_add_up_and_fit_their_timetables(
    n_targets: int, n_workers: int, rate: int, ms: int, count: int | None
) -> None:
    run = plan(n_targets, (0,), workers=n_workers, rate=rate, duration=f"{ms}ms", count=count)
    by_time = probes_within(ms * 1_000_000, run.rate_pps)
    share, extra = divmod(by_time, n_targets)
    per_target = [share + (t < extra) for t in range(n_targets)]
    assert sum(per_target) == by_time and max(per_target) - min(per_target) <= 1
    cap = by_time if count is None else count
    assert run.probes == sum(min(cap, p) for p in per_target)
    for w in run.workers:
        # The worker's own timetable has each of its probes due inside the duration.
        assert w.probes is not None and w.probes <= probes_within(ms * 1_000_000, w.rate_pps)


def mixed(n4: int, n6: int) -> tuple[Target, ...]:
    """n4 IPv4 then n6 IPv6 targets, interleaved as a name list would give them."""
    fours = [(f"198.18.0.{i + 1}", 4) for i in range(n4)]
    sixes = [(f"2001:2::{i + 1:x}", 6) for i in range(n6)]
    order = [x for pair in zip(fours, sixes, strict=False) for x in pair]
    order += fours[len(sixes) :] + sixes[len(fours) :]
    return tuple(Target(i, a, f, a) for i, (a, f) in enumerate(order))


def mixed_plan(n4: int, n6: int, **data: Any) -> RunPlan:
    return make_plan(
        profile(**data), mixed(n4, n6), cpus_available=(0, 1), run_id=1, ident_base=100
    )


@pytest.mark.parametrize(
    ("n4", "n6", "workers", "per_family"),
    [
        (1, 1, 1, [1, 1]),  # one of each family even when one worker was asked for
        (2, 2, 2, [1, 1]),
        (30, 10, 4, [3, 1]),  # by target count
        (1, 9, 4, [1, 3]),
        (3, 1, 8, [3, 1]),  # never more workers than targets, per family
    ],
)
def test_a_worker_probes_one_family_and_each_family_has_workers(
    n4: int, n6: int, workers: int, per_family: list[int]
) -> None:
    run = mixed_plan(n4, n6, workers=workers, count=7)
    assert all(len({t.family for t in w.targets}) == 1 for w in run.workers)
    assert [sum(w.family == f for w in run.workers) for f in (4, 6)] == per_family
    dealt = sorted(t.index for w in run.workers for t in w.targets)
    assert dealt == list(range(n4 + n6))
    assert all(
        [t.index for t in w.targets] == sorted(t.index for t in w.targets) for w in run.workers
    )
    assert sum(w.rate_pps for w in run.workers) == pytest.approx(run.rate_pps)
    assert run.probes == 7 * (n4 + n6)


def test_a_duration_gives_the_first_targets_their_extra_probe_in_any_family() -> None:
    # 10 probes over 4 targets (4, 6, 4, 6): targets 0 and 1 get 3, the others 2.
    run = mixed_plan(2, 2, rate=10, duration="1s")
    assert [w.probes for w in run.workers] == [5, 5]


def test_a_worker_holding_more_first_targets_sends_what_its_timetable_fits() -> None:
    # 10 probes over 4, 4, 6, 6: the two IPv4 targets are the ones owed a third probe, but
    # their worker runs at 5 pps and fits 5 in the second.
    four_first = tuple(
        Target(i, a, f, a)
        for i, (a, f) in enumerate(
            [("198.18.0.1", 4), ("198.18.0.2", 4), ("2001:2::1", 6), ("2001:2::2", 6)]
        )
    )
    run = make_plan(
        profile(rate=10, duration="1s"), four_first, cpus_available=(0,), run_id=1, ident_base=1
    )
    assert [(w.family, w.probes) for w in run.workers] == [(4, 5), (6, 4)]
    assert all((w.probes or 0) <= probes_within(S, w.rate_pps) for w in run.workers)


def test_what_a_family_cannot_do_is_a_profile_error() -> None:
    with pytest.raises(ProfileError, match=r'tx_path = "packet" sends IPv4 only, and 2001:2::1'):
        mixed_plan(1, 1, tx_path="packet")
    with pytest.raises(ProfileError, match=r"source 198\.18\.0\.1 is IPv4 but target 2001:2::1"):
        mixed_plan(1, 1, source="198.18.0.1")
