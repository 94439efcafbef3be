"""The report's RTT distribution figures: the RTT heatmap (time x log RTT), the CDF, the
HDR-style percentile plot and the --compare overlays.

A distribution comes from `rtt_hist` (8 µs buckets doubling) where the JSONL has it; otherwise
it is approximated from each second's min/p50/p90/p99/max, mixed over the seconds by their RTT
counts (log-linear between the known quantiles), and the figure says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from loadgen.output.figures import bin_width, binned, new_figure, steps
from loadgen.output.runfile import Floats, Ints, RunData, Series, hist_edges_us

_QUANTILES = np.array([0.0, 0.5, 0.9, 0.99, 1.0])
_GRID_POINTS = 160
_NINES = (0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999)


@dataclass(frozen=True, slots=True)
class Cdf:
    """F(rtt_us): fraction of RTTs at or below each of `rtt_us`; `exact` if from rtt_hist."""

    name: str
    rtt_us: Floats
    fraction: Floats
    exact: bool
    marks: tuple[tuple[float, float], ...] = ()  # (fraction, rtt_us): the summary's p50/p90/p99


def cdf_of_hist(name: str, hist: Sequence[int]) -> Cdf | None:
    counts = np.asarray(hist, dtype=np.float64)
    if counts.sum() <= 0:
        return None
    edges = hist_edges_us(len(counts))
    return Cdf(name, edges[1:], np.cumsum(counts) / counts.sum(), exact=True)


def cdf_of_seconds(series: Series) -> Cdf | None:
    """The mixture of per-second distributions, each known at min/p50/p90/p99/max only."""
    ok = np.isfinite(series.rtt).all(axis=1) & (series.count > 0)
    if not ok.any():
        return None
    q = np.maximum.accumulate(np.maximum(series.rtt[ok], 1e-3), axis=1)
    weights = series.count[ok].astype(np.float64)
    grid = np.geomspace(q[:, 0].min(), q[:, -1].max() * 1.0001, _GRID_POINTS)
    lg, lq = np.log(grid), np.log(q)
    frac = np.zeros(_GRID_POINTS)
    for row, wt in zip(lq, weights, strict=True):
        frac += wt * np.interp(lg, row, _QUANTILES, left=0.0, right=1.0)
    return Cdf(series.name, grid, frac / weights.sum(), exact=False)


_MARKS = ((0.5, "rtt_p50_us"), (0.9, "rtt_p90_us"), (0.99, "rtt_p99_us"))


def _curve(series: Series, row: Mapping[str, Any]) -> Cdf | None:
    """From the row's rtt_hist, else from the series' seconds; with the row's exact marks."""
    hist = row.get("rtt_hist")
    c = cdf_of_hist(series.name, hist) if hist else cdf_of_seconds(series)
    if c is None:
        return None
    marks = tuple((q, float(row[k])) for q, k in _MARKS if row.get(k) is not None)
    return dataclasses.replace(c, marks=marks)


def cdfs(run: RunData, top: int = 5) -> list[Cdf]:
    """The total's CDF and those of the `top` worst targets that have RTTs."""
    rows: Mapping[str, Mapping[str, Any]] = {str(t["name"]): t for t in run.targets}
    total = _curve(run.total, (run.summary or {}).get("total") or {})
    out = [] if total is None else [total]
    for s in run.worst:
        if len(out) > top:
            break
        c = _curve(s, rows.get(s.name, {}))
        if c is not None:
            out.append(c)
    return out


def _source_note(curves: Sequence[Cdf]) -> str:
    if all(c.exact for c in curves):
        return "from rtt_hist"
    return "approximated from per-second min/p50/p90/p99/max"


def _curves_figure(curves: Sequence[Cdf], title: str, hdr: bool) -> Figure:
    fig, (ax,) = new_figure(height_in=3.4)
    for c in curves:
        lw = 2.0 if c.name == "total" else 1.0
        q = np.array([m[0] for m in c.marks])
        rtt = np.array([m[1] for m in c.marks])
        if hdr:  # RTT against 1/(1-p) on a log axis, so the tail's nines spread out
            keep = c.fraction < 1.0
            line = ax.plot(1.0 / (1.0 - c.fraction[keep]), c.rtt_us[keep], lw=lw, label=c.name)
            ax.plot(1.0 / (1.0 - q), rtt, "o", ms=4, color=line[0].get_color())
        else:
            line = ax.plot(c.rtt_us, c.fraction, lw=lw, label=c.name)
            ax.plot(rtt, q, "o", ms=4, color=line[0].get_color())
    ax.set_xscale("log")
    if hdr:
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1.0 / (1.0 - p) for p in _NINES]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{100 * p:g}%" for p in _NINES])
        ax.set_xlim(1.0, 1.0 / (1.0 - _NINES[-1]))
    else:
        ax.set_ylim(0, 1.01)
    ax.set_xlabel("percentile" if hdr else "RTT µs")
    ax.set_ylabel("RTT µs" if hdr else "fraction of replies")
    dots = "; dots: exact p50/p90/p99" if any(c.marks for c in curves) else ""
    ax.set_title(f"{title} ({_source_note(curves)}{dots})", loc="left")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(loc="upper left" if hdr else "lower right", fontsize=7)
    return fig


