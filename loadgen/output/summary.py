"""The end of a run, for people: what `cli` prints once the run is over.

A few targets get an iputils ping block each; more get one compact table (a row per target,
worst first, the `top` worst only) and the block of the total. Every line fits 80 columns.
Pure presentation of a `RunSummary`; the JSONL export (`report`) holds every target.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from loadgen.outages import BURST_CLASSES, Outages
from loadgen.output.ui import fit_name, num3, pick_targets
from loadgen.sla import Clause, Reading, Scope, SlaSpec, SlaVerdict, Window
from loadgen.stats import PERCENTILE_REL_ERROR, TOTAL, Counts, RunSummary, TargetStats
from loadgen.units import format_duration, format_percent, format_rate

FEW_TARGETS = 4  # up to this many targets: one iputils block each instead of the table
TABLE_COLUMNS = 80  # the end-of-run table fits a terminal of this width
_SIDE = (
    ("duplicates", "duplicates"),
    ("reordered", "reordered"),
    ("bitflips", "bitflips"),
    ("corrupted", "corrupted"),
    ("icmp errors", "icmp_errors"),
    ("stale", "stale"),
)
_UNITS = ((1e9, "s"), (1e6, "ms"), (1e3, "µs"))


def _ms(*values_ns: float) -> str:
    return "/".join(f"{v / 1e6:.3f}" for v in values_ns)


def block(title: str, ts: TargetStats, summary: RunSummary) -> list[str]:
    """The iputils ping summary of one target (or the total), in lines of at most 80. Probes
    a dead worker left unresolved are said as such; only a difference nothing explains is a
    bug."""
    c, r = ts.counts, ts.rtt
    lines = [
        f"--- {title} loadgen statistics ---",
        f"{c.sent} transmitted, {c.received} received, {c.loss_pct:.4g}% packet loss, "
        f"{c.late} late, {c.errored} errors",
        ", ".join(f"{getattr(c, field)} {label}" for label, field in _SIDE),
    ]
    if c.refused:
        lines.append(f"{c.refused} refused (TCP RST: port closed), within received and late")
    if r.count:
        lines.append(f"rtt min/avg/max/mdev = {_ms(r.min_ns, r.avg_ns, r.max_ns, r.mdev_ns)} ms")
        lines.append(
            f"rtt p50/p90/p99 = {_ms(r.p50_ns, r.p90_ns, r.p99_ns)} ms "
            f"(within {PERCENTILE_REL_ERROR * 100:.1f}%), jitter = {_ms(r.jitter_ns)} ms"
        )
        lines.append(f"timestamps: rx {ts.rx_ts}, tx {ts.tx_ts}")
    lines.extend(oneway_lines(ts))
    if c.lost:
        lines += outage_lines(outages_of(summary, ts), summary.outage_min)
    unresolved, why = summary.explained(ts)
    if unresolved:
        lines.append(f"{unresolved} probes unresolved: {why}")
    if c.unaccounted - unresolved:
        lines.append(
            f"WARNING: {c.unaccounted - unresolved:+} probes unaccounted for (sent != received "
            "+ late + lost + errored): a bug, please report it"
        )
    return lines


def outages_of(summary: RunSummary, ts: TargetStats) -> Outages:
    """The outages of a row of the summary (a target's, or the total's)."""
    if ts is summary.total or not summary.outages:
        return summary.outages_total if ts is summary.total else Outages()
    return summary.outages[ts.target]


def outage_lines(o: Outages, outage_min: int) -> list[str]:
    """fping -o style: outages and their time, then the loss-burst distribution."""
    head = f"{o.count} outages (>= {outage_min} lost in a row)"
    if o.count:
        head += (
            f", longest {o.longest_probes} probes / {o.longest_ns / 1e6:.1f} ms, "
            f"total {o.total_ns / 1e6:.1f} ms"
        )
    bursts = ", ".join(f"{label}: {n}" for label, n in zip(BURST_CLASSES, o.bursts, strict=True))
    return [head, f"loss bursts by length: {bursts}"]


def oneway_lines(ts: TargetStats) -> list[str]:
    """STAMP's figures: loss by direction, one-way minima and averages, the clock offset they
    imply and a warning when a one-way figure is negative (clocks not synchronised)."""
    c, ow = ts.counts, ts.oneway
    if not ow.residence.count:
        return []
    lines = []
    if c.lost_forward or c.lost_reverse:
        split = c.lost_forward + c.lost_reverse
        lines.append(
            f"lost {c.lost}: {c.lost_forward} forward, {c.lost_reverse} reverse"
            + (
                f", {c.lost - split} after the last reply (direction unknown)"
                if c.lost > split
                else ""
            )
        )
    f, r, res = ow.fwd, ow.rev, ow.residence
    fwd, rev = _ms(f.min_ns, f.avg_ns), _ms(r.min_ns, r.avg_ns)
    lines.append(f"one-way min/avg = {fwd} ms forward, {rev} ms reverse")
    lines.append(
        f"reflector residence min/avg = {_ms(res.min_ns, res.avg_ns)} ms, clock offset "
        f"{(ow.offset_ns or 0) / 1e6:+.3f} ms"
    )
    if ow.ttl.count:
        lines.append(
            f"probes reached the reflector with TTL min/avg = {ow.ttl.min_ns}/{ow.ttl.avg_ns:.1f}"
        )
    if ts.cos is not None:
        lines.extend(ts.cos.lines())
    if ow.negative:
        lines.append(
            "WARNING: a one-way delay is negative: the clocks are not synchronised, and "
            "one-way figures are off by their difference (RTTs are not)"
        )
    return lines


def _name(names: Sequence[str], target: int) -> str:
    return names[target] if 0 <= target < len(names) else f"#{target}"


def _unit(summary: RunSummary) -> tuple[float, str]:
    """One time unit for the whole table, so columns compare at a glance: the one in which
    the run's median RTT has one to three digits before the point."""
    p50 = summary.total.rtt.p50_ns if summary.total.rtt.count else 0.0
    return next(((s, u) for s, u in _UNITS if p50 >= s), _UNITS[-1])


