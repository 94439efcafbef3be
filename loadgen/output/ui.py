"""The live view: renders an immutable `Snapshot` as rich tables, or one plain line a second.

Presentation only: it keeps no state between frames; the coordinator builds each Snapshot and
owns the `rich.live.Live`. Times are shown in ns/µs/ms/s with three significant digits, one
unit per cell. Columns of side events that never happened are folded into one line.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from loadgen.clockoffset import WorkerClock
from loadgen.stats import Counts, RunSummary, SecondReport, TargetStats

WIDE_COLUMNS = 140  # narrower consoles get a compact table
NARROW_COLUMNS = 90  # and narrower still, a minimal one
_UNITS = ((1e9, "s"), (1e6, "ms"), (1e3, "µs"), (1.0, "ns"))
# Side-event columns: header, Counts field. Shown only once the run has seen one.
_EVENTS = (
    ("late", "late"),
    ("err", "errored"),
    ("dup", "duplicates"),
    ("reord", "reordered"),
    ("bitflip", "bitflips"),
    ("corrupt", "corrupted"),
    ("icmp-err", "icmp_errors"),
    ("stale", "stale"),
    ("refused", "refused"),
)


@dataclass(frozen=True, slots=True)
class WorkerView:
    index: int
    cpu: int
    pid: int
    cpu_pct: float
    sent: int
    send_errors: int
    rx_drops: int
    alive: bool
    clock: WorkerClock | None = None  # a worker on a TCP stream: its clock offset to ours


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame shows. `last` is the newest closed second (None before the first)."""

    last: SecondReport | None
    summary: RunSummary
    names: tuple[str, ...]
    top: int
    elapsed_ns: int
    requested_pps: float
    achieved_pps: float
    workers: tuple[WorkerView, ...]
    ts_source: str
    notes: tuple[str, ...] = ()
    sent: int = 0  # probes sent so far, all workers
    send_ns: int | None = None  # how long sending lasts; None: until interrupted
    linger_ns: int = 0  # how long the last replies are waited for once sending is over
    sent_in_ns: int | None = None  # once sending is over: how long it took (from the start)
    path: str = ""  # which socket carries the probes (icmppath.LABELS)


def num3(x: float) -> str:
    """A non-negative number with three significant digits (two below 1), no unit."""
    if x >= 100 or x == 0:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}" if x >= 10 else f"{x:.2f}"
    if x < 5e-7:
        return "0"
    digits = min(6, 1 - math.floor(math.log10(x)))  # two significant digits: 0.020, 0.00027
    return f"{x:.{digits}f}"


def fmt_ns(*values_ns: float) -> str:
    """Durations in one unit picked by the largest: fmt_ns(21e3, 1.2e5) == "21.0/120 µs"."""
    scale, unit = next((s, u) for s, u in _UNITS if max(values_ns) >= s or s == 1.0)
    return "/".join(num3(v / scale) for v in values_ns) + f" {unit}"


def _seen(counts: Counts) -> list[tuple[str, str]]:
    return [(h, f) for h, f in _EVENTS if getattr(counts, f)]


def _rtt_cells(ts: TargetStats) -> list[str | Text]:
    """min/avg/max/mdev, p50/p90/p99 and jitter cells ("-" without samples)."""
    r = ts.rtt
    if r.count == 0:
        return ["-", "-", "-"]
    return [
        fmt_ns(r.min_ns, r.avg_ns, r.max_ns, r.mdev_ns),
        fmt_ns(r.p50_ns, r.p90_ns, r.p99_ns),
        fmt_ns(r.jitter_ns),
    ]


def _avg_p99(ts: TargetStats | None) -> str:
    return fmt_ns(ts.rtt.avg_ns, ts.rtt.p99_ns) if ts and ts.rtt.count else "-"


def _loss(c: Counts | None) -> Text:
    if c is None or c.sent == 0:
        return Text("-")
    return Text(f"{c.loss_pct:.2f}%", style="bold red" if c.lost else "")


