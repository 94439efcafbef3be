"""STAMP's extra records: one-way samples of good replies, the direction of each lost probe
from a stateful reflector's sequence (exact per gap: lost == forward + reverse), nothing split
for a stateless reflector; and the aggregator's one-way figures per second."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.output.summary import oneway_lines
from loadgen.stamp_figures import StampFigures
from loadgen.stats import Aggregator
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.records import RECORD_DTYPE, RecordKind

T0 = 1_796_300_000_000_000_000
GAP_NS = 1_000_000  # a probe every millisecond to the one target


def replies(
    figs: StampFigures, seqs: list[int], rseqs: list[int], *, stateful: bool = True, batch: int = 1
) -> None:
    """Replies to probes `seqs`; `batch` probes in a row share a send time, as in one batch."""
    n = len(seqs)
    tx = T0 + np.array(seqs, np.int64) // batch * GAP_NS
    figs.on_replies(
        status=np.full(n, DecodeStatus.REPLY, np.uint8),
        target=np.zeros(n, np.uint32),
        seq=np.array(seqs, np.uint64),
        tx_ns=tx,
        rx_ns=tx + 300_000,
        rx_flags=np.zeros(n, np.uint8),
        t2_ns=tx + 100_000,
        t3_ns=tx + 120_000,
        reflector_seq=np.array(rseqs, np.int64),
        stateful=np.full(n, stateful),
        ttl=np.full(n, 61, np.int64),
    )


def lost_records(seqs: list[int], batch: int = 1) -> np.ndarray:
    """The tracker's LOST records: no RTT, so rtt_ns holds the probe's sequence."""
    out = np.zeros(len(seqs), RECORD_DTYPE)
    out["kind"], out["target"] = RecordKind.LOST, 0
    out["tx_ns"] = T0 + np.array(seqs, np.int64) // batch * GAP_NS
    out["rtt_ns"] = seqs
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("rfb"), min_size=1, max_size=80), st.integers(1, 4))
def test_lost_splits_exactly_into_forward_and_reverse(fates: list[str], batch: int) -> None:
    """r: reply came back; f: lost on the way there; b: lost on the way back. The last probe
    always comes back, so every loss has a later reply to judge it by."""
    fates = [*fates, "r"]
    seen = 0
    got_seq, got_rseq, lost = [], [], []
    for seq, fate in enumerate(fates):
        if fate != "f":
            seen += 1  # the stateful reflector numbers what it saw from 0
        if fate == "r":
            got_seq.append(seq)
            got_rseq.append(seen - 1)
        else:
            lost.append(seq)
    figs = StampFigures(keep_ns=10**12)
    replies(figs, got_seq, got_rseq, batch=batch)
    out = figs.take(lost_records(lost, batch))
    forward = int(np.count_nonzero(out["kind"] == RecordKind.LOST_FORWARD))
    reverse = int(np.count_nonzero(out["kind"] == RecordKind.LOST_REVERSE))
    assert forward == fates.count("f") and reverse == fates.count("b")
    assert forward + reverse == len(lost)


def test_a_probe_left_unsplit_takes_no_other_probes_place() -> None:
    """Probes 0-7 went in two batches (one send time each). Probe 1 was lost on the way there,
    and was decided before any later reply arrived: it stays unsplit. Probe 5, lost on the way
    back, is placed in its own gap, not in probe 1's gap of the same send time."""
    figs = StampFigures(keep_ns=10**12)
    replies(figs, [0], [0], batch=4)
    first = figs.take(lost_records([1], batch=4))
    assert not np.isin(first["kind"], [RecordKind.LOST_FORWARD, RecordKind.LOST_REVERSE]).any()
    replies(figs, [2, 3, 4, 6, 7], [1, 2, 3, 5, 6], batch=4)  # the reflector saw 5 (its 4)
    out = figs.take(lost_records([5], batch=4))
    assert out[out["kind"] == RecordKind.LOST_REVERSE]["tx_ns"].tolist() == [T0 + GAP_NS]
    assert not (out["kind"] == RecordKind.LOST_FORWARD).any()


