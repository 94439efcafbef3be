"""Reading a run's JSONL export back for `loadgen report`: the one owner of what a report knows.

Large runs (10k targets, an hour: 36M lines) are read in chunks of lines decoded at once by
msgspec into slim rows and folded into numpy arrays as they come: per-second figures only for
the total and the worst targets, and for all targets a loss grid of bounded size (targets in
groups worst first x seconds in bins). The worst-first order comes from the summary line,
which is read first from the file's end; a file without one (a run that died) is read twice.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, cast

import msgspec
import numpy as np
import numpy.typing as npt

from loadgen.errors import UsageError
from loadgen.output.report import JSONL_SCHEMA_VERSION

# JSONL schema versions a report can read (2: no "run" header; later ones add keys only)
READ_VERSIONS = tuple(range(2, JSONL_SCHEMA_VERSION + 1))
GRID_ROWS = 100  # target groups of the loss heatmap
GRID_COLUMNS = 600  # time bins of every time axis
_CHUNK_BYTES = 1 << 20  # larger buffers are fresh mmaps: a page fault per 4 KiB per chunk
_SMOKE_KEYS = ("rtt_min_us", "rtt_p50_us", "rtt_p90_us", "rtt_p99_us", "rtt_max_us")

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


class ReportError(UsageError):
    """The JSONL file cannot be turned into a report; the message names the file and the fix."""


class _Row(msgspec.Struct, gc=False):
    """What a report needs of every line; the rest of a non-"second" line, and the RTT figures
    of the worst targets, are decoded apart. Scalars only: the collector need not track the
    millions of rows (gc=False)."""

    type: str = ""
    v: int = 0
    second: int = 0
    target: int = 0
    sent: int = 0
    lost: int = 0


class _FullRow(_Row, gc=False):
    """A "second" line with the RTT figures a per-second series shows."""

    rtt_count: int = 0
    rtt_min_us: float | None = None
    rtt_p50_us: float | None = None
    rtt_p90_us: float | None = None
    rtt_p99_us: float | None = None
    rtt_max_us: float | None = None


_CHUNK = msgspec.json.Decoder(list[_Row])
_FULL_CHUNK = msgspec.json.Decoder(list[_FullRow])
_V = attrgetter("v")
_COLUMNS = tuple(map(attrgetter, ("second", "target", "sent", "lost")))
_ONE = msgspec.json.Decoder(_FullRow)
_ANY = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class Series:
    """Per-second figures of one row (a target or the total), index = second; NaN: no RTT."""

    name: str
    sent: Ints
    lost: Ints
    count: Ints  # RTT samples
    rtt: Floats  # seconds x 5: min, p50, p90, p99, max in µs
    rtt_hist: Ints | None  # seconds x buckets (see `hist_edges_us`), None if the file has none

    @property
    def loss_pct(self) -> Floats:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sent > 0, 100.0 * self.lost / self.sent, np.nan)


@dataclass(frozen=True, slots=True)
class LossGrid:
    """Lost and sent probes per (target group, time bin); groups are worst first."""

    sent: Ints
    lost: Ints
    labels: tuple[str, ...]
    bin_s: int


@dataclass(frozen=True, slots=True)
class RunData:
    path: str
    header: Mapping[str, Any]  # the "run" object; empty for schema 2
    summary: Mapping[str, Any] | None  # None: the run ended before it wrote one
    totals: Sequence[Mapping[str, Any]]  # the "second_total" objects in order
    seconds: int
    t_start: float
    targets: Sequence[Mapping[str, Any]]  # per-target figures, worst first
    total: Series
    worst: tuple[Series, ...]  # per-second series of the first targets of `targets`
    grid: LossGrid


def hist_edges_us(buckets: int) -> Floats:
    """Bucket k of `rtt_hist` holds RTTs in (8*2^(k-1), 8*2^k] µs; bucket 0 those <= 8 µs."""
    return np.concatenate(([0.0], 8.0 * 2.0 ** np.arange(buckets)))


def worst_key(row: Mapping[str, Any]) -> tuple[float, float]:
    """Sort key, worst first: loss, then p99 (no RTT sorts last)."""
    p99 = row.get("rtt_p99_us")
    return (-float(row.get("loss_pct") or 0.0), -(p99 if p99 is not None else -1.0))


class _Chunk:
    """Whole lines of the file read at once: `rows` decoded, `line(i)` the bytes of row i."""

    def __init__(
        self, path: str, first: int, block: memoryview, decoder: msgspec.json.Decoder[Any]
    ) -> None:
        self.first = first
        self.numbers: list[int] | None = None  # line numbers of rows, when blank lines were cut
        self.lines: list[bytes] | None = None
        # the chunk as one JSON array, newlines turned to commas in place: one copy, no split
        self.text = bytearray(len(block) + 2)
        self.text[0], self.text[1:-1], self.text[-1] = ord("["), block, ord("]")
        view = np.frombuffer(self.text, np.uint8)
        self.newlines = np.flatnonzero(view == ord("\n"))  # offsets in `text`
        view[self.newlines] = ord(",")
        del view  # releases `text` for the decoder
        try:
            self.rows: Sequence[_Row] = decoder.decode(self.text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.rows = self._decode_lines(path, bytes(block), decoder)

    def _decode_lines(
        self, path: str, block: bytes, decoder: msgspec.json.Decoder[Any]
    ) -> Sequence[_Row]:
        """Blank lines, or a bad line to name: decode line by line."""
        numbered = [(n, ln) for n, ln in enumerate(block.split(b"\n")) if ln.strip()]
        self.numbers = [self.first + n for n, _ in numbered]
        self.lines = [ln for _, ln in numbered]
        try:
            rows: Sequence[_Row] = decoder.decode(b"[" + b",".join(self.lines) + b"]")
            return rows
        except (msgspec.DecodeError, msgspec.ValidationError):
            for number, line in numbered:  # find the line to name
                try:
                    _ONE.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as err:
                    raise _bad_line(path, self.first + number, line, err) from None
            raise  # pragma: no cover - a chunk fails only through one of its lines

    @property
    def line_count(self) -> int:
        return len(self.newlines) + 1

    def number(self, i: int) -> int:
        return self.first + i if self.numbers is None else self.numbers[i]

    def line(self, i: int) -> bytes:
        if self.lines is not None:
            return self.lines[i]
        start = 1 if i == 0 else int(self.newlines[i - 1]) + 1
        stop = int(self.newlines[i]) if i < len(self.newlines) else len(self.text) - 1
        return bytes(self.text[start:stop])


def _chunks(path: str, decoder: msgspec.json.Decoder[Any] = _CHUNK) -> Iterator[_Chunk]:
    """The file in chunks of whole lines, decoded; mapped, not read: no copy through a buffer."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
            number, start = 1, 0
            while start < size:
                if start + _CHUNK_BYTES >= size:
                    cut = size - 1 if mm[size - 1] == ord("\n") else size
                else:
                    cut = mm.rfind(b"\n", start, start + _CHUNK_BYTES)
                    cut = mm.find(b"\n", start + _CHUNK_BYTES) if cut < 0 else cut
                    cut = size if cut < 0 else cut
                with view[start:cut] as block:
                    chunk = _Chunk(path, number, block, decoder)
                yield chunk
                number += chunk.line_count
                start = cut + 1


