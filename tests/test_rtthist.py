"""The coarse RTT histogram: bucket edges, its size from the linger, per-second and run rows
(merged by the aggregator) and its JSONL form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen import rtthist
from loadgen.output.report import JsonlWriter
from loadgen.stats import Aggregator
from loadgen.wire.records import RECORD_DTYPE, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
US = 1000


def test_bucket_edges_are_upper_inclusive() -> None:
    rtt = np.array([0, 1, 8 * US, 8 * US + 1, 16 * US, 16 * US + 1, 32 * US, 1_000 * US, 10 * S])
    assert rtthist.index(rtt, 19).tolist() == [0, 0, 0, 1, 1, 2, 2, 7, 18]


@given(st.integers(0, 200 * S))
def test_a_bucket_holds_exactly_its_range(rtt_ns: int) -> None:
    k = int(rtthist.index(np.array([rtt_ns]), 64)[0])
    upper = rtthist.BASE_NS << k
    assert rtt_ns <= upper
    assert k == 0 or rtt_ns > upper // 2


def test_the_last_bound_is_the_first_at_or_above_the_linger() -> None:
    assert rtthist.n_buckets(2 * S) == 19  # 8 µs * 2^18 = 2.097 s
    assert rtthist.upper_bounds_ns(19)[-1] == 8 * US << 18
    assert rtthist.n_buckets(8 * US) == 1
    assert rtthist.n_buckets(16 * US) == 2
    assert rtthist.n_buckets(16 * US + 1) == 3


def test_rows_lose_only_trailing_zeros() -> None:
    counts = np.array([[0, 3, 0, 1, 0, 0], [0] * 6, [2, 0, 0, 0, 0, 7]])
    assert rtthist.trimmed(counts) == [[0, 3, 0, 1], [], [2, 0, 0, 0, 0, 7]]


def _run(rtts: list[tuple[int, int, int]], linger_ns: int) -> Aggregator:
    """rtts: (tx offset, target, rtt_ns) of received probes."""
    out = np.zeros(2 * len(rtts), dtype=RECORD_DTYPE)
    for i, (tx, target, rtt) in enumerate(rtts):
        out[2 * i] = (START + tx, 0, target, RecordKind.SENT, 0, 1)
        out[2 * i + 1] = (START + tx, rtt, target, RecordKind.RECEIVED, 0, 0)
    agg = Aggregator(3, START, S, linger_ns=linger_ns)
    agg.add(out)
    return agg


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3 * S - 1), st.integers(0, 2), st.integers(0, S)),
        min_size=1,
        max_size=60,
    )
)
def test_every_row_counts_its_own_samples_and_seconds_add_up_to_the_run(
    rtts: list[tuple[int, int, int]],
) -> None:
    agg = _run(rtts, 2 * S)
    reports = agg.close_all()
    summary = agg.cumulative()

    def expected(rows: list[tuple[int, int, int]]) -> list[int]:
        counts = [0] * 19
        for _, _, rtt in rows:
            counts[int(rtthist.index(np.array([rtt]), 19)[0])] += 1
        while counts and counts[-1] == 0:
            counts.pop()
        return counts

    for rep in reports:
        mine = [r for r in rtts if r[0] // S == rep.second]
        assert list(rep.total.rtt.hist) == expected(mine)
        for ts in rep.per_target:
            assert list(ts.rtt.hist) == expected([r for r in mine if r[1] == ts.target])
            assert sum(ts.rtt.hist) == ts.rtt.count
    assert list(summary.total.rtt.hist) == expected(rtts)
    for row in summary.per_target:
        assert list(row.rtt.hist) == expected([r for r in rtts if r[1] == row.target])


def test_the_jsonl_carries_rtt_hist_on_every_row(tmp_path: Path) -> None:
    agg = _run(
        [(0, 0, 5 * US), (1, 0, 20 * US), (2, 1, 20 * US), (S, 1, 3 * S), (S + 1, 2, 900 * US)],
        200 * US,
    )
    path = tmp_path / "run.jsonl"
    with JsonlWriter(str(path), [4, 4, 4]) as out:
        for rep in agg.close_all():
            out.write_second(rep, ["a", "b", "c"])
        out.write_summary(agg.cumulative(), ["a", "b", "c"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    hist = {(r["type"], r.get("second"), r.get("name")): r["rtt_hist"] for r in rows[:-1]}
    assert hist[("second", 0, "a")] == [1, 0, 1]
    assert hist[("second", 0, "b")] == [0, 0, 1]
    assert hist[("second_total", 0, "total")] == [1, 0, 2]
    # 3 s is beyond the timeout: no RTT sample; 900 µs is past the last bound (256 µs at a
    # 200 µs linger): it counts in the last bucket.
    assert hist[("second", 1, "b")] == []
    assert hist[("second_total", 1, "total")] == [0, 0, 0, 0, 0, 1]
    summary = rows[-1]
    assert [t["rtt_hist"] for t in summary["targets"]] == [[1, 0, 1], [0, 0, 1], [0] * 5 + [1]]
    assert summary["total"]["rtt_hist"] == [1, 0, 2, 0, 0, 1]
    assert rtthist.n_buckets(200 * US) == 6
