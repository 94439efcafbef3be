"""The truth-side helpers on their own: a host's counters turned into loadgen's expected counts,
one run's share of cumulative counters, and the reflector's timing figures. No lab needed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadgen.lab import AmbiguousTruth, HostTruth, expected_counts, mismatches, truth_since
from loadgen.lab.impair import ReflectorCounts
from loadgen.lab.spread import STEP_NS, Spread
from loadgen.lab.truth import LinkCounters
from loadgen.stats import Counts


def host(**fields: object) -> HostTruth:
    base = HostTruth(
        address="198.18.0.1",
        name="h",
        netns="lgq0000-h",
        responder="kernel",
        requests_out=0,
        echo_requests_in=0,
        nft_dropped_every=0,
        nft_dropped_random=0,
        requests_seen=0,
        kernel_echo_replies=0,
        echo_replies_out=0,
        icmp_errors_out=0,
        replies_back=0,
        errors_back=0,
        reflector=None,
        host_link=LinkCounters(),
        root_link=LinkCounters(),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_a_kernel_host_behind_nft_drops_and_tbf() -> None:
    # 100 probes lost on the way in (tbf), 100 dropped by nftables, 5 replies on the way back.
    t = host(
        requests_out=1000,
        echo_requests_in=900,
        nft_dropped_every=90,
        nft_dropped_random=10,
        requests_seen=803,  # InEchos: three pings that are not our probes are not in any figure
        echo_replies_out=800,
        replies_back=795,
        root_link=LinkCounters(shaped_drops=100),
        host_link=LinkCounters(shaped_drops=5),
    )
    want = expected_counts(t)
    assert (want.sent, want.answered, want.lost) == (1000, 795, 205)
    exact = Counts(sent=1000, received=795, lost=205)
    assert mismatches(exact, want) == {}
    off = Counts(sent=1000, received=796, lost=204)
    assert mismatches(off, want) == {"answered": (796, 795), "lost": (204, 205)}
    # An AF_PACKET sender is told of the root end's tbf drops and sends again: refused sends.
    refused = expected_counts(t, shaper_refuses=True)
    assert (refused.sent, refused.answered, refused.lost) == (900, 795, 105)
    # Replies loadgen's own socket dropped move from answered to lost.
    assert not mismatches(
        Counts(sent=1000, received=790, lost=210), expected_counts(t, rx_dropped=5)
    )


def test_a_reflector_host_splits_fates_into_loadgen_figures() -> None:
    r = ReflectorCounts(
        requests_seen=100,
        dropped=3,
        rate_limited=2,
        unreachable_sent=4,
        time_exceeded_sent=1,
        replies=90,
        replies_sent=90,
        bitflipped=6,
        corrupted=2,
    )
    t = host(
        responder="reflector",
        requests_out=100,
        echo_requests_in=100,
        requests_seen=100,
        reflector=r,
    )
    want = expected_counts(t)
    assert want.sent == 100 and want.answered == 82 and want.lost == 5
    assert want.errored == 13 and want.icmp_errors == 5
    assert (want.bitflips, want.corrupted) == (6, 2)


def test_truths_that_cannot_be_lined_up_say_why() -> None:
    r = ReflectorCounts(requests_seen=10, replies=10, replies_sent=20, duplicated=10, bitflipped=1)
    t = host(
        responder="reflector", requests_out=10, echo_requests_in=10, requests_seen=10, reflector=r
    )
    with pytest.raises(AmbiguousTruth, match="duplicated or reordered"):
        expected_counts(t)
    # The reflector saw 10 probes but accounts for 7 fates only.
    hole = replace(t, reflector=ReflectorCounts(requests_seen=10, replies=7, replies_sent=7))
    with pytest.raises(AmbiguousTruth, match="does not add up"):
        expected_counts(hole)
    # Answers lost on a reflector's way back: which probes they answered is unknown.
    back = replace(hole, echo_replies_out=7, replies_back=6)
    with pytest.raises(AmbiguousTruth, match="dropped on the way back"):
        expected_counts(back)
    # More probes in than out: counters read while probes were in flight, or not ours.
    early = host(requests_out=10, echo_requests_in=12, echo_replies_out=12, replies_back=12)
    with pytest.raises(AmbiguousTruth, match="more probes arrived than left"):
        expected_counts(early)


def test_one_runs_share_of_cumulative_counters() -> None:
    before = host(
        echo_requests_in=10,
        reflector=ReflectorCounts(requests_seen=10, replies=10, hold_ns_p50=5_000),
        root_link=LinkCounters(shaped_packets=11),
    )
    after = host(
        echo_requests_in=25,
        reflector=ReflectorCounts(requests_seen=25, replies=24, hold_ns_p50=7_000),
        root_link=LinkCounters(shaped_packets=27),
    )
    run = truth_since(after, before)
    assert run.echo_requests_in == 15 and run.root_link.shaped_packets == 16
    assert run.reflector is not None and run.reflector.replies == 14
    assert run.reflector.hold_ns_p50 == 7_000  # a median is not a running total: as after
    with pytest.raises(ValueError, match="two hosts"):
        truth_since(after, replace(before, address="198.18.0.3"))


def test_spread_median_and_mean_step() -> None:
    s = Spread(100)
    assert s.p50_ns() == 0 and s.mean_step_ns() == 0
    s.add_many([100_000, 300_000, 100_000])
    s.add(200_000, n=3)  # a batch answered at one moment: two steps of 0
    assert s.count == 6
    assert s.p50_ns() == 200_000 + STEP_NS // 2  # 100, 100, 200, 200, 200, 300 us: the 3rd
    assert s.mean_step_ns() == (200_000 + 200_000 + 100_000) // 5
    s.add(10**9)  # beyond the histogram: the last bucket
    assert s.hist[-1] == 1


def test_reordering_behind_a_shaper_is_not_known_and_not_compared() -> None:
    """A tbf may hand two packets to the link on two CPUs: no counter can say whether they
    overtook each other. An unshaped kernel host never reorders."""
    plain = host(requests_out=10, echo_requests_in=10, echo_replies_out=10, replies_back=10)
    shaped = replace(plain, root_link=LinkCounters(shaped_packets=10))
    reordered_once = Counts(sent=10, received=10, reordered=1)
    assert expected_counts(plain).reordered == 0
    assert mismatches(reordered_once, expected_counts(plain)) == {"reordered": (1, 0)}
    assert expected_counts(shaped).reordered is None
    assert mismatches(reordered_once, expected_counts(shaped)) == {}
    assert mismatches(Counts(sent=10, received=9, lost=1), expected_counts(shaped)) != {}
