"""The report's time-series figures (rate timeline, loss heatmap and total, smoke graphs,
generator health), drawn with matplotlib's object API (no pyplot, no global state) from a
`RunData`. Every time axis is cut into at most GRID_COLUMNS bins, so an hour-long run draws
as fast and as small as a minute-long one; a second without probes is a gap, never a line.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from loadgen.output.runfile import GRID_COLUMNS, Floats, Ints, RunData, Series

LOSS_BOUNDS = (0.0, 1e-9, 0.5, 2.0, 5.0, 20.0, 50.0, 100.0)
LOSS_COLORS = ("#e8f5e9", "#fdd0a2", "#fc8d59", "#ef6548", "#d7301f", "#990000", "#4d0000")
SMOKE = ("#bbbbbb", "#dddddd")


def png(fig: Figure, dpi: int = 96) -> bytes:
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def new_figure(rows: int = 1, height_in: float = 3.0) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(11, height_in * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, [a for (a,) in axes]


def bin_width(seconds: int) -> int:
    return max(1, math.ceil(seconds / GRID_COLUMNS))


def binned(values: Floats | Ints, width: int, how: Callable[..., Any]) -> Floats:
    """`values` (seconds first) reduced over bins of `width` seconds; NaN-aware reducers."""
    if width == 1:
        return np.asarray(values, dtype=np.float64)
    n = len(values)
    pad = (-n) % width
    v = np.asarray(values, dtype=np.float64)
    v = np.concatenate([v, np.full((pad, *v.shape[1:]), np.nan)])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bin is a gap
        return np.asarray(how(v.reshape(-1, width, *v.shape[1:]), axis=1), dtype=np.float64)


def _x(seconds: int, width: int) -> Floats:
    return np.arange(math.ceil(max(seconds, 1) / width), dtype=np.float64) * width


def steps(ax: Axes, x: Floats, y: Floats, width: int, **kw: Any) -> Line2D:
    """A value per bin drawn across the whole bin, the last one included."""
    line: Line2D = ax.step(np.append(x, x[-1] + width), np.append(y, y[-1:]), where="post", **kw)[0]
    return line


def _spans(ax: Axes, x: Floats, mask: np.ndarray[Any, Any], width: int, **kw: Any) -> None:
    """Shade the bins where `mask` holds, one span per run of them."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(x[start], x[end - 1] + width, **kw)


def timeline(run: RunData) -> Figure:
    """Requested vs achieved pps per second, generator-limited seconds shaded."""
    n, w = run.seconds, bin_width(run.seconds)
    req, got, limited = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    for row in run.totals:
        s, gen = row["second"], row.get("generator") or {}
        if 0 <= s < n:
            req[s] = gen.get("requested_pps", np.nan)
            got[s] = gen.get("achieved_pps", row["sent"])
            limited[s] = bool(row.get("generator_limited"))
    fig, (ax,) = new_figure(height_in=3.2)
    x = _x(n, w)
    steps(ax, x, binned(req, w, np.nanmean), w, label="requested", color="#555555")
    steps(ax, x, binned(got, w, np.nanmean), w, label="achieved", color="#1f77b4")
    lim = binned(limited, w, np.nanmax) > 0
    _spans(ax, x, lim, w, color="#ff7f0e", alpha=0.25, lw=0)
    ax.set_ylabel("probes/s")
    ax.set_xlabel("second of the run")
    ax.set_ylim(
        0, max(float(np.nanmax(req, initial=0.0)), float(np.nanmax(got, initial=1.0))) * 1.15
    )
    title = f"rate: {int(limited.sum())} generator-limited second(s) shaded"
    ax.set_title(title, loc="left")
    ax.legend(loc="lower right")
    return fig


def loss_heatmap(run: RunData) -> Figure:
    """Loss per (target group, time bin): white/green no loss, red loss, gray nothing sent."""
    g = run.grid
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(g.sent > 0, 100.0 * g.lost / np.maximum(g.sent, 1), np.nan)
    rows = max(len(g.labels), 1)
    fig = Figure(figsize=(11, min(2.0 + 0.18 * rows, 14)), layout="constrained")
    ax = fig.subplots()
    cmap = ListedColormap(list(LOSS_COLORS)).with_extremes(bad="#cccccc")
    norm = BoundaryNorm(list(LOSS_BOUNDS), cmap.N)
    extent = (0.0, float(loss.shape[1] * g.bin_s), float(rows), 0.0)
    im = ax.imshow(
        loss, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm, extent=extent
    )
    if rows <= 60:
        ax.set_yticks(np.arange(rows) + 0.5, g.labels[:rows], fontsize=7)
    ax.set_xlabel(f"second of the run ({g.bin_s} s per column)")
    ax.set_title("loss per target (worst first), gray: no probes sent", loc="left")
    bar = fig.colorbar(im, ax=ax, label="loss %", spacing="uniform")
    bar.set_ticks(list(LOSS_BOUNDS), labels=["0", ">0", *(f"{b:g}" for b in LOSS_BOUNDS[2:])])
    return fig


