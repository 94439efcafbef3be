"""The bench's arithmetic: kernel counters, 100 ms windows, pacing error, loss and cost figures.

Pure: text and numbers in, figures out. Reads /proc/net/snmp and snmp6 (with the lab's
parsers), the summaries of `ping` and `fping`, and loadgen's JSONL export; turns counter
samples into steady-state windows.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from loadgen.lab.netops import parse_snmp, parse_snmp6

Snmp = Mapping[str, Mapping[str, int]]

_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?")
_ANSWER_KEYS = ("received", "late", "duplicates", "bitflips", "stale")  # not corrupted: the
# kernel counts a bad checksum as InCsumErrors, never as InEchoReps
_FLOOR_RE = re.compile(r"^sent (\d+) received (\d+) stamps \d+$", re.MULTILINE)
_HPING_RE = re.compile(r"(\d+) packets transmitted, (\d+) packets received")
_FPING_RE = re.compile(r"^\S+\s*:\s*xmt/rcv/%loss = (\d+)/(\d+)/", re.MULTILINE)


# snmp6's echo counters under the names snmp gives IPv4's, so every figure reads either family.
ICMP6_NAMES = {
    "InEchos": "Icmp6InEchos",
    "InEchoReps": "Icmp6InEchoReplies",
    "OutEchos": "Icmp6OutEchos",
    "OutEchoReps": "Icmp6OutEchoReplies",
    "InMsgs": "Icmp6InMsgs",
    "OutMsgs": "Icmp6OutMsgs",
    "InErrors": "Icmp6InErrors",
    "InCsumErrors": "Icmp6InCsumErrors",
}


def icmp6_counters(text: str) -> dict[str, int]:
    """The ICMPv6 counters of a /proc/net/snmp6 text, named as /proc/net/snmp's Icmp ones."""
    six = parse_snmp6(text)
    return {name: six[name6] for name, name6 in ICMP6_NAMES.items() if name6 in six}


def icmp_delta(before: Snmp, after: Snmp, family: int = 4) -> dict[str, int]:
    """Growth of every Icmp (family 4) or Icmp6 counter between two readings of a namespace."""
    group = "Icmp6" if family == 6 else "Icmp"
    b, a = before.get(group, {}), after.get(group, {})
    return {k: a[k] - b[k] for k in a if k in b}


def tcp_delta(before: Snmp, after: Snmp) -> dict[str, int]:
    """Growth of every Tcp counter (both IP versions share them) between two readings."""
    b, a = before.get("Tcp", {}), after.get("Tcp", {})
    return {k: a[k] - b[k] for k in a if k in b}


def in_requests(text: str, family: int = 4, probe: str = "icmp") -> int:
    """What the responder took in of a step's probes: InEchos, or for SYN probes its TCP
    InSegs (the bench's port is closed: each SYN is answered by a RST and nothing follows)."""
    if probe == "tcp-syn":
        return parse_snmp(text)["Tcp"]["InSegs"]
    return in_echos(text, family)