def pick_targets(summary: RunSummary, top: int) -> list[TargetStats]:
    """The `top` targets that look worst: highest loss %, then highest p99."""
    return heapq.nsmallest(max(top, 0), summary.per_target, key=_badness)


def _badness(t: TargetStats) -> tuple[float, float, int]:
    return (-t.counts.loss_pct, -t.rtt.p99_ns, t.target)


def _target_table(snap: Snapshot, width: int) -> Table:
    """Wide: every RTT figure; narrower: loss and avg/p99 (run and last second), and below
    NARROW_COLUMNS no "recv" either."""
    wide, roomy = width >= WIDE_COLUMNS, width >= NARROW_COLUMNS
    summary, last = snap.summary, snap.last
    events = _seen(summary.total.counts) if wide else []  # narrow: totals in a line below
    # STAMP's DSCP/ECN verdict per target (run totals), where the wide table has room.
    cos = wide and summary.total.counts.cos_count > 0
    second = f"1s = last closed second ({last.second})" if last else "no second closed yet"
    table = Table(
        title=f"per target: run totals; {second}",
        title_justify="left",
        box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD,
        pad_edge=wide,
    )
    table.add_column("target", no_wrap=True, overflow="ellipsis", max_width=MAX_NAME_CELLS)
    headers = ["sent", "recv", "loss"] if roomy else ["sent", "loss"]
    headers += ["rtt min/avg/max/mdev", "p50/p90/p99 ±1%", "jitter"] if wide else ["avg/p99"]
    headers += ["1s loss", "1s avg/p99", *(h for h, _ in events)]
    headers += ["dscp/ecn"] if cos else []
    # Room for "100.00%" and "2.00/2.00 ms": cut digits would mislead.
    rooms = [max(len(h), 7 if "loss" in h else 12 if "/p99" in h else 0) for h in headers]
    for header, room in zip(headers, rooms, strict=True):
        table.add_column(header, justify="right", no_wrap=True, min_width=room)
    by_target = {ts.target: ts for ts in last.per_target} if last else {}
    shown = pick_targets(summary, snap.top)
    rows: list[tuple[str, TargetStats, list[str | Text]]] = []
    for name, ts, sec in [
        *((_name(snap.names, t.target), t, by_target.get(t.target)) for t in shown),
        ("total", summary.total, last.total if last else None),
    ]:
        c = ts.counts
        cells: list[str | Text] = [f"{c.sent:,}"]
        cells += [f"{c.received:,}", _loss(c)] if roomy else [_loss(c)]
        cells += _rtt_cells(ts) if wide else [_avg_p99(ts)]
        cells += [_loss(sec.counts if sec else None), _avg_p99(sec)]
        cells += [f"{getattr(c, f):,}" for _, f in events]
        if cos:
            verdict = ts.cos.verdict() if ts.cos else ""
            cells.append(Text(verdict, style="yellow" if verdict == "remarked" else ""))
        rows.append((name, ts, cells))
    # Names get what the figures leave: a long name (an IPv6 address) is cut in the middle,
    # never a figure. Each of the C columns is padded by a space a side (not at the edges of
    # the narrow table) and a line or space goes between columns and at both edges.
    figures = [max(room, *(len(str(r[2][i])) for r in rows)) for i, room in enumerate(rooms)]
    columns = len(figures) + 1
    fit = min(MAX_NAME_CELLS, width - sum(figures) - (3 * columns + (1 if wide else -1)))
    for i, (full_name, ts, figure_cells) in enumerate(rows):
        # Text, not str: rich would read ":1234:" in an IPv6 address as an emoji code.
        c, label = ts.counts, Text(fit_name(full_name, fit))
        cells = [label, *figure_cells]
        unresolved, _ = summary.explained(ts)
        if unresolved:
            cells[0] = Text(f"{label} [{unresolved:,} unresolved]", style="yellow")
        if c.unaccounted - unresolved:
            cells[0] = Text(f"{label} [{c.unaccounted:+,} unacc.]", style="bold white on red")
        is_total = i == len(rows) - 1
        table.add_row(*cells, end_section=i == len(rows) - 2, style="bold" if is_total else "")
    hidden = len(summary.per_target) - len(shown)
    if hidden > 0:
        table.caption = f"{hidden:,} more targets not shown (worst {len(shown)} by loss, then p99)"
    return table


