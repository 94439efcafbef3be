"""Two Ray nodes in network namespaces on a bridge, probing lab hosts: the merged buckets equal
the lab's counters and two one-box runs; a node killed and a link cut are named, their probes
unresolved, and the cut-off worker stops on its own lease.

The Ray network is a bridge `<prefix>-br` in the root namespace (198.19.254.1, the head) and a
namespace per node (198.19.254.2 and .3) joined to it by a veth; the nodes reach the lab hosts
through the root namespace, which forwards only on this test's own links (per-device
`forwarding`, never the host-wide switch). Everything carries the test's prefix and is removed
on every exit path; Ray's processes are SIGKILLed by pid, found by their temp dirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("ray", reason="the cluster extra is not installed: pip install -e '.[cluster]'")

from test_cluster_ray import (
    HEAD_ONLY,
    RAY_ENV,
    RAY_START,
    counts_of_rows,
    free_port,
    kill_ray,
    run_ok,
)

from loadgen.lab import expected_counts, lab_down, lab_up, mismatches, parse_lab_spec

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(400)]

HEAD = "198.19.254.1"  # far from the blocks labs take, which are picked from 198.18.0.0 up
NODES = ("198.19.254.2", "198.19.254.3")
RATE, COUNT = 500, 1000  # per target: 2 s of probes
LEASE_STOP_S = 3.0  # the bound: the lease stops a cut-off worker within 3 s


def ip(*argv: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def forward_on(ifname: str) -> None:
    """IPv4 forwarding for what arrives on this one device of ours."""
    Path(f"/proc/sys/net/ipv4/conf/{ifname}/forwarding").write_text("1")


@contextlib.contextmanager
def hub(prefix: str) -> Iterator[list[str]]:
    """The bridge and the node namespaces; yields the namespaces' names."""
    bridge, spaces = f"{prefix}-br", [f"{prefix}-n{i}" for i in range(len(NODES))]
    try:
        ip("ip", "link", "add", bridge, "type", "bridge")
        ip("ip", "addr", "add", f"{HEAD}/24", "dev", bridge)
        ip("ip", "link", "set", bridge, "up")
        forward_on(bridge)
        for i, (ns, address) in enumerate(zip(spaces, NODES, strict=True)):
            ip("ip", "netns", "add", ns)
            ip("ip", "link", "add", f"{prefix}-v{i}", "type", "veth", "peer", "eth0", "netns", ns)
            ip("ip", "link", "set", f"{prefix}-v{i}", "master", bridge, "up")
            ip("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            ip("ip", "link", "set", "eth0", "up", ns=ns)
            ip("ip", "link", "set", "lo", "up", ns=ns)
            ip("ip", "route", "add", "default", "via", HEAD, ns=ns)
        yield spaces
    finally:
        for ns in spaces:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


@contextlib.contextmanager
def ray_cluster(spaces: list[str], env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """A head on the bridge and a node in each namespace; yields the head's address and each
    node's temp dir (the tag its processes carry)."""
    temps = [tempfile.mkdtemp(prefix="lgcl-ray-", dir="/tmp") for _ in range(len(spaces) + 1)]
    port = free_port(HEAD)
    address = f"{HEAD}:{port}"
    try:
        head = [*HEAD_ONLY, "--node-ip-address", HEAD, "--port", str(port)]
        run_ok([*RAY_START, *head, "--temp-dir", temps[0]], env)
        for ns, node, temp in zip(spaces, NODES, temps[1:], strict=True):
            join = ["--address", address, "--node-ip-address", node, "--temp-dir", temp]
            run_ok(["ip", "netns", "exec", ns, *RAY_START, *join], env)
        yield address, temps[1:]
    finally:
        for temp in temps:
            kill_ray(temp)
            shutil.rmtree(temp, ignore_errors=True)


def profile_text(a: str, b: str, count: int) -> str:
    return (
        f'targets = ["{a}", "{b}"]\nrate = "{2 * RATE}"\ncount = {count}\n'
        'timeout = "500ms"\ndelay = "500ms"\n'
        f'[[placement]]\nnode = "{NODES[0]}"\ntargets = ["{a}"]\n'
        f'[[placement]]\nnode = "{NODES[1]}"\ntargets = ["{b}"]\n'
    )


def summary_of(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return next(r for r in rows if r["type"] == "summary")


def worker_pid(tag: str) -> int:
    """The loadgen worker a node's agent started (a descendant of that node's Ray)."""
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(tag in a for a in p.info["cmdline"] or []):
                for child in p.children(recursive=True):
                    if any("stream_worker_main" in a for a in child.cmdline()):
                        return child.pid
    raise AssertionError(f"no worker under {tag}")


def ended(pid: int) -> bool:
    """Exited (a zombie until its agent, cut off too, reaps it) or gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_two_namespace_nodes_count_what_the_lab_counts_and_fail_by_lease(tmp_path: Path) -> None:
    prefix = "lgcl" + secrets.token_hex(1)
    env = {**os.environ, **RAY_ENV}
    spec = parse_lab_spec(
        {"prefix": prefix, "hosts": [{"name": "a"}, {"name": "b"}]}, source="test"
    )
    try:
        with lab_up(spec) as lab, hub(prefix) as spaces, ray_cluster(spaces, env) as (head, tags):
            for h in lab.hosts:
                forward_on(h.root_ifname)
            a, b = (h.address for h in lab.hosts)
            profile = tmp_path / "p.toml"
            profile.write_text(profile_text(a, b, COUNT))
            run = [sys.executable, "-m", "loadgen", "run", str(profile), "--plain", "--jsonl"]
            run_ok([*run, str(tmp_path / "ray.jsonl"), "--cluster", head], env)
            lab.wait_idle()
            truth = lab.truth()
            got = counts_of_rows(summary_of(tmp_path / "ray.jsonl")["targets"])
            for address in (a, b):
                assert mismatches(got[address], expected_counts(truth[address])) == {}, address
            # Two one-box runs from the root namespace: the same figures per target.
            ping = [sys.executable, "-m", "loadgen", "ping", "-r", str(RATE), "-c", str(COUNT)]
            ping += ["-w", "500ms", "-d", "500ms", "--plain", "--jsonl"]
            for address in (a, b):
                out = tmp_path / f"{address}.jsonl"
                run_ok([*ping, str(out), address], env)
                assert counts_of_rows(summary_of(out)["targets"])[address] == got[address]

            # A node killed and the other's link cut while they send.
            profile.write_text(profile_text(a, b, 100 * COUNT))
            out = tmp_path / "fail.jsonl"
            proc = subprocess.Popen(
                [*run, str(out), "--cluster", head],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                deadline = time.monotonic() + 120
                while '"second":1,' not in (out.read_text() if out.exists() else ""):
                    assert time.monotonic() < deadline and proc.poll() is None, "no second 1"
                    time.sleep(0.1)
                cut_off = worker_pid(tags[1])
                # The cut first: a Stop the coordinator sends once the other node is gone
                # must not reach the cut-off worker before its link goes.
                subprocess.run(["ip", "link", "set", f"{prefix}-v1", "down"], check=True)
                cut_at = time.monotonic()
                kill_ray(tags[0])  # the node dies: its agent and worker with it
                while not ended(cut_off) and time.monotonic() < cut_at + 10:
                    time.sleep(0.05)
                stopped_s = time.monotonic() - cut_at
                _, stderr = proc.communicate(timeout=120)
            finally:
                proc.kill()
            print(f"cut-off worker ended {stopped_s:.2f} s after the cut")
            assert stopped_s <= LEASE_STOP_S + 0.5, stopped_s  # + its 500 ms linger
            assert proc.returncode == 1, stderr
            assert f"worker 0: (on node {NODES[0]}) its stream closed before it said" in stderr
            assert f"worker 1: (on node {NODES[1]}) sent nothing for 2 s" in stderr, stderr
            # Every probe the coordinator heard of has an outcome or is unresolved (those of a
            # killed worker's last frames); what a cut-off worker sent after its last frame
            # reached nobody's books, and is not counted as sent.
            targets = summary_of(out)["targets"]
            assert all(t["unaccounted"] == 0 and t["sent"] > 0 for t in targets), targets
    finally:
        lab_down(prefix)
