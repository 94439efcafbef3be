"""The generator's self-check: did loadgen itself keep up in each second?

Owns the per-second view of every worker (what its timetable had due, what it really sent,
pacing error, refused sends, socket drops, CPU) and the verdict: a second in which a worker
fell short of its timetable, had sends refused, gave up schedule or lost replies in its own
socket is generator-limited, and the reasons say which worker and how much. Pure: it takes
frames' cumulative counters and times, never reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadgen.messages import WorkerStats
from loadgen.stats import GeneratorSecond, WorkerSecond
from loadgen.units import NS_PER_S

# One 1 ms tick of probes may spill across a second boundary without anything being wrong.
SHORTFALL_TICK_S = 0.002
LAG_LIMIT_NS = 10_000_000  # behind its timetable by more than this: bursts no longer paced


@dataclass(frozen=True, slots=True)
class WorkerSchedule:
    index: int
    rate_pps: float
    total: int | None  # probes it will send in all (count or duration), None: until stopped

    def due_in(self, second: int) -> int:
        """Probes its timetable puts in [second, second + 1): probe k is due at k / rate."""

        def due_before(t_s: int) -> int:
            k = math.ceil(t_s * self.rate_pps) if t_s > 0 else 0
            return k if self.total is None else min(k, self.total)

        return due_before(second + 1) - due_before(second)


class GeneratorCheck:
    def __init__(self, workers: Sequence[WorkerSchedule], start_ns: int) -> None:
        self.workers = {w.index: w for w in workers}
        self.start_ns = start_ns
        self.stopped_at: int | None = None  # second in which sending was cut short
        # Per worker: second -> latest cumulative stats seen in it, and its worst lag.
        self._last: dict[int, dict[int, WorkerStats]] = {w: {} for w in self.workers}
        self._lag: dict[int, dict[int, int]] = {w: {} for w in self.workers}

    def on_frame(self, worker: int, now_ns: int, stats: WorkerStats) -> None:
        second = max(0, (now_ns - self.start_ns) // NS_PER_S)
        self._last[worker][second] = stats
        lags = self._lag[worker]
        lags[second] = max(lags.get(second, 0), stats.max_lag_ns)

    def on_stop(self, now_ns: int) -> None:
        """Sending was stopped early (CTRL-C, a dead worker): from then on, no rate verdicts."""
        if self.stopped_at is None:
            self.stopped_at = max(0, (now_ns - self.start_ns) // NS_PER_S)

    def _at_end_of(self, worker: int, second: int) -> WorkerStats:
        seen = [s for s in self._last[worker] if s <= second]
        return self._last[worker][max(seen)] if seen else WorkerStats()

    def second(self, second: int, sent_by_worker: Mapping[int, int]) -> GeneratorSecond:
        """The verdict on `second`, given how many probes each worker sent in it."""
        rows, limits = [], []
        for index, sched in self.workers.items():
            end, begin = self._at_end_of(index, second), self._at_end_of(index, second - 1)
            sent = sent_by_worker.get(index, 0)
            due = sched.due_in(second)
            cpu_pct = 100.0 * (end.cpu_ns - begin.cpu_ns) / NS_PER_S
            row = WorkerSecond(
                worker=index,
                requested_pps=float(due),
                achieved_pps=float(sent),
                cpu_pct=max(0.0, cpu_pct),
                send_errors=end.send_errors - begin.send_errors,
                rx_drops=end.rx_dropped - begin.rx_dropped,
                max_lag_ns=self._lag[index].get(second, 0),
                skipped_ns=end.skipped_ns - begin.skipped_ns,
            )
            rows.append(row)
            limits += self._judge(row, sched, second)
        self._forget_before(second - 1)
        return GeneratorSecond(workers=tuple(rows), limits=tuple(limits))

    def _judge(self, row: WorkerSecond, sched: WorkerSchedule, second: int) -> list[str]:
        w = f"worker {row.worker}"
        out = []
        if row.rx_drops > 0:
            out.append(f"{w}: its socket dropped {row.rx_drops} packets (receiver fell behind)")
        if row.send_errors > 0:
            out.append(f"{w}: the kernel refused {row.send_errors} sends (ENOBUFS/EAGAIN)")
        if row.skipped_ns > 0:
            out.append(f"{w}: gave up {row.skipped_ns / 1e6:.0f} ms of its timetable")
        if row.max_lag_ns > LAG_LIMIT_NS:
            out.append(f"{w}: fell {row.max_lag_ns / 1e6:.0f} ms behind its timetable")
        judged = self.stopped_at is None or second < self.stopped_at
        slack = max(1.0, sched.rate_pps * SHORTFALL_TICK_S)
        if judged and row.requested_pps - row.achieved_pps > slack:
            out.append(f"{w}: sent {row.achieved_pps:.0f} of {row.requested_pps:.0f} probes due")
        return out

    def _forget_before(self, second: int) -> None:
        for worker in self.workers:
            last, lag = self._last[worker], self._lag[worker]
            newest = max(last, default=None)
            for s in [s for s in last if s < second and s != newest]:
                del last[s]  # the newest stays: it is the baseline of the next second
            for s in [s for s in lag if s < second]:
                del lag[s]
