"""Latency and jitter against hosts whose reflector delays replies by seeded, known amounts.

The clean baseline is a reflector that answers at once (the same code path up to the delay),
probed in the same run, so the difference of medians is the delay the lab added. Jitter is
compared with the jitter of the very delays the reflector drew: its decisions are seeded, so
the test replays them (impair.Decider) instead of trusting a distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from loadgen.lab import Lab, LabHost
from loadgen.lab.hostcfg import reflector_config
from loadgen.lab.impair import Decider
from loadgen.stats import PERCENTILE_REL_ERROR

from .conftest import Labs, assert_counts_match, measure, needs_root, pin_like_workers

pytestmark = [pytest.mark.lab, pytest.mark.root, needs_root, pytest.mark.timeout(60)]

P50_TOLERANCE_NS = 100_000  # the bound on the median, above the clean baseline
LATE_TOLERANCE_NS = 100_000  # how late the reflector's timer may be at the median
# Kernel TX stamps: a worker preempted between its stamp and its send adds no latency.
KEYS: dict[str, Any] = {"rate_pps": 1_000, "tx_timestamps": True}


def pinned(hosts: list[LabHost]) -> dict[str, int]:
    return {"workers": pin_like_workers(hosts)}


def drawn_delays_ns(lab: Lab, host: LabHost, n: int) -> NDArray[np.float64]:
    """The delays host's reflector drew for its first n requests (a fresh lab's first run)."""
    cfg = reflector_config(host, lab.seed_of(host), "", False)
    return Decider(cfg, 0).decide(n, 0).delay_ns.astype(np.float64)


def jitter_of(delays_ns: NDArray[np.float64], per_second: int) -> float:
    """loadgen's jitter of these delays: mean |difference| of consecutive replies in arrival
    order, within each second of sending (probe k goes out at k / per_second s, and arrives
    delay_k after that plus a constant)."""
    k = np.arange(len(delays_ns))
    arrival = k / per_second * 1e9 + delays_ns
    total, pairs = 0.0, 0
    for second in range(int(k[-1]) // per_second + 1):
        sel = k // per_second == second
        ordered = delays_ns[sel][np.argsort(arrival[sel], kind="stable")]
        total += float(np.abs(np.diff(ordered)).sum())
        pairs += max(len(ordered) - 1, 0)
    return total / pairs


def test_p50_is_the_injected_delay_above_the_clean_baseline(make_lab: Labs, tmp_path: Path) -> None:
    delay_ns = 2_000_000
    lab = make_lab([{"name": "clean", "reflector": True}, {"name": "slow", "delay_ms": 2}])
    clean, slow = lab.host("clean"), lab.host("slow")
    added, late, quantum = [], [], []
    # Two runs with the hosts' CPUs swapped: whatever else loads one CPU more than the other
    # slows the clean host in one run and the delayed one in the other, and cancels out.
    for hosts in ([clean, slow], [slow, clean]):
        run, truth = measure(lab, hosts, tmp_path, **KEYS, count=500, **pinned(hosts))
        assert_counts_match(run, truth)
        refl = truth[slow.address].reflector
        assert refl is not None and refl.delayed == 500
        base_ns, slow_ns = (run.stats(h.address).rtt.p50_ns for h in (clean, slow))
        added.append(slow_ns - base_ns)
        # The reflector says how late its timer sent the median reply: the delay as applied.
        late.append(refl.late_ns_p50)
        quantum.append(PERCENTILE_REL_ERROR * slow_ns)  # run-total percentiles are binned
    added_ns, late_ns = float(np.mean(added)), float(np.mean(late))
    why = (
        f"p50 above the clean host: {added_ns / 1e3:.0f} us ({[round(a / 1e3) for a in added]}); "
        f"injected {delay_ns / 1e3:.0f} us, the reflector's timer {late_ns / 1e3:.0f} us late"
    )
    # loadgen against what the lab really did; and the lab held its own timing.
    assert abs(added_ns - delay_ns - late_ns) <= P50_TOLERANCE_NS + max(quantum), why
    assert late_ns <= LATE_TOLERANCE_NS, f"the box is too busy for a precise delay: {why}"


JITTER_HOSTS: dict[str, dict[str, object]] = {
    "clean": {"reflector": True},
    "narrow": {"delay_ms": 2, "jitter_ms": 1},  # uniform in 2 ms +- 1 ms
    "wide": {"delay_ms": 4, "jitter_ms": 3},  # uniform in 4 ms +- 3 ms
    "normal": {"delay_ms": 5, "jitter_ms": 1, "jitter_dist": "normal"},  # sd 1 ms
}


def test_jitter_is_the_jitter_of_the_drawn_delays(make_lab: Labs, tmp_path: Path) -> None:
    per_target, count = 400, 800
    lab = make_lab([{"name": n, **keys} for n, keys in JITTER_HOSTS.items()], seed=3)
    hosts = [lab.host(n) for n in JITTER_HOSTS]
    keys = {**KEYS, "rate_pps": per_target * len(hosts)}
    run, truth = measure(lab, hosts, tmp_path, **keys, count=count, **pinned(hosts))
    assert_counts_match(run, truth)
    measured = {h.name: run.stats(h.address).rtt.jitter_ns for h in hosts}
    base_ns = measured["clean"]
    for name in ("narrow", "wide", "normal"):
        host = lab.host(name)
        drawn = drawn_delays_ns(lab, host, count)
        # What the reflector implements, in send order: uniform +-J has E|X-Y| = 2J/3,
        # normal with sd s has E|X-Y| = 2s/sqrt(pi).
        j_ns = host.impairments.jitter_ms * 1e6
        theory = 2 * j_ns / 3 if name != "normal" else 2 * j_ns / np.sqrt(np.pi)
        assert abs(np.abs(np.diff(drawn)).mean() - theory) < 0.08 * theory, name
        expected = jitter_of(drawn, per_target)
        got = measured[name]
        refl = truth[host.address].reflector
        assert refl is not None
        late_ns = refl.late_ns_p50
        why = f"{name}: jitter {got / 1e3:.0f} us, drawn {expected / 1e3:.0f} us, clean "
        why += f"{base_ns / 1e3:.0f} us, timer late {late_ns / 1e3:.0f} us"
        # Noise adds to the drawn differences, and on average never takes away from them:
        # the path's own (the clean host's jitter) and the timer's (its lateness varies by
        # at most about twice its median between two replies, each way).
        assert 0.97 * expected - 10_000 <= got, why
        assert got <= 1.03 * expected + base_ns + 4 * late_ns + 20_000, why
    assert base_ns < measured["narrow"] < measured["wide"], measured
