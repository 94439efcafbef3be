"""A lab's reflector processes: one per reflector host and IP version, started inside the
host's namespace (`python -m loadgen.lab.reflector`), with the kernel's own echo responders
switched off there, and waited for until each answers on its control socket.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import loadgen
from loadgen.errors import LabError
from loadgen.lab.hostcfg import host_seed, reflector_config
from loadgen.lab.impair import ReflectorConfig
from loadgen.lab.netops import in_netns, write_sysctl
from loadgen.lab.state import LabHost
from loadgen.lab.truth import query_reflector

READY_TIMEOUT_S = 30.0  # python + numpy start-up on a busy 2-core machine
# A reflector host's kernel leaves echo requests of both versions to the reflectors.
ECHO_IGNORE_ALL = ("net.ipv4.icmp_echo_ignore_all", "net.ipv6.icmp.echo_ignore_all")
SUFFIX = {4: "", 6: "6."}  # reflector files: <host>.log and <host>.6.log, ...
ReflectorKey = tuple[int, int]  # (host index, IP version)


def leave_echo_to_reflectors(netns: str) -> None:
    """Switch the kernel's echo responders of both IP versions off in `netns`."""
    for sysctl in ECHO_IGNORE_ALL:
        try:
            in_netns(netns, partial(write_sysctl, sysctl, "1"))
        except FileNotFoundError as exc:
            raise LabError(
                f"{sysctl} is missing: reflector hosts need Linux 4.19+ with IPv6 enabled"
            ) from exc


def lab_process_env() -> dict[str, str]:
    """The environment of a lab process: `-m loadgen.lab.<x>` must import this very loadgen,
    installed or not."""
    env = dict(os.environ)
    src = str(Path(loadgen.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # numpy threads: none needed
    return env


def spawn_in_netns(
    netns: str, argv: list[str], log: Path, detached: bool
) -> subprocess.Popen[bytes]:
    """Start a lab process (`argv`) in `netns`, its stderr to `log` and its stdout to a pipe for
    `wait_ready_line`; `detached`: `setsid -f` forks it off, so it outlives `loadgen lab up`."""
    cmd = ["ip", "netns", "exec", netns, *argv]
    if detached:
        cmd = ["setsid", "-f", *cmd]
    with open(log, "ab") as err:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=lab_process_env()
        )


def wait_ready_line(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """Read the "ready PID" line a lab process prints once it serves; the pid, or None when it
    said something else, closed its output or took longer than `timeout_s`. Closes its stdout."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                break
            line += chunk
    proc.stdout.close()
    head, _, pid = line.decode(errors="replace").strip().partition(" ")
    return int(pid) if head == "ready" and pid.isdigit() else None


def _start_reflector(
    host: LabHost, cfg: ReflectorConfig, log_path: Path, detached: bool
) -> subprocess.Popen[bytes]:
    env = lab_process_env()
    cmd = [
        "ip",
        "netns",
        "exec",
        host.netns,
        sys.executable,
        "-m",
        "loadgen.lab.reflector",
        "--config",
        cfg.to_json(),
    ]
    if detached:  # `setsid -f` forks it off: it outlives `loadgen lab up`
        cmd = ["setsid", "-f", *cmd]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _wait_ready(
    hosts: list[LabHost],
    procs: dict[ReflectorKey, subprocess.Popen[bytes]],
    logs: dict[ReflectorKey, Path],
    timeout_s: float,
) -> dict[ReflectorKey, int]:
    """Wait until every reflector answers on its control socket; returns its key -> pid."""
    pids: dict[ReflectorKey, int] = {}
    deadline = time.monotonic() + timeout_s
    pending = [(h, v) for h in hosts for v in (4, 6) if h.control_path_of(v)]
    while pending:
        for h, v in list(pending):
            key, path = (h.index, v), h.control_path_of(v)
            proc = procs.get(key)
            if proc is not None and proc.poll() is not None:
                raise LabError(
                    f"IPv{v} reflector of lab host {h.name} exited "
                    f"({_log_tail(logs[key])}); see {logs[key]}"
                )
            if path and os.path.exists(path):
                try:
                    pids[key] = int(query_reflector(path)["pid"])
                except LabError:
                    continue  # bound but not listening yet
                pending.remove((h, v))
        if pending and time.monotonic() > deadline:
            h, v = pending[0]
            raise LabError(
                f"IPv{v} reflector of lab host {h.name} not ready after "
                f"{timeout_s:.0f}s; see {logs[h.index, v]}"
            )
        if pending:
            time.sleep(0.02)
    return pids


def start_reflectors(
    hosts: list[LabHost],
    lab_seed: int,
    rdir: Path,
    detached: bool,
    procs: dict[ReflectorKey, subprocess.Popen[bytes]],
) -> dict[ReflectorKey, int]:
    """Start the reflectors of `hosts` (both IP versions; `procs` gets the ones this process
    owns, so a failure can stop them) and wait for them; returns their pids by key."""
    logs = {(h.index, v): rdir / f"{h.name}.{SUFFIX[v]}log" for h in hosts for v in (4, 6)}
    for h in hosts:
        for v in (4, 6):
            key = (h.index, v)
            stats = str(rdir / f"{h.name}.{SUFFIX[v]}stats.json")
            cfg = reflector_config(h, host_seed(lab_seed, h.index, v), stats, not detached, v)
            procs[key] = _start_reflector(h, cfg, logs[key], detached)
            if detached:
                procs.pop(key).wait(READY_TIMEOUT_S)
    return _wait_ready(hosts, procs, logs, READY_TIMEOUT_S)
