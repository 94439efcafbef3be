"""Latency and jitter against hosts whose reflector delays replies by seeded, known amounts.

The truth is what the reflectors did: each times every reply it holds, from its request's
arrival (the kernel's receive stamp) to its sending, and reports the median and the mean
change from one reply to the next. loadgen's p50 above a clean reflector probed in the same
run must equal the difference of the reflectors' medians, and its jitter their jitter. The lab
itself is checked too: it added the delay it was asked for, and jitter no smaller than that of
the delays it drew (seeded, so the test replays them with impair.Decider).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from loadgen.lab import HostTruth, Lab, LabHost
from loadgen.lab.hostcfg import reflector_config
from loadgen.lab.impair import Decider, ReflectorCounts
from loadgen.lab.spread import STEP_NS as HOLD_STEP_NS
from loadgen.stats import PERCENTILE_REL_ERROR

from .conftest import Labs, assert_counts_match, measure, pin_reflectors

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(60)]

P50_TOLERANCE_NS = 100_000  # the bound on the median, above the clean baseline
JITTER_PATH_NS = 50_000  # jitter the path outside the reflectors may add (kernel, veth)
# Kernel TX stamps: a worker preempted between its stamp and its send adds no latency.
KEYS: dict[str, Any] = {"rate_pps": 1_000, "tx_timestamps": True}
COUNT = 1_000  # probes per host
JITTER_COUNT = 600


def reflector_of(truth: HostTruth) -> ReflectorCounts:
    assert truth.reflector is not None, f"{truth.name} has no reflector"
    return truth.reflector


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
    delay_ns = 3_000_000
    lab = make_lab([{"name": "clean", "reflector": True}, {"name": "slow", "delay_ms": 3}])
    clean, slow = lab.host("clean"), lab.host("slow")
    pinned = pin_reflectors([], [clean, slow])  # side by side: the same load for both
    run, truth = measure(lab, [clean, slow], tmp_path, **KEYS, count=COUNT, **pinned)
    assert_counts_match(run, truth)
    refl = {h.name: reflector_of(truth[h.address]) for h in (clean, slow)}
    assert refl["slow"].delayed == COUNT
    p50 = {h.name: run.stats(h.address).rtt.p50_ns for h in (clean, slow)}
    added_ns = p50["slow"] - p50["clean"]
    # What the lab really added: the difference of the two reflectors' median hold times.
    held_ns = refl["slow"].hold_ns_p50 - refl["clean"].hold_ns_p50
    quantum_ns = PERCENTILE_REL_ERROR * p50["slow"] + HOLD_STEP_NS  # both are binned
    late_ns = refl["slow"].late_ns_p50
    # Each reflector times what it held every reply beyond its delay (waiting for its CPU, a
    # late timer): the box's load, not the delay asked for. The slow host's, less the clean's.
    busy_ns = refl["slow"].overhead_ns_p50 - refl["clean"].overhead_ns_p50
    why = (
        f"loadgen: p50 {added_ns / 1e3:.0f} us above the clean host; the reflectors: "
        f"{held_ns / 1e3:.0f} us; injected {delay_ns / 1e3:.0f} us, the timer "
        f"{late_ns / 1e3:.0f} us late, the slow reflector's own part {busy_ns / 1e3:.0f} us "
        "above the clean one's, at the median"
    )
    assert abs(added_ns - held_ns) <= P50_TOLERANCE_NS + quantum_ns, why
    # And the lab added what it was asked to, never less, and more only by what it measured
    # of its own lateness (which a busy box makes worse): then loadgen is that close to it too.
    assert held_ns - delay_ns >= -P50_TOLERANCE_NS, why
    assert abs(held_ns - delay_ns - busy_ns) <= P50_TOLERANCE_NS + quantum_ns, why
    # Its own part includes its timer's lateness, reply by reply, so the medians keep order.
    assert late_ns <= refl["slow"].overhead_ns_p50 + quantum_ns, why


JITTER_HOSTS: dict[str, dict[str, object]] = {
    "clean": {"reflector": True},
    "narrow": {"delay_ms": 2, "jitter_ms": 1},  # uniform in 2 ms +- 1 ms
    "wide": {"delay_ms": 4, "jitter_ms": 3},  # uniform in 4 ms +- 3 ms
    "normal": {"delay_ms": 5, "jitter_ms": 1, "jitter_dist": "normal"},  # sd 1 ms
}


def test_jitter_is_the_jitter_of_the_drawn_delays(make_lab: Labs, tmp_path: Path) -> None:
    lab = make_lab([{"name": n, **keys} for n, keys in JITTER_HOSTS.items()], seed=3)
    hosts = [lab.host(n) for n in JITTER_HOSTS]
    per_target = KEYS["rate_pps"] // len(hosts)
    pinned = pin_reflectors(hosts[:1], hosts[1:])
    run, truth = measure(lab, hosts, tmp_path, **KEYS, count=JITTER_COUNT, **pinned)
    assert_counts_match(run, truth)
    for host in hosts:
        refl = reflector_of(truth[host.address])
        got = run.stats(host.address).rtt.jitter_ns
        held = refl.hold_step_ns
        why = (
            f"{host.name}: loadgen's jitter {got / 1e3:.0f} us, the reflector's {held / 1e3:.0f} us"
        )
        # The reflector times each reply it holds: the jitter it added, reply by reply in the
        # order loadgen gets them. The rest of the path (kernel, veth) adds little.
        assert abs(got - held) <= 0.1 * held + JITTER_PATH_NS, why
        if host.name == "clean":
            continue
        # And the reflector added the jitter of the delays it drew (seeded, so replayed here),
        # or more (its timer adds its own), never less.
        drawn = drawn_delays_ns(lab, host, JITTER_COUNT)
        j_ns = host.impairments.jitter_ms * 1e6
        # What the reflector implements, in send order: uniform +-J has E|X-Y| = 2J/3,
        # normal with sd s has E|X-Y| = 2s/sqrt(pi).
        theory = 2 * j_ns / 3 if host.name != "normal" else 2 * j_ns / np.sqrt(np.pi)
        assert abs(np.abs(np.diff(drawn)).mean() - theory) < 0.08 * theory, host.name
        expected = jitter_of(drawn, per_target)
        assert 0.97 * expected - 10_000 <= held, f"{why}, drawn {expected / 1e3:.0f} us"
    jitter = {h.name: run.stats(h.address).rtt.jitter_ns for h in hosts}
    assert jitter["narrow"] < jitter["wide"], jitter  # +- 1 ms, then +- 3 ms