def _bad_line(path: str, number: int, line: bytes, err: Exception) -> ReportError:
    return ReportError(
        f"{path}: line {number} is not a loadgen JSONL object ({err}); the file is damaged "
        "or not a loadgen export: give the file `--jsonl` wrote"
    )


def _check_version(path: str, chunk: _Chunk) -> None:
    v = np.fromiter(map(_V, chunk.rows), np.int64, len(chunk.rows))
    bad = np.flatnonzero((v < READ_VERSIONS[0]) | (v > READ_VERSIONS[-1]))
    if len(bad):
        raise ReportError(
            f"{path}: line {chunk.number(int(bad[0]))} is JSONL schema v{v[bad[0]]}; this "
            f"loadgen reads v{READ_VERSIONS[0]}-v{READ_VERSIONS[-1]}: render it with the "
            "loadgen that wrote it"
        )


def _tail_summary(path: str) -> Mapping[str, Any] | None:
    """The last line, if it is the summary (read from the end: it can hold 10k targets)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        step = 1 << 20
        while True:
            start = max(0, size - step)
            f.seek(start)
            tail = f.read(size - start).rstrip(b"\n")
            if b"\n" in tail or start == 0:
                break
            step *= 4
    try:
        obj = _ANY.decode(tail.rsplit(b"\n", 1)[-1])
    except msgspec.DecodeError:
        return None  # named with its line number by the full read
    return obj if isinstance(obj, dict) and obj.get("type") == "summary" else None


def _scan(path: str) -> tuple[int, list[dict[str, Any]]]:
    """Without a summary: seconds and per-target loss/p99 from one extra pass."""
    seconds, sent, lost = 0, dict[int, int](), dict[int, int]()
    p99: dict[int, float] = {}
    names: dict[int, str] = {}
    for chunk in _chunks(path, _FULL_CHUNK):
        for i, row in enumerate(cast(Sequence[_FullRow], chunk.rows)):
            if row.type != "second":
                continue
            seconds = max(seconds, row.second + 1)
            t = row.target
            sent[t] = sent.get(t, 0) + row.sent
            lost[t] = lost.get(t, 0) + row.lost
            if row.rtt_p99_us is not None:
                p99[t] = max(p99.get(t, 0.0), row.rtt_p99_us)
            if t not in names:
                names[t] = _ANY.decode(chunk.line(i)).get("name", f"#{t}")
    rows = [
        {
            "target": t,
            "name": names[t],
            "sent": sent[t],
            "lost": lost[t],
            "loss_pct": 100.0 * lost[t] / sent[t] if sent[t] else 0.0,
            "rtt_p99_us": p99.get(t),
        }
        for t in sorted(sent)
    ]
    return seconds, rows


class _Fold:
    """Folds decoded rows into the arrays of a RunData."""

    def __init__(self, seconds: int, order: Sequence[Mapping[str, Any]], worst: int) -> None:
        n = max((int(r["target"]) for r in order), default=-1) + 1
        self.rank = np.full(max(n, 1), len(order), dtype=np.int64)
        for rank, row in enumerate(order):
            self.rank[int(row["target"])] = rank
        self.group = max(1, math.ceil(len(order) / GRID_ROWS))
        self.bin_s = max(1, math.ceil(seconds / GRID_COLUMNS))
        shape = (
            math.ceil(max(len(order), 1) / self.group),
            math.ceil(max(seconds, 1) / self.bin_s),
        )
        self.grid_sent = np.zeros(shape, dtype=np.int64)
        self.grid_lost = np.zeros(shape, dtype=np.int64)
        self.seconds, self.n_worst = seconds, min(worst, len(order))
        self.w_sent = np.zeros((self.n_worst, seconds), dtype=np.int64)
        self.w_lost = np.zeros((self.n_worst, seconds), dtype=np.int64)
        self.w_count = np.zeros((self.n_worst, seconds), dtype=np.int64)
        self.w_rtt = np.full((self.n_worst, seconds, 5), np.nan)
        self.totals: list[dict[str, Any]] = []

    def add(self, path: str, chunk: _Chunk) -> None:
        rows = chunk.rows
        others = [i for i, r in enumerate(rows) if r.type != "second"]  # a few per second
        self.totals += [
            _ANY.decode(chunk.line(i)) for i in others if rows[i].type == "second_total"
        ]
        n = len(rows)  # columns through C-level getters, not a Python loop per row
        sec, tgt, sent, lost = (np.fromiter(map(get, rows), np.int64, n) for get in _COLUMNS)
        keep = (sec >= 0) & (sec < self.seconds) & (tgt >= 0) & (tgt < len(self.rank))
        keep[others] = False  # "second" rows only
        rank = np.full(n, len(self.rank) + self.group, dtype=np.int64)
        rank[keep] = self.rank[tgt[keep]]
        keep &= rank < self.grid_sent.shape[0] * self.group
        cell = (rank[keep] // self.group, sec[keep] // self.bin_s)
        np.add.at(self.grid_sent, cell, sent[keep])
        np.add.at(self.grid_lost, cell, lost[keep])
        for i in np.flatnonzero(keep & (rank < self.n_worst)):
            r, s = int(rank[i]), int(sec[i])
            row = self._full(path, chunk, int(i))
            self.w_sent[r, s], self.w_lost[r, s] = row.sent, row.lost
            self.w_count[r, s] = row.rtt_count
            self.w_rtt[r, s] = [
                math.nan if v is None else v
                for v in (row.rtt_min_us, row.rtt_p50_us, row.rtt_p90_us, row.rtt_p99_us)
            ] + [math.nan if row.rtt_max_us is None else row.rtt_max_us]

    @staticmethod
    def _full(path: str, chunk: _Chunk, i: int) -> _FullRow:
        line = chunk.line(i)
        try:
            return _ONE.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise _bad_line(path, chunk.number(i), line, err) from None


def _hists(rows: Sequence[Mapping[str, Any]], seconds: int) -> Ints | None:
    """The `rtt_hist` of rows with a "second" each, as a seconds x buckets array."""
    if not any("rtt_hist" in r for r in rows):
        return None
    width = max((len(r.get("rtt_hist") or ()) for r in rows), default=0)
    out = np.zeros((seconds, max(width, 1)), dtype=np.int64)
    for r in rows:
        h = r.get("rtt_hist") or ()
        if 0 <= r["second"] < seconds and h:
            out[r["second"], : len(h)] = h
    return out


def _total_series(totals: Sequence[Mapping[str, Any]], seconds: int) -> Series:
    sent = np.zeros(seconds, dtype=np.int64)
    lost = np.zeros(seconds, dtype=np.int64)
    count = np.zeros(seconds, dtype=np.int64)
    rtt = np.full((seconds, 5), np.nan)
    for r in totals:
        s = r["second"]
        if 0 <= s < seconds:
            sent[s], lost[s], count[s] = r["sent"], r["lost"], r["rtt_count"]
            rtt[s] = [math.nan if r.get(k) is None else r[k] for k in _SMOKE_KEYS]
    return Series("total", sent, lost, count, rtt, _hists(totals, seconds))


def load_run(path: str, worst: int = 8) -> RunData:
    """Read a JSONL export; `worst` targets keep their per-second figures."""
    try:
        if os.path.getsize(path) == 0:
            raise ReportError(
                f"{path} is empty: the run closed no second; run longer, or see its errors"
            )
        summary = _tail_summary(path)
        if summary is not None:
            seconds = int(summary.get("seconds", 0))
            targets = sorted(summary.get("targets", []), key=worst_key)
        else:
            seconds, scanned = _scan(path)
            targets = sorted(scanned, key=worst_key)
        header: Mapping[str, Any] = {}
        fold = _Fold(seconds, targets, worst)
        for chunk in _chunks(path):
            _check_version(path, chunk)
            if chunk.first == 1 and chunk.rows and chunk.rows[0].type == "run":
                header = _ANY.decode(chunk.line(0))
            fold.add(path, chunk)
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror}; give a JSONL export") from e
    if not fold.totals and summary is None:
        raise ReportError(f"{path} holds no closed second: run longer, or see the run's errors")
    worst_rows = targets[: fold.n_worst]
    t_start = float(summary["t_start"]) if summary else float(fold.totals[0]["t"])
    return RunData(
        path=path,
        header=header,
        summary=summary,
        totals=fold.totals,
        seconds=seconds,
        t_start=t_start,
        targets=targets,
        total=_total_series(fold.totals, seconds),
        worst=tuple(
            Series(
                str(r["name"]), fold.w_sent[k], fold.w_lost[k], fold.w_count[k], fold.w_rtt[k], None
            )
            for k, r in enumerate(worst_rows)
        ),
        grid=LossGrid(
            fold.grid_sent, fold.grid_lost, _grid_labels(targets, fold.group), fold.bin_s
        ),
    )


def _grid_labels(targets: Sequence[Mapping[str, Any]], group: int) -> tuple[str, ...]:
    if group == 1:
        return tuple(str(t["name"]) for t in targets)
    return tuple(
        f"worst {k + 1}-{min(k + group, len(targets))}" for k in range(0, len(targets), group)
    )
