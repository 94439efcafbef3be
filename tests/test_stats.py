"""Per-second buckets, the closing rule, RTT math and run totals of `stats.Aggregator`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.moments import SAMPLE_BYTES
from loadgen.stats import (
    PERCENTILE_REL_ERROR,
    TOTAL,
    Aggregator,
    Counts,
    RunSummary,
    SecondReport,
)
from loadgen.wire.records import RECORD_DTYPE, RecordFlag, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
TIMEOUT = S
K = RecordKind
Row = tuple[int, int, int, int, int]  # (tx offset from START, target, kind, rtt_ns, flags)


def recs(*rows: Row) -> NDArray[Any]:
    out = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, (tx, target, kind, rtt, flags) in enumerate(rows):
        out[i] = (START + tx, rtt, target, kind, flags, 1 if kind == K.SENT else 0)
    return out


def sent(tx: int, target: int = 0) -> Row:
    return (tx, target, K.SENT, 0, 0)


def got(tx: int, rtt: int, target: int = 0, flags: int = 0, kind: int = K.RECEIVED) -> Row:
    return (tx, target, kind, rtt, flags)


def test_a_sent_record_counts_the_probes_it_stands_for() -> None:
    agg = Aggregator(2, START, TIMEOUT)
    batch = recs(sent(0), sent(0, 1), sent(S + 1))
    batch["probes"] = [3, 65535, 2]
    agg.add(batch)
    first, second = agg.close_through(START + 2 * S)
    assert [t.counts.sent for t in first.per_target] == [3, 65535]
    assert first.total.counts.sent == 65538
    assert second.total.counts.sent == 2


def test_hand_computed_second() -> None:
    agg = Aggregator(2, START, TIMEOUT)
    rtts = [100, 300, 200]  # arrival order
    rows = [sent(i) for i in range(5)] + [got(i, r) for i, r in enumerate(rtts)]
    rows += [got(3, 5 * S, kind=K.LATE), (4, 0, K.LOST, 0, 0), sent(9, 1), (9, 1, K.ERRORED, 0, 0)]
    agg.add(recs(*rows))
    (rep,) = agg.close_through(START + S)
    assert [t.target for t in rep.per_target] == [0, 1]
    t0 = rep.per_target[0]
    assert t0.counts == Counts(sent=5, received=3, late=1, lost=1)
    assert t0.counts.loss_pct == pytest.approx(20.0)  # late is not lost
    assert rep.per_target[1].counts.loss_pct == 0.0  # errored is not lost either
    r = t0.rtt
    assert (r.count, r.min_ns, r.max_ns) == (3, 100, 300)  # the late reply is not a sample
    assert r.avg_ns == pytest.approx(200.0)
    assert r.mdev_ns == pytest.approx(math.sqrt((100**2 + 300**2 + 200**2) / 3 - 200**2))
    assert r.jitter_ns == pytest.approx((200 + 100) / 2)
    assert (r.p50_ns, r.p90_ns, r.p99_ns) == pytest.approx((200, 280, 298))
    assert rep.total.target == TOTAL
    assert rep.total.counts == Counts(sent=6, received=3, late=1, lost=1, errored=1)
    assert rep.total.counts.unaccounted == 0
    assert rep.per_target[1].rtt.count == 0 and rep.per_target[1].rtt.avg_ns == 0.0


def test_total_row_jitter_is_the_mean_over_targets_pairs() -> None:
    agg = Aggregator(2, START, TIMEOUT)
    agg.add(recs(got(0, 100), got(0, 200, 1), got(0, 300), got(0, 200, 1), got(0, 400, 1)))
    (rep,) = agg.close_all()
    # Target 0 pairs: |300-100|; target 1 pairs: 0, 200. Never across targets.
    assert rep.total.rtt.jitter_ns == pytest.approx((200 + 0 + 200) / 3)
    assert rep.per_target[1].rtt.jitter_ns == pytest.approx(100)
    assert rep.total.rtt.p50_ns == pytest.approx(200)


def test_closing_rule_and_empty_seconds() -> None:
    agg = Aggregator(1, START, TIMEOUT)
    agg.add(recs(sent(10), sent(2 * S + 5)))
    assert agg.close_through(START + S - 1) == []
    first = agg.close_through(START + S)
    assert [r.second for r in first] == [0]
    assert first[0].start_ns == START
    assert agg.close_through(START + S) == []
    assert agg.close_through(START) == []  # a watermark going back closes nothing
    later = agg.close_through(START + 3 * S + 10)
    assert [r.second for r in later] == [1, 2]
    assert later[0].per_target == () and later[0].total.counts == Counts()
    assert later[1].total.counts.sent == 1
    assert agg.closed_seconds == 3
    assert agg.open_seconds == 0  # nothing left open


def test_close_all_ends_at_last_second_with_records() -> None:
    agg = Aggregator(1, START, TIMEOUT)
    agg.add(recs(sent(4 * S)))
    assert [r.second for r in agg.close_all()] == [0, 1, 2, 3, 4]
    assert agg.close_all() == []


def test_unaccounted_shows_when_records_are_inconsistent() -> None:
    agg = Aggregator(2, START, TIMEOUT)
    agg.add(recs(sent(0), sent(1), got(1, 50), (0, 1, K.LOST, 0, 0)))
    (rep,) = agg.close_all()
    assert rep.per_target[0].counts.unaccounted == 1  # a probe with no outcome
    assert rep.per_target[1].counts.unaccounted == -1  # an outcome with no probe
    assert rep.total.counts.unaccounted == 0
    summary = agg.cumulative()
    assert [t.counts.unaccounted for t in summary.per_target] == [1, -1]


def test_late_records_are_counted_never_merged() -> None:
    agg = Aggregator(1, START, TIMEOUT)
    agg.add(recs(sent(0), got(0, 10)))
    agg.close_through(START + S)
    agg.add(recs(sent(5), got(5, 10), got(0, 2 * S, kind=K.STALE), got(0, 20, kind=K.DUPLICATE)))
    summary = agg.cumulative()
    assert summary.total.counts == Counts(sent=1, received=1, stale=1, duplicates=1)
    assert summary.anomalies.late_records == 2
    assert summary.anomalies.side_events_after_close == 2
    assert len(summary.anomalies.warnings()) == 1  # stale side events are expected, not a bug
    assert "after their second closed" in summary.anomalies.warnings()[0]


def test_invalid_records_are_counted_and_the_rest_kept() -> None:
    agg = Aggregator(2, START, TIMEOUT, max_ahead_ns=60 * S)
    bad = recs(sent(0, 2), (0, 0, 99, 0, 0), sent(-1), sent(61 * S), sent(0))
    agg.add(bad)
    assert agg.cumulative().anomalies.invalid_records == 4  # known at once, not at close
    agg.close_all()
    summary = agg.cumulative()
    assert summary.total.counts.sent == 1
    assert any("invalid" in w for w in summary.anomalies.warnings())
    with pytest.raises(TypeError, match="RECORD_DTYPE"):
        agg.add(np.zeros(3, dtype=np.int64))


def test_impossible_rtt_is_received_but_no_sample() -> None:
    agg = Aggregator(1, START, TIMEOUT)
    agg.add(recs(sent(0), got(0, TIMEOUT + 1), sent(1), got(1, -5), sent(2), got(2, 70)))
    (rep,) = agg.close_all()
    assert rep.total.counts.received == 3
    assert rep.total.rtt.count == 1 and rep.total.rtt.min_ns == 70
    assert agg.cumulative().anomalies.rtt_dropped == 2


def test_reordered_counts_only_answered_replies() -> None:
    agg = Aggregator(1, START, TIMEOUT)
    reo = RecordFlag.REORDERED
    agg.add(recs(got(0, 9, flags=reo), got(0, 9, flags=reo, kind=K.LATE)))
    agg.add(recs(got(0, 9, flags=reo, kind=K.DUPLICATE), got(0, 9)))
    (rep,) = agg.close_all()
    assert rep.total.counts.reordered == 2
    assert rep.total.counts.duplicates == 1


def test_timestamp_sources_are_reported_and_mixing_is_said() -> None:
    agg = Aggregator(3, START, TIMEOUT)
    rk, rh, tk = RecordFlag.RX_KERNEL, RecordFlag.RX_HARDWARE, RecordFlag.TX_KERNEL
    agg.add(recs(got(0, 5, 0, rk | tk), got(0, 6, 0, rk | tk), got(0, 7, 1, rk), got(0, 8, 1, 0)))
    agg.add(recs(got(0, 9, 2, rh | rk)))
    (rep,) = agg.close_all()
    t0, t1, t2 = rep.per_target
    assert (t0.rx_ts, t0.tx_ts, t0.rx_flags, t0.tx_flags) == ("kernel", "kernel", rk, tk)
    assert (t1.rx_ts, t1.tx_ts, t1.rx_flags) == ("mixed(kernel+user)", "user", rk)
    assert t2.rx_ts == "hardware"
    assert rep.total.rx_ts == "mixed(hardware+kernel+user)"
    assert rep.total.tx_ts == "mixed(kernel+user)"
    summary = agg.cumulative()
    assert summary.per_target[0].rx_ts == "kernel"
    assert summary.total.rx_ts == rep.total.rx_ts


def test_counts_addition_and_zero_loss() -> None:
    a = Counts(sent=3, received=1, lost=2, duplicates=1)
    b = Counts(sent=1, received=1, reordered=1)
    assert a + b == Counts(sent=4, received=2, lost=2, duplicates=1, reordered=1)
    assert (a + b).loss_pct == pytest.approx(50.0)
    assert Counts().loss_pct == 0.0


def probes(rng: np.random.Generator, n: int, n_targets: int, seconds: int) -> NDArray[Any]:
    """Consistent records: one SENT and one outcome per probe, plus some side events."""
    tx = rng.integers(0, seconds * S, n)
    target = rng.integers(0, n_targets, n)
    kind = rng.choice([K.RECEIVED] * 6 + [K.LATE, K.LOST, K.ERRORED], n)
    scale = int(rng.choice([200, 10**5, TIMEOUT]))  # exact small buckets up to wide octaves
    rtt = np.where(kind == K.RECEIVED, rng.integers(0, scale, n) // 10 * 10, 0)  # with ties
    rtt = np.where(kind == K.LATE, TIMEOUT + 1 + rng.integers(0, S, n), rtt)
    side = rng.choice([K.DUPLICATE, K.BITFLIP, K.CORRUPTED, K.ICMP_ERROR], n // 5)
    out = np.zeros(2 * n + len(side), dtype=RECORD_DTYPE)
    out["tx_ns"] = START + np.concatenate([tx, tx, tx[: len(side)]])
    out["target"] = np.concatenate([target, target, target[: len(side)]])
    out["kind"] = np.concatenate([np.full(n, K.SENT), kind, side])
    out["rtt_ns"] = np.concatenate([np.zeros(n, np.int64), rtt, np.zeros(len(side), np.int64)])
    flags = rng.choice([0, RecordFlag.RX_KERNEL, RecordFlag.REORDERED], len(out))
    out["flags"] = flags
    out["probes"] = out["kind"] == K.SENT
    return out[rng.permutation(len(out))]


def feed(agg: Aggregator, records: NDArray[Any], chunks: int) -> list[SecondReport]:
    reports: list[SecondReport] = []
    for part in np.array_split(records, chunks):
        agg.add(part)
    reports += agg.close_all()
    return reports


def check_rtt(rtt: Any, values: NDArray[Any], jitter_of: NDArray[Any] | None) -> None:
    assert rtt.count == len(values)
    if not len(values):
        assert rtt.avg_ns == 0.0 and rtt.max_ns == 0
        return
    assert (rtt.min_ns, rtt.max_ns) == (values.min(), values.max())
    assert rtt.avg_ns == pytest.approx(values.mean(), rel=1e-9)
    assert rtt.mdev_ns == pytest.approx(values.std(), rel=1e-6, abs=1e-3)
    if jitter_of is not None:
        exp = np.abs(np.diff(jitter_of)).mean() if len(jitter_of) > 1 else 0.0
        assert rtt.jitter_ns == pytest.approx(exp, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 400),
    n_targets=st.integers(1, 4),
    chunks=st.integers(1, 6),
)
def test_random_records_match_numpy(seed: int, n: int, n_targets: int, chunks: int) -> None:
    rng = np.random.default_rng(seed)
    records = probes(rng, n, n_targets, seconds=3)
    agg = Aggregator(n_targets, START, TIMEOUT)
    reports = feed(agg, records, chunks)
    sec = (records["tx_ns"] - START) // S
    for rep in reports:
        assert rep.total.counts.unaccounted == 0
        for ts in rep.per_target:
            mine = (sec == rep.second) & (records["target"] == ts.target)
            kinds = np.bincount(records["kind"][mine], minlength=len(K))
            assert ts.counts.sent == kinds[K.SENT] > 0
            assert ts.counts.errored == kinds[K.ERRORED]
            assert ts.counts.duplicates == kinds[K.DUPLICATE]
            reply = (records["kind"] == K.RECEIVED) | (records["kind"] == K.LATE)
            flagged = (records["flags"] & RecordFlag.REORDERED) != 0
            assert ts.counts.reordered == np.count_nonzero(mine & reply & flagged)
            samples = records["rtt_ns"][mine & (records["kind"] == K.RECEIVED)]
            check_rtt(ts.rtt, samples, samples)
            if len(samples):
                exact = np.percentile(samples, [50, 90, 99])
                got = (ts.rtt.p50_ns, ts.rtt.p90_ns, ts.rtt.p99_ns)
                assert got == pytest.approx(exact, rel=1e-9, abs=1e-6)
    summary = agg.cumulative()
    total = Counts()
    for rep in reports:
        total = total + rep.total.counts
    assert summary.total.counts == total
    assert total.sent == n and total.unaccounted == 0
    check_cumulative(summary, records)


def check_cumulative(summary: RunSummary, records: NDArray[Any]) -> None:
    received = records["kind"] == K.RECEIVED
    for ts in (*summary.per_target, summary.total):
        mine = received & ((records["target"] == ts.target) | (ts.target == TOTAL))
        values = records["rtt_ns"][mine]
        check_rtt(ts.rtt, values, None)
        if len(values):
            exact = np.percentile(values, [50, 90, 99])
            got = np.array([ts.rtt.p50_ns, ts.rtt.p90_ns, ts.rtt.p99_ns])
            assert np.all(np.abs(got - exact) <= exact * PERCENTILE_REL_ERROR + 1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e2, 1e4, 1e6, 1e8, 1e10]))
def test_histogram_percentiles_within_error_bound(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    rtt = np.minimum((rng.lognormal(0, 1.5, n) * scale).astype(np.int64), 100 * S)
    records = np.zeros(n, dtype=RECORD_DTYPE)
    records["tx_ns"] = START + rng.integers(0, 5 * S, n)
    records["kind"] = K.RECEIVED
    records["rtt_ns"] = rtt
    agg = Aggregator(1, START, 200 * S)
    feed(agg, records, 3)
    rs = agg.cumulative().total.rtt
    for q, got in zip((50, 90, 99), (rs.p50_ns, rs.p90_ns, rs.p99_ns), strict=True):
        exact = float(np.percentile(rtt, q))
        assert abs(got - exact) <= exact * PERCENTILE_REL_ERROR + 1e-6, (q, got, exact)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), chunks=st.integers(2, 20))
def test_batching_does_not_change_results(seed: int, chunks: int) -> None:
    records = probes(np.random.default_rng(seed), 300, 3, seconds=2)
    one, many = Aggregator(3, START, TIMEOUT), Aggregator(3, START, TIMEOUT)
    assert feed(one, records, 1) == feed(many, records, chunks)
    assert one.cumulative() == many.cumulative()


def test_state_stays_bounded_over_a_long_run() -> None:
    agg = Aggregator(4, START, TIMEOUT)
    rng = np.random.default_rng(7)
    for s in range(120):
        batch = probes(rng, 200, 4, seconds=1)
        batch["tx_ns"] += s * S
        agg.add(batch)
        agg.close_through(START + s * S)  # the current second stays open
        assert agg.open_seconds <= 1
    agg.close_all()
    summary = agg.cumulative()
    assert summary.seconds == 120 and summary.total.counts.sent == 120 * 200


def test_an_open_second_holds_13_bytes_per_rtt_sample() -> None:
    agg = Aggregator(4, START, TIMEOUT)
    rows = [got(i, 1000 + i, target=i % 4, flags=RecordFlag.RX_KERNEL) for i in range(1000)]
    agg.add(recs(*rows))
    (bucket,) = agg._open.values()
    held = sum(a.nbytes for col in (bucket.rtt, bucket.target, bucket.flags) for a in col)
    assert held == 1000 * SAMPLE_BYTES == 13_000
    (rep,) = agg.close_all()
    assert rep.total.rtt.count == 1000 and rep.total.rtt.max_ns == 1999