def _name(names: Sequence[str], target: int) -> str:
    return names[target] if 0 <= target < len(names) else f"#{target}"


MIN_NAME_CELLS = 14  # a target name is never cut shorter than this
MAX_NAME_CELLS = 32  # nor shown longer in the live table


def fit_name(name: str, room: int) -> str:
    """`name` in at most `room` cells (never fewer than MIN_NAME_CELLS), cut in the middle:
    the end of an address (or of `name (address)`) is what tells targets apart."""
    room = max(room, MIN_NAME_CELLS)
    if len(name) <= room:
        return name
    head = (room - 1) // 2
    return f"{name[:head]}…{name[len(name) - (room - 1 - head) :]}"


def sending_took(
    send_ns: int | None, elapsed_ns: int, last_busy_ns: int, *, interrupted: bool, period_ns: int
) -> int | None:
    """How long sending took, once it is seen over, else None. It is over when interrupted,
    or when its time is up and the frame saw no new probe (`last_busy_ns`: elapsed time of
    the last frame that did). A generator that kept its timetable took the planned time; one
    behind it (still sending a frame past the plan), until its last probe was seen."""
    if interrupted:
        return elapsed_ns if send_ns is None else min(elapsed_ns, max(send_ns, last_busy_ns))
    if send_ns is None or elapsed_ns < send_ns or last_busy_ns == elapsed_ns:
        return None
    return send_ns if last_busy_ns <= send_ns + period_ns else last_busy_ns


def _progress(snap: Snapshot) -> str:
    """Where the run stands: sending (of how long), or waiting for the last replies."""
    elapsed_s, sent = snap.elapsed_ns / 1e9, f"{snap.sent:,} probes"
    send_ns = snap.send_ns
    if snap.sent_in_ns is None:
        if send_ns is None:
            return f"sending {elapsed_s:,.1f} s (until Ctrl-C), {sent}"
        share = min(1.0, snap.elapsed_ns / send_ns) if send_ns else 1.0
        return f"sending {elapsed_s:,.1f} of {send_ns / 1e9:,.1f} s ({share:.0%}), {sent}"
    waited_s = max(0, snap.elapsed_ns - snap.sent_in_ns) / 1e9
    return (
        f"{sent} sent; waiting {waited_s:,.1f} of {snap.linger_ns / 1e9:,.1f} s "
        "for the last replies"
    )


def _rate(snap: Snapshot) -> Text:
    """The requested rate against what was achieved: the last moments while sending; once
    sending is over, the average over the sending time (never the 0 pps of the linger)."""
    achieved = snap.achieved_pps
    if snap.sent_in_ns is not None:
        achieved = snap.sent * 1e9 / snap.sent_in_ns if snap.sent_in_ns > 0 else 0.0
    short = snap.requested_pps > 0 and achieved < 0.98 * snap.requested_pps
    text = f"rate {achieved:,.0f} of {snap.requested_pps:,.0f} pps"
    if snap.sent_in_ns is not None:
        text += " (while sending)"
    return Text(text, style="bold yellow" if short else "")


def _pack(segments: Sequence[Text], width: int, gap: str = "   ") -> list[Text]:
    """Segments side by side, as many as fit `width` on each line, in order."""
    lines: list[Text] = []
    for seg in segments:
        if lines and lines[-1].cell_len + len(gap) + seg.cell_len <= width:
            lines[-1].append(gap)
            lines[-1].append_text(seg)
        else:
            lines.append(seg.copy())
    return lines


