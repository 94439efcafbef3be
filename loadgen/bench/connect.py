"""The bench's TCP connect steps: a listener in the responder namespace for their duration, and
their figures, read from loadgen's JSONL export (the ICMP counters the other steps are judged
by see no connect) and the responder's TcpExt counters.

The listener defers accept (TCP_DEFER_ACCEPT): loadgen closes every connection with a RST
right after its handshake, so the connection never leaves the listen queue and costs the
listener no accept(); anything that does land in the accept queue is accepted and closed. Its
backlog (and the responder's somaxconn) is 65535, so a lost connect is the generator's, or
the responder kernel's, never a full queue unnoticed: ListenOverflows and ListenDrops are
reported with the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from loadgen.bench.topology import BenchNet
from loadgen.errors import LabError
from loadgen.lab.netops import in_netns, parse_snmp, write_sysctl

PORT = 8080
TARGETS = 8  # spread over workers; each target's share of the ephemeral ports stays small
TIMEOUT, LINGER = "200ms", "500ms"  # sockets held: rate x 0.2 s, within the open-file limit
MAX_SECONDS = 5.0
BACKLOG = 65535
READY_S = 30.0
TCPEXT = ("ListenOverflows", "ListenDrops", "TCPDeferAcceptDrop")


def connect_args(port: int) -> tuple[str, ...]:
    """loadgen's flags for a connect step: the port, and a short timeout and linger."""
    return ("--tcp-connect", str(port), "-w", TIMEOUT, "-d", LINGER)


def _tcpext(namespace: str) -> dict[str, int]:
    def read() -> dict[str, int]:
        with open("/proc/thread-self/net/netstat", encoding="ascii") as f:
            return parse_snmp(f.read()).get("TcpExt", {})

    ext = in_netns(namespace, read)
    return {k: ext.get(k, 0) for k in TCPEXT}


@contextlib.contextmanager
def responder_listener(net: BenchNet, workdir: Path) -> Iterator[dict[str, int]]:
    """A listener on PORT of every responder address for the `with` block; yields a dict that
    holds the responder's TcpExt changes once the block ends."""
    in_netns(net.responder_ns, partial(write_sysctl, "net.core.somaxconn", str(BACKLOG)))
    cmd = ["ip", "netns", "exec", net.responder_ns, sys.executable, "-m", "loadgen.lab.listener"]
    cmd += ["--ports", str(PORT), "--backlog", str(BACKLOG), "--defer-accept", "5"]
    cmd += ["--stats", str(workdir / "listener.json"), "--die-with-parent"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
    changes: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_S
        line = b""
        while not line.startswith(b"ready") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
        if not line.startswith(b"ready"):
            raise LabError("the bench's TCP listener did not start; check python in the netns")
        before = _tcpext(net.responder_ns)
        yield changes
        after = _tcpext(net.responder_ns)
        changes.update({k: after[k] - before[k] for k in TCPEXT})
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def steady_rate(rows: list[dict[str, Any]]) -> float | None:
    """Connects per second over the full seconds of sending (the first and last are partial)."""
    sent = [r["sent"] for r in rows if r.get("type") == "second_total"]
    full = sent[1:-1]
    return sum(full) / len(full) if full else None


def connect_figures(result: Any, jsonl: Path, responder: dict[str, int]) -> Any:
    """A connect step's StepResult with its rate from loadgen's own seconds and the responder's
    listen-queue counters as notes (the ICMP-based rate and loss figures do not apply)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    summary = next((r for r in rows if r.get("type") == "summary"), None)
    notes = [n for n in result.notes if not n.startswith("too short for 100 ms windows")]
    if summary is not None:
        t = summary["total"]
        notes.append(
            f"connects: {t['sent']} sent, {t['received'] + t['late']} established, "
            f"{t['lost']} lost, {t['errored']} errored, {t['refused']} refused"
        )
    notes.append("responder TcpExt: " + ", ".join(f"{k} {v}" for k, v in responder.items()))
    return dataclasses.replace(result, achieved_pps=steady_rate(rows), loss=None, notes=notes)
