"""The generator's self-check: did loadgen itself keep up in each second?

Owns the per-second view of every worker (timetable due, really sent, pacing error, refused
sends, socket drops, CPU) and the verdict: a second in which a worker fell short, had sends
refused, gave up schedule or lost replies is generator-limited, saying which worker and how
much. Every counter lands in one closed second (trailing ones in the last). Pure: no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loadgen.plan import probes_within
from loadgen.stats import GeneratorSecond, WorkerSecond
from loadgen.units import NS_PER_S
from loadgen.wire.messages import WorkerStats

# One 1 ms tick of probes may spill across a second boundary without anything being wrong.
SHORTFALL_TICK_S = 0.002
LAG_LIMIT_NS = 10_000_000  # behind its timetable by more than this: bursts no longer paced
# Cumulative counters whose per-second figures must add up to the worker's run totals.
CARRIED = ("send_errors", "rx_dropped", "skipped_ns")


@dataclass(frozen=True, slots=True)
class WorkerSchedule:
    index: int
    rate_pps: float
    total: int | None  # probes it will send in all (count or duration), None: until stopped

    def due_in(self, second: int) -> int:
        """Probes its timetable puts in [second, second + 1): probe k is due at k / rate."""

        def due_before(t_s: int) -> int:
            k = probes_within(t_s * NS_PER_S, self.rate_pps)
            return k if self.total is None else min(k, self.total)

        return due_before(second + 1) - due_before(second)


@dataclass(slots=True)
class _Seen:
    """One worker's frames as the check holds them."""

    by_second: dict[int, WorkerStats] = field(default_factory=dict)  # newest stats per second
    lag_ns: dict[int, int] = field(default_factory=dict)  # worst lag per second, not yet shown
    newest: WorkerStats = field(default_factory=WorkerStats)  # the last frame's stats
    shown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CARRIED, 0))

    def at_end_of(self, second: int) -> WorkerStats:
        seen = [s for s in self.by_second if s <= second]
        return self.by_second[max(seen)] if seen else WorkerStats()

    def take(self, upto: WorkerStats) -> dict[str, int]:
        """What `upto` counted beyond what closed seconds already show; now shown too."""
        delta = {f: max(0, getattr(upto, f) - self.shown[f]) for f in CARRIED}
        for f in CARRIED:
            self.shown[f] += delta[f]
        return delta

    def take_lag(self, second: int | None) -> int:
        """Worst lag of frames up to `second` (all, if None) not shown in a closed second yet."""
        due = [s for s in self.lag_ns if second is None or s <= second]
        return max((self.lag_ns.pop(s) for s in due), default=0)


class GeneratorCheck:
    def __init__(self, workers: Sequence[WorkerSchedule], start_ns: int) -> None:
        self.workers = {w.index: w for w in workers}
        self.start_ns = start_ns
        self.stopped_at: int | None = None  # second in which sending was cut short
        self._seen = {w: _Seen() for w in self.workers}

    def on_frame(self, worker: int, now_ns: int, stats: WorkerStats) -> None:
        second = max(0, (now_ns - self.start_ns) // NS_PER_S)
        seen = self._seen[worker]
        seen.by_second[second] = seen.newest = stats
        seen.lag_ns[second] = max(seen.lag_ns.get(second, 0), stats.max_lag_ns)

    def on_stop(self, now_ns: int) -> None:
        """Sending was stopped early (CTRL-C, a dead worker): from then on, no rate verdicts."""
        if self.stopped_at is None:
            self.stopped_at = max(0, (now_ns - self.start_ns) // NS_PER_S)

    def unshown(self) -> bool:
        """Whether frames brought counters (or a lag worth a verdict) no closed second shows:
        at the end of a run, what a last second must be closed for."""
        return any(
            any(getattr(seen.newest, f) > seen.shown[f] for f in CARRIED)
            or max(seen.lag_ns.values(), default=0) > LAG_LIMIT_NS
            for seen in self._seen.values()
        )

    def second(
        self, second: int, sent_by_worker: Mapping[int, int], *, final: bool = False
    ) -> GeneratorSecond:
        """The verdict on `second`, given how many probes each worker sent in it. Counters of
        frames from later seconds wait for theirs; with `final` (the run's last closed second)
        everything not shown yet is in this one, so the seconds add up to the run totals."""
        rows, limits = [], []
        for index, sched in self.workers.items():
            seen = self._seen[index]
            end, begin = seen.at_end_of(second), seen.at_end_of(second - 1)
            # CPU is a rate, not a count: it stays in the second its frames came in.
            cpu_pct = 100.0 * (end.cpu_ns - begin.cpu_ns) / NS_PER_S
            counts = seen.take(seen.newest if final else end)
            sent = sent_by_worker.get(index, 0)
            due = sched.due_in(second)
            row = WorkerSecond(
                worker=index,
                requested_pps=float(due),
                achieved_pps=float(sent),
                cpu_pct=max(0.0, cpu_pct),
                send_errors=counts["send_errors"],
                rx_drops=counts["rx_dropped"],
                max_lag_ns=seen.take_lag(None if final else second),
                skipped_ns=counts["skipped_ns"],
            )
            rows.append(row)
            limits += self._judge(row, sched, second)
        self._forget_before(second - 1)
        stopped = self.stopped_at is not None and second >= self.stopped_at
        return GeneratorSecond(workers=tuple(rows), limits=tuple(limits), stopped=stopped)

    def _judge(self, row: WorkerSecond, sched: WorkerSchedule, second: int) -> list[str]:
        w = f"worker {row.worker}"
        out = []
        if row.rx_drops > 0:
            out.append(f"{w}: its socket dropped {row.rx_drops} packets (receiver fell behind)")
        if row.send_errors > 0:
            # ENOBUFS/EAGAIN for packets; for connect probes also no free port or descriptor.
            full = "send buffer, ports or descriptors full"
            out.append(f"{w}: the kernel refused {row.send_errors} sends ({full})")
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
        for seen in self._seen.values():
            last = seen.by_second
            newest = max(last, default=None)
            for s in [s for s in last if s < second and s != newest]:
                del last[s]  # the newest stays: it is the baseline of the next second
