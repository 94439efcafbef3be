"""The live view renders snapshots built from real aggregated records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from functools import partial
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

from loadgen.clockoffset import WorkerClock
from loadgen.output.ui import (
    Snapshot,
    WorkerView,
    fmt_ns,
    pick_targets,
    plain_line,
    render,
    sending_took,
)
from loadgen.stats import Aggregator, SecondReport
from loadgen.wire.records import RECORD_DTYPE, RecordFlag, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
K = RecordKind
NAMES = ("alpha.test", "bravo.test", "charlie.test", "delta.test")


def records(losses: list[int], rtt_ns: list[int], extra: list[int] | None = None) -> NDArray[Any]:
    """Per target t: 100 probes in second 0, losses[t] lost, the rest received at rtt_ns[t]."""
    rows: list[tuple[int, ...]] = []
    for t, (lost, rtt) in enumerate(zip(losses, rtt_ns, strict=True)):
        for i in range(100):
            rows.append((START + i * 1000, 0, t, K.SENT, 0, 1))  # probes=1: one SENT a probe
            kind, r = (int(K.LOST), 0) if i < lost else (int(K.RECEIVED), rtt + i)
            rows.append((START + i * 1000, r, t, kind, RecordFlag.RX_KERNEL, 0))
    for kind in extra or []:
        rows.append((START, 5, 0, kind, 0, 1 if kind == K.SENT else 0))
    return np.array(rows, dtype=RECORD_DTYPE)


def snapshot(
    losses: list[int],
    rtt_ns: list[int],
    *,
    top: int = 10,
    extra: list[int] | None = None,
    workers: tuple[WorkerView, ...] = (),
    **fields: Any,
) -> tuple[Snapshot, SecondReport]:
    agg = Aggregator(len(losses), START, S)
    agg.add(records(losses, rtt_ns, extra))
    (last,) = agg.close_through(START + S)
    snap = Snapshot(
        last=last,
        summary=agg.cumulative(),
        names=NAMES[: len(losses)],
        top=top,
        elapsed_ns=1_500_000_000,
        requested_pps=400.0,
        achieved_pps=399.0,
        workers=workers,
        ts_source="rx kernel, tx user",
        notes=("profile: lab/default",),
    )
    return dataclasses.replace(snap, **fields), last


def text(renderable: Any, width: int = 200) -> str:
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_fmt_ns_picks_one_unit_per_cell() -> None:
    assert fmt_ns(21_000, 120_000) == "21.0/120 µs"
    assert fmt_ns(999) == "999 ns"
    assert fmt_ns(1_234_567) == "1.23 ms"
    assert fmt_ns(2.5e9, 1e6) == "2.50/0.0010 s"  # small values keep two significant digits
    assert fmt_ns(0) == "0 ns"


def test_a_stream_worker_shows_its_clock_offset_and_bound() -> None:
    fine = WorkerClock(0, -9_000, -9_400, 41_000, 20, flagged=False)
    far = WorkerClock(1, 2_000_000, 2_100_000, 3_000_000, 20, flagged=True)
    workers = tuple(
        WorkerView(i, i, 100 + i, 40.0, 200, 0, 0, True, clock=c) for i, c in enumerate((fine, far))
    )
    snap, _ = snapshot([0, 0], [20_000, 20_000], workers=workers)
    out = text(render(snap))
    assert "#0 cpu0 40% 200 sent clock -9±41µs" in out
    assert "#1 cpu1 40% 200 sent clock +2100±3000µs" in out


def test_table_shows_targets_numbers_and_totals() -> None:
    workers = (
        WorkerView(0, 0, 101, 45.2, 200, 0, 0, True),
        WorkerView(1, 1, 102, 0.0, 200, 3, 7, False),
    )
    snap, _ = snapshot([0, 5], [20_000, 2_000_000], workers=workers)
    out = text(render(snap))
    for name in NAMES[:2]:
        assert name in out
    total_line = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("total"))
    assert "200" in total_line and "195" in total_line and "2.50%" in total_line
    assert "5.00%" in out  # bravo's loss, cumulative and last second
    assert "µs" in out and "ms" in out
    assert "rate 399 of 400 pps" in out
    assert "#0 cpu0 45% 200 sent" in out
    assert "#1 cpu1 pid 102 DEAD" in out
    assert "rx kernel, tx user" in out and "rx kernel, tx user" in out
    assert "profile: lab/default" in out
    assert "more targets not shown" not in out
    assert "no side events yet: late, err, dup" in out  # and no columns for them
    assert "reord" not in out.split("side events")[0]


def test_top_n_keeps_the_worst_targets_and_says_how_many_are_hidden() -> None:
    snap, _ = snapshot([0, 9, 0, 1], [10_000, 10_000, 90_000, 10_000], top=2)
    out = text(render(snap))
    assert "2 more targets not shown" in out
    assert "bravo.test" in out and "delta.test" in out
    assert "alpha.test" not in out and "charlie.test" not in out
    # With equal loss, the higher p99 wins.
    ranked = pick_targets(snap.summary, 2)
    assert [t.target for t in ranked] == [1, 3]
    snap0, _ = snapshot([0, 0, 0], [10_000, 90_000, 20_000], top=1)
    assert [t.target for t in pick_targets(snap0.summary, 1)] == [1]


def test_event_columns_appear_once_seen_and_unaccounted_is_loud() -> None:
    snap, _ = snapshot([0, 0], [10_000, 10_000], extra=[K.DUPLICATE, K.BITFLIP, K.SENT])
    out = text(render(snap))
    header = next(line for line in out.splitlines() if "target" in line and "sent" in line)
    assert "dup" in header and "bitflip" in header and "icmp-err" not in header
    assert "side events: dup 1, bitflip 1; none yet: late, err, reord," in out
    assert "total [+1 unacc.]" in out and "BUG:" in out


def test_render_before_the_first_closed_second() -> None:
    empty = Snapshot(
        last=None,
        summary=Aggregator(1, START, S).cumulative(),
        names=("alpha.test",),
        top=5,
        elapsed_ns=0,
        requested_pps=10.0,
        achieved_pps=0.0,
        workers=(),
        ts_source="user",
    )
    out = text(render(empty), width=120)
    assert "no second closed yet" in out and "alpha.test" in out


def test_plain_line() -> None:
    _, last = snapshot([3, 1], [20_000, 40_000], extra=[K.DUPLICATE])
    line = plain_line(last)
    clock = dt.datetime.fromtimestamp(START / 1e9).strftime("%H:%M:%S")
    assert line.startswith(f"{clock} s=0 sent=200 recv=196 loss=2.00% rtt avg/p99 ")
    assert "dup=1" in line and "errs=0" in line and "UNACCOUNTED" not in line
    assert "\n" not in line


@pytest.mark.parametrize("width", [80, 100, 139, 140])
def test_narrow_consoles_get_a_compact_table_with_nothing_cut(width: int) -> None:
    snap, _ = snapshot([1, 2, 3], [10_000, 20_000, 3_000_000], top=2, extra=[K.SENT])
    out = text(render(snap), width=width)
    assert "1 more targets not shown" in out
    assert "…" not in out  # no cell was cut short
    assert "3.00/3.00 ms" in out  # charlie's avg/p99, run and last second
    total = next(line for line in out.splitlines() if "total [+1 unacc.]" in line)
    assert "301" in total and "1.99%" in total  # 6 of 300 lost, 1 probe unaccounted
    assert ("rtt min/avg/max/mdev" in out) == (width >= 140)
    assert ("recv" in out) == (width >= 90)


WORKERS = tuple(WorkerView(i, i, 100 + i, 45.0, 123_456, 0, 0, True) for i in range(4))


def test_a_bounded_run_shows_its_progress_and_keeps_each_line_in_80_columns() -> None:
    snap, _ = snapshot(
        [0, 1, 2], [20_000, 30_000, 40_000], workers=WORKERS, sent=600, send_ns=4 * S
    )
    out = text(render(snap), width=80)
    assert "sending 1.5 of 4.0 s (38%), 600 probes   rate 399 of 400 pps" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "#3 cpu3 45% 123,456 sent" in out  # four workers, wrapped between workers
    wide = text(render(snap), width=200)
    assert "rate 399 of 400 pps   timestamps: rx kernel, tx user" in wide
    assert len(wide.splitlines()) < len(out.splitlines())


def test_during_the_linger_the_rate_is_the_sending_average_not_zero() -> None:
    snap, _ = snapshot(
        [0], [20_000], sent=1200, send_ns=S, elapsed_ns=S + 400_000_000, achieved_pps=0.0
    )
    snap = dataclasses.replace(snap, linger_ns=2 * S, sent_in_ns=S)
    out = text(render(snap), width=80)
    assert "1,200 probes sent; waiting 0.4 of 2.0 s for the last replies" in out
    assert "rate 1,200 of 400 pps (while sending)" in out
    assert "rate 0" not in out


def test_when_sending_is_over_and_how_long_it_took() -> None:
    q = 250_000_000  # a refresh period
    took = partial(sending_took, 4 * S, interrupted=False, period_ns=q)
    assert took(3 * S, 3 * S) is None  # sending
    assert took(4 * S + q, 4 * S + q) is None  # its time is up, but probes still went
    assert took(4 * S + 2 * q, 4 * S + q) == 4 * S  # done on time: the planned time
    assert took(6 * S, 5 * S) == 5 * S  # a generator behind its timetable sent until 5 s
    assert sending_took(None, 9 * S, 9 * S, interrupted=False, period_ns=q) is None
    assert sending_took(None, 9 * S, 9 * S, interrupted=True, period_ns=q) == 9 * S
    assert sending_took(4 * S, 2 * S, 2 * S, interrupted=True, period_ns=q) == 2 * S


def test_a_run_without_an_end_says_so() -> None:
    snap, _ = snapshot([0], [20_000], sent=15)
    assert "sending 1.5 s (until Ctrl-C), 15 probes" in text(render(snap), width=80)


LONG_NAMES = (
    "2001:db8:1234:5678:9abc:def0:1234:5678",
    "localhost (::1)",
    "fe80::1234:5678:9abc:def0%eth0",
    "localhost (127.0.0.1)",
)


@pytest.mark.parametrize("width", [80, 100, 139, 140])
def test_long_ipv6_names_are_cut_in_the_middle_and_no_figure_is(width: int) -> None:
    snap, _ = snapshot([1, 2, 3, 0], [10_000, 20_000, 3_000_000, 5000], names=LONG_NAMES)
    out = text(render(snap), width=width)
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines)
    # Only names are cut, in the middle, keeping the end where addresses differ.
    cut = [line for line in lines if "…" in line]
    assert all(line.count("…") == 1 and line.index("…") < 32 for line in cut)
    assert all(len(line) - line.index("…") > 40 for line in cut)  # figures follow the cut
    assert ":5678 " in out and "%eth0 " in out
    assert "3.00/3.00 ms" in out and "20.1/20.1 µs" in out
    assert "\N{INPUT SYMBOL FOR NUMBERS}" not in out  # ":1234:" is not read as an emoji code
