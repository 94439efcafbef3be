"""What loadgen exposes to Prometheus, as plain values: names, help, labels and samples.

Owns the metric names and their meaning, the `metrics` listen address and `metrics_labels`
(which targets get their own series), and turns the merged, closed seconds (`RunSummary`, the
last closed second's generator verdict, the workers' counters) into `Family` values. Every
series carries `target`; target="total" is the all-targets row in every label mode, like the
JSONL's total. `output.prometheus` hands these to prometheus-client. Pure: no clock, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from loadgen import rtthist
from loadgen.errors import UsageError
from loadgen.outages import Outages
from loadgen.stats import NS_PER_S, GeneratorSecond, RunSummary, TargetStats
from loadgen.units import bad_value

DEFAULT_PORT: Final = 9464
LOOPBACK: Final = "127.0.0.1"
AUTO_TARGETS: Final = 1000  # "auto": every target up to this many, else the TOP_AUTO worst
TOP_AUTO: Final = 100
LABEL_MODES: Final = ("auto", "total", "target", "top:N")


@dataclass(frozen=True, slots=True)
class Listen:
    """Where /metrics is served. Only an address written out binds beyond loopback."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: Any, key: str) -> Listen:
    """ ":9464" or "9464" (loopback), "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464"."""
    fix = 'write ":9464" (loopback) or an address and port such as "0.0.0.0:9464"'
    text = str(value).strip() if isinstance(value, str | int) and value is not True else ""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
        address = str(ipaddress.ip_address(host)) if host else LOOPBACK
    except ValueError:
        raise UsageError(bad_value(key, value, "not a listen address", fix)) from None
    if not 0 <= number <= 0xFFFF:
        raise UsageError(bad_value(key, value, "port out of range 0-65535", fix))
    return Listen(address, number)


def parse_labels(value: Any, key: str) -> str:
    """ "auto", "total", "target" or "top:N" (N >= 1), normalised."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in ("auto", "total", "target"):
        return text
    head, _, count = text.partition(":")
    if head == "top" and count.isdigit() and int(count) >= 1:
        return f"top:{int(count)}"
    fix = 'write "total", "target", "top:N" (the N worst targets) or "auto"'
    raise UsageError(bad_value(key, value, "unknown label mode", fix))


def labelled_targets(mode: str, summary: RunSummary) -> list[TargetStats]:
    """The targets with series of their own: every one ("target"; "auto" up to AUTO_TARGETS),
    none ("total"), or the N worst by loss, then p99 ("top:N"; "auto" past AUTO_TARGETS)."""
    n = len(summary.per_target)
    if mode == "target" or (mode == "auto" and n <= AUTO_TARGETS):
        return list(summary.per_target)
    if mode == "total":
        return []
    top = TOP_AUTO if mode == "auto" else int(mode.partition(":")[2])
    worst = sorted(summary.per_target, key=lambda t: (-t.counts.loss_pct, -t.rtt.p99_ns, t.target))
    return sorted(worst[:top], key=lambda t: t.target)


@dataclass(frozen=True, slots=True)
class Family:
    """One metric as columns: a series per label value (`label` = ""; one unlabelled series).
    Histograms add the `le` bounds and each series' cumulative bucket counts and sum; their
    `values` are the counts. Columns, not a sample object per line: 1000 targets make 33,000
    lines, rendered every second."""

    name: str  # counters without "_total", info without "_info"
    kind: str  # "counter" | "gauge" | "histogram" | "info"
    help: str
    label: str  # "target", "worker", "version" or ""
    keys: tuple[str, ...]  # the label's value of each series
    values: tuple[float, ...]
    les: tuple[str, ...] = ()
    cumulative: tuple[tuple[int, ...], ...] = ()
    sums: tuple[float, ...] = ()

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) of every line, as prometheus-client adds them."""
        tail = {"counter": "_total", "info": "_info"}.get(self.kind, "")
        for i, (key, value) in enumerate(zip(self.keys, self.values, strict=True)):
            labels = {self.label: key} if self.label else {}
            if self.kind == "histogram":
                for le, count in zip(self.les, self.cumulative[i], strict=True):
                    yield f"{self.name}_bucket", {**labels, "le": le}, count
                yield f"{self.name}_count", labels, value
                yield f"{self.name}_sum", labels, self.sums[i]
            else:
                yield self.name + tail, labels, value


# (name without _total, Counts field, help) of the per-target counters.
_COUNTERS = (
    ("loadgen_probes_sent", "sent", "Probes sent (closed seconds, by send time)."),
    ("loadgen_replies", "received", "Good replies within the timeout."),
    ("loadgen_replies_late", "late", "Good replies after the timeout, within the linger."),
    ("loadgen_probes_lost", "lost", "Probes nothing came back for by the linger."),
    ("loadgen_probes_errored", "errored", "Probes answered only by an ICMP error or damage."),
    ("loadgen_duplicates", "duplicates", "Further good replies to an answered probe."),
    ("loadgen_reordered", "reordered", "Replies that overtook a later probe's reply."),
    ("loadgen_bitflips", "bitflips", "Replies whose payload differs from what was sent."),
    ("loadgen_icmp_errors", "icmp_errors", "ICMP errors quoting one of our probes."),
)


def _outages(summary: RunSummary, rows: Sequence[TargetStats]) -> list[Outages]:
    none = Outages()
    return [
        summary.outages_total
        if t is summary.total
        else (summary.outages[t.target] if summary.outages else none)
        for t in rows
    ]


