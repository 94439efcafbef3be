"""A lab host's STAMP reflector: `loadgen reflect` behind the delay relay (`relay`), started in
the host's namespace by `lab_up` for hosts with `stamp_port`, stopped like a reflector, and its
truth (what the relay held, per direction) read back over the relay's control socket.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from loadgen.errors import LabError
from loadgen.lab.procs import spawn_in_netns, wait_ready_line
from loadgen.lab.relay import RelayConfig
from loadgen.lab.state import LabHost
from loadgen.lab.truth import query_reflector

READY_TIMEOUT_S = 60.0  # the relay waits up to 30 s for `loadgen reflect`, then binds
RELAY_MODULE = "loadgen.lab.relay"


def relay_config(host: LabHost, rdir: Path, die_with_parent: bool) -> RelayConfig:
    imp = host.impairments
    return RelayConfig(
        port=imp.stamp_port,
        address=host.address,
        address6=host.address6,
        delay_fwd_ns=round(imp.delay_fwd_ms * 1e6),
        delay_rev_ns=round(imp.delay_rev_ms * 1e6),
        control_path=str(rdir / f"{host.name}.relay.sock"),
        stats_path=str(rdir / f"{host.name}.relay.json"),
        samples_path=str(rdir / f"{host.name}.relay.samples.json"),
        # Named after the relay: the lab's sweep (reap.LAB_PROCESS_MARKS) knows the reflector
        # as a lab process by it, should the relay die without stopping it.
        reflect_jsonl=str(rdir / f"{host.name}.{RELAY_MODULE}.jsonl"),
        reflect_log=str(rdir / f"{host.name}.reflect.log"),
        die_with_parent=die_with_parent,
    )


def start_relay(
    host: LabHost, rdir: Path, detached: bool
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start the host's relay (which starts its reflector) and wait until both serve; returns
    the process this one started, the relay's pid and its control socket."""
    cfg = relay_config(host, rdir, not detached)
    argv = [sys.executable, "-m", RELAY_MODULE, "--config", cfg.to_json()]
    log = rdir / f"{host.name}.relay.log"
    proc = spawn_in_netns(host.netns, argv, log, detached)
    pid = wait_ready_line(proc, READY_TIMEOUT_S)
    if pid is None:
        proc.terminate()  # the relay stops its reflector on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise LabError(f"STAMP relay of lab host {host.name} did not start; see {log}")
    return proc, pid, cfg.control_path


def relay_truth(host: LabHost) -> dict[str, Any]:
    """What `host`'s relay did so far: its counts and the holds of each direction
    (`holds.Holds.summary`)."""
    if not host.relay_control_path:
        raise LabError(f"lab host {host.name} runs no STAMP reflector; give it stamp_port")
    return query_reflector(host.relay_control_path)
