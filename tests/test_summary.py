"""The end of a run as people see it: blocks for a few targets, a table for many, 80 columns."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

from loadgen.output.summary import FEW_TARGETS, summary_view
from loadgen.stats import Aggregator, RunSummary
from loadgen.wire.records import RECORD_DTYPE, RecordFlag, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
K = RecordKind


def run_of(n: int, lost: dict[int, int], dup: int = 0) -> tuple[RunSummary, list[str]]:
    """n targets, 100 probes each at an RTT of 20 + t µs; lost[t] of target t's are lost."""
    rows: list[tuple[int, ...]] = []
    for t in range(n):
        for i in range(100):
            rows.append((START + i * 1000, 0, t, K.SENT, 0, 1))  # probes=1: one SENT a probe
            kind, rtt = (K.LOST, 0) if i < lost.get(t, 0) else (K.RECEIVED, (20 + t) * 1000 + i)
            rows.append((START + i * 1000, rtt, t, kind, RecordFlag.RX_KERNEL, 0))
    rows += [(START, 5, 0, K.DUPLICATE, 0, 0)] * dup
    records: NDArray[Any] = np.array(rows, dtype=RECORD_DTYPE)
    agg = Aggregator(n, START, S)
    agg.add(records)
    agg.close_all()
    return agg.cumulative(), [f"127.0.0.{t + 1}" for t in range(n)]


def text(renderable: Any, width: int = 80) -> str:
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_62_targets_give_one_table_of_the_worst_and_the_total_block() -> None:
    summary, names = run_of(62, {40: 7, 10: 3}, dup=2)
    out = text(summary_view(summary, names, top=20, export="run.jsonl"))
    lines = out.splitlines()
    assert len(lines) < 40 and max(len(line) for line in lines) <= 80
    assert "…" not in out  # nothing cut
    rows = [line for line in lines if line.startswith("127.0.0.")]
    assert len(rows) == 20
    # Worst first: the most loss, then the next, then the highest p99 (the last targets).
    assert rows[0].split()[:4] == ["127.0.0.41", "100", "93", "7.00"]
    assert rows[1].split()[:4] == ["127.0.0.11", "100", "97", "3.00"]
    assert rows[2].split()[0] == "127.0.0.62"
    # min/avg/max/mdev, p50/p99 and jitter in the table's one unit, then dup/reord/flip/err.
    assert "times in µs" in out
    assert rows[0].split()[4] == "60.0/60.1/60.1/0.027"
    assert rows[-1].split()[-1] == "0/0/0/0"
    assert "42 more targets in the JSONL export (run.jsonl)" in out
    assert "--- total (62 targets, 1 s) loadgen statistics ---" in out
    assert "6200 transmitted, 6190 received, 0.1613% packet loss" in out
    assert out.count("loadgen statistics") == 1  # no block per target


def test_hidden_targets_without_an_export_say_how_to_see_them() -> None:
    summary, names = run_of(8, {})
    out = text(summary_view(summary, names, top=3))
    assert "5 more targets not shown: --top 8 shows them, --jsonl FILE exports them" in out


def test_duplicates_show_in_the_events_column() -> None:
    summary, names = run_of(6, {}, dup=3)
    out = text(summary_view(summary, names, top=10))
    row = next(line for line in out.splitlines() if line.startswith("127.0.0.1 "))
    assert row.split()[-1] == "3/0/0/0"


@pytest.mark.parametrize("n", [1, 2, FEW_TARGETS])
def test_a_few_targets_get_an_iputils_block_each(n: int) -> None:
    summary, names = run_of(n, {0: 1})
    out = text(summary_view(summary, names, top=20))
    assert out.count("loadgen statistics") == (1 if n == 1 else n + 1)
    assert "--- 127.0.0.1 loadgen statistics ---" in out
    assert "100 transmitted, 99 received, 1% packet loss, 0 late, 0 errors" in out
    assert "worst first" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_the_wide_table_is_the_same_rows() -> None:
    summary, names = run_of(30, {3: 50})
    narrow, wide = (text(summary_view(summary, names, top=5), w) for w in (80, 200))
    assert [ln.split() for ln in narrow.splitlines() if ln.startswith("127.")] == [
        ln.split() for ln in wide.splitlines() if ln.startswith("127.")
    ]


def test_long_ipv6_names_leave_the_figures_whole_in_80_columns() -> None:
    summary, names = run_of(30, {3: 7, 5: 3}, dup=2)
    names[3] = "2001:db8:1234:5678:9abc:def0:1234:5678"
    names[5] = "fe80::1234:5678:9abc:def0%eth0"
    out = text(summary_view(summary, names, top=8, export="run.jsonl"))
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    cut = [line for line in lines if "…" in line]
    assert len(cut) == 2 and all(line.count("…") == 1 for line in cut)
    assert cut[0].startswith("2001:") and cut[0].split()[0].endswith(":5678")
    assert cut[0].split()[1:4] == ["100", "93", "7.00"]
    assert cut[1].split()[0].endswith("%eth0")
    assert "\N{INPUT SYMBOL FOR NUMBERS}" not in out  # ":1234:" is not an emoji code here
