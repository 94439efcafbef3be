"""Kernel TX timestamps in the tracker: stamps are matched to probes by number (OPT_ID mapped to
the probe's k), whatever their order or gaps, and RTTs and outcomes use them only when they
pair with the reply's RX stamp. The socket side (numbering every send) is in test_sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.profile import COMMAND_LINE, parse_profile
from loadgen.runner import execute
from loadgen.tracker import Tracker, probes_of_tx_ids
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.records import RecordFlag, RecordKind

MS = 1_000_000
TIMEOUT = 100 * MS
LINGER = 300 * MS
RX_K, TX_K, TX_H = int(RecordFlag.RX_KERNEL), int(RecordFlag.TX_KERNEL), int(RecordFlag.TX_HARDWARE)
RX_H = int(RecordFlag.RX_HARDWARE)


# --- the tracker (pure) ---------------------------------------------------------------------


def make(n_targets: int = 2) -> Tracker:
    return Tracker(
        targets=np.arange(10, 10 + n_targets, dtype=np.uint32),
        addresses=np.arange(0xC6120001, 0xC6120001 + n_targets, dtype=np.uint32),
        rate_pps=1000.0,
        timeout_ns=TIMEOUT,
        linger_ns=LINGER,
    )


def answer(tr: Tracker, ks: list[int], rx_ns: list[int], rx_flag: int = RX_K) -> NDArray[Any]:
    """Good replies to probes ks (in this order); returns the records they produced."""
    k = np.array(ks, dtype=np.int64)
    tr.on_replies(
        status=np.full(len(ks), DecodeStatus.REPLY, dtype=np.uint8),
        target=tr.targets[k % tr.n],
        seq=(k // tr.n).astype(np.uint64),
        seq16_only=np.zeros(len(ks), dtype=bool),
        quoted_dst=np.zeros(len(ks), dtype=np.uint32),
        payload_tx_ns=np.zeros(len(ks), dtype=np.int64),
        rx_ns=np.array(rx_ns, dtype=np.int64),
        rx_flags=np.full(len(ks), rx_flag, dtype=np.uint8),
    )
    recs = tr.take_records()
    replies: NDArray[Any] = recs[recs["kind"] != RecordKind.SENT]
    return replies


def stamp(tr: Tracker, ks: list[int], tx_ns: list[int], flag: int = TX_K) -> None:
    tr.on_tx_stamps(
        np.array(ks, dtype=np.int64),
        np.array(tx_ns, dtype=np.int64),
        np.full(len(ks), flag, dtype=np.uint8),
    )


def test_rtt_uses_the_stamp_of_exactly_that_probe() -> None:
    tr = make(2)
    tr.on_sent(4, tx_ns=1000)  # user-space send time of the whole batch
    stamp(tr, [3, 0, 2], [1300, 1030, 1200])  # out of order, probe 1 missing
    recs = answer(tr, [0, 1, 2, 3], [5000, 5000, 5000, 5000])
    assert recs["rtt_ns"].tolist() == [5000 - 1030, 5000 - 1000, 5000 - 1200, 5000 - 1300]
    tx_flags = (recs["flags"] & (TX_K | TX_H)).tolist()
    assert tx_flags == [TX_K, 0, TX_K, TX_K]  # probe 1 had no stamp: user space, and says so
    assert (recs["tx_ns"] == 1000).all()  # the bucket time stays the SENT record's


def test_outcome_is_decided_on_the_kernel_rtt() -> None:
    tr = make(1)
    tr.on_sent(2, tx_ns=0)
    # User space saw the send 2 ms before the kernel did: only the kernel RTT is in time.
    stamp(tr, [0, 1], [2 * MS, 2 * MS])
    recs = answer(tr, [0, 1], [TIMEOUT + MS, TIMEOUT + 3 * MS])
    assert recs["kind"].tolist() == [RecordKind.RECEIVED, RecordKind.LATE]
    assert recs["rtt_ns"].tolist() == [TIMEOUT - MS, TIMEOUT + MS]


def test_a_stamp_after_the_reply_changes_nothing_and_stale_stamps_are_ignored() -> None:
    tr = make(1)
    tr.on_sent(2, tx_ns=100)
    first = answer(tr, [0], [900])
    stamp(tr, [0], [150])  # too late for the decided reply
    assert first["rtt_ns"].tolist() == [800] and not first["flags"] & TX_K
    tr.expire(100 + LINGER)  # probe 1 is lost
    stamp(tr, [1, 7, -1], [160, 170, 180])  # resolved, never sent, nonsense
    lost = tr.take_records()
    assert lost["kind"].tolist() == [RecordKind.LOST] and not lost["flags"] & TX_K


def test_stamps_pair_only_within_one_clock_domain() -> None:
    tr = make(1)
    tr.on_sent(3, tx_ns=0)
    stamp(tr, [0, 1, 2], [10, 20, 30])  # software TX stamps
    stamp(tr, [2], [7], TX_H)  # probe 2 also got a NIC stamp
    stamp(tr, [2], [31])  # a later software stamp does not displace the NIC one
    recs = answer(tr, [0, 1, 2], [100, 100, 100], rx_flag=RX_H)
    # Hardware RX against software TX would mix clocks: user space instead.
    assert recs["rtt_ns"].tolist() == [100, 100, 93]
    assert (recs["flags"] & (TX_K | TX_H)).tolist() == [0, 0, TX_H]


def test_a_reused_slot_forgets_the_old_probes_stamp() -> None:
    tr = make(1)
    tr.on_sent(1, tx_ns=0)
    stamp(tr, [0], [5])
    answer(tr, [0], [50])
    tr.expire(LINGER)
    per_slot = tr.window  # probe k and k + window share a slot on one target
    while tr.sent <= per_slot:
        tr.on_sent(min(64, per_slot + 1 - tr.sent), tx_ns=LINGER)
    tr.take_records()
    recs = answer(tr, [per_slot], [LINGER + 500])
    assert recs["rtt_ns"].tolist() == [500] and not recs["flags"] & TX_K


@settings(max_examples=60, deadline=None)
@given(
    n_targets=st.integers(1, 5),
    count=st.integers(1, 200),
    data=st.data(),
)
def test_any_order_and_any_subset_of_stamps_matches_by_id(
    n_targets: int, count: int, data: st.DataObject
) -> None:
    tr = make(n_targets)
    tr.on_sent(count, tx_ns=0)
    tr.take_records()
    stamped = data.draw(st.lists(st.integers(0, count - 1), unique=True))
    order = data.draw(st.permutations(stamped))
    kernel_tx = {k: 1000 + 7 * k for k in order}
    for chunk in range(0, len(order), 16):  # arrives in batches, like the error queue
        part = order[chunk : chunk + 16]
        stamp(tr, part, [kernel_tx[k] for k in part])
    replied = data.draw(st.permutations(range(count)))
    recs = answer(tr, list(replied), [10**6] * count)
    by_k = dict(zip(replied, recs, strict=True))
    for k in range(count):
        rec = by_k[k]
        assert int(rec["rtt_ns"]) == 10**6 - kernel_tx.get(k, 0)
        assert bool(rec["flags"] & TX_K) == (k in kernel_tx)


def test_ids_map_to_probe_numbers_across_the_32_bit_wrap() -> None:
    ids = np.array([0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 5], dtype=np.uint32)
    # Enabled when 10 probes had gone; 2**32 + 2 sent since (ids 0.. wrapped once).
    sent = 10 + 2**32 + 2
    got = probes_of_tx_ids(ids, first_k=10, sent=sent)
    assert got.tolist() == [10 + 2**32 - 2, 10 + 2**32 - 1, 10 + 2**32, 10 + 2**32 + 1, 10 + 5]
    assert probes_of_tx_ids(np.array([3], np.uint32), first_k=0, sent=4).tolist() == [3]
    assert probes_of_tx_ids(np.array([4], np.uint32), first_k=0, sent=4)[0] < 0  # not sent yet


@pytest.mark.root
def test_a_loopback_run_takes_every_rtt_from_kernel_stamps() -> None:
    profile = parse_profile(
        {
            "targets": "127.0.0.1,127.0.0.2,127.0.0.3",
            "rate": "6k",
            "count": 1000,
            "workers": 2,
            "tx_timestamps": True,
            "timeout": "1s",
            "delay": "1s",
        },
        source=COMMAND_LINE,
    )
    total = execute(profile).outcome.summary.total
    assert total.counts.sent == total.counts.received == 3000
    assert total.counts.unaccounted == 0
    # Every RTT sample: kernel RX stamp minus the kernel TX stamp of exactly that probe.
    assert (total.rx_ts, total.tx_ts) == ("kernel", "kernel")
    # A stamp of a later probe would make some RTT negative; one of an earlier probe would push it
    # past the user-space RTT, which a received probe keeps under the 1 s timeout. No timing bound:
    # a busy machine may hold one loopback packet for milliseconds.
    assert 0 < total.rtt.min_ns <= total.rtt.max_ns < 1_000_000_000
