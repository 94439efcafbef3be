"""Lining loadgen's per-target counts up with a lab host's ground truth.

`expected_counts(truth)` says what loadgen must report for one host, derived only from counters
that count our probes (or the answers to them) and nothing else: nftables on both ends of its
link and its reflector; `mismatches(counts, expected)` names every figure that differs.
`truth_since(after, before)` turns cumulative counters into one run's share, so one lab can
serve many runs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from loadgen.lab.impair import ReflectorCounts
from loadgen.lab.truth import HostTruth, LinkCounters
from loadgen.stats import Counts

# Reflector figures that are not running totals: kept as they are after the run.
_NOT_ADDITIVE = frozenset(
    {
        "delay_ns_max",
        "late_ns_max",
        "late_ns_p50",
        "hold_ns_p50",
        "hold_step_ns",
        "overhead_ns_p50",
        "pending",
    }
)


class AmbiguousTruth(ValueError):
    """The counters cannot say exactly what loadgen must see (e.g. a duplicated bit flip)."""


@dataclass(frozen=True, slots=True)
class ExpectedCounts:
    """What loadgen must report for one host. `answered` is received + late."""

    sent: int
    answered: int
    lost: int
    errored: int
    duplicates: int
    bitflips: int
    corrupted: int
    icmp_errors: int
    reordered: int | None  # None: not known (a shaped link may reorder, see expected_counts)
    stale: int = 0


def _minus(after: Any, before: Any) -> Any:
    """Field-wise after - before of a counters dataclass (non-additive fields kept)."""
    changes = {
        f.name: getattr(after, f.name) - getattr(before, f.name)
        for f in fields(after)
        if isinstance(getattr(after, f.name), int) and f.name not in _NOT_ADDITIVE
    }
    return replace(after, **changes)


def truth_since(after: HostTruth, before: HostTruth) -> HostTruth:
    """The part of `after` that happened since `before` (same host, counters never reset)."""
    if (after.address, after.family) != (before.address, before.family):
        raise ValueError(f"truths of two hosts: {after.address} and {before.address}")
    counters = {
        f.name: getattr(after, f.name) - getattr(before, f.name)
        for f in fields(HostTruth)
        if isinstance(getattr(after, f.name), int) and f.name != "family"
    }
    refl: ReflectorCounts | None = None
    if after.reflector is not None and before.reflector is not None:
        refl = _minus(after.reflector, before.reflector)
    host_link: LinkCounters = _minus(after.host_link, before.host_link)
    root_link: LinkCounters = _minus(after.root_link, before.root_link)
    return replace(after, reflector=refl, host_link=host_link, root_link=root_link, **counters)


def expected_counts(
    truth: HostTruth, *, rx_dropped: int = 0, shaper_refuses: bool = False
) -> ExpectedCounts:
    """What loadgen must report for this host, given its truth for exactly one run.

    `rx_dropped`: good replies from this host that loadgen's own socket dropped (they turn
    answered probes into lost ones). `shaper_refuses`: the sender learns of every drop of the
    root end's tbf and sends that probe again (an AF_PACKET sender, tx_path = "packet", gets
    ENOBUFS; a raw IP socket is not told): those drops are refused sends, neither sent nor
    lost, though the egress counter saw each attempt. Raises AmbiguousTruth where the
    counters cannot decide: reply-side drops on a reflector host, sends the reflector's kernel
    refused, or a damaged reply that was also duplicated or reordered (use one such
    impairment per host).
    """
    t, r = truth, truth.reflector
    unsent = held_corrupt(t)
    refused = t.root_link.shaped_drops if shaper_refuses else 0
    sent = t.requests_out - refused
    way_back = t.lost_on_the_way_back
    if min(t.lost_towards_host, way_back, t.responder_missed) < 0:
        raise AmbiguousTruth(
            f"{t.name}: more probes arrived than left ({t.requests_out} out, {t.echo_requests_in} "
            f"in; {way_back} answers lost, {t.responder_missed} missed): read a quiet lab"
        )
    if r is None:
        answered = t.echo_replies_out - way_back
        errors = damaged = duplicates = reordered = 0
    else:
        damaged = r.bitflipped + r.corrupted
        if way_back or r.send_errors or r.unsent_at_exit:
            raise AmbiguousTruth(
                f"{t.name}: {way_back} replies dropped on the way back, {r.send_errors} refused "
                f"sends, {r.unsent_at_exit} unsent: which probes they answered is unknown"
            )
        if damaged and (r.duplicated or r.out_of_order):
            raise AmbiguousTruth(
                f"{t.name}: damaged replies that may be duplicated or reordered too; give "
                "bitflip/corrupt and duplicate/reorder/jitter hosts of their own"
            )
        answered = r.replies - damaged
        damaged -= unsent  # an IPv6 reply picked for corruption was never sent: lost
        errors = r.unreachable_sent + r.time_exceeded_sent
        duplicates, reordered = r.duplicated, r.out_of_order
    if rx_dropped > answered:
        raise AmbiguousTruth(f"{t.name}: {rx_dropped} dropped at loadgen, {answered} answered")
    lost = lost_at_host(t) - refused + rx_dropped
    answered -= rx_dropped
    errored = errors + damaged
    if sent != answered + lost + errored:
        raise AmbiguousTruth(
            f"{t.name}: the truth does not add up: {sent} requests, {answered} answered, "
            f"{lost} dropped, {errored} errored; a drop point is not counted"
        )
    # A tbf releases held packets from its watchdog timer, on whichever CPU that fires, and a
    # veth delivers into that CPU's backlog: two probes (or replies) handed to the link on two
    # CPUs can overtake each other, and no counter sees it. Seen once in many runs.
    shaped = t.root_link.shaped_packets + t.host_link.shaped_packets > 0
    return ExpectedCounts(
        sent=sent,
        answered=answered,
        lost=lost,
        errored=errored,
        duplicates=duplicates,
        bitflips=r.bitflipped if r else 0,
        corrupted=r.corrupted - unsent if r else 0,
        icmp_errors=errors,
        reordered=None if shaped else reordered,
    )


def held_corrupt(truth: HostTruth) -> int:
    """Replies an IPv6 reflector picked for corruption and so never sent: the kernel writes
    ICMPv6 checksums, and a receiver's kernel drops a bad one before any socket sees it."""
    r = truth.reflector
    return r.corrupted if r is not None and truth.family == 6 else 0


def lost_at_host(truth: HostTruth) -> int:
    """Probes the host (or its link) dropped or left unanswered, by cause, summed."""
    r = truth.reflector
    refused = (r.dropped + r.rate_limited + held_corrupt(truth)) if r else 0
    return (
        truth.lost_towards_host
        + truth.nft_dropped
        + truth.responder_missed
        + refused
        + truth.lost_on_the_way_back
    )


def mismatches(counts: Counts, expected: ExpectedCounts) -> dict[str, tuple[int, int | None]]:
    """Every figure where loadgen (first) and the truth (second) differ; {} when all agree.
    A figure the truth does not know (None) is not compared."""
    got = {
        "sent": counts.sent,
        "answered": counts.received + counts.late,
        "lost": counts.lost,
        "errored": counts.errored,
        "duplicates": counts.duplicates,
        "bitflips": counts.bitflips,
        "corrupted": counts.corrupted,
        "icmp_errors": counts.icmp_errors,
        "reordered": counts.reordered,
        "stale": counts.stale,
    }
    want = {f.name: getattr(expected, f.name) for f in fields(ExpectedCounts)}
    return {k: (got[k], want[k]) for k in want if want[k] is not None and got[k] != want[k]}
