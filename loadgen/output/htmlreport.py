"""`loadgen report`: one self-contained HTML file (figures inlined as base64 PNG, no script,
no network) from a JSONL export, and the same figures as PNG files with --png.

Owns the panel list and their ids (`PANEL_IDS`, what the tests and the browser check look
for), the header and the per-target table; the figures are drawn by `figures` and `rttplots`.
"""

from __future__ import annotations

import base64
import datetime
import functools
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from loadgen.output import figures, rttplots
from loadgen.output.runfile import ReportError, RunData, load_run

MAX_ROWS = 1000  # table rows; the rest are in the JSONL
PANEL_IDS = (
    "timeline",
    "loss-heatmap",
    "loss-total",
    "smoke-total",
    "rtt-heatmap",
    "rtt-cdf",
    "rtt-percentiles",
    "generator",
)
# (heading, JSONL key, decimals); None decimals: an integer
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("sent", "sent", None),
    ("received", "received", None),
    ("loss %", "loss_pct", 3),
    ("min µs", "rtt_min_us", 1),
    ("p50 µs", "rtt_p50_us", 1),
    ("p99 µs", "rtt_p99_us", 1),
    ("max µs", "rtt_max_us", 1),
    ("mdev µs", "rtt_mdev_us", 1),
    ("jitter µs", "rtt_jitter_us", 1),
    ("dup", "duplicates", None),
    ("reord", "reordered", None),
    ("bitflips", "bitflips", None),
    ("errors", "errored", None),
    ("outages", "outages", None),
    ("longest outage ms", "outage_longest_ms", 1),
    ("longest outage probes", "outage_longest_probes", None),
)


@dataclass(frozen=True, slots=True)
class Panel:
    id: str
    title: str
    png: bytes


@dataclass(frozen=True, slots=True)
class Written:
    path: str
    panels: int
    size_bytes: int


def cell(row: Mapping[str, Any], key: str, decimals: int | None) -> str:
    """A table cell as the report prints it: "n/a" when the JSONL lacks the key or has null."""
    value = row.get(key)
    if value is None:
        return "n/a"
    return str(int(value)) if decimals is None else f"{float(value):.{decimals}f}"


def _draw(panel_id: str, title: str, make: Callable[[], Figure]) -> Panel:
    return Panel(panel_id, title, figures.png(make()))


def panels(run: RunData, compare: Sequence[RunData] = ()) -> list[Panel]:
    curves = rttplots.cdfs(run)
    out = [
        _draw("timeline", "Requested vs achieved rate", lambda: figures.timeline(run)),
        _draw("loss-heatmap", "Loss per target and second", lambda: figures.loss_heatmap(run)),
        _draw("loss-total", "Loss in total", lambda: figures.loss_total(run)),
        _draw("smoke-total", "Smoke: total", lambda: figures.smoke(run.total, run.seconds)),
    ]
    for k, s in enumerate(run.worst, start=1):
        out.append(
            _draw(
                f"smoke-{k}", f"Smoke: {s.name}", functools.partial(figures.smoke, s, run.seconds)
            )
        )
    out += [
        _draw("rtt-heatmap", "RTT heatmap", lambda: rttplots.rtt_heatmap(run)),
        _draw("rtt-cdf", "RTT CDF", lambda: rttplots.cdf_figure(curves)),
        _draw("rtt-percentiles", "RTT percentiles", lambda: rttplots.percentile_figure(curves)),
        _draw("generator", "Generator health", lambda: figures.generator(run)),
    ]
    if compare:
        out.append(_draw("compare", "Compare runs", lambda: rttplots.compare_figure(compare)))
    return out