def test_stateless_reflector_and_trailing_losses_are_not_split() -> None:
    figs = StampFigures(keep_ns=10**12)
    replies(figs, [0, 2], [0, 2], stateful=False)
    out = figs.take(lost_records([1, 3]))
    assert not np.isin(out["kind"], [RecordKind.LOST_FORWARD, RecordKind.LOST_REVERSE]).any()
    figs = StampFigures(keep_ns=10**12)
    replies(figs, [0, 1], [0, 1])
    out = figs.take(lost_records([2]))  # nothing after it came back: no direction to give
    assert not np.isin(out["kind"], [RecordKind.LOST_FORWARD, RecordKind.LOST_REVERSE]).any()


def test_one_way_samples_per_good_reply_and_per_second_figures() -> None:
    figs = StampFigures(keep_ns=10**12)
    replies(figs, [0, 1, 2], [0, 1, 2])
    out = figs.take(np.zeros(0, RECORD_DTYPE))
    for kind, value in (
        (RecordKind.OWD_FWD, 100_000),
        (RecordKind.OWD_REV, 180_000),
        (RecordKind.RESIDENCE, 20_000),
    ):
        rows = out[out["kind"] == kind]
        assert len(rows) == 3 and (rows["rtt_ns"] == value).all()
    agg = Aggregator(1, T0, timeout_ns=10**9)
    agg.add(out)
    (report,) = agg.close_all()
    ow = report.per_target[0].oneway
    assert (ow.fwd.count, ow.fwd.min_ns, ow.fwd.p99_ns) == (3, 100_000, 100_000)
    assert (ow.rev.min_ns, ow.residence.avg_ns) == (180_000, 20_000)
    assert ow.offset_ns == -40_000 and not ow.negative
    assert (ow.ttl.count, ow.ttl.min_ns, ow.ttl.avg_ns) == (3, 61, 61.0)
    assert report.per_target[0].counts.owd_fwd_count == 3
    total = agg.cumulative().per_target[0].oneway
    assert total.fwd.min_ns == 100_000 and total.fwd.p50_ns is None


def test_summary_lines_say_the_split_and_warn_on_negative_one_way() -> None:
    figs = StampFigures(keep_ns=10**12)
    replies(figs, [0, 3], [0, 2])  # 1 forward, 1 reverse lost between them
    out = figs.take(lost_records([1, 2]))
    lost = lost_records([1, 2])
    agg = Aggregator(1, T0, timeout_ns=10**9)
    agg.add(np.concatenate([out[out["kind"] != RecordKind.LOST], lost]))
    agg.close_all()
    lines = oneway_lines(agg.cumulative().per_target[0])
    assert lines[0] == "lost 2: 1 forward, 1 reverse"
    assert "clock offset -0.040 ms" in lines[2] and len(lines) == 4
    assert lines[3] == "probes reached the reflector with TTL min/avg = 61/61.0"
    assert all(len(line) <= 80 for line in lines)
    skewed = StampFigures(keep_ns=10**12)
    n = 2
    tx = T0 + np.arange(n, dtype=np.int64)
    skewed.on_replies(
        status=np.zeros(n, np.uint8),
        target=np.zeros(n, np.uint32),
        seq=np.arange(n, dtype=np.uint64),
        tx_ns=tx,
        rx_ns=tx + 300_000,
        rx_flags=np.zeros(n, np.uint8),
        t2_ns=tx - 500_000,  # the reflector's clock half a millisecond behind ours
        t3_ns=tx - 480_000,
        reflector_seq=np.arange(n, dtype=np.int64),
        stateful=np.ones(n, bool),
        ttl=np.full(n, 64, np.int64),
    )
    agg = Aggregator(1, T0, timeout_ns=10**9)
    agg.add(skewed.take(np.zeros(0, RECORD_DTYPE)))
    agg.close_all()
    assert (
        "WARNING: a one-way delay is negative" in oneway_lines(agg.cumulative().per_target[0])[-1]
    )
