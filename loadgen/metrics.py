"""What loadgen exposes to Prometheus, as plain values: names, help, labels and samples.

Owns the metric names and their meaning, the `metrics` listen address and `metrics_labels`
(which targets get their own series), and turns the merged, closed seconds (`RunSummary`, the
last closed second's generator verdict, the workers' counters) into `Family` values. Every
series carries `target`; target="total" is the all-targets row in every label mode, like the
JSONL's total. `output.prometheus` hands these to prometheus-client. Pure: no clock, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

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
class Sample:
    suffix: str  # "", "_bucket", "_sum", "_count"
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # counters without "_total": prometheus-client adds it
    kind: str  # "counter" | "gauge" | "histogram" | "info"
    help: str
    samples: tuple[Sample, ...]


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


def _rows(summary: RunSummary, names: Sequence[str], mode: str) -> list[tuple[str, TargetStats]]:
    chosen = [(names[t.target], t) for t in labelled_targets(mode, summary)]
    return [*chosen, ("total", summary.total)]


def _outages(summary: RunSummary, ts: TargetStats) -> Outages:
    if ts is summary.total:
        return summary.outages_total
    return summary.outages[ts.target] if summary.outages else Outages()


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
    rows = _rows(summary, names, mode)
    out = [
        Family(
            name,
            "counter",
            text,
            tuple(Sample("_total", (("target", n),), getattr(t.counts, field)) for n, t in rows),
        )
        for name, field, text in _COUNTERS
    ]
    outs = [(n, _outages(summary, t)) for n, t in rows]
    out.append(
        Family(
            "loadgen_outages",
            "counter",
            "Runs of consecutive lost probes of at least outage_min probes.",
            tuple(Sample("_total", (("target", n),), o.count) for n, o in outs),
        )
    )
    out.append(
        Family(
            "loadgen_outage_seconds",
            "counter",
            "Time in outages (send-time span, see outages).",
            tuple(Sample("_total", (("target", n),), o.total_ns / NS_PER_S) for n, o in outs),
        )
    )
    bounds = [repr(b / NS_PER_S) for b in rtthist.upper_bounds_ns(buckets)]
    hist: list[Sample] = []
    for n, t in rows:
        cum = 0
        for k, le in enumerate(bounds):
            cum += t.rtt.hist[k] if k < len(t.rtt.hist) else 0
            hist.append(Sample("_bucket", (("target", n), ("le", le)), cum))
        hist.append(Sample("_bucket", (("target", n), ("le", "+Inf")), t.rtt.count))
        hist.append(Sample("_count", (("target", n),), t.rtt.count))
        hist.append(Sample("_sum", (("target", n),), t.rtt.avg_ns * t.rtt.count / NS_PER_S))
    out.append(Family("loadgen_rtt_seconds", "histogram", "RTT of good replies.", tuple(hist)))
    out += _generator(generator, summary.seconds)
    out += _workers(workers)
    out.append(
        Family(
            "loadgen_build",
            "info",
            "loadgen version.",
            (Sample("_info", (("version", version),), 1),),
        )
    )
    return out


def _gauge(name: str, text: str, value: float) -> Family:
    return Family(name, "gauge", text, (Sample("", (), value),))


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
    return [
        Family(
            name,
            "counter",
            text,
            tuple(Sample("_total", (("worker", str(w[0])),), w[col] * scale) for w in workers),
        )
        for name, text, col, scale in per
    ]
