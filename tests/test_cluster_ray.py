"""`loadgen run --cluster` against a real Ray head on this box (127.0.0.2, its own temp dir):
agents start the workers, which connect back over TCP; the totals equal a one-box run's.

Ray's processes are found by the temp dir in their command lines and SIGKILLed by pid at the
end, whatever happened (`ray stop` would end every Ray on the machine). Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadgen.stats import Counts

pytest.importorskip("ray", reason="the cluster extra is not installed: pip install -e '.[cluster]'")

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE = "127.0.0.2"  # Ray turns 127.0.0.1 into the host's routed address; .2 it leaves alone
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


RAY_START = [str(Path(sys.executable).with_name("ray")), "start", "--num-cpus", "1"]
RAY_START += ["--disable-usage-stats"]
HEAD_ONLY = ["--head", "--include-dashboard", "false"]


def kill_ray(tag: str) -> int:
    """SIGKILL every process whose command line holds `tag`, and their children."""
    victims: set[psutil.Process] = set()
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and any(tag in a for a in p.info["cmdline"] or []):
                victims |= {p, *p.children(recursive=True)}
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(list(victims), timeout=10)
    return len(victims)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def ray_head(env: dict[str, str]) -> Iterator[str]:
    """A Ray head on NODE; yields its address."""
    temp = tempfile.mkdtemp(prefix="lgcl-ray-", dir="/tmp")  # short: Ray's socket paths
    port = free_port(NODE)
    try:
        head = [*HEAD_ONLY, "--node-ip-address", NODE, "--port", str(port), "--temp-dir", temp]
        run_ok([*RAY_START, *head], env)
        yield f"{NODE}:{port}"
    finally:
        kill_ray(temp)
        shutil.rmtree(temp, ignore_errors=True)


def run_ok(argv: list[str], env: dict[str, str], timeout: float = 180) -> None:
    res = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]


def counts_of_rows(rows: list[dict[str, Any]]) -> dict[str, Counts]:
    """Each target's counts (by name) from a JSONL summary's target rows."""
    return {r["name"]: Counts(**{k: r[k] for k in Counts.__slots__}) for r in rows}


def totals(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    summary = next(r for r in rows if r["type"] == "summary")
    per_target = {t["target"]: (t["sent"], t["received"]) for t in summary["targets"]}
    return {"per_target": per_target, "extra": summary["extra"]}


def test_a_run_on_ray_nodes_counts_what_a_one_box_run_does(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(
        'targets = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]\nrate = "1500"\ncount = 600\n'
        'timeout = "1s"\ndelay = "1s"\n'
        f'[[placement]]\nnode = "{NODE}"\ntargets = ["127.0.1.1", "127.0.1.2"]\nworkers = 2\n'
        f'[[placement]]\nnode = "{NODE}"\ntargets = ["127.0.1.3"]\n'
    )
    env = {**os.environ, **RAY_ENV}
    run = [sys.executable, "-m", "loadgen", "run", str(profile), "--plain", "--jsonl"]
    with ray_head(env) as address:
        run_ok([*run, str(tmp_path / "ray.jsonl"), "--cluster", address], env)
    run_ok([*run, str(tmp_path / "one.jsonl")], env)
    on_ray, one_box = totals(tmp_path / "ray.jsonl"), totals(tmp_path / "one.jsonl")
    assert on_ray["per_target"] == one_box["per_target"] == {i: (600, 600) for i in range(3)}
    clocks = on_ray["extra"]["clocks"]
    assert [(c["worker"], c["host"]) for c in clocks] == [(i, f"node {NODE}") for i in range(3)]
    assert all(abs(c["offset_ns"]) <= c["bound_ns"] for c in clocks)  # one box, one clock
    assert one_box["extra"]["clocks"] == []
