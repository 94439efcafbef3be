"""Running one tool in the client namespace and watching it: the responder's InEchos at
tick-aligned instants every 100 ms (see sampling.py), the tool's process-tree CPU and each
process's RSS; exact CPU from wait4(2). The sampler runs SCHED_FIFO above loadgen's workers.

The tool runs in its own session (its own process group), so the bench alone decides when it
stops: on a timeout or CTRL-C it gets SIGINT, then its whole group SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadgen.bench.figures import Sample, icmp_delta, in_requests, tcp_delta
from loadgen.bench.memory import process_role
from loadgen.bench.sampling import (
    ClockMap,
    first_instant_rt,
    next_grid_instant,
    read_fits,
    retry_instant,
)
from loadgen.bench.topology import BenchNet, SnmpReader
from loadgen.coordinator import realtime

TREE_EVERY = 5  # re-list the process tree every 5th sample; the workers live the whole run
STOP_GRACE_S = 5.0
STALL_S = 10.0  # no new echo request for this long while the tool runs: it hangs (linger is 2 s)
SETTLE_S = 0.2  # let the last replies reach the counters before the final reading
SAMPLER_PRIORITY = 2  # SCHED_FIFO; loadgen's workers run at 1 and must not delay the readings
MAX_READS = 8  # reads per sample, each at a tick-aligned instant, before taking one as it is
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_MEMORY_KEYS = (b"VmRSS", b"RssAnon", b"VmHWM")


@dataclass(frozen=True, slots=True)
class Measured:
    argv: tuple[str, ...]
    exit_code: int | None  # None: killed by the bench
    timed_out: bool
    wall_s: float
    cpu_s: float  # user + system of the tool and every descendant it waited for (wait4)
    peak_rss_bytes: int  # sum over the tree's processes of each one's peak RSS (VmHWM)
    processes: int
    samples: tuple[Sample, ...]
    client: dict[str, int]  # Icmp (or Icmp6, by the step's family) deltas in the client ns
    responder: dict[str, int]  # ... and in the responder namespace
    stdout: str
    stderr: str
    peaks: dict[int, int] = field(default_factory=dict)  # pid: VmHWM bytes
    roles: dict[int, str] = field(default_factory=dict)  # pid: what it is (memory.process_role)
    sampler_realtime: bool = False  # the sampler got SCHED_FIFO (else it ran at normal priority)


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc/<pid>/task/<tid>/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def _status(pid: int) -> tuple[int, int, int] | None:
    """Current RSS, its anonymous part and peak RSS (VmRSS, RssAnon, VmHWM) in bytes; None
    once the process is gone."""
    found: dict[bytes, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                key = line.split(b":", 1)[0]
                if key in _MEMORY_KEYS:
                    found[key] = int(line.split()[1]) * 1024
    except OSError:
        return None
    if len(found) < len(_MEMORY_KEYS):
        return None  # a zombie has no memory lines
    return found[b"VmRSS"], found[b"RssAnon"], found[b"VmHWM"]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class _Watch:
    """Per-process peak RSS, current RSS and last CPU reading; processes that exited keep
    their last peak and CPU."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.pids: list[int] = [pid]
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}

    def sample(self, relist: bool) -> tuple[float, tuple[tuple[int, int, int], ...]]:
        """Total CPU-s of the tree so far, and each live process's (pid, VmRSS, RssAnon)."""
        if relist:
            self.pids = _tree(self.root)
            for p in self.pids:
                if p not in self.roles and (argv := _cmdline(p)):
                    self.roles[p] = process_role(argv, root=p == self.root)
        rss: list[tuple[int, int, int]] = []
        for p in self.pids:
            mem, c = _status(p), _cpu_s(p)
            if mem is not None:
                rss.append((p, mem[0], mem[1]))
                self.hwm[p] = max(mem[2], self.hwm.get(p, 0))
            if c is not None:
                self.cpu[p] = c
        return sum(self.cpu.values()), tuple(rss)


def _sleep_until(deadline_ns: int) -> None:
    while (left_ns := deadline_ns - time.monotonic_ns()) > 0:
        time.sleep(left_ns / 1e9)


def _clock_map(tries: int = 5) -> ClockMap:
    """Realtime against monotonic from the narrowest of a few bracketed readings."""
    best: tuple[int, int, int] | None = None
    for _ in range(tries):
        before, rt, after = time.monotonic_ns(), time.time_ns(), time.monotonic_ns()
        if best is None or after - before < best[2] - best[0]:
            best = (before, rt, after)
    assert best is not None
    return ClockMap.from_readings(*best)