def families(
    summary: RunSummary,
    names: Sequence[str],
    mode: str,
    *,
    buckets: int,
    generator: GeneratorSecond | None,
    workers: Sequence[tuple[int, int, int, int]],
    version: str,
) -> list[Family]:
    """Every metric: per-target counters and the RTT histogram for the labelled targets and
    the total; rates and the generator verdict of the last closed second; per-worker counters
    from `workers` = (worker, cpu_ns, send_errors, rx_dropped)."""
    rows = [*labelled_targets(mode, summary), summary.total]
    keys = (*(names[t.target] for t in rows[:-1]), "total")
    counts = [t.counts for t in rows]

    def counter(name: str, text: str, values: Sequence[float]) -> Family:
        return Family(name, "counter", text, "target", keys, tuple(values))

    out = [counter(n, text, [getattr(c, f) for c in counts]) for n, f, text in _COUNTERS]
    outs = _outages(summary, rows)
    out.append(
        counter(
            "loadgen_outages",
            "Runs of consecutive lost probes of at least outage_min probes.",
            [o.count for o in outs],
        )
    )
    out.append(
        counter(
            "loadgen_outage_seconds",
            "Time in outages (send-time span, see outages).",
            [o.total_ns / NS_PER_S for o in outs],
        )
    )
    hist = np.zeros((len(rows), buckets + 1), dtype=np.int64)  # the last: +Inf
    for i, t in enumerate(rows):
        hist[i, : len(t.rtt.hist)] = t.rtt.hist
    cumulative = np.cumsum(hist, axis=1)
    cumulative[:, -1] = [t.rtt.count for t in rows]  # the last bound takes any RTT past it
    les = (*(repr(b / NS_PER_S) for b in rtthist.upper_bounds_ns(buckets)), "+Inf")
    out.append(
        Family(
            "loadgen_rtt_seconds",
            "histogram",
            "RTT of good replies.",
            "target",
            keys,
            tuple(t.rtt.count for t in rows),
            les,
            tuple(map(tuple, cumulative.tolist())),
            tuple(t.rtt.avg_ns * t.rtt.count / NS_PER_S for t in rows),
        )
    )
    out += _generator(generator, summary.seconds)
    out += _workers(workers)
    out.append(Family("loadgen_build", "info", "loadgen version.", "version", (version,), (1,)))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(fams: Sequence[Family]) -> str:
    """The Prometheus text format (0.0.4) of `fams`, the lines prometheus-client writes for
    them (counters and info named with their suffix in HELP and TYPE), about 30x faster: the
    textfile is written every closed second."""
    lines: list[str] = []
    escaped: dict[tuple[str, int], list[str]] = {}  # the target families share one keys tuple
    for f in fams:
        tail = {"counter": "_total", "info": "_info"}.get(f.kind, "")
        kind = "gauge" if f.kind == "info" else f.kind
        lines += [f"# HELP {f.name}{tail} {f.help}", f"# TYPE {f.name}{tail} {kind}"]
        if not f.label:
            lines += [f"{f.name}{tail} {v}" for v in f.values]
            continue
        labels = escaped.get((f.label, id(f.keys)))
        if labels is None:
            labels = escaped[f.label, id(f.keys)] = [f'{f.label}="{_escape(k)}"' for k in f.keys]
        if f.kind != "histogram":
            lines += [
                f"{f.name}{tail}{{{lab}}} {v}" for lab, v in zip(labels, f.values, strict=True)
            ]
            continue
        bucket = [f'{f.name}_bucket{{{{{{}},le="{le}"}}}} ' for le in f.les]
        for lab, cum, count, total in zip(labels, f.cumulative, f.values, f.sums, strict=True):
            lines += [b.format(lab) + str(c) for b, c in zip(bucket, cum, strict=True)]
            lines += [f"{f.name}_count{{{lab}}} {count}", f"{f.name}_sum{{{lab}}} {total}"]
    return "\n".join(lines) + "\n"


def _gauge(name: str, text: str, value: float) -> Family:
    return Family(name, "gauge", text, "", ("",), (value,))


def _generator(gen: GeneratorSecond | None, seconds: int) -> list[Family]:
    return [
        _gauge(
            "loadgen_seconds_closed", "Seconds closed so far: what every figure covers.", seconds
        ),
        _gauge(
            "loadgen_requested_rate_pps",
            "Probes per second the timetable asked for in the last closed second.",
            gen.requested_pps if gen else 0.0,
        ),
        _gauge(
            "loadgen_achieved_rate_pps",
            "Probes per second sent in the last closed second.",
            gen.achieved_pps if gen else 0.0,
        ),
        _gauge(
            "loadgen_generator_limited",
            "1 if loadgen itself could not keep up in the last closed second, else 0.",
            1.0 if gen and gen.limited else 0.0,
        ),
    ]


def _workers(workers: Sequence[tuple[int, int, int, int]]) -> list[Family]:
    per = (
        ("loadgen_worker_cpu_seconds", "CPU time of each worker process.", 1, 1 / NS_PER_S),
        ("loadgen_send_errors", "Sends the kernel refused (never sent, not counted).", 2, 1),
        ("loadgen_socket_drops", "Packets the kernel dropped at a worker's socket.", 3, 1),
    )
    keys = tuple(str(w[0]) for w in workers)
    return [
        Family(name, "counter", text, "worker", keys, tuple(w[col] * scale for w in workers))
        for name, text, col, scale in per
    ]
