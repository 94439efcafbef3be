"""Loss bursts and outages: the worker's BurstFinder against a plain per-target scan, the
coordinator's OutageTable, and both through the tracker and the aggregator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.outages import BurstFinder, Outages, OutageTable
from loadgen.output.report import JsonlWriter
from loadgen.output.summary import summary_text
from loadgen.stats import Aggregator
from loadgen.tracker import Tracker
from loadgen.wire.records import BURST_DTYPE, RECORD_DTYPE, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
MS = 1_000_000


def reference(lost: list[bool], n: int) -> list[tuple[int, int, int, int]]:
    """(target, length, start_ns, end_ns) of every burst; probe k goes to target k % n and is
    sent at k ms; a burst ends at the next probe of its target, else at its last lost probe."""
    out = []
    for t in range(n):
        ks = list(range(t, len(lost), n))
        i = 0
        while i < len(ks):
            if not lost[ks[i]]:
                i += 1
                continue
            j = i
            while j + 1 < len(ks) and lost[ks[j + 1]]:
                j += 1
            end = ks[j + 1] if j + 1 < len(ks) else ks[j]
            out.append((t, j - i + 1, ks[i] * MS, end * MS))
            i = j + 1
    return sorted(out)


def found(bursts: NDArray[Any]) -> list[tuple[int, int, int, int]]:
    return sorted(
        (int(b["target"]), int(b["probes"]), int(b["start_ns"]), int(b["end_ns"])) for b in bursts
    )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.booleans(), min_size=0, max_size=120),
    st.lists(st.integers(1, 17), min_size=1, max_size=20),
)
def test_bursts_match_a_plain_scan_whatever_the_batches(
    n: int, lost: list[bool], cuts: list[int]
) -> None:
    finder = BurstFinder(np.arange(n, dtype=np.uint32))
    k = 0
    got = []
    while k < len(lost):
        size = min(cuts[k % len(cuts)], len(lost) - k)
        ks = np.arange(k, k + size)
        finder.feed(ks % n, np.array(lost[k : k + size], dtype=bool), ks * MS)
        got += found(finder.take())
        k += size
    finder.flush()
    got += found(finder.take())
    assert sorted(got) == reference(lost, n)
    assert not finder.open


def burst(target: int, probes: int, start_ms: int, end_ms: int) -> tuple[int, int, int, int]:
    return (START + start_ms * MS, START + end_ms * MS, target, probes)


def table_of(*rows: tuple[int, int, int, int], outage_min: int = 3) -> OutageTable:
    tab = OutageTable(2, outage_min)
    assert tab.add(np.array(list(rows), dtype=BURST_DTYPE)) == 0
    assert tab.settle(None)
    return tab


def test_outages_are_bursts_of_at_least_outage_min() -> None:
    tab = table_of(
        burst(0, 1, 0, 10),
        burst(0, 2, 100, 120),
        burst(0, 3, 200, 230),
        burst(0, 12, 300, 420),
        burst(0, 12, 500, 640),  # as long in probes, longer in time
        burst(1, 9, 0, 90),
    )
    per, total = tab.rows()
    assert per[0] == Outages(3, 12, 140 * MS, (30 + 120 + 140) * MS, (1, 1, 1, 2))
    assert per[1] == Outages(1, 9, 90 * MS, 90 * MS, (0, 0, 1, 0))
    assert total == Outages(4, 12, 140 * MS, 380 * MS, (1, 1, 2, 2))
    per, _ = table_of(burst(0, 2, 0, 20), outage_min=2).rows()
    assert per[0].count == 1 and per[0].longest_probes == 2


def test_bursts_count_once_the_seconds_they_end_in_close() -> None:
    tab = OutageTable(1)
    tab.add(np.array([burst(0, 4, 900, 1040)], dtype=BURST_DTYPE))
    assert not tab.settle(START + S)  # ends in second 1, which is still open
    assert tab.rows()[0][0] == Outages()
    assert tab.settle(START + 2 * S)
    assert tab.rows()[0][0].count == 1


def test_invalid_bursts_are_left_out_and_counted() -> None:
    agg = Aggregator(2, START, S)
    agg.add_bursts(np.array([burst(5, 3, 0, 30), burst(0, 0, 0, 0)], dtype=BURST_DTYPE))
    agg.close_all()
    summary = agg.cumulative()
    assert summary.anomalies.invalid_records == 2
    assert summary.outages_total == Outages()
    with pytest.raises(ValueError, match="at least 1"):
        OutageTable(1, 0)


def test_the_tracker_finds_bursts_across_frames_and_the_aggregator_sums_them() -> None:
    """Two targets at 1 ms per probe; target 0 loses probes 10-14 and 40-41 of its own, target
    1 its last 6 (still open at the end of the run)."""
    n, per_target, linger = 2, 60, 50 * MS
    tr = Tracker(
        targets=np.array([0, 1], dtype=np.uint32),
        addresses=np.array([1, 2], dtype=np.uint32),
        rate_pps=2000,
        timeout_ns=linger,
        linger_ns=linger,
    )
    agg = Aggregator(n, START, linger, outage_min=3)
    drop = {(0, s) for s in [*range(10, 15), 40, 41]} | {(1, s) for s in range(54, 60)}
    for k in range(n * per_target):
        now = START + k * MS // 2
        tr.plan_batch(1)
        tr.on_sent(1, now)
        target, seq = k % n, k // n
        if (target, seq) not in drop:
            tr.on_replies(
                status=np.zeros(1, np.uint8),
                target=np.array([target], np.uint32),
                seq=np.array([seq], np.uint64),
                seq16_only=np.zeros(1, bool),
                quoted_dst=np.zeros(1, np.uint32),
                payload_tx_ns=np.array([now]),
                rx_ns=np.array([now + 100_000]),
                rx_flags=0,
            )
        if k % 7 == 0:  # a frame
            tr.expire(now)
            agg.add(tr.take_records())
            agg.add_bursts(tr.take_bursts())
    tr.finish()
    agg.add(tr.take_records())
    agg.add_bursts(tr.take_bursts())
    agg.close_all()
    summary = agg.cumulative()
    # Probe (t, s) is probe k = 2 s + t, sent at k/2 ms: a 5-probe burst spans 5 of its
    # target's 1 ms intervals up to the probe that ended it; the open one ends at its last.
    assert summary.outages[0] == Outages(1, 5, 5 * MS, 5 * MS, (0, 1, 1, 0))
    assert summary.outages[1] == Outages(1, 6, 5 * MS, 5 * MS, (0, 0, 1, 0))
    assert summary.total.counts.lost == 13
    assert summary.outages_total.bursts == (0, 1, 2, 0)


def test_summary_lines_and_jsonl_fields(tmp_path: Path) -> None:
    agg = Aggregator(2, START, S)
    records = np.zeros(14, dtype=RECORD_DTYPE)
    records["tx_ns"] = START + np.arange(14) * 10 * MS
    records["target"] = 0
    records["kind"][:7], records["probes"][:7] = RecordKind.SENT, 1
    records["kind"][7:] = [RecordKind.LOST] * 5 + [RecordKind.RECEIVED] * 2
    records["rtt_ns"][12:] = MS
    agg.add(records)
    agg.add_bursts(np.array([burst(0, 4, 0, 40), burst(0, 1, 50, 60)], dtype=BURST_DTYPE))
    agg.close_all()
    summary = agg.cumulative()
    text = summary_text(summary, ["a", "b"])
    assert "1 outages (>= 3 lost in a row), longest 4 probes / 40.0 ms, total 40.0 ms" in text
    assert "loss bursts by length: 1: 1, 2: 0, 3-9: 1, 10+: 0" in text
    assert text.count("outages") == 2  # a and the total; b lost nothing
    path = tmp_path / "run.jsonl"
    with JsonlWriter(str(path), [4, 4]) as out:
        out.write_summary(summary, ["a", "b"])
    row = json.loads(path.read_text())
    a, b = row["targets"]
    assert (a["outages"], a["outage_longest_probes"], a["outage_longest_ms"]) == (1, 4, 40.0)
    assert a["outage_total_ms"] == 40.0
    assert a["loss_bursts"] == {"1": 1, "2": 0, "3-9": 1, "10+": 0}
    assert b["outages"] == 0 and b["loss_bursts"] == {"1": 0, "2": 0, "3-9": 0, "10+": 0}
    assert row["total"]["outages"] == 1 and row["outage_min"] == 3
