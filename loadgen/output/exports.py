"""A run's files: the JSONL export (with its "run" header), the CSV export and the HTML report
written from the JSONL at the end (to a temporary JSONL when only a report was asked for).

Opens every file before the run starts, so a bad path is a usage error then; a failure later
is kept as one line (`error`) and never stops the run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from loadgen import __version__
from loadgen.errors import UsageError
from loadgen.output.csvexport import CsvWriter
from loadgen.output.report import JsonlWriter, breach_rows, second_rows
from loadgen.plan import RunPlan
from loadgen.sla import Reading, SlaVerdict
from loadgen.stats import RunSummary, SecondReport

REPORT_NEEDS = (
    "the HTML report needs matplotlib and msgspec: pip install 'loadgen[report]' (or drop --report)"
)


def require_report() -> None:
    """Raise the one-line UsageError if the report's libraries are missing."""
    try:
        import matplotlib  # noqa: F401, PLC0415
        import msgspec  # noqa: F401, PLC0415
    except ImportError:
        raise UsageError(REPORT_NEEDS) from None


def run_header(plan: RunPlan, command: Sequence[str]) -> dict[str, Any]:
    """The JSONL "run" object's figures (RUN_HEADER_KEYS in report)."""
    p = plan.profile
    return {
        "loadgen": __version__,
        "command": list(command) or None,
        "profile": p.source,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "pinned": [w.cpu for w in plan.workers],
        "workers": len(plan.workers),
        "targets": len(plan.targets),
        "requested_pps": plan.rate_pps,
        "count": p.count,
        "duration_s": None if p.duration_ns is None else p.duration_ns / 1e9,
        "timestamps": p.timestamps,
        "tx_timestamps": p.tx_timestamps,
        "tx_path": p.tx_path,
        "run_id": plan.run_id,
        "t": time.time(),
    }


class Exports:
    """The files of one run, as its profile asks; `with Exports(plan, command) as out:`."""

    def __init__(self, plan: RunPlan, command: Sequence[str] = ()) -> None:
        p = plan.profile
        self.report = p.report
        if self.report is not None:
            require_report()
        self._temp: str | None = None
        path = p.jsonl
        if path is None and self.report is not None:
            fd, path = tempfile.mkstemp(prefix="loadgen-", suffix=".jsonl")
            os.close(fd)
            self._temp = path
        self.families = [t.family for t in plan.targets]
        self.jsonl = JsonlWriter(path, self.families) if path is not None else None
        try:
            self.csv = CsvWriter(p.csv) if p.csv is not None else None
        except UsageError:
            if self.jsonl is not None:
                self.jsonl.close()
            self._drop_temp()
            raise
        self._report_error: str | None = None
        if self.jsonl is not None:
            self.jsonl.write_run(run_header(plan, command))

    @property
    def error(self) -> str | None:
        """The first failure of any export, as one line; None while all is well."""
        for e in (self.jsonl and self.jsonl.error, self.csv and self.csv.error):
            if e:
                return e
        return self._report_error

    def second(
        self, report: SecondReport, names: Sequence[str], breaches: Sequence[Reading] = ()
    ) -> None:
        """A closed second's rows; its SLA breaches go to the JSONL only (the CSV's rows are
        the per-second figures, one column set)."""
        rows = second_rows(report, names, self.families)
        if self.jsonl is not None:
            self.jsonl.write_rows(rows + breach_rows(report, names, breaches))
        if self.csv is not None:
            self.csv.write_rows(rows)

    def summary(
        self,
        summary: RunSummary,
        names: Sequence[str],
        extra: Mapping[str, Any],
        sla: SlaVerdict | None = None,
    ) -> None:
        if self.jsonl is not None:
            self.jsonl.write_summary(summary, names, extra, sla)

    def _drop_temp(self) -> None:
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)

    def close(self) -> None:
        """Close the exports and write the report from the JSONL (even of an interrupted run)."""
        if self.csv is not None:
            self.csv.close()
        if self.jsonl is not None:
            self.jsonl.close()
        try:
            if self.report is not None and self.jsonl is not None and self.jsonl.error is None:
                from loadgen.output.htmlreport import write_report  # noqa: PLC0415

                try:
                    write_report(self.jsonl.path, self.report)
                except UsageError as e:
                    self._report_error = f"the report was not written: {e}"
        finally:
            self._drop_temp()