def in_echos(text: str, family: int = 4) -> int:
    """InEchos of a /proc/net/snmp (or, family 6, snmp6) text: echo requests taken in."""
    if family == 6:
        return icmp6_counters(text)["InEchos"]
    return parse_snmp(text)["Icmp"]["InEchos"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One 100 ms reading: monotonic time (the midpoint of the counter read), echo requests the
    responder has seen, tool CPU, and each process's memory as (pid, VmRSS, RssAnon) in bytes.

    instant_ns: the tick-aligned instant (monotonic) the read stands for (see sampling.py);
    None when no read fitted one, and then only t_ns says when it was taken.
    """

    t_ns: int
    requests_in: int
    cpu_s: float
    instant_ns: int | None = None
    rss: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Window:
    dt_s: float
    packets: int
    cpu_s: float
    on_grid: bool = False  # timed by its readings' instants, not by when they were taken

    @property
    def rate_pps(self) -> float:
        return self.packets / self.dt_s


def _window(a: Sample, b: Sample, on_grid: bool) -> Window:
    packets, cpu_s = b.requests_in - a.requests_in, b.cpu_s - a.cpu_s
    if on_grid and a.instant_ns is not None and b.instant_ns is not None:
        # A whole number of ticks: the counters moved only in the batches between the readings.
        return Window((b.instant_ns - a.instant_ns) / 1e9, packets, cpu_s, on_grid=True)
    return Window((b.t_ns - a.t_ns) / 1e9, packets, cpu_s)


def steady_windows(samples: Sequence[Sample], *, tick_paced: bool = False) -> list[Window]:
    """Windows between consecutive samples while packets flow, without the first and last
    (partial) ones: start-up and shutdown are not pacing. A tick-paced tool's windows are
    timed by their readings' tick-aligned instants where both have one; others (and the
    peers, which send all the time) by the midpoints of the reads."""
    windows = [_window(a, b, tick_paced) for a, b in itertools.pairwise(samples) if b.t_ns > a.t_ns]
    active = [i for i, w in enumerate(windows) if w.packets > 0]
    if len(active) < 3:
        return []
    return windows[active[0] + 1 : active[-1]]


def achieved_pps(windows: Sequence[Window]) -> float | None:
    seconds = sum(w.dt_s for w in windows)
    return sum(w.packets for w in windows) / seconds if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class PacingError:
    """Over windows, |achieved - reference| / reference: fractions, not percent."""

    p99: float
    max: float


def pacing_error(windows: Sequence[Window], reference_pps: float) -> PacingError | None:
    if not windows or reference_pps <= 0:
        return None
    rates = np.array([w.rate_pps for w in windows])
    errors = np.abs(rates - reference_pps) / reference_pps
    return PacingError(float(np.percentile(errors, 99)), float(errors.max()))


def per_million(cpu_s: float, probes: int) -> float | None:
    return cpu_s * 1e6 / probes if probes > 0 else None


def steady_cpu_per_million(windows: Sequence[Window]) -> float | None:
    """CPU-s per 1M probes while sending: start-up (imports, spawning) and linger left out."""
    return per_million(sum(w.cpu_s for w in windows), sum(w.packets for w in windows))


@dataclass(frozen=True, slots=True)
class ToolCounts:
    """What the tool itself says: probes sent and replies it took in (any outcome)."""

    sent: int
    answered: int


@dataclass(frozen=True, slots=True)
class Loss:
    """Loss split by where it happened, from the two namespaces' kernel ICMP counters.

    wire_requests: sent by the tool, never reached the responder's ICMP layer (InEchos).
    wire_replies: replies the responder sent (OutEchoReps) the client kernel never saw.
    self_client: replies the client kernel took in (InEchoReps) the tool did not count.
    self_responder: replies the responder sent the tool did not count (wire + self).
    """

    wire_requests: int
    wire_replies: int
    self_client: int
    self_responder: int
    kernel_sent: int  # client OutEchos: what the tool's sends became in the kernel


def loss_figures(
    counts: ToolCounts, client: Mapping[str, int], responder: Mapping[str, int]
) -> Loss:
    return Loss(
        wire_requests=counts.sent - responder.get("InEchos", 0),
        wire_replies=responder.get("OutEchoReps", 0) - client.get("InEchoReps", 0),
        self_client=client.get("InEchoReps", 0) - counts.answered,
        self_responder=responder.get("OutEchoReps", 0) - counts.answered,
        kernel_sent=client.get("OutEchos", 0),
    )


def parse_ping(text: str) -> ToolCounts | None:
    """iputils ping's summary line: transmitted, received and duplicates (replies too)."""
    m = _PING_RE.search(text)
    if m is None:
        return None
    return ToolCounts(int(m[1]), int(m[2]) + int(m[3] or 0))


def parse_fping(text: str) -> tuple[ToolCounts, int] | None:
    """fping -c -q per-target lines `addr : xmt/rcv/%loss = 10/10/0%`, summed; and targets."""
    rows = _FPING_RE.findall(text)
    if not rows:
        return None
    return ToolCounts(sum(int(x) for x, _ in rows), sum(int(r) for _, r in rows)), len(rows)


def parse_hping(text: str) -> ToolCounts | None:
    """hping3's statistics line (printed when SIGINT ends it): transmitted and received."""
    m = _HPING_RE.search(text)
    return None if m is None else ToolCounts(int(m[1]), int(m[2]))


def parse_floor(text: str) -> ToolCounts | None:
    """The kernel floor's lines `sent N received M stamps S`, one per worker, summed."""
    rows = _FLOOR_RE.findall(text)
    if not rows:
        return None
    return ToolCounts(sum(int(x) for x, _ in rows), sum(int(r) for _, r in rows))


@dataclass(frozen=True, slots=True)
class LoadgenTotals:
    counts: ToolCounts
    unaccounted: int  # summed over the summary and every closed second: anything but 0 is a bug
    failures: tuple[str, ...]
    interrupted: bool
    send_errors: int
    rx_dropped: int
    limited_seconds: int  # seconds loadgen's self-check says it could not keep up in


def parse_loadgen_jsonl(lines: Iterable[str]) -> LoadgenTotals | None:
    """The totals of loadgen's JSONL export (schema v1, see loadgen.output.report), None without a
    summary line (the run died before writing it)."""
    unaccounted = 0
    summary = None
    for line in lines:
        if not line.strip():
            continue
        obj = json.loads(line)
        if obj.get("type") == "second_total":
            unaccounted += abs(int(obj.get("unaccounted", 0)))
        elif obj.get("type") == "summary":
            summary = obj
    if summary is None:
        return None
    total, extra = summary["total"], summary.get("extra", {})
    # Every echo reply the client kernel counts lands in exactly one of these.
    answered = sum(int(total[k]) for k in _ANSWER_KEYS)
    return LoadgenTotals(
        counts=ToolCounts(int(total["sent"]), answered),
        unaccounted=unaccounted + abs(int(total["unaccounted"])),
        failures=tuple(str(f) for f in extra.get("failures", ())),
        interrupted=bool(extra.get("interrupted", False)),
        send_errors=int(extra.get("send_errors", 0)),
        rx_dropped=int(extra.get("rx_dropped", 0)),
        limited_seconds=len(extra.get("generator_limited_seconds", ())),
    )
