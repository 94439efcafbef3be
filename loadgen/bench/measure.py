"""Running one tool in the client namespace and watching it: every 100 ms the responder's
InEchos and the tool's process-tree CPU; peak RSS per process; exact CPU from wait4(2).

The tool runs in its own session (its own process group), so the bench alone decides when it
stops: on a timeout or CTRL-C it gets SIGINT, then its whole group SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadgen.bench.figures import Sample, icmp_delta
from loadgen.bench.topology import BenchNet

SAMPLE_NS = 100_000_000
TREE_EVERY = 5  # re-list the process tree every 5th sample; the workers live the whole run
STOP_GRACE_S = 5.0
STALL_S = 10.0  # no new echo request for this long while the tool runs: it hangs (linger is 2 s)
SETTLE_S = 0.2  # let the last replies reach the counters before the final reading
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


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
    client: dict[str, int]  # Icmp counter deltas in the client namespace
    responder: dict[str, int]  # ... and in the responder namespace
    stdout: str
    stderr: str


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


def _hwm_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Watch:
    """Per-process peak RSS and last CPU reading; processes that exited keep their last."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.pids: list[int] = [pid]
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}

    def sample(self, relist: bool) -> float:
        if relist:
            self.pids = _tree(self.root)
        for p in self.pids:
            h, c = _hwm_bytes(p), _cpu_s(p)
            if h is not None:
                self.hwm[p] = max(h, self.hwm.get(p, 0))
            if c is not None:
                self.cpu[p] = c
        return sum(self.cpu.values())


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


def run_measured(
    net: BenchNet, argv: Sequence[str], *, start_s: float, run_s: float, workdir: Path
) -> Measured:
    """Run argv in the client namespace until it exits, sampling. It is stopped as hung if no
    echo request arrives within `start_s`, if it still runs `run_s` after the first one, or
    if no new request arrives for STALL_S while it runs."""
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    client0, responder0 = net.client.read(), net.responder.read()
    t0 = time.monotonic_ns()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", net.client_ns, *argv],  # ip execs argv: same pid
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    watch = _Watch(proc.pid)
    samples: list[Sample] = []
    timed_out, rusage, n = False, None, 0
    first_ns: int | None = None
    moved_ns, last_in = t0, -1
    try:
        next_ns = t0
        while True:
            now = time.monotonic_ns()
            requests_in = net.responder.echo_requests_in()
            samples.append(Sample(now, requests_in, watch.sample(relist=n % TREE_EVERY == 0)))
            n += 1
            wpid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if wpid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                rusage = ru
                break
            if requests_in != last_in:
                moved_ns, last_in = now, requests_in
            if first_ns is None and requests_in > samples[0].requests_in:
                first_ns = now
            limit_ns = t0 + start_s * 1e9 if first_ns is None else first_ns + run_s * 1e9
            if now > limit_ns or (first_ns is not None and now - moved_ns > STALL_S * 1e9):
                timed_out = True
                break
            next_ns += SAMPLE_NS
            time.sleep(max(0.0, (next_ns - time.monotonic_ns()) / 1e9))
    finally:
        if rusage is None:
            _stop(proc)
    wall_s = (time.monotonic_ns() - t0) / 1e9
    time.sleep(SETTLE_S)
    client1, responder1 = net.client.read(), net.responder.read()
    cpu_s = rusage.ru_utime + rusage.ru_stime if rusage is not None else sum(watch.cpu.values())
    return Measured(
        argv=tuple(argv),
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        wall_s=wall_s,
        cpu_s=cpu_s,
        # Not ru_maxrss: it keeps the peak of the forked bench from before exec.
        peak_rss_bytes=sum(watch.hwm.values()),
        processes=len(watch.hwm),
        samples=tuple(samples),
        client=icmp_delta(client0, client1),
        responder=icmp_delta(responder0, responder1),
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )
