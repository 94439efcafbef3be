"""Workers over TCP streams on loopback: the same buckets as over pipes, and the lease.

Real workers and raw sockets probing 127.0.1.0/29 only; every run is bounded by a probe count,
every wait by a deadline. A worker killed or stopped mid-run is named and its probes reported
as unresolved; a worker whose coordinator goes silent stops on its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable

import pytest

from loadgen.bench.transport import SECONDS, measure
from loadgen.coordinator import Coordinator, RunOutcome, _plan_message
from loadgen.net.stream import StreamPeer
from loadgen.plan import RunPlan
from loadgen.profile import COMMAND_LINE, parse_profile
from loadgen.remote import Streams
from loadgen.runner import plan_run
from loadgen.stats import SecondReport
from loadgen.wire.messages import Beat, Done, Echo, Frame, Hello, Start, decode, encode
from loadgen.worker import LEASE_LAPSED, stream_worker_main

pytestmark = pytest.mark.root

Buckets = Counter[tuple[int, int, str]]
OUTCOMES = ("received", "late", "lost", "errored")


def _plan(count: int, rate: str = "3000", host_lost: str = "stop") -> RunPlan:
    profile = parse_profile(
        {
            "targets": "127.0.1.0/29",
            "rate": rate,
            "count": count,
            "workers": 2,
            "timeout": "1s",
            "delay": "1s",
            "host_lost": host_lost,
        },
        source=COMMAND_LINE,
    )
    return plan_run(profile)[0]


def _run(
    streams: Streams | None,
    count: int,
    during: Callable[[Coordinator, SecondReport], None],
    host_lost: str = "stop",
) -> tuple[Coordinator, Buckets, RunOutcome]:
    """One run; returns its coordinator, (second, target, outcome) counts and outcome."""
    buckets: Buckets = Counter()
    plan = _plan(count, host_lost=host_lost)
    coord: Coordinator

    def on_second(report: SecondReport) -> None:
        for ts in report.per_target:
            for name in ("sent", *OUTCOMES):
                buckets[report.second, ts.target, name] += getattr(ts.counts, name)
        during(coord, report)

    coord = Coordinator(plan, on_second=on_second, streams=streams)
    return coord, buckets, coord.run()


def test_streams_merge_the_same_buckets_as_pipes() -> None:
    _, piped, _ = _run(None, 1000, lambda c, r: None)
    coord, streamed, outcome = _run(Streams(), 1000, lambda c, r: None)
    assert all(h.process is not None and h.stream is not None for h in coord.workers)
    assert sum(v for (_, _, k), v in streamed.items() if k == "sent") == 6 * 1000
    # Every target's outcomes exactly, and every second accounts for what it sent. Which
    # second a probe falls in is not compared across two runs: it follows each run's pacing
    # lag, and on a loaded 2-core machine one run's batches slid up to 64 ms (32 probes a
    # target) across a second's mark.
    assert _totals(streamed) == _totals(piped)
    for second in {s for s, _, _ in streamed}:
        for target in range(6):
            outcomes = sum(streamed[second, target, k] for k in OUTCOMES)
            assert streamed[second, target, "sent"] == outcomes
    assert outcome.failures == ()
    # One box, one clock: the true offset, 0, lies within every worker's measured bound.
    assert [c.worker for c in outcome.clocks] == [0, 1]
    assert all(c.samples >= 16 and abs(c.offset_ns) <= c.bound_ns for c in outcome.clocks)


def _totals(buckets: Buckets) -> Counter[tuple[int, str]]:
    out: Counter[tuple[int, str]] = Counter()
    for (_, target, name), n in buckets.items():
        out[target, name] += n
    return out


def _kill_once(sig: signal.Signals) -> Callable[[Coordinator, SecondReport], None]:
    def during(coord: Coordinator, report: SecondReport) -> None:
        proc = coord.workers[1].process
        if report.second == 0 and proc is not None and proc.pid is not None:
            os.kill(proc.pid, sig)

    return during


def test_a_killed_stream_worker_is_named_and_its_probes_unresolved() -> None:
    _, _, outcome = _run(Streams(), 20_000, _kill_once(signal.SIGKILL))
    failures = outcome.failures
    assert len(failures) == 1 and failures[0].startswith("worker 1: its stream closed"), failures
    unresolved = outcome.summary.unresolved
    assert [(u.worker, u.cause) for u in unresolved] == [(1, "lost its stream")]


def test_with_host_lost_continue_the_others_finish_their_plan() -> None:
    coord, _, outcome = _run(Streams(), 2_000, _kill_once(signal.SIGKILL), host_lost="continue")
    assert [(u.worker, u.cause) for u in outcome.summary.unresolved] == [(1, "lost its stream")]
    kept = [t.index for t in coord.workers[0].plan.targets]
    rows = {t.target: t.counts for t in outcome.summary.per_target}
    assert all(rows[i].sent == rows[i].received == 2_000 for i in kept), rows
    assert coord.workers[0].done == "every planned probe sent"


def test_a_silent_stream_worker_is_named_after_a_lease() -> None:
    # The coordinator kills what is left of the stopped worker when the run ends.
    _, _, outcome = _run(Streams(), 20_000, _kill_once(signal.SIGSTOP))
    failures = outcome.failures
    assert len(failures) == 1 and "worker 1: sent nothing for 2 s" in failures[0], failures
    unresolved = outcome.summary.unresolved
    assert [(u.worker, u.cause) for u in unresolved] == [(1, "went silent")]


def test_a_worker_whose_coordinator_goes_silent_stops_within_a_lease() -> None:
    """A fake coordinator beats for a second of sending, then holds the stream open in
    silence: the worker stops sending, says why and ends."""
    plan = _plan(1_000_000, rate="1000")
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=stream_worker_main,
        args=(encode(_plan_message(plan.workers[0])), listener.getsockname()),
        daemon=True,
    )
    proc.start()
    peer: StreamPeer | None = None
    try:
        listener.settimeout(20)
        peer = StreamPeer(listener.accept()[0])
        msgs: list[object] = []

        def pump(seconds: float, *, beat: bool, until: type | None = None) -> None:
            assert peer is not None
            end = time.monotonic() + seconds
            while time.monotonic() < end and not peer.closed:
                if beat:
                    peer.send_bytes(encode(Beat(len(msgs), time.time_ns())))
                msgs.extend(decode(p) for p in peer.read())
                if until is not None and any(isinstance(m, until) for m in msgs):
                    return
                time.sleep(0.1)

        pump(20, beat=True, until=Hello)
        assert isinstance(msgs[0], Hello)
        peer.send_bytes(encode(Start(time.time_ns())))
        pump(1.0, beat=True)
        silent_from = len(msgs)
        pump(10.0, beat=False)
        after = msgs[silent_from:]
        assert any(isinstance(m, Echo) for m in msgs[:silent_from])
        assert isinstance(after[-1], Done) and after[-1].reason == LEASE_LAPSED, after[-3:]
        frames = [m for m in msgs if isinstance(m, Frame)]
        assert frames[-1].stats.sent < 1000 * 6  # stopped long before its plan was done
        proc.join(timeout=10)
        assert proc.exitcode == 0
    finally:
        if peer is not None:
            peer.close()
        proc.kill()
        proc.join(timeout=5)
        listener.close()


def test_the_transport_bench_counts_every_probe_and_some_cpu() -> None:
    sent, cpu_s = measure(2_000, Streams())
    assert sent == 2_000 * SECONDS
    assert cpu_s > 0
