"""Drives the screen during a run: the one owner of rich's Live (auto_refresh off).

The coordinator calls `second`, `refresh`, `note` from its event loop; the live display turns
the aggregator's state into an immutable `ui.Snapshot` and renders it; off a TTY the plain
display prints one line per closed second instead. Neither keeps any figure of its own.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from loadgen.clockoffset import WorkerClock
from loadgen.coordinator import Display, GeneratorView, WorkerHandle
from loadgen.output.ui import Snapshot, WorkerView, plain_line, render, sending_took
from loadgen.plan import RunPlan, path_label
from loadgen.stats import Aggregator, SecondReport
from loadgen.targets import labels

if TYPE_CHECKING:
    from collections.abc import Sequence


def worker_views(
    workers: Sequence[WorkerHandle], clocks: Sequence[WorkerClock] = ()
) -> tuple[WorkerView, ...]:
    by_worker = {c.worker: c for c in clocks}
    return tuple(
        WorkerView(
            index=h.plan.index,
            cpu=-1 if h.plan.cpu is None else h.plan.cpu,
            pid=h.hello.pid if h.hello else 0,
            cpu_pct=h.cpu_pct,
            sent=h.stats.sent,
            send_errors=h.stats.send_errors,
            rx_drops=h.stats.rx_dropped,
            alive=h.live or h.done is not None,
            clock=by_worker.get(h.plan.index),
        )
        for h in workers
    )


def ts_source(workers: Sequence[WorkerHandle]) -> str:
    sources = sorted({(h.hello.rx_source, h.hello.tx_source) for h in workers if h.hello})
    return "; ".join(f"rx {rx}, tx {tx}" for rx, tx in sources) or "unknown"


class LiveDisplay(Display):
    def __init__(self, plan: RunPlan, console: Console | None = None) -> None:
        self.plan = plan
        self.console = console or Console()
        self.names = labels(plan.targets)
        self.last: SecondReport | None = None
        self.notes: list[str] = []
        self.live: Live | None = None
        self.workers: tuple[WorkerHandle, ...] = ()
        self.sent = 0  # probes sent, as of the last frame
        self.last_busy_ns = 0  # elapsed time of the last frame that saw more probes sent
        self.sent_in_ns: int | None = None  # how long sending took, once it is over

    def started(self, plan: RunPlan, workers: tuple[WorkerHandle, ...]) -> None:
        self.workers = workers
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def second(self, report: SecondReport) -> None:
        self.last = report

    def note(self, text: str) -> None:
        self.notes.append(text)

    def refresh(self, aggregator: Aggregator, generator: GeneratorView) -> None:
        if self.live is None:
            return
        send_ns, elapsed_ns = self.plan.send_ns, generator.elapsed_ns
        sent = sum(w.stats.sent for w in generator.workers)
        if sent != self.sent:
            self.sent, self.last_busy_ns = sent, elapsed_ns
        if self.sent_in_ns is None:
            self.sent_in_ns = sending_took(
                send_ns,
                elapsed_ns,
                self.last_busy_ns,
                interrupted=generator.interrupted,
                period_ns=round(1e9 / self.plan.profile.refresh_hz),
            )
        snap = Snapshot(
            last=self.last,
            summary=aggregator.cumulative(),
            names=self.names,
            top=self.plan.profile.top,
            elapsed_ns=generator.elapsed_ns,
            requested_pps=generator.requested_pps,
            achieved_pps=generator.achieved_pps,
            workers=worker_views(generator.workers, generator.clocks),
            ts_source=ts_source(generator.workers),
            notes=tuple(self.notes[-3:]),
            sent=sent,
            send_ns=send_ns,
            linger_ns=self.plan.profile.delay_ns,
            sent_in_ns=self.sent_in_ns,
            path=path_label(self.plan),
        )
        self.live.update(render(snap), refresh=True)

    def stopped(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class PlainDisplay(Display):
    """One line per closed second on stdout; notes on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def second(self, report: SecondReport) -> None:
        if self.quiet:
            return
        try:
            print(plain_line(report), flush=True)
        except BrokenPipeError:
            raise  # the reader left: cli ends quietly
        except OSError:
            # Standard output is full or gone: the run goes on to its exports, and cli says
            # so in one line when the summary cannot be written either.
            self.quiet = True

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"loadgen: {text}", file=sys.stderr, flush=True)


def make_display(plan: RunPlan, *, plain: bool, quiet: bool) -> Display:
    if quiet:
        return PlainDisplay(quiet=True)
    if plain:
        return PlainDisplay()
    return LiveDisplay(plan)
