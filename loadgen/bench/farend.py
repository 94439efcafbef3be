"""The bench's far-end steps, on loopback in a namespace of their own (lgsb-PID): the C echo
(udpblast.c, the floor) and `loadgen reflect` against the C blaster at a ladder of rates,
loadgen's STAMP sender against the reflector at the highest rate it held, loadgen's ICMP, UDP
and STAMP senders at one rate and count, and irtt's client and server. Every process is
bounded in time and stopped on every exit path; the namespace goes with the bench.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.bench import farfigures as ff
from loadgen.bench.figures import parse_loadgen_jsonl
from loadgen.bench.measure import _stop, _Watch
from loadgen.lab.netops import list_netns, parse_snmp

UDPBLAST_SOURCE = Path(__file__).with_name("udpblast.c")
NS_RE = re.compile(r"^lgsb-(\d+)$")
REFLECT_PORT, ECHO_PORT, IRTT_PORT = 43862, 43007, 42112  # in the bench's own namespace
BLAST_BYTES = 44  # RFC 8762's base test packet
IRTT_INTERVAL = "10us"  # far below what irtt reaches: its fastest
START_S = 30.0  # python and numpy start-up on a busy 2-core machine
FAR_LIMIT_S = 300  # no far end outlives this, whatever happens to the bench
KINDS = {"icmp": (), "udp": ("--udp", str(ECHO_PORT)), "stamp": ("--stamp", str(REFLECT_PORT))}


@dataclass(frozen=True, slots=True)
class FarConfig:
    rates_pps: tuple[float, ...]  # the ladder of the echo and the reflector
    rung_s: float  # the blaster's sending time per rung
    sender_pps: float  # loadgen's ICMP, UDP and STAMP senders: at most this rate
    sender_s: float  # ... for this long each (the same count)


@dataclass(frozen=True, slots=True)
class FarStep:
    """One line of the far-end section, what broke it (if anything) and its figures."""

    label: str
    line: str
    problems: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)


def build_c(source: Path, binary: Path, what: str) -> str:
    """Compile one C program (`what` it is) with the system compiler: "" or why it could not."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (cc)"
    try:
        done = subprocess.run(
            [cc, "-O2", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"building {what} failed ({exc})"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"building {what} failed ({why})"
    return ""


def sides() -> tuple[list[str], list[str]]:
    """The argv prefixes that put the near side (blaster, senders, irtt client) on the first
    CPU and the far end on the last: loadgen pins its workers within the CPUs it is given, so
    without this a sender's worker and the reflector's share CPU 0."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[-1])]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def far_namespace() -> Iterator[str]:
    """lgsb-PID with its loopback up; those of benches no longer running are removed first."""
    for old in list_netns():
        m = NS_RE.match(old)
        if m and not Path(f"/proc/{m[1]}").exists():
            _ip("netns", "del", old)
    name = f"lgsb-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "del", name)


def _bound(pid: int, port: int) -> bool:
    """A UDP socket of the process's namespace is bound to 127.0.0.1:port."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
        return any(f" 0100007F:{port:04X} " in line for line in f)
    return False


class FarEnd:
    """A far end (echo, reflector, irtt server) in the namespace while the `with` lasts: up
    once its port is bound, its process tree's CPU readable, stopped with SIGINT and then its
    whole group killed."""

    def __init__(self, ns: str, argv: Sequence[str], port: int, log: Path) -> None:
        self.argv, self.port, self.log = list(argv), port, log
        self.ns = ns
        self.problems: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.watch: _Watch | None = None

    def __enter__(self) -> FarEnd:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.watch = _Watch(self.proc.pid)
        deadline = time.monotonic() + START_S
        while not _bound(self.proc.pid, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                what = " ".join(self.argv)[:80]
                self.problems.append(f"{what} did not start: {self.output()[-200:]}")
                break
            time.sleep(0.05)
        return self

    def cpu_s(self) -> float | None:
        return self.watch.sample(relist=True)[0] if self.watch else None

    def rcvbuf_errors(self) -> int | None:
        """Udp RcvbufErrors of the namespace (every socket in it): datagrams dropped because
        a receive buffer was full."""
        with contextlib.suppress(OSError, KeyError):
            if self.proc is not None:
                return parse_snmp(Path(f"/proc/{self.proc.pid}/net/snmp").read_text())["Udp"][
                    "RcvbufErrors"
                ]
        return None

    def peak_rss_bytes(self) -> int | None:
        """The sum of each process's peak RSS (VmHWM) so far."""
        return sum(self.watch.hwm.values()) if self.watch and self.watch.hwm else None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _measure_rung(ns: str, program: str, far: FarEnd, rate: float, seconds: float) -> ff.Rung:
    cpu0, drops0 = far.cpu_s(), far.rcvbuf_errors()
    argv = [
        *sides()[0],
        program,
        "blast",
        str(far.port),
        f"{rate:.0f}",
        f"{seconds:g}",
        str(BLAST_BYTES),
    ]
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=seconds + 15,
            check=False,
        )
        out, err = done.stdout, done.stderr.strip()[:200]
    except subprocess.TimeoutExpired:
        out, err = "", f"hung: stopped after {seconds + 15:g} s"
    cpu1, drops1, blast = far.cpu_s(), far.rcvbuf_errors(), ff.parse_blast(out)
    if blast is None:
        far.problems.append(f"the blaster failed at {rate:.0f} pps: {err}")
        blast = ff.Blast(0, 0, 0.0)
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    drops = None if drops0 is None or drops1 is None else drops1 - drops0
    return ff.Rung(rate, blast.sent, blast.received, blast.sending_s, cpu, drops)


def _ladder_steps(
    name: str,
    rungs: Sequence[ff.Rung],
    floor: Sequence[ff.Rung],
    far: FarEnd,
    floor_rss: int | None,
) -> list[FarStep]:
    steps = [FarStep(name, ff.rung_line(name, r)) for r in rungs]
    best = ff.best_held(rungs)
    figures = {
        "rungs": [dataclasses.asdict(r) for r in rungs],
        "held_pps": best.rate_pps if best else None,
        "peak_rss_bytes": far.peak_rss_bytes(),
    }
    load1 = os.getloadavg()[0]
    figures["load_average"] = load1
    rss = (far.peak_rss_bytes(), floor_rss)
    line = f"{ff.ceiling_line(name, rungs, floor, rss)} (load average {load1:.2f})"
    return [*steps, FarStep(f"{name} ceiling", line, tuple(far.problems), figures)]


def _run_tool(ns: str, argv: Sequence[str], limit_s: float) -> tuple[int | None, float, str]:
    """Run a client in the namespace: (exit code, None if it was stopped; CPU-s of its tree
    from wait4; its output)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline, code, cpu_s = time.monotonic() + limit_s, None, 0.0
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = code = os.waitstatus_to_exitcode(status)
                cpu_s = ru.ru_utime + ru.ru_stime
                break
            time.sleep(0.05)
        else:
            _stop(proc)
        out.seek(0)
        return code, cpu_s, out.read().decode(errors="replace")


def _sender(
    ns: str, tmp: Path, kind: str, rate: float, seconds: float
) -> tuple[ff.SenderRun, list[str]]:
    jsonl = tmp / f"{kind}.jsonl"
    jsonl.unlink(missing_ok=True)
    argv = [
        *sides()[0],
        *(sys.executable, "-m", "loadgen", "ping", "127.0.0.1", "-r", f"{rate:.0f}"),
        *("--duration", f"{seconds:g}s", "--workers", "1", "--plain", "--jsonl", str(jsonl)),
        *KINDS[kind],
    ]
    code, cpu_s, output = _run_tool(ns, argv, START_S + seconds + 15)
    lines = jsonl.read_text().splitlines() if jsonl.exists() else []
    totals, problems = parse_loadgen_jsonl(lines), []
    if code != 0:
        problems.append(f"loadgen {kind} exited {code}: {output.strip()[-200:]}")
    if totals is None:
        problems.append(f"loadgen {kind}: no summary in its JSONL")
    elif totals.unaccounted:
        problems.append(f"loadgen {kind}: {totals.unaccounted} probes unaccounted")
    rows = (json.loads(x) for x in lines if '"summary"' in x)
    total: dict[str, Any] = next((r["total"] for r in rows if r.get("type") == "summary"), {})
    run = ff.SenderRun(
        kind=kind,
        rate_pps=rate,
        sent=totals.counts.sent if totals else 0,
        answered=totals.counts.answered if totals else 0,
        cpu_s=cpu_s,
        worker_cpu_us=ff.worker_cpu_us_per_probe(lines),
        lost_forward=int(total.get("lost_forward", 0)),
        lost_reverse=int(total.get("lost_reverse", 0)),
    )
    return run, problems


def _sender_step(
    ns: str,
    tmp: Path,
    kind: str,
    rate: float,
    seconds: float,
    far: FarEnd,
    icmp: ff.SenderRun | None,
) -> tuple[FarStep, ff.SenderRun]:
    """One loadgen sender's line; with the far end's CPU per probe sent (the pair) and the
    datagrams the namespace's UDP receive buffers dropped meanwhile (where loss happened)."""
    cpu0, drops0 = far.cpu_s(), far.rcvbuf_errors()
    run, problems = _sender(ns, tmp, kind, rate, seconds)
    cpu1, drops1 = far.cpu_s(), far.rcvbuf_errors()
    drops = None if drops0 is None or drops1 is None else drops1 - drops0
    far_us = None
    if cpu0 is not None and cpu1 is not None and run.sent:
        far_us = (cpu1 - cpu0) * 1e6 / run.sent
    line = f"{ff.sender_line(run, icmp)}; UDP receive-buffer drops {ff.fmt(drops, 'd')}"
    if icmp is None:  # the pair: the reflector is the far end that matters
        line = f"pair (--stamp -> reflect x1): {line}; reflector {ff.fmt(far_us, '.2f')} us/pkt"
    figures = {"run": dataclasses.asdict(run), "far_us_per_pkt": far_us, "rcvbuf_drops": drops}
    return FarStep(f"sender {kind}" if icmp else "pair", line, tuple(problems), figures), run


def _irtt(ns: str, tmp: Path, seconds: float, stamp: ff.SenderRun | None) -> FarStep:
    if shutil.which("irtt") is None:
        return FarStep(
            "irtt", "irtt: not installed (`make bench-sysdeps` installs it): step left out"
        )
    server = [
        *sides()[1],
        "timeout",
        str(FAR_LIMIT_S),
        "irtt",
        "server",
        "-b",
        f"127.0.0.1:{IRTT_PORT}",
        "-i",
        "0",
    ]
    out = tmp / "irtt.json"
    client = [
        *sides()[0],
        *("irtt", "client", "-i", IRTT_INTERVAL, "-d", f"{seconds:g}s", "--wait=300ms", "-Q"),
        *("-o", str(out), f"127.0.0.1:{IRTT_PORT}"),
    ]
    with FarEnd(ns, server, IRTT_PORT, tmp / "irtt-server.log") as srv:
        cpu0 = srv.cpu_s()
        code, cpu_s, output = _run_tool(ns, client, seconds + 20)
        cpu1 = srv.cpu_s()
    problems = list(srv.problems)
    figures = ff.parse_irtt(out.read_text()) if out.exists() else None
    if code != 0 or figures is None:
        problems.append(f"irtt client exited {code}: {output.strip()[-200:]}")
        return FarStep("irtt", "irtt: no result", tuple(problems))
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    base = stamp or ff.SenderRun("stamp", 0.0, 0, 0, 0.0, None)
    line = ff.irtt_line(figures, cpu_s, server_cpu, base)
    return FarStep(
        "irtt",
        line,
        tuple(problems),
        {"irtt": dataclasses.asdict(figures), "client_cpu_s": cpu_s, "server_cpu_s": server_cpu},
    )


def run_far_end(
    cfg: FarConfig, progress: Callable[[str], None], steps: list[FarStep]
) -> list[FarStep]:
    """Every far-end step, in order, appended to `steps` as it is done (so CTRL-C keeps what
    is done); each line reaches `progress` too."""

    def done(new: Sequence[FarStep]) -> None:
        steps.extend(new)
        for s in new:
            progress(s.line + "".join(f"\n{s.label}: BROKEN: {p}" for p in s.problems))

    with tempfile.TemporaryDirectory(prefix="loadgen-farend-") as name, far_namespace() as ns:
        tmp = Path(name)
        program = str(tmp / "udpblast")
        if why := build_c(UDPBLAST_SOURCE, Path(program), "the C blaster"):
            done([FarStep("far end", f"far end: {why}: its steps are left out")])
            return steps
        echo_argv = [*sides()[1], program, "echo", str(ECHO_PORT), str(FAR_LIMIT_S)]
        reflect_argv = [
            *sides()[1],
            *(sys.executable, "-m", "loadgen", "reflect", "--port", str(REFLECT_PORT)),
            *("--workers", "1", "--stateful", "--max-rate-per-sender", "10M", "--plain"),
            *("--duration", f"{FAR_LIMIT_S}s"),
        ]
        with FarEnd(ns, echo_argv, ECHO_PORT, tmp / "echo.log") as echo:
            floor = ff.search_ladder(
                cfg.rates_pps, lambda r: _measure_rung(ns, program, echo, r, cfg.rung_s)
            )
            done(_ladder_steps("echo (C)", floor, floor, echo, None))
            with FarEnd(ns, reflect_argv, REFLECT_PORT, tmp / "reflect.log") as refl:
                rungs = ff.search_ladder(
                    cfg.rates_pps, lambda r: _measure_rung(ns, program, refl, r, cfg.rung_s)
                )
                done(_ladder_steps("reflect x1", rungs, floor, refl, echo.peak_rss_bytes()))
                best = ff.best_held(rungs)
                held = best.rate_pps if best else min(cfg.rates_pps)
                done([_sender_step(ns, tmp, "stamp", held, cfg.sender_s, refl, None)[0]])
                rate = min(cfg.sender_pps, held)
                runs: dict[str, ff.SenderRun] = {}
                for kind in KINDS:
                    icmp = runs.get("icmp", ff.SenderRun("icmp", rate, 0, 0, 0.0, None))
                    step, runs[kind] = _sender_step(ns, tmp, kind, rate, cfg.sender_s, refl, icmp)
                    done([step])
        done([_irtt(ns, tmp, cfg.sender_s, runs.get("stamp"))])
    return steps