def _header(snap: Snapshot, width: int) -> list[Text]:
    segments = [Text(_progress(snap)), _rate(snap)]
    gen = snap.last.generator if snap.last is not None else None
    if gen is not None and gen.limited:
        second = snap.last.second if snap.last else "?"
        segments.append(
            Text(f"GENERATOR-LIMITED in second {second}: {gen.limits[0]}", style="bold red")
        )
    segments.append(Text(f"timestamps: {snap.ts_source}"))
    if snap.path:
        segments.append(Text(snap.path))
    total = snap.summary.total
    if total.rtt.count:
        segments.append(Text(f"RTT samples: rx {total.rx_ts}, tx {total.tx_ts}"))
    return _pack(segments, width)


def _workers_lines(workers: Sequence[WorkerView], width: int) -> list[Text]:
    segments = [Text("workers:")]
    for w in workers:
        if not w.alive:
            segments.append(Text(f"#{w.index} cpu{w.cpu} pid {w.pid} DEAD", style="bold red"))
            continue
        seg = Text(f"#{w.index} cpu{w.cpu} {w.cpu_pct:.0f}% {w.sent:,} sent")
        if w.send_errors or w.rx_drops:
            seg.append(f" ({w.send_errors:,} send errors, {w.rx_drops:,} rx drops)", style="yellow")
        if w.clock is not None:
            c = w.clock
            seg.append(
                f" clock {c.offset_ns / 1e3:+.0f}±{c.bound_ns / 1e3:.0f}µs",
                style="bold red" if c.flagged else "",
            )
        segments.append(seg)
    return _pack(segments, width, gap="  ")


def _warnings(snap: Snapshot) -> list[Text]:
    out = [Text(w, style="bold red") for w in snap.summary.anomalies.warnings()]
    summary = snap.summary
    unaccounted = summary.total.counts.unaccounted - summary.explained(summary.total)[0]
    bad = [t for t in summary.per_target if t.counts.unaccounted - summary.explained(t)[0]]
    if bad or unaccounted:
        out.append(
            Text(
                f"BUG: probes unaccounted for on {len(bad)} target(s) "
                "(sent != received + late + lost + errored); please report it",
                style="bold white on red",
            )
        )
    out += [Text(note, style="yellow") for note in snap.notes]
    return out


def render(snap: Snapshot) -> RenderableType:
    """One frame of the live view; the table's layout follows the console's width."""
    return _Frame(snap)


@dataclass(frozen=True, slots=True)
class _Frame:
    snap: Snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        snap, width = self.snap, options.max_width
        yield from _header(snap, width)
        yield from _workers_lines(snap.workers, width)
        yield _target_table(snap, width)
        counts = snap.summary.total.counts
        seen = ", ".join(f"{h} {getattr(counts, f):,}" for h, f in _seen(counts))
        quiet = ", ".join(h for h, f in _EVENTS if not getattr(counts, f))
        line = f"side events: {seen}; none yet: {quiet}" if seen else f"no side events yet: {quiet}"
        yield Text(line if quiet else f"side events: {seen}", style="dim")
        yield from _warnings(snap)


def plain_line(report: SecondReport) -> str:
    """One line per closed second, for output that is not a terminal."""
    c, r = report.total.counts, report.total.rtt
    clock = dt.datetime.fromtimestamp(report.start_ns / 1e9).strftime("%H:%M:%S")
    rtt = f"rtt avg/p99 {fmt_ns(r.avg_ns, r.p99_ns)}" if r.count else "rtt -"
    line = (
        f"{clock} s={report.second} sent={c.sent} recv={c.received} loss={c.loss_pct:.2f}% "
        f"{rtt} late={c.late} dup={c.duplicates} reord={c.reordered} "
        f"errs={c.errored} icmp={c.icmp_errors} flip={c.bitflips} corrupt={c.corrupted}"
        + (f" refused={c.refused}" if c.refused else "")
    )
    unresolved, why = report.explained(report.total)
    if unresolved:
        line += f" unresolved={unresolved} ({why})"
    if c.unaccounted - unresolved:
        line += f" UNACCOUNTED={c.unaccounted - unresolved} (bug)"
    if report.generator is not None and report.generator.limited:
        line += f" GENERATOR-LIMITED ({'; '.join(report.generator.limits)})"
    return line
