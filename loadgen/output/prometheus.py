"""Live metrics for Prometheus: /metrics served by the coordinator and the textfile variant.

Owns the prometheus-client glue (an optional dependency: `loadgen[metrics]`): a custom
collector that hands out the families `metrics` made from the merged, closed seconds (so worker
processes need no multiprocess mode), the HTTP server thread, and the textfile, written to a
temporary file and renamed over the old one every closed second. `MetricsDisplay` feeds it
from the coordinator's display calls. A port in use or a missing package is one line.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from loadgen import __version__
from loadgen.coordinator import Display, GeneratorView, WorkerHandle
from loadgen.errors import UsageError
from loadgen.metrics import Family, Listen, exposition, families
from loadgen.plan import RunPlan
from loadgen.stats import Aggregator, GeneratorSecond, SecondReport

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

MISSING = (
    "--metrics and --metrics-textfile need the prometheus-client package: "
    "pip install 'loadgen[metrics]' (or prometheus-client)"
)


def _client() -> Any:
    """The prometheus_client package, or the one line that says how to get it."""
    try:
        import prometheus_client  # noqa: PLC0415 (optional: only runs with metrics load it)
    except ImportError:
        raise UsageError(MISSING) from None
    return prometheus_client


class _Collector:
    """What a scrape reads: the families of the last update, swapped whole (one reference
    assignment, so the server thread never sees half an update) and turned into
    prometheus-client metrics only when scraped, in the server's thread."""

    def __init__(self, metric: type[Any]) -> None:
        self.metric = metric
        self.families: Sequence[Family] = ()

    def collect(self) -> Iterable[Any]:
        for fam in self.families:
            out = self.metric(fam.name, fam.help, fam.kind)
            for name, labels, value in fam.samples():
                out.add_sample(name, labels, value)
            yield out


class MetricsExporter:
    """Serves /metrics at `listen` and/or writes `textfile`; `update` with each closed second."""

    def __init__(
        self,
        listen: Listen | None,
        textfile: str | None,
        labels: str,
        names: Sequence[str],
    ) -> None:
        client = _client()
        self.labels, self.names = labels, tuple(names)
        self.textfile = textfile
        self.error: str | None = None  # the textfile could not be written: one line
        self.collector = _Collector(client.metrics_core.Metric)
        self.registry: CollectorRegistry = client.CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.server: Any = None
        self.address: Listen | None = None
        if textfile is not None:
            self._check_dir(textfile)
        if listen is not None:
            try:
                self.server, _ = client.start_http_server(
                    listen.port, addr=listen.host, registry=self.registry
                )
            except OSError as e:
                fix = (
                    "stop what uses it or pick another port (--metrics :PORT)"
                    if e.errno == errno.EADDRINUSE
                    else "pick another address or port"
                )
                raise UsageError(
                    f"cannot serve metrics on {listen}: {e.strerror or e}; {fix}"
                ) from None
            self.address = Listen(listen.host, self.server.server_address[1])

    @staticmethod
    def _check_dir(path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(
                f"cannot write the metrics textfile {path!r}: its folder {folder!r} is missing "
                "or not writable; pick a writable path"
            )

    def update(
        self,
        aggregator: Aggregator,
        generator: GeneratorSecond | None,
        workers: Sequence[WorkerHandle],
    ) -> None:
        counters = [
            (h.plan.index, h.stats.cpu_ns, h.stats.send_errors, h.stats.rx_dropped) for h in workers
        ]
        fams = families(
            aggregator.cumulative(),
            self.names,
            self.labels,
            buckets=aggregator.hist_buckets,
            generator=generator,
            workers=counters,
            version=__version__,
        )
        self.collector.families = fams
        if self.textfile is not None:
            try:
                self.write_textfile(self.textfile, exposition(fams))
            except OSError as e:
                self.error = (
                    f"writing the metrics textfile {self.textfile!r} failed: {e.strerror or e}; "
                    "no more updates to it in this run (free space or pick another path)"
                )
                self.textfile = None

    def write_textfile(self, path: str, text: str) -> None:
        """Write to a temporary file beside `path`, then rename it over `path`: a reader sees
        the old text or the new, never part of one."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".loadgen-", suffix=".prom.tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode())
            os.chmod(tmp, 0o644)  # node_exporter may run as another user
            os.rename(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MetricsDisplay(Display):
    """Passes every display call on to `inner` and feeds the exporter each closed second."""

    def __init__(self, inner: Display, exporter: MetricsExporter) -> None:
        self.inner = inner
        self.exporter = exporter
        self._generator: GeneratorSecond | None = None
        self._shown = -1  # closed seconds at the last update
        self._last: tuple[Aggregator, GeneratorView] | None = None
        self._told = False  # the textfile's failure was noted

    def started(self, plan: RunPlan, workers: tuple[WorkerHandle, ...]) -> None:
        self.inner.started(plan, workers)

    def second(self, report: SecondReport) -> None:
        self._generator = report.generator
        self.inner.second(report)

    def refresh(self, aggregator: Aggregator, generator: GeneratorView) -> None:
        self._last = (aggregator, generator)
        if aggregator.closed_seconds != self._shown:
            self._shown = aggregator.closed_seconds
            self._update()
        self.inner.refresh(aggregator, generator)

    def _update(self) -> None:
        if self._last is not None:
            aggregator, generator = self._last
            self.exporter.update(aggregator, self._generator, generator.workers)
            if self.exporter.error is not None and not self._told:
                self._told = True
                self.inner.note(self.exporter.error)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def stopped(self) -> None:
        """The run is over: the final figures (the last bursts, the workers' last counters)
        go out once more, and stay on /metrics until the exporter is closed."""
        self._update()
        self.inner.stopped()
