"""Workers on Ray nodes (`loadgen run --cluster`): the only module that imports ray.

Ray places and supervises, nothing more: one `NodeAgent` actor per node (hard node affinity, no
CPU reserved) starts the ordinary worker processes there, pinned round-robin on that node's
CPUs, and kills them when the run ends; each worker connects back to the coordinator over TCP
(`net.stream`) under the lease. No frame goes through Ray. Needs `pip install 'loadgen[cluster]'`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from loadgen.errors import LoadgenError, UsageError, WorkerFailed
from loadgen.net.rstguard import reap_stale
from loadgen.remote import Launcher
from loadgen.wire.messages import PlanMsg, decode, encode

START_TIMEOUT_S = 60.0  # placing an actor on a node and starting its workers
STOP_TIMEOUT_S = 5.0
# A worker started by an agent: the same entry point a local stream worker has.
_WORKER = (
    "import base64, sys; from loadgen.worker import stream_worker_main; "
    "stream_worker_main(base64.b64decode(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))"
)


class NodeAgent:
    """Runs on one node as a Ray actor: starts and ends that node's workers. It first reaps
    what loadgen runs killed on this node left behind (their RST tables: `net.rstguard`)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        with contextlib.suppress(LoadgenError):  # no nft, or not root: nothing of ours to reap
            reap_stale()

    def start(self, address: tuple[str, int], plans: Sequence[tuple[int, bytes]]) -> list[int]:
        """Start a worker per plan, pinned on this node's CPUs in turn; returns their pids.
        Plain processes, not multiprocessing children: an actor's main module is Ray's."""
        cpus = sorted(os.sched_getaffinity(0))
        for k, (_index, plan_bytes) in enumerate(plans):
            plan = decode(plan_bytes)
            assert isinstance(plan, PlanMsg)
            pinned = encode(replace(plan, cpu=cpus[k % len(cpus)]))
            argv = [sys.executable, "-c", _WORKER, address[0], str(address[1])]
            self.procs.append(subprocess.Popen([*argv, base64.b64encode(pinned).decode()]))
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGKILL what is left: a worker past its lease has ended on its own already."""
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=STOP_TIMEOUT_S)


def connect(address: str) -> str:
    """Join the Ray cluster at `address` ("auto": the local `ray start` one); returns this
    host's address in it, where the coordinator listens for its workers."""
    # Ray reports usage to its vendor unless told not to; loadgen sends nothing the user did
    # not ask for (ray reads this at init; a user's own setting wins).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"--cluster {address}: cannot join the Ray cluster ({exc}); start one with `ray "
            "start --head --node-ip-address ADDRESS` and give its address, or auto"
        ) from exc
    ip: str = ray.util.get_node_ip_address()
    return ip


def alive_nodes() -> dict[str, str]:
    """The cluster's live nodes: address -> node id."""
    return {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n.get("Alive")}


class RayLauncher(Launcher):
    """Starts each worker on its node through that node's agent (`nodes[w]`: worker w's)."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = tuple(nodes)
        self.agents: list[Any] = []

    def host(self, index: int) -> str:
        return f"node {self.nodes[index]}"

    def start(
        self, address: tuple[str, int], plans: Sequence[tuple[int, bytes]]
    ) -> dict[int, BaseProcess]:
        ids = alive_nodes()
        missing = sorted(set(self.nodes) - set(ids))
        if missing:
            raise UsageError(
                f"[[placement]] node {missing[0]} is not a live node of the Ray cluster (it "
                f"has {', '.join(sorted(ids))}): start `ray start --address HEAD:6379 "
                "--node-ip-address ADDRESS` there, or fix node"
            )
        agent_class = ray.remote(num_cpus=0, max_restarts=0)(NodeAgent)
        started = []
        for node in dict.fromkeys(self.nodes):
            group = [(i, b) for i, b in plans if self.nodes[i] == node]
            strategy = NodeAffinitySchedulingStrategy(ids[node], soft=False)
            agent = agent_class.options(scheduling_strategy=strategy).remote()
            self.agents.append(agent)
            started.append(agent.start.remote(address, group))
        try:
            ray.get(started, timeout=START_TIMEOUT_S)
        except Exception as exc:  # ray's errors: GetTimeoutError, RayActorError, ...
            raise WorkerFailed(f"the Ray agents did not start the workers: {exc}") from exc
        return {}  # no local processes: their streams say how they end

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):  # a node gone takes its agent with it
                ray.get(agent.stop.remote(), timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(Exception):
                ray.kill(agent)
        self.agents.clear()
        ray.shutdown()
