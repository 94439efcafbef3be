"""Rate limits: a tbf-limited link and a rate-limited ICMP responder, probed faster than they let
through. The loss equals the drop counters exactly, and every second of the export shows the
limit: about the allowed rate answered, the rest lost. An IPv6 sender is told of each drop of
its own end's tbf (ENOBUFS) and sends the probe again, so for IPv6 the link loses only replies
and loadgen's sending slows to the link's rate: that link gets a run of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadgen.lab import HostTruth, Lab, LabHost

from .conftest import Labs, Run, assert_counts_match, measure

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(60)]

PER_TARGET_PPS = 1_000
SECONDS = 3
SIZE = 64  # ICMP payload bytes
FRAME_BITS = (14 + 20 + 8 + SIZE) * 8  # what tbf meters on a veth: Ethernet, IP, ICMP, payload
LINK_BPS = 256_000
ICMP_PPS = 300


def judged_seconds(run: Run, host: LabHost, version: int = 4) -> list[tuple[dict[str, Any], bool]]:
    """Export rows of the seconds loadgen sent in full, each with whether it also kept to its
    timetable then (figures are bucketed by send time: sends that bunch up let a limiter's
    credit lapse, so such a second may come out a little short, and says nothing of it)."""
    rows = run.seconds(host.address_of(version))
    assert sum(r["sent"] for r in rows) == PER_TARGET_PPS * SECONDS
    for r in rows:
        assert r["lost"] == r["sent"] - r["received"], r
        assert r["loss_pct"] == pytest.approx(100 * r["lost"] / r["sent"])
    limited = {
        r["second"] for r in run.rows if r["type"] == "second_total" and r["generator_limited"]
    }
    judged = [(r, r["second"] not in limited) for r in rows if r["sent"] >= 0.98 * PER_TARGET_PPS]
    assert judged, f"loadgen sent no second in full: {rows}"
    return judged


def test_rate_limits_lose_exactly_what_the_limiters_dropped_each_second(
    make_lab: Labs, version: int, tmp_path: Path
) -> None:
    lab = make_lab(
        [
            {"name": "link", "rate_limit": f"{LINK_BPS // 1000}kbit"},
            {"name": "icmp", "icmp_ratelimit_pps": ICMP_PPS},
        ]
    )
    link, icmp = lab.host("link"), lab.host("icmp")
    hosts = [link, icmp] if version == 4 else [icmp]
    run, truth = measure(
        lab,
        hosts,
        tmp_path,
        version,
        rate_pps=len(hosts) * PER_TARGET_PPS,
        count=PER_TARGET_PPS * SECONDS,
        size=SIZE,
    )
    assert_counts_match(run, truth)
    _icmp_limit(run, truth[icmp.address_of(version)], icmp, version)
    if version == 6:
        _ipv6_link(lab, link, tmp_path)
        return

    # The link: every loss is a tbf drop (requests on the way in, replies on the way out).
    t = truth[link.address]
    assert run.counts(link.address).lost == t.root_link.shaped_drops + t.host_link.shaped_drops
    capacity_pps = LINK_BPS / FRAME_BITS
    # The first second also gets tbf's full bucket (10 ms of the rate, at least 1600 bytes)
    # and what its queue holds at the end of the second (sent then, answered after): tbf's
    # limit is latency (50 ms) x rate + bucket.
    bucket = max(1600, LINK_BPS // 800)
    head_room = (2 * bucket + LINK_BPS / 8 * 0.05) / (FRAME_BITS / 8)
    for r, kept_time in judged_seconds(run, link):
        top = capacity_pps + (head_room if r["second"] == 0 else 0)
        slack = 0.03 * capacity_pps + 2 + (0 if kept_time else head_room)
        assert capacity_pps - slack <= r["received"] <= top + slack, (r, kept_time)


def _icmp_limit(run: Run, t: HostTruth, icmp: LabHost, version: int) -> None:
    """The ICMP limit: a token bucket of ICMP_PPS per second that starts full (ICMP_PPS / 20)."""
    r_icmp = t.reflector
    assert r_icmp is not None
    assert run.counts(icmp.address_of(version)).lost == r_icmp.rate_limited > 0
    burst = ICMP_PPS // 20
    for r, kept_time in judged_seconds(run, icmp, version):
        top = ICMP_PPS + (burst if r["second"] == 0 else 0)
        slack = 2 if kept_time else burst + 2
        assert ICMP_PPS - slack <= r["received"] <= top + 1, (r, kept_time)


def _ipv6_link(lab: Lab, link: LabHost, tmp_path: Path) -> None:
    """IPv6 over the shaped link: the root end's drops were refused sends, sent again; only
    replies the host end's tbf dropped are lost, and every probe still went out once."""
    count = PER_TARGET_PPS // 2
    run, truth = measure(lab, [link], tmp_path, 6, rate_pps=PER_TARGET_PPS, count=count, size=SIZE)
    assert_counts_match(run, truth)
    t, got = truth[link.address6], run.counts(link.address6)
    assert t.root_link.shaped_drops > 0 and got.sent == count
    assert t.requests_out == count + t.root_link.shaped_drops
    assert got.lost == t.host_link.shaped_drops
