"""The tracker turns sends and decoded replies into exactly one outcome per probe."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.tracker import SLOT_BYTES, TX_STAMP_SLOT_BYTES, Tracker
from loadgen.wire.family import IPV6
from loadgen.wire.icmp import UNKNOWN_TARGET, DecodeStatus
from loadgen.wire.records import MAX_PROBES, OUTCOME_KINDS, RecordFlag, RecordKind

MS = 1_000_000
TIMEOUT = 100 * MS
LINGER = 300 * MS


def make(n_targets: int = 2, rate: float = 1000.0) -> Tracker:
    return Tracker(
        targets=np.arange(10, 10 + n_targets, dtype=np.uint32),
        addresses=np.arange(0xC6120001, 0xC6120001 + n_targets, dtype=np.uint32),
        rate_pps=rate,
        timeout_ns=TIMEOUT,
        linger_ns=LINGER,
    )


def reply(
    tr: Tracker,
    rows: list[tuple[int, int, int]],
    status: DecodeStatus = DecodeStatus.REPLY,
    seq16_only: bool = False,
) -> None:
    """rows: (global target, seq, rx_ns)."""
    n = len(rows)
    tr.on_replies(
        status=np.full(n, status, dtype=np.uint8),
        target=np.array([r[0] for r in rows], dtype=np.uint32),
        seq=np.array([r[1] for r in rows], dtype=np.uint64),
        seq16_only=np.full(n, seq16_only),
        quoted_dst=np.array([(0xC6120001 + r[0] - 10) & 0xFFFFFFFF for r in rows], dtype=np.uint32),
        payload_tx_ns=np.zeros(n, dtype=np.int64),
        rx_ns=np.array([r[2] for r in rows], dtype=np.int64),
        rx_flags=int(RecordFlag.RX_KERNEL),
    )


def kinds(recs: NDArray[np.void]) -> Counter[RecordKind]:
    """Records by kind, a SENT record counting the probes it stands for."""
    out: Counter[RecordKind] = Counter()
    for k, probes in zip(recs["kind"].tolist(), recs["probes"].tolist(), strict=True):
        out[RecordKind(k)] += probes if k == RecordKind.SENT else 1
    return out


def sent_rows(recs: NDArray[np.void]) -> list[tuple[int, int]]:
    """(target, probes) of the SENT records, sorted."""
    sent = recs[recs["kind"] == RecordKind.SENT]
    return sorted(zip(sent["target"].tolist(), sent["probes"].tolist(), strict=True))


def test_round_robin_targets_and_dense_sequences() -> None:
    tr = make(3)
    local, seq = tr.plan_batch(7)
    assert local.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert seq.tolist() == [0, 0, 0, 1, 1, 1, 2]
    tr.on_sent(7, tx_ns=1000)
    recs = tr.take_records()
    assert kinds(recs) == {RecordKind.SENT: 7}
    # One SENT record per target of the batch, with its probe count.
    assert sent_rows(recs) == [
        (10, 3),
        (11, 2),
        (12, 2),
    ]
    tr.plan_batch(2)
    tr.on_sent(2, tx_ns=2000)  # starts at target 11, where the last batch stopped
    recs = tr.take_records()
    assert sent_rows(recs) == [(11, 1), (12, 1)]


def test_a_target_with_more_probes_than_a_record_holds_gets_several() -> None:
    tr = make(1, rate=1e6)
    tr.on_sent(MAX_PROBES + 5, tx_ns=0)
    recs = tr.take_records()
    assert recs["probes"].tolist() == [MAX_PROBES, 5]
    assert kinds(recs) == {RecordKind.SENT: MAX_PROBES + 5}


def test_received_late_lost_and_duplicate() -> None:
    tr = make(1)
    tr.on_sent(4, tx_ns=0)
    tr.take_records()
    reply(tr, [(10, 0, 5 * MS), (10, 1, 150 * MS), (10, 0, 6 * MS)])
    recs = tr.take_records()
    got = {RecordKind(int(r["kind"])): int(r["rtt_ns"]) for r in recs}
    assert got == {
        RecordKind.RECEIVED: 5 * MS,
        RecordKind.LATE: 150 * MS,
        RecordKind.DUPLICATE: 6 * MS,
    }
    assert tr.unresolved() == 2
    tr.expire(LINGER - 1)
    assert len(tr.take_records()) == 0
    tr.expire(LINGER)
    lost = tr.take_records()
    assert kinds(lost) == {RecordKind.LOST: 2}
    assert lost["rtt_ns"].tolist() == [2, 3]  # a LOST record has no RTT: it names its seq
    assert tr.unresolved() == 0


def test_duplicate_in_a_later_batch_and_stale_after_expiry() -> None:
    tr = make(1)
    tr.on_sent(2, tx_ns=0)
    reply(tr, [(10, 0, 1 * MS)])
    reply(tr, [(10, 0, 2 * MS)])
    tr.expire(LINGER)
    reply(tr, [(10, 1, LINGER + MS)])  # the lost probe's reply, too late: stale
    reply(tr, [(10, 5, LINGER + MS)])  # never sent: foreign
    c = kinds(tr.take_records())
    assert c[RecordKind.RECEIVED] == 1
    assert c[RecordKind.DUPLICATE] == 1
    assert c[RecordKind.LOST] == 1
    assert c[RecordKind.STALE] == 1
    assert tr.foreign == 1


def test_reordering_within_and_across_batches() -> None:
    tr = make(2)
    tr.on_sent(10, tx_ns=0)  # target 10 gets seqs 0..4, target 11 gets 0..4
    tr.take_records()
    reply(tr, [(10, 1, MS), (11, 0, MS), (10, 0, MS), (11, 1, MS)])
    reply(tr, [(10, 3, MS), (10, 2, MS), (11, 2, MS)])
    recs = tr.take_records()
    flagged = {
        (int(r["target"]), i) for i, r in enumerate(recs) if int(r["flags"]) & RecordFlag.REORDERED
    }
    assert flagged == {(10, 2), (10, 5)}
    assert all(int(f) & RecordFlag.RX_KERNEL for f in recs["flags"])


def test_damaged_and_errors_make_errored_unless_a_good_reply_follows() -> None:
    tr = make(1)
    tr.on_sent(3, tx_ns=0)
    reply(tr, [(10, 0, MS)], DecodeStatus.BITFLIP)
    reply(tr, [(10, 1, MS)], DecodeStatus.CORRUPTED)
    reply(tr, [(10, 1, 2 * MS)])  # a clean copy arrives after the corrupted one
    reply(tr, [(10, 2, MS)], DecodeStatus.ICMP_ERROR, seq16_only=True)
    reply(tr, [(UNKNOWN_TARGET, 0, MS)], DecodeStatus.BITFLIP)
    tr.expire(LINGER)
    c = kinds(tr.take_records())
    assert c[RecordKind.BITFLIP] == 1
    assert c[RecordKind.CORRUPTED] == 1
    assert c[RecordKind.ICMP_ERROR] == 1
    assert c[RecordKind.RECEIVED] == 1
    assert c[RecordKind.ERRORED] == 2
    assert c[RecordKind.LOST] == 0
    assert tr.unattributed == 1


def test_short_quote_maps_to_newest_probe_with_those_low_bits() -> None:
    tr = make(1, rate=1_000_000.0)  # window larger than 2^16
    tr.on_sent(70_000, tx_ns=0)
    reply(tr, [(10, 69_999 & 0xFFFF, MS)], DecodeStatus.ICMP_ERROR, seq16_only=True)
    recs = tr.take_records()
    assert kinds(recs)[RecordKind.ICMP_ERROR] == 1
    tr.expire(LINGER)
    assert kinds(tr.take_records())[RecordKind.ERRORED] == 1


def test_watermark_waits_for_unresolved_probes() -> None:
    tr = make(1)
    tr.on_sent(1, tx_ns=1000)
    tr.on_sent(1, tx_ns=2000)
    now = 200 * MS
    assert tr.resolved_before(now) == 1000
    reply(tr, [(10, 0, 3000)])
    assert tr.resolved_before(now) == 2000
    reply(tr, [(10, 1, 4000)])
    assert tr.resolved_before(now) == now - TIMEOUT


@settings(max_examples=60, deadline=None)
@given(
    n_targets=st.integers(1, 5),
    batches=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    fate=st.lists(st.sampled_from("rldxbe"), min_size=1, max_size=400),
)
def test_every_probe_gets_exactly_one_outcome(
    n_targets: int, batches: list[int], fate: list[str]
) -> None:
    """Random replies, losses, duplicates and damage: outcomes always equal sends."""
    tr = make(n_targets, rate=10_000.0)
    now = 0
    for size in batches:
        local, seq = tr.plan_batch(size)
        tr.on_sent(size, tx_ns=now)
        for i in range(size):
            f = fate[(tr.sent - size + i) % len(fate)]
            row = [(10 + int(local[i]), int(seq[i]), now + 2 * MS)]
            if f == "r":
                reply(tr, row)
            elif f == "l":
                reply(tr, [(row[0][0], row[0][1], now + TIMEOUT + MS)])
            elif f == "x":
                reply(tr, row + row)
            elif f == "b":
                reply(tr, row, DecodeStatus.BITFLIP)
            elif f == "e":
                reply(tr, row, DecodeStatus.ICMP_ERROR)
        now += 50 * MS
        tr.expire(now)
    tr.finish()
    recs = tr.take_records()
    c = kinds(recs)
    assert c[RecordKind.SENT] == sum(batches)
    assert sum(c[k] for k in OUTCOME_KINDS) == sum(batches)
    for t in range(10, 10 + n_targets):
        mine = recs[recs["target"] == t]
        sent = int(mine["probes"][mine["kind"] == RecordKind.SENT].sum())
        outcomes = int(np.count_nonzero(np.isin(mine["kind"], list(OUTCOME_KINDS))))
        assert sent == outcomes
    assert tr.unresolved() == 0


def test_a_burst_beyond_the_table_evicts_the_oldest_probes_once() -> None:
    tr = make(2)  # 1000 pps over 2 targets, linger 300 ms: a table of 2 x 302 slots
    size = 2 * tr.window
    tr.on_sent(tr.max_batch, tx_ns=0)
    reply(tr, [(10, 0, MS)])  # probe 0 is answered; the rest stay outstanding
    tr.on_sent(tr.max_batch, tx_ns=MS)
    assert tr.evicted == 0
    tr.on_sent(100, tx_ns=2 * MS)  # 100 more than the table holds: the 100 oldest go
    assert tr.evicted == 99  # probe 0 already had its outcome
    tr.finish()
    c = kinds(tr.take_records())
    assert c[RecordKind.SENT] == size + 100
    assert sum(c[k] for k in OUTCOME_KINDS) == size + 100
    assert c[RecordKind.RECEIVED] == 1
    assert tr.unresolved() == 0


def test_a_full_table_of_probes_past_linger_expires_them_instead_of_evicting() -> None:
    tr = make(2)
    tr.on_sent(tr.max_batch, tx_ns=0)
    tr.on_sent(tr.max_batch, tx_ns=MS)
    tr.on_sent(100, tx_ns=MS + LINGER)  # nobody called expire(): the send does it
    assert tr.evicted == 0
    c = kinds(tr.take_records())
    assert c[RecordKind.LOST] == 2 * tr.max_batch  # every probe sent by 1 ms is due
    assert tr.unresolved() == 100


def test_batches_crossing_the_table_end_keep_dense_sequences() -> None:
    tr = make(3)
    size = 3 * tr.window
    half = size // 2
    for count in (half, half, half, 2 * size - 3 * half - 20):  # two laps, less 20
        tr.on_sent(count, tx_ns=0)
        tr.expire(LINGER)
    assert tr.sent % size == size - 20
    local, seq = tr.plan_batch(50)
    ks = np.arange(tr.sent, tr.sent + 50)
    assert local.tolist() == (ks % 3).tolist()
    assert seq.tolist() == (ks // 3).tolist()
    tr.on_sent(50, tx_ns=LINGER)
    tr.take_records()
    reply(tr, [(10 + int(k % 3), int(k // 3), LINGER + MS) for k in ks])
    assert kinds(tr.take_records()) == {RecordKind.RECEIVED: 50}


def table_bytes(tr: Tracker) -> int:
    slots = tr.n * tr.window
    return sum(a.nbytes for a in vars(tr).values() if isinstance(a, np.ndarray) and a.size == slots)


@pytest.mark.parametrize("rate", [1e4, 2e5, 1e6])
def test_the_tables_hold_at_most_64_bytes_per_probe_in_flight(rate: float) -> None:
    linger = 2_000 * MS
    tr = Tracker(
        targets=np.arange(32, dtype=np.uint32),
        addresses=np.arange(32, dtype=np.uint32),
        rate_pps=rate,
        timeout_ns=TIMEOUT,
        linger_ns=linger,
    )
    in_flight = rate * linger / 1e9
    assert table_bytes(tr) == SLOT_BYTES * 32 * tr.window
    assert tr.window >= rate / 32 * linger / 1e9  # a linger's probes fit
    assert table_bytes(tr) <= 64 * in_flight
    tr.on_sent(4, tx_ns=0)
    tr.on_tx_stamps(np.arange(4), np.arange(4), np.full(4, RecordFlag.TX_KERNEL, np.uint8))
    assert table_bytes(tr) == (SLOT_BYTES + TX_STAMP_SLOT_BYTES) * 32 * tr.window
    assert table_bytes(tr) <= 64 * in_flight


def test_a_clock_stepped_back_delays_expiry_but_loses_no_probe() -> None:
    tr = make(1)
    tr.on_sent(2, tx_ns=10 * MS)
    tr.on_sent(2, tx_ns=5 * MS)  # the wall clock went back 5 ms
    tr.expire(5 * MS + LINGER)  # the later probes are due, but wait behind the earlier ones
    assert kinds(tr.take_records()) == {RecordKind.SENT: 4}
    tr.expire(10 * MS + LINGER)
    recs = tr.take_records()
    assert kinds(recs) == {RecordKind.LOST: 4}
    assert recs["tx_ns"].tolist() == [10 * MS, 10 * MS, 5 * MS, 5 * MS]  # true send times


def test_garbage_sequences_are_foreign_not_a_crash() -> None:
    tr = make(2)
    tr.on_sent(4, tx_ns=0)
    tr.take_records()
    reply(tr, [(10, 2**63 + 1, MS), (10, 2**40, MS), (11, 2, MS)])
    assert tr.foreign == 3
    assert len(tr.take_records()) == 0


def test_a_short_ipv6_quote_finds_its_target_by_the_16_byte_address() -> None:
    """IPv6 workers give the tracker a V16 column (WireFamily.address_column): an error that
    quotes only the 16-bit sequence is matched on the full quoted address, bytewise."""
    packed = [bytes.fromhex(f"20010002{'0' * 22}{i:02x}") for i in (0x30, 0x10, 0x20)]
    tr = Tracker(
        targets=np.array([5, 6, 7], dtype=np.uint32),
        addresses=IPV6.address_column(packed),
        rate_pps=3000.0,
        timeout_ns=TIMEOUT,
        linger_ns=LINGER,
    )
    tr.on_sent(9, tx_ns=0)  # three probes to each target
    quoted = IPV6.address_column([packed[1], packed[2], bytes(15) + b"\x01"])
    tr.on_replies(
        status=np.full(3, DecodeStatus.ICMP_ERROR, dtype=np.uint8),
        target=np.full(3, UNKNOWN_TARGET, dtype=np.uint32),
        seq=np.array([2, 1, 0], dtype=np.uint64),
        seq16_only=np.ones(3, dtype=bool),
        quoted_dst=quoted,
        payload_tx_ns=np.zeros(3, dtype=np.int64),
        rx_ns=np.full(3, MS, dtype=np.int64),
        rx_flags=int(RecordFlag.RX_KERNEL),
    )
    recs = tr.take_records()
    errors = recs[recs["kind"] == RecordKind.ICMP_ERROR]
    assert sorted(errors["target"].tolist()) == [6, 7]  # ::1 is not one of ours
    assert tr.unattributed == 1
