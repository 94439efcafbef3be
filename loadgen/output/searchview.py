"""The search on screen: a live table while it runs and the final table of results.

`SearchScreen` is the driver's listener: on a terminal one rich Live (auto_refresh off) for the
whole search, showing the current load, the last trial's verdict, each goal's bounds, trials and
elapsed time; off one, a line per trial. `results_table` renders the final rows. No figures of
its own: everything comes from the driver's records and the controller's bounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.coordinator import Display, GeneratorView
from loadgen.search.controller import Search
from loadgen.search.driver import Listener, SearchRun, TrialRecord
from loadgen.search.report import ResultRow
from loadgen.stats import Aggregator
from loadgen.units import NS_PER_S, format_rate


def _pps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _bits(x: float | None) -> str:
    if x is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {unit}b/s"
    return f"{x:.0f} b/s"


def _verdict(t: TrialRecord) -> str:
    if not t.measured.valid:
        return "invalid: " + t.measured.limits[0]
    return ", ".join(f"{g} {v}" for g, v in t.verdicts)


def trial_line(t: TrialRecord) -> str:
    return (
        f"trial {t.index + 1} ({t.kind}, {t.size} B): {t.load_pps:,.0f} pps for "
        f"{t.duration_ns / NS_PER_S:g} s, sent {t.measured.counts.sent}, lost {t.measured.lost} "
        f"({100 * t.measured.loss_ratio:.3f}%): {_verdict(t)}"
    )


class SearchScreen(Listener):
    def __init__(self, *, plain: bool, console: Console | None = None) -> None:
        self.plain = plain
        self.console = console or Console(highlight=False)
        self.live: Live | None = None
        self.t0 = time.monotonic()
        self.current = ""
        self.last: TrialRecord | None = None
        self.bounds: list[tuple[str, float | None, float | None]] = []
        self.trials = 0
        self.progress = ""  # the running trial's own figures, from the coordinator

    def trial_started(self, record_index: int, load_pps: float, kind: str) -> None:
        self.current = f"{kind} trial {record_index + 1} at {load_pps:,.0f} pps"
        self.progress = ""
        if not self.plain and self.live is None:
            self.live = Live(console=self.console, auto_refresh=False, transient=True)
            self.live.start()
        self.show()

    def trial_done(self, record: TrialRecord, search: Search | None) -> None:
        self.last, self.trials = record, self.trials + 1
        if search is not None:
            self.bounds = [(g.name, *search.bounds(g)) for g in search.config.goals]
        if self.plain:
            print(trial_line(record), flush=True)
        self.show()

    def search_done(self, run: SearchRun) -> None:
        if self.plain:
            print(f"search at {run.size} B (repetition {run.repeat + 1}): {run.stop.value}")

    def trial_display(self) -> Display:
        return _Progress(self)

    def show(self) -> None:
        if self.live is None:
            return
        table = Table(title=None, box=None, pad_edge=False)
        for name in ("goal", "lower pps", "upper pps"):
            table.add_column(name, justify="right" if "pps" in name else "left")
        for name, low, high in self.bounds:
            table.add_row(name, _pps(low), _pps(high))
        elapsed = time.monotonic() - self.t0
        now = f"now: {self.current}{self.progress}"
        head = Text(f"{now}; trials {self.trials}; elapsed {elapsed:.0f} s")
        last = Text("last: " + (trial_line(self.last) if self.last else "-"))
        self.live.update(Group(head, last, table), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class _Progress(Display):
    """The coordinator's display during one trial: its time and achieved rate on the line."""

    def __init__(self, screen: SearchScreen) -> None:
        self.screen = screen

    def refresh(self, aggregator: Aggregator, generator: GeneratorView) -> None:
        self.screen.progress = (
            f", {generator.elapsed_ns / NS_PER_S:.1f} s in, {generator.achieved_pps:,.0f} pps sent"
        )
        self.screen.show()


def _k(x: float | None) -> str:
    return "-" if x is None else format_rate(x).removesuffix(" pps")


def results_table(rows: Sequence[ResultRow]) -> Group:
    """Per goal and size: result, wire rate, bounds, conditional throughput and latency at the
    result, within 80 columns; under it trials and time per size and notes for results that
    need words (generator limit, not converged)."""
    title = "search results (pps, total over all targets; rtt us: min/p50/p99/max)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    heads = ("goal", "size", "result", "on wire", "lower-upper", "cond.", "rtt us")
    for c in heads:
        justify: Literal["left", "right"] = "left" if c == "goal" else "right"
        table.add_column(c, justify=justify, no_wrap=True)
    notes, sizes = [], {}
    for r in rows:
        g, rtt = r.goal, r.latency
        lat = "-"
        if rtt.count:
            figures = (rtt.min_ns, rtt.p50_ns, rtt.p99_ns, rtt.max_ns)
            lat = "/".join(f"{v / 1000:.0f}" for v in figures)
        mark = ("*" if g.generator_limited else "") + ("!" if not g.converged else "")
        result = _k(r.rate_pps) + mark
        if len(r.repeats) > 1:
            result += f"±{_k(r.spread_pps / 2)}"
        upper = _k(g.upper_pps) if g.upper_pps is not None else "max"
        table.add_row(
            g.goal.name,
            f"{r.size} B",
            result,
            _bits(r.bits_per_s),
            f"{_k(g.lower_pps)}-{upper}",
            _k(g.conditional_pps),
            lat,
        )
        sizes[r.size] = f"{r.size} B: {r.trials} trials, {r.time_ns / NS_PER_S:.0f} s ({r.stop})"
        if mark:
            stop = "" if g.converged else "; not within the width"
            notes.append(Text(f"{mark} {g.goal.name}, {r.size} B: {r.label}{stop}"))
    return Group(table, *(Text(line) for line in sizes.values()), *notes)