def loss_total(run: RunData) -> Figure:
    """Total loss % per second as bars: a second without probes has no bar."""
    n, w = run.seconds, bin_width(run.seconds)
    sent = binned(run.total.sent, w, np.nansum)
    lost = binned(run.total.lost, w, np.nansum)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(sent > 0, 100.0 * lost / np.maximum(sent, 1), np.nan)
    fig, (ax,) = new_figure(height_in=2.4)
    x = _x(n, w)
    ax.bar(x, np.nan_to_num(pct), width=w, align="edge", color="#d7301f")
    _spans(ax, x, sent == 0, w, color="#cccccc", alpha=0.6, lw=0)
    ax.set_ylabel("loss %")
    ax.set_xlabel("second of the run")
    ax.set_ylim(0, max(1.0, float(np.nanmax(pct, initial=0.0)) * 1.1))
    ax.set_title(f"total loss: {_loss_text(run.total)}", loc="left")
    return fig


def _loss_text(s: Series) -> str:
    sent, lost = int(s.sent.sum()), int(s.lost.sum())
    return f"{lost} of {sent} probes lost ({100.0 * lost / sent if sent else 0.0:.3f}%)"


def smoke(s: Series, seconds: int) -> Figure:
    """SmokePing style: min-p90 and p90-p99 bands, median line, max dots, loss as red
    columns (the deeper the red, the more of that bin's probes were lost). Each bin is drawn
    on its own, so a bin without RTTs is a gap."""
    w = bin_width(seconds)
    start = _x(seconds, w)
    lo = binned(s.rtt[:, 0], w, np.nanmin)
    p50 = binned(s.rtt[:, 1], w, np.nanmedian)
    p90 = binned(s.rtt[:, 2], w, np.nanmax)
    p99 = binned(s.rtt[:, 3], w, np.nanmax)
    hi = binned(s.rtt[:, 4], w, np.nanmax)
    sent = binned(s.sent, w, np.nansum)
    lost = binned(s.lost, w, np.nansum)
    fig, (ax,) = new_figure(height_in=2.6)
    for bottom, top, color, label in (
        (lo, p90, SMOKE[0], "min-p90"),
        (p90, p99, SMOKE[1], "p90-p99"),
    ):
        ax.bar(start, top - bottom, w, bottom, align="edge", color=color, lw=0, label=label)
    ax.hlines(p50, start, start + w, color="#2ca02c", lw=1.5, label="median")
    ax.plot(start + w / 2, hi, ".", color="#555555", ms=2, label="max")
    ax.set_yscale("log")
    for k in np.flatnonzero(lost > 0):
        share = float(lost[k] / sent[k]) if sent[k] else 1.0
        ax.axvspan(start[k], start[k] + w, color="#d7301f", alpha=0.15 + 0.6 * share, lw=0)
    if (lost > 0).any():
        ax.fill_between([], [], [], color="#d7301f", alpha=0.4, label="loss")
    ax.set_ylabel("RTT µs")
    ax.set_xlabel("second of the run")
    ax.set_xlim(0, max(seconds, 1))
    ax.set_title(f"{s.name}: {_loss_text(s)}", loc="left")
    ax.legend(loc="upper left", fontsize=7, ncol=5)
    return fig


def _workers(totals: Sequence[Mapping[str, Any]], seconds: int, key: str) -> Floats:
    """seconds x workers of one per-worker generator figure; NaN where not reported."""
    count = max((len((r.get("generator") or {}).get("workers", ())) for r in totals), default=0)
    out = np.full((seconds, max(count, 1)), np.nan)
    for r in totals:
        s = r["second"]
        for k, wk in enumerate((r.get("generator") or {}).get("workers", ())):
            if 0 <= s < seconds and wk.get(key) is not None:
                out[s, k] = wk[key]
    return out


def generator(run: RunData) -> Figure:
    """Per worker: CPU %, sends refused, socket drops and pacing error (max lag)."""
    n, w = run.seconds, bin_width(run.seconds)
    fig, axes = new_figure(rows=4, height_in=1.7)
    x = _x(n, w)
    panels: tuple[tuple[str, str, Callable[..., Any], float], ...] = (
        ("cpu_pct", "CPU %", np.nanmax, 1.0),
        ("send_errors", "send errors", np.nansum, 1.0),
        ("rx_drops", "socket drops", np.nansum, 1.0),
        ("max_lag_ns", "pacing error ms", np.nanmax, 1e-6),
    )
    for ax, (key, label, how, scale) in zip(axes, panels, strict=True):
        data = _workers(run.totals, n, key) * scale
        for k in range(data.shape[1]):
            steps(ax, x, binned(data[:, k], w, how), w, lw=1, label=f"worker {k}")
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(bottom=0)
    axes[0].set_title("generator health per worker", loc="left")
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("second of the run")
    return fig
