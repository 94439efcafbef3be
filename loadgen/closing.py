"""Closing seconds: which seconds a coordinator tick closes, and the generator's verdict on each.

The rule: a second closes once the clock and every live worker's watermark have passed its end;
at the end of a run (or once no worker is live) every second with records closes, plus one more
when the workers counted things (drops, refusals, a lag) that no closed second shows yet. Each
closed second gets `selfcheck`'s verdict from the probes each worker sent in it. Pure: the
coordinator passes `now_ns` and the watermarks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from loadgen.selfcheck import GeneratorCheck
from loadgen.stats import NS_PER_S, Aggregator, SecondReport


class SecondCloser:
    """Closes the aggregator's seconds and judges the generator in each. `workers` maps each
    worker to its targets (every target belongs to exactly one)."""

    def __init__(
        self,
        aggregator: Aggregator,
        check: GeneratorCheck,
        workers: Mapping[int, Sequence[int]],
    ) -> None:
        self.aggregator = aggregator
        self.check = check
        self.n_workers = max(workers, default=-1) + 1
        self._worker_of = np.zeros(aggregator.n_targets, dtype=np.int64)
        for worker, targets in workers.items():
            self._worker_of[list(targets)] = worker
        self.limited_seconds: list[int] = []  # seconds in which loadgen itself fell short

    def close(
        self, now_ns: int, live_watermarks_ns: Sequence[int], *, final: bool = False
    ) -> list[SecondReport]:
        """The seconds this tick closes, in order, each with its generator verdict. A worker
        that is done or gone holds nothing back (if it died, its missing outcomes show up as
        unresolved rather than stalling every later second); seconds in the future are never
        closed, whatever a watermark says."""
        agg = self.aggregator
        ending = final or not live_watermarks_ns
        if ending:
            reports = agg.close_all()
            if not reports and self.check.unshown():
                # What the workers counted after the last closed second needs a second to be in.
                reports = agg.close_through(agg.start_ns + (agg.closed_seconds + 1) * NS_PER_S)
        else:
            reports = agg.close_through(min(*live_watermarks_ns, now_ns))
        # The run's last second takes every counter no earlier second shows.
        return [
            self._judge(report, final=ending and i == len(reports) - 1)
            for i, report in enumerate(reports)
        ]

    def sent_by_worker(self, report: SecondReport) -> dict[int, int]:
        """Probes each worker sent in the report's second (from its targets' SENT counts)."""
        sent = np.zeros(self.n_workers, dtype=np.int64)
        for ts in report.per_target:
            sent[self._worker_of[ts.target]] += ts.counts.sent
        return dict(enumerate(sent.tolist()))

    def _judge(self, report: SecondReport, *, final: bool) -> SecondReport:
        verdict = self.check.second(report.second, self.sent_by_worker(report), final=final)
        if verdict.limited:
            self.limited_seconds.append(report.second)
        return dataclasses.replace(report, generator=verdict)