def cdf_figure(curves: Sequence[Cdf]) -> Figure:
    return _curves_figure(curves, "RTT CDF", hdr=False)


def percentile_figure(curves: Sequence[Cdf]) -> Figure:
    """HDR style: the tail's percentiles spread out on a log axis."""
    return _curves_figure(curves, "RTT by percentile", hdr=True)


def _hist_from_seconds(series: Series, edges: Floats) -> Ints:
    """seconds x buckets, each second's RTT count spread over its quantile intervals."""
    out = np.zeros((len(series.count), len(edges) - 1), dtype=np.float64)
    lg = np.log(edges[1:])
    for s in np.flatnonzero(np.isfinite(series.rtt).all(axis=1) & (series.count > 0)):
        q = np.log(np.maximum.accumulate(np.maximum(series.rtt[s], 1e-3)))
        cum = np.interp(lg, q, _QUANTILES, left=0.0, right=1.0)
        out[s] = np.diff(np.concatenate(([0.0], cum))) * series.count[s]
    return np.rint(out).astype(np.int64)


def rtt_heatmap(run: RunData) -> Figure:
    """Replies per (time bin, RTT bucket), log color; buckets from rtt_hist or approximated."""
    s = run.total
    if s.rtt_hist is not None:
        hist, note = s.rtt_hist, "from rtt_hist"
        edges = hist_edges_us(hist.shape[1])
        edges[0] = edges[1] / 2  # bucket 0 (<= 8 µs) drawn as 4-8 µs on a log axis
    else:
        finite = s.rtt[np.isfinite(s.rtt)]
        hi = float(finite.max()) if finite.size else 8.0
        edges = np.concatenate(([4.0], 8.0 * 2.0 ** np.arange(int(np.ceil(np.log2(hi / 8))) + 2)))
        hist, note = _hist_from_seconds(s, edges), "approximated from per-second percentiles"
    w = bin_width(run.seconds)
    grid = binned(hist, w, np.nansum)
    grid = np.where(grid > 0, grid, np.nan)
    fig, (ax,) = new_figure(height_in=3.4)
    x = np.arange(grid.shape[0] + 1, dtype=np.float64) * w
    if np.isfinite(grid).any():
        mesh = ax.pcolormesh(x, edges, grid.T, norm=LogNorm(), cmap="viridis", shading="flat")
        fig.colorbar(mesh, ax=ax, label="replies")
    ax.set_yscale("log")
    ax.set_ylabel("RTT µs")
    ax.set_xlabel("second of the run")
    ax.set_title(f"RTT heatmap, total ({note})", loc="left")
    return fig


def compare_figure(runs: Sequence[RunData]) -> Figure:
    """Several runs over their own seconds: achieved pps, loss %, p50 and p99, and the CDF."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for run in runs:
        label = run.path.rsplit("/", 1)[-1]
        w = bin_width(run.seconds)
        sent = binned(run.total.sent, w, np.nansum)
        x = np.arange(len(sent), dtype=np.float64) * w
        lost = binned(run.total.lost, w, np.nansum)
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(sent > 0, 100.0 * lost / np.maximum(sent, 1), np.nan)
        line = steps(axes[0][0], x, sent / w, w, label=label)
        steps(axes[0][1], x, loss, w, color=line.get_color())
        axes[1][0].plot(x, binned(run.total.rtt[:, 1], w, np.nanmedian), color=line.get_color())
        axes[1][0].plot(x, binned(run.total.rtt[:, 3], w, np.nanmax), ":", color=line.get_color())
        curve = cdfs(run, top=0)
        if curve:
            axes[1][1].plot(curve[0].rtt_us, curve[0].fraction, color=line.get_color())
    axes[0][0].set_title("sent probes/s", loc="left")
    axes[0][0].legend(fontsize=7)
    axes[0][1].set_title("total loss %", loc="left")
    axes[0][1].set_ylim(bottom=0)
    axes[1][0].set_title("total RTT µs: p50 solid, p99 dotted", loc="left")
    axes[1][0].set_yscale("log")
    axes[1][1].set_title("total RTT CDF", loc="left")
    axes[1][1].set_xscale("log")
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xlabel("second of the run")
    axes[1][1].set_xlabel("RTT µs")
    return fig