def _times(scale: float, *values_ns: float) -> str:
    return "/".join(num3(v / scale) for v in values_ns)


def _events(c: Counts) -> str:
    return f"{c.duplicates}/{c.reordered}/{c.bitflips}/{c.errored}"


def table(summary: RunSummary, names: Sequence[str], top: int) -> Table:
    """One row per target, the `top` worst first (loss, then p99)."""
    scale, unit = _unit(summary)
    late = summary.total.counts.late > 0
    grid = Table(
        title=f"per target, worst first (loss, then p99); times in {unit}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=0,  # the box puts one space between columns: the table fits 80 columns
        pad_edge=False,
        show_edge=False,
    )
    grid.add_column("target", no_wrap=True, overflow="ellipsis")
    headers = ["sent", "recv", "loss%", "min/avg/max/mdev", "p50/p99", "jitter"]
    headers += ["late"] if late else []
    headers += ["dup/reord/\nflip/err"]
    for header in headers:
        grid.add_column(header, justify="right", no_wrap=True)
    rows: list[tuple[TargetStats, list[str | Text]]] = []
    for ts in pick_targets(summary, top):
        c, r = ts.counts, ts.rtt
        loss = Text(f"{c.loss_pct:.2f}", style="bold red" if c.lost else "")
        rtt = ["-", "-", "-"]
        if r.count:
            rtt = [
                _times(scale, r.min_ns, r.avg_ns, r.max_ns, r.mdev_ns),
                _times(scale, r.p50_ns, r.p99_ns),
                _times(scale, r.jitter_ns),
            ]
        cells: list[str | Text] = [f"{c.sent:,}", f"{c.received:,}", loss, *rtt]
        cells += [f"{c.late:,}"] if late else []
        cells.append(_events(c))
        rows.append((ts, cells))
    # The names get what the figures leave of 80 columns (one space between columns): a long
    # name (an IPv6 address, `name (address)`) is cut in the middle, never the figures.
    figures = [
        max([*(len(line) for line in header.split("\n")), *(len(str(row[i])) for _, row in rows)])
        for i, header in enumerate(headers)
    ]
    room = TABLE_COLUMNS - sum(figures) - len(figures)
    for ts, cells in rows:
        c = ts.counts
        # Text, not str: rich would read ":1234:" in an IPv6 address as an emoji code.
        name = Text(fit_name(_name(names, ts.target), room))
        unresolved, _ = summary.explained(ts)
        if unresolved:
            name = Text(f"{name} [{unresolved:,} unresolved]", style="yellow")
        if c.unaccounted - unresolved:
            name = Text(
                f"{name} [{c.unaccounted - unresolved:+} unacc.]", style="bold white on red"
            )
        grid.add_row(name, *cells)
    return grid


def _notes(summary: RunSummary) -> list[str]:
    lines = ["loss counts probes nothing came back for; late and errored are counted apart"]
    silent = sum(1 for ts in summary.per_target if ts.counts == Counts())
    if silent:
        lines.append(f"{silent} targets sent nothing")
    a = summary.anomalies
    if a.side_events_after_close:
        lines.append(
            f"{a.side_events_after_close} side events (such as stale replies) came after "
            "their second closed: they are in these totals, in no second"
        )
    return lines + [f"WARNING: {w}" for w in a.warnings()]


