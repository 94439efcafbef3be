"""The CSV export (`--csv FILE`): the JSONL's per-second rows ("second" and "second_total"),
one line each under a header row, for spreadsheets.

The columns are the JSONL keys of a "second_total" row, in order, with its nested values
flattened: `generator` becomes generator_requested_pps, generator_achieved_pps and per worker
w{k}_{figure}; a list (generator_limits, rtt_hist) is one cell joined by spaces; null is an
empty cell, a bool 1 or 0. A "second" row leaves the generator cells empty. The header is
fixed by the first second, so every line has the same columns.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from typing import IO, Any

from loadgen.errors import UsageError
from loadgen.output.report import export_failure


def flatten(row: Mapping[str, Any]) -> dict[str, str]:
    """One JSONL object as CSV cells, keyed by column name."""
    out: dict[str, str] = {}
    for key, value in row.items():
        if key == "generator" and isinstance(value, Mapping):
            out["generator_requested_pps"] = _cell(value.get("requested_pps"))
            out["generator_achieved_pps"] = _cell(value.get("achieved_pps"))
            for k, worker in enumerate(value.get("workers", ())):
                out.update((f"w{k}_{name}", _cell(v)) for name, v in worker.items())
        else:
            out[key] = _cell(value)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


class CsvWriter:
    """Writes the CSV export; like JsonlWriter, a failed write is kept in `error`, not raised."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: str | None = None
        self.lines = 0
        self._columns: list[str] | None = None
        try:
            self._file: IO[str] = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as e:
            raise UsageError(
                f"cannot write the CSV export {path!r}: {e.strerror}; pick a writable path"
            ) from e
        self._csv = csv.writer(self._file, lineterminator="\n")

    def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """The rows of one closed second (its "second_total" last, as `second_rows` makes them)."""
        if self.error is not None or not rows:
            return
        cells = [flatten(r) for r in rows]
        out: list[list[str]] = []
        if self._columns is None:
            self._columns = list(cells[-1])
            out.append(self._columns)
        out += [[c.get(name, "") for name in self._columns] for c in cells]
        try:
            self._csv.writerows(out)
            self._file.flush()
        except OSError as e:
            self.error = export_failure(self.path, e, self.lines).replace("JSONL", "CSV")
        else:
            self.lines += len(out)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as e:
            if self.error is None:
                self.error = export_failure(self.path, e, self.lines).replace("JSONL", "CSV")