def header_rows(run: RunData) -> list[tuple[str, str]]:
    h, summary = run.header, run.summary or {}
    extra = summary.get("extra") or {}
    total = summary.get("total") or {}
    start = datetime.datetime.fromtimestamp(run.t_start, datetime.UTC)
    duration = extra.get("duration_s", run.seconds)
    rate = h.get("requested_pps", extra.get("requested_pps"))
    command = h.get("command")
    rows = [
        ("command", " ".join(command) if command else "n/a"),
        ("profile", str(h.get("profile", "n/a"))),
        ("loadgen", str(h.get("loadgen", "n/a"))),
        ("kernel", str(h.get("kernel", "n/a"))),
        ("CPUs", f"{h['cpus']} (pinned: {h.get('pinned', 'n/a')})" if "cpus" in h else "n/a"),
        ("workers", str(h.get("workers", extra.get("workers", "n/a")))),
        ("targets", str(h.get("targets", len(run.targets)))),
        ("timestamps", _stamps(h, total)),
        ("start", start.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("duration", f"{float(duration):.1f} s ({run.seconds} closed seconds)"),
        ("requested rate", "n/a" if rate is None else f"{float(rate):,.0f} probes/s"),
    ]
    if run.summary is None:
        rows.append(("summary", "none: the run ended before writing it"))
    return rows


def _stamps(header: Mapping[str, Any], total: Mapping[str, Any]) -> str:
    """The sources the RTTs came from, and what the profile asked for."""
    used = f"rx {total.get('rx_ts', 'n/a')}, tx {total.get('tx_ts', 'n/a')}"
    if "timestamps" not in header:
        return used
    asked = f"timestamps = {header['timestamps']}, tx_timestamps = {header.get('tx_timestamps')}"
    return f"{used} ({asked}, tx_path = {header.get('tx_path')})"


def _table(run: RunData) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in COLUMNS)
    body = []
    for rank, row in enumerate(run.targets[:MAX_ROWS], start=1):
        cells = "".join(f"<td>{cell(row, key, d)}</td>" for _, key, d in COLUMNS)
        name = html.escape(str(row.get("name")))
        body.append(f'<tr><td>{rank}</td><td class="name">{name}</td>{cells}</tr>')
    more = len(run.targets) - MAX_ROWS
    note = f"<p>{more} more targets in {html.escape(run.path)}</p>" if more > 0 else ""
    return (
        '<table id="targets"><thead><tr><th>#</th><th>target</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
    )


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
td{text-align:right}td.name,#header td{text-align:left}th{background:#eee}
figure{margin:1em 0}img{max-width:100%;height:auto}figcaption{font-weight:bold}"""


def render_html(run: RunData, shown: Sequence[Panel]) -> str:
    head = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in header_rows(run)
    )
    figs = "".join(
        f'<figure><figcaption>{html.escape(p.title)}</figcaption><img id="fig-{p.id}" '
        f'alt="{html.escape(p.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.png).decode("ascii")}"></figure>'
        for p in shown
    )
    title = html.escape(f"loadgen report: {os.path.basename(run.path)}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
        f'<table id="header">{head}</table><h2>Targets, worst first (loss, then p99)</h2>'
        f"{_table(run)}<h2>Figures</h2>{figs}</body></html>\n"
    )


def write_report(
    jsonl: str,
    out: str,
    *,
    png_dir: str | None = None,
    compare: Sequence[str] = (),
    worst: int = 8,
) -> Written:
    """Read `jsonl` (and the runs to compare), write the HTML to `out` and PNGs to `png_dir`."""
    run = load_run(jsonl, worst)
    others = [run, *(load_run(p, 0) for p in compare)] if compare else []
    shown = panels(run, others)
    text = render_html(run, shown)
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        if png_dir is not None:
            os.makedirs(png_dir, exist_ok=True)
            for p in shown:
                with open(os.path.join(png_dir, f"{p.id}.png"), "wb") as f:
                    f.write(p.png)
    except OSError as e:
        raise ReportError(
            f"cannot write the report {e.filename or out!r}: {e.strerror}; pick a writable path"
        ) from e
    return Written(out, len(shown), len(text.encode("utf-8")))