def summary_text(summary: RunSummary, names: Sequence[str]) -> str:
    """An iputils block per target that sent anything, then the total's (one target: its
    block alone), then notes."""
    lines: list[str] = []
    n = len(summary.per_target)
    if n == 1:
        lines += block(_name(names, 0), summary.per_target[0], summary)
    else:
        for ts in summary.per_target:
            if ts.counts != Counts():
                lines += [*block(_name(names, ts.target), ts, summary), ""]
        lines += block(f"total ({n} targets, {summary.seconds} s)", summary.total, summary)
    return "\n".join(lines + _notes(summary))  # no final newline: callers print it


def summary_view(
    summary: RunSummary, names: Sequence[str], *, top: int, export: str | None = None
) -> RenderableType:
    """What the end of a run shows: the blocks for a few targets, else the table of the `top`
    worst and the total's block. `export` names the JSONL file holding every target."""
    n = len(summary.per_target)
    if n <= FEW_TARGETS:
        return Text(summary_text(summary, names))
    parts: list[RenderableType] = [table(summary, names, top)]
    hidden = n - min(top, n)
    if hidden:
        where = (
            f"in the JSONL export ({export})"
            if export
            else f"not shown: --top {n} shows them, --jsonl FILE exports them"
        )
        parts.append(Text(f"{hidden} more targets {where}"))
    total = block(f"total ({n} targets, {summary.seconds} s)", summary.total, summary)
    parts.append(Text("\n".join(["", *total, *_notes(summary)])))
    return Group(*parts)


def _sla_value(clause: Clause, value: float | None) -> str:
    if value is None:
        return "no reply in time"
    if clause is Clause.MAX_LOSS:
        return format_percent(value)
    if clause is Clause.MIN_RATE:
        return format_rate(value)
    return f"{value / 1e3:.4g} µs" if value < 1e6 else f"{value / 1e6:.4g} ms"


def _sla_limit(clause: Clause, limit: Fraction) -> str:
    if clause is Clause.MAX_LOSS:
        return f"<= {format_percent(float(limit))}"
    if clause is Clause.MIN_RATE:
        return f">= {format_rate(float(limit))}"
    return f"<= {format_duration(int(limit))}"


def _where(r: Reading, names: Sequence[str]) -> str:
    who = "total" if r.target == TOTAL else _name(names, r.target)
    return f"{who}, {'the run' if r.second is None else f'second {r.second}'}"


def _judged(spec: SlaSpec) -> str:
    over = "every second" if spec.window is Window.SECOND else "the run"
    return f"judged over {over} for " + (
        "every target" if spec.scope is Scope.TARGET else "all targets together"
    )


def sla_rules(spec: SlaSpec) -> str:
    """The clauses a run will be judged by, on one line (for `loadgen check`)."""
    rules = ", ".join(f"{clause} {_sla_limit(clause, limit)}" for clause, limit in spec.limits)
    return f"sla: {rules}; {_judged(spec)}"


def sla_lines(verdict: SlaVerdict, names: Sequence[str]) -> list[str]:
    """The SLA verdict, last in the summary: PASS or FAIL per clause, with the value that broke
    it (or, for a pass, the worst one), where, and the limit."""
    spec = verdict.spec
    failed = sum(not c.passed for c in verdict.clauses)
    head = "PASS" if verdict.passed else f"FAIL ({failed} of {len(verdict.clauses)} clauses)"
    lines = [f"SLA: {head}, {_judged(spec)}"]
    for c in verdict.clauses:
        rule = f"{c.clause} {_sla_limit(c.clause, c.limit)}"
        if c.worst is None:
            lines.append(f"  PASS {rule}: nothing to judge")
            continue
        r = c.first_failure if c.first_failure is not None else c.worst
        label = "worst" if c.passed else ""
        line = f"  {'PASS' if c.passed else 'FAIL'} {rule}: {label + ' ' if label else ''}"
        line += f"{_sla_value(c.clause, r.value)} ({_where(r, names)})"
        if not c.passed:
            line += f"; failed {c.failed} of {c.judged}"
            if c.worst is not r:
                line += f", worst {_sla_value(c.clause, c.worst.value)} ({_where(c.worst, names)})"
        lines.append(line)
        if c.possibly_generator:
            where = (
                f"{c.failed_generator_limited} of these failures came in seconds"
                if spec.window is Window.SECOND
                else "the run had seconds"
            )
            lines.append(
                f"    {where} in which loadgen itself could not keep up: possibly loadgen's, "
                "not the network's"
            )
    return lines
