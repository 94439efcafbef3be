"""The delay relay's decisions (lab/holds.py), sans-IO: due times, the holds it records, who it
serves, and what it reads of each one-way delay off RFC 8762 packets built here by hand."""

from __future__ import annotations

import struct

import pytest

from loadgen.lab.holds import (
    MAX_INFLIGHT,
    MAX_SESSIONS,
    NTP_UNIX_S,
    Holds,
    Way,
    quantile,
    spread,
    stamp_ns,
)

T0 = 1_700_000_000 * 10**9  # realtime ns, a whole second
LAB = (4, "198.18.0.1", 40000)
MS = 1_000_000


def ntp(ns: int) -> bytes:
    sec, rest = divmod(ns, 10**9)
    return struct.pack("!II", sec + NTP_UNIX_S, (rest << 32) // 10**9)


def request(seq: int, t1_ns: int) -> bytes:
    """RFC 8762 4.2.1: sequence, timestamp, error estimate (Z = 0: NTP), SSID, 28 MBZ."""
    return struct.pack("!I", seq) + ntp(t1_ns) + b"\x80\x01" + b"\x00\x07" + bytes(28)


def reply(seq: int, t1_ns: int, t2_ns: int, t3_ns: int) -> bytes:
    """RFC 8762 4.3.1: sequence, T3, error estimate, SSID, T2, sender's sequence, T1, ..."""
    head = struct.pack("!I", seq) + ntp(t3_ns) + b"\x80\x01" + b"\x00\x07" + ntp(t2_ns)
    return head + struct.pack("!I", seq) + ntp(t1_ns) + b"\x80\x01" + bytes(2) + b"\x40" + bytes(3)


def test_stamps_read_as_ntp_or_ptp_by_the_z_bit() -> None:
    t = T0 + 123_456_789
    assert abs(stamp_ns(request(1, t), 4) - t) <= 1
    ptp = struct.pack("!I", 1) + struct.pack("!II", t // 10**9, t % 10**9) + b"\x40\x00"
    assert stamp_ns(ptp, 4) == t


def test_a_packet_leaves_no_earlier_than_its_delay_and_the_hold_is_what_was_done() -> None:
    h = Holds(5 * MS, 0)
    assert h.admit(LAB)
    h.hold(Way.FWD, LAB, request(1, T0), T0 + 100_000, stamped=True)
    assert h.next_due_ns() == T0 + 100_000 + 5 * MS
    assert h.due(T0 + 100_000 + 5 * MS - 1) == []
    (held,) = h.due(T0 + 6 * MS)
    h.sent(held, T0 + 6 * MS + 300, ok=True)  # late by 900.3 us: the truth says so
    assert h.holds[Way.FWD] == [6 * MS + 300 - 100_000]
    assert h.summary()["sent_fwd"] == 1 and h.summary()["pending"] == 0


def test_each_answered_packet_records_both_one_way_delays_as_the_relay_saw_them() -> None:
    h = Holds(2 * MS, 3 * MS)
    h.admit(LAB)
    t1 = T0
    h.hold(Way.FWD, LAB, request(7, t1), t1 + 20_000, stamped=True)
    (fwd,) = h.due(t1 + 3 * MS)
    h.sent(fwd, t1 + 2_030_000, ok=True)
    t2, t3 = t1 + 2_040_000, t1 + 2_100_000
    h.hold(Way.REV, LAB, reply(7, t1, t2, t3), t3 + 15_000, stamped=True)
    (rev,) = h.due(t3 + 4 * MS)
    h.sent(rev, t3 + 3_025_000, ok=True)
    record = h.per_packet()
    assert record["hold_fwd"] == [2_010_000] and record["hold_rev"] == [3_010_000]
    assert abs(record["seen_fwd"][0] - 2_040_000) <= 1  # T2 - T1
    assert abs(record["seen_rev"][0] - 3_025_000) <= 1  # its send - T3
    assert h.summary()["seen_fwd"]["count"] == 1 and not h.inflight


def test_a_reply_to_nothing_passed_on_is_counted_not_recorded() -> None:
    h = Holds(0, 0)
    h.admit(LAB)
    h.hold(Way.REV, LAB, reply(9, T0, T0, T0), T0, stamped=False)
    (rev,) = h.due(T0)
    h.sent(rev, T0 + 10, ok=True)
    assert h.counts["unmatched"] == 1 and h.counts["unstamped"] == 1 and h.seen == []


def test_only_lab_senders_are_served_and_sessions_are_bounded() -> None:
    h = Holds(0, 0)
    assert not h.admit((4, "192.0.2.1", 1))  # TEST-NET-1: not the lab's
    assert not h.admit((6, "2001:db8::1", 1))  # documentation prefix: not the lab's
    assert h.admit((6, "2001:2::3", 1))
    assert all(h.admit((4, "198.18.0.1", p)) for p in range(1, MAX_SESSIONS))
    assert not h.admit((4, "198.18.0.1", MAX_SESSIONS))
    assert h.counts["refused"] == 2 and h.counts["sessions_full"] == 1


def test_test_packets_without_a_reply_are_forgotten_oldest_first() -> None:
    h = Holds(0, 0)
    h.admit(LAB)
    for seq in range(MAX_INFLIGHT + 1):
        h.hold(Way.FWD, LAB, request(seq, T0), T0, stamped=True)
    for held in h.due(T0):
        h.sent(held, T0, ok=True)
    assert len(h.inflight) == MAX_INFLIGHT and (LAB, 0) not in h.inflight


def test_what_is_held_at_once_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loadgen.lab.holds.MAX_QUEUED", 2)
    h = Holds(MS, 0)
    h.admit(LAB)
    for seq in range(3):
        h.hold(Way.FWD, LAB, request(seq, T0), T0, stamped=True)
    assert len(h.due(T0 + MS)) == 2 and h.counts["overflow"] == 1


def test_a_failed_send_counts_as_an_error_and_not_as_a_hold() -> None:
    h = Holds(0, 0)
    h.admit(LAB)
    h.hold(Way.FWD, LAB, b"short", T0, stamped=True)
    (held,) = h.due(T0)
    h.sent(held, T0 + 5, ok=False)
    assert h.counts["send_errors"] == 1 and h.holds == ([], [])


def test_quantiles_are_numpys_linear_ones() -> None:
    assert quantile([10, 20, 30, 40], 0.5) == 25
    s = spread([40, 10, 30, 20])
    assert (s["count"], s["min_ns"], s["max_ns"], s["p50_ns"]) == (4, 10, 40, 25)
    assert spread([])["p50_ns"] is None
    assert quantile([5], 0.99) == pytest.approx(5)