def _read_at(reader: SnmpReader, instant_ns: int, family: int) -> tuple[int, str, int | None]:
    """Read the counters at a tick-aligned instant (monotonic): the read's midpoint, the text,
    and the instant it stands for (None if no read within MAX_READS fitted one)."""
    for _ in range(MAX_READS):
        _sleep_until(instant_ns)
        # Two clock readings around the read: a preemption between a lone timestamp and the
        # read would date a later count earlier.
        before = time.monotonic_ns()
        text = reader.text(family)
        after = time.monotonic_ns()
        if read_fits(instant_ns, before, after):
            return (before + after) // 2, text, instant_ns
        instant_ns = retry_instant(instant_ns, after)
    return (before + after) // 2, text, None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the tools print their summary), then SIGKILL to the whole process group: the
    group is the tool's own session, so it holds nothing but the tool and its children."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_GRACE_S)


@dataclass(slots=True)
class _Run:
    """What the sampling loop learns about a running tool."""

    proc: subprocess.Popen[bytes]
    watch: _Watch
    samples: list[Sample] = field(default_factory=list)
    timed_out: bool = False
    rusage: resource.struct_rusage | None = None  # set once the tool was reaped by the loop


def _follow(
    run: _Run, net: BenchNet, t0_ns: int, limits_s: tuple[float, float], family: int, probe: str
) -> None:
    """Sample until the tool exits or looks hung (see run_measured)."""
    start_s, run_s = limits_s
    first_ns: int | None = None
    moved_ns, last_in = t0_ns, -1
    grid0_ns = _clock_map().to_mono(first_instant_rt(time.time_ns()))
    instant_ns, n = grid0_ns, 0
    while True:
        now, text, fitted_ns = _read_at(net.responder, instant_ns, family)
        requests_in = in_requests(text, family, probe)
        # The rest of the work falls in the tick's quiet part too, right after the read.
        cpu_s, rss = run.watch.sample(relist=n % TREE_EVERY == 0)
        run.samples.append(Sample(now, requests_in, cpu_s, fitted_ns, rss))
        n += 1
        wpid, status, ru = os.wait4(run.proc.pid, os.WNOHANG)
        if wpid:
            run.proc.returncode = os.waitstatus_to_exitcode(status)
            run.rusage = ru
            return
        if requests_in != last_in:
            moved_ns, last_in = now, requests_in
        if first_ns is None and requests_in > run.samples[0].requests_in:
            first_ns = now
        limit_ns = t0_ns + start_s * 1e9 if first_ns is None else first_ns + run_s * 1e9
        if now > limit_ns or (first_ns is not None and now - moved_ns > STALL_S * 1e9):
            run.timed_out = True
            return
        instant_ns = next_grid_instant(grid0_ns, time.monotonic_ns())


def run_measured(
    net: BenchNet,
    argv: Sequence[str],
    *,
    start_s: float,
    run_s: float,
    workdir: Path,
    family: int = 4,
    probe: str = "icmp",
) -> Measured:
    """Run argv in the client namespace until it exits, sampling the counters of its IP
    `family`. It is stopped as hung if no echo request arrives within `start_s`, if it still
    runs `run_s` after the first one, or if no new request arrives for STALL_S while it runs."""
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    client0, responder0 = net.client.read(), net.responder.read()
    t0 = time.monotonic_ns()
    with realtime(SAMPLER_PRIORITY) as sampler_realtime:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", net.client_ns, *argv],  # ip execs argv: same pid
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        run = _Run(proc, _Watch(proc.pid))
        try:
            _follow(run, net, t0, (start_s, run_s), family, probe)
        finally:
            if run.rusage is None:
                _stop(proc)
    wall_s = (time.monotonic_ns() - t0) / 1e9
    time.sleep(SETTLE_S)
    client1, responder1 = net.client.read(), net.responder.read()
    watch, ru = run.watch, run.rusage
    cpu_s = ru.ru_utime + ru.ru_stime if ru is not None else sum(watch.cpu.values())
    return Measured(
        argv=tuple(argv),
        exit_code=None if run.timed_out else proc.returncode,
        timed_out=run.timed_out,
        wall_s=wall_s,
        cpu_s=cpu_s,
        # Not ru_maxrss: it keeps the peak of the forked bench from before exec.
        peak_rss_bytes=sum(watch.hwm.values()),
        processes=len(watch.hwm),
        samples=tuple(run.samples),
        client=tcp_delta(client0, client1)
        if probe == "tcp-syn"
        else icmp_delta(client0, client1, family),
        responder=tcp_delta(responder0, responder1)
        if probe == "tcp-syn"
        else icmp_delta(responder0, responder1, family),
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        peaks=dict(watch.hwm),
        roles=dict(watch.roles),
        sampler_realtime=sampler_realtime,
    )
