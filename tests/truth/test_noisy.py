"""loadgen while something else on the box hammers ICMP, and when its receiver falls behind.

Noisy neighbour: `ping -f` floods another lab host for the whole run; its replies reach
loadgen's raw sockets too (the BPF filter must drop them), and it competes for the CPUs.
loadgen's figures must still equal the truth, or, where its own socket dropped replies, it
must say how many, and the difference must be exactly that.

Stalled receiver: a reflector held (SIGSTOP) while loadgen sends, then let go while loadgen's
worker is held: the reflector's backlog of answers, every one sent twice, arrives all at once
at a socket nobody reads. Every reply datagram must be either counted or reported dropped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadgen.lab.netops import nft_counters
from loadgen.lab.truth import query_reflector

from .conftest import Labs, Run, assert_counts_match, measure

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(90)]


def flood_count(output: str) -> int:
    """Echo requests a finished `ping -q` says it transmitted."""
    found = re.search(r"(\d+) packets transmitted", output)
    assert found, output
    return int(found.group(1))


def generator_drops(run: Run) -> int:
    """Socket drops the export's per-second generator figures show, over the whole run."""
    rows = [r for r in run.rows if r["type"] == "second_total" and "generator" in r]
    return sum(w["rx_drops"] for r in rows for w in r["generator"]["workers"])


def assert_drops_are_reported(run: Run) -> None:
    """What the workers dropped is in the summary and in the seconds it happened in."""
    dropped = sum(w.rx_dropped for w in run.result.outcome.workers)
    summary = next(r for r in run.rows if r["type"] == "summary")
    assert summary["extra"]["rx_dropped"] == dropped
    assert generator_drops(run) == dropped
    if dropped:
        limited = [r for r in run.rows if r["type"] == "second_total" and r["generator_limited"]]
        assert any("drop" in " ".join(r["generator_limits"]) for r in limited), limited


def test_an_icmp_flood_beside_the_run_changes_nothing_loadgen_reports(
    make_lab: Labs, tmp_path: Path
) -> None:
    lab = make_lab(
        [
            {"name": "clean"},
            {"name": "nftdrop", "drop": 0.05, "drop_every": 20},
            {"name": "dup", "duplicate": 0.05},
            {"name": "noise"},
        ]
    )
    targets = [lab.host(n) for n in ("clean", "nftdrop", "dup")]
    noise = lab.host("noise")
    before = lab.truth([noise])[noise.address]
    # The flood runs until loadgen is done and is then stopped the way a user stops ping
    # (SIGINT, which prints its statistics); its own deadline only bounds a test gone wrong.
    # A fixed deadline raced loadgen's run time on a slow machine.
    flood = subprocess.Popen(
        ["ping", "-f", "-q", "-w", "60", noise.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.5)  # flooding before loadgen starts, and until after it ends
        assert flood.poll() is None, "ping -f did not start"
        run, truth = measure(lab, targets, tmp_path, rate_pps=20_000, count=10_000, workers=3)
        assert flood.poll() is None, "the flood ended before loadgen did"
    finally:
        flood.send_signal(signal.SIGINT)
        out, _ = flood.communicate(timeout=15)
    sent_by_flood = flood_count(out)
    after = lab.truth([noise])[noise.address]
    # The kernel saw every flood request (InEchos); none of them is a probe, so no truth figure
    # counted one.
    assert after.requests_seen - before.requests_seen == sent_by_flood > 20_000
    assert after.requests_out == after.echo_requests_in == before.echo_requests_in == 0
    # Each worker owns one target: a drop at its socket belongs to that target's count.
    assert_counts_match(run, truth)
    assert_drops_are_reported(run)
    assert run.result.outcome.summary.total.counts.sent == 30_000


def _worker_pids(pid: int) -> list[int]:
    return [
        p.pid
        for p in psutil.Process(pid).children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in p.cmdline()[-1]
    ]


def socket_drops(pid: int) -> int:
    """The kernel's drop counter of the raw sockets process `pid` holds (/proc/net/raw)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        link = os.readlink(fd)
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    rows = [line.split() for line in Path("/proc/net/raw").read_text().splitlines()[1:]]
    found = [int(row[-1]) for row in rows if row[9] in inodes]
    assert found, f"no raw socket of process {pid} in /proc/net/raw"
    return sum(found)


def _wait_for(what: str, done: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_a_stalled_receiver_reports_every_reply_it_dropped(make_lab: Labs, tmp_path: Path) -> None:
    lab = make_lab([{"name": "dam", "duplicate": 1.0}])
    dam = lab.host("dam")
    assert dam.reflector_pid is not None and dam.control_path is not None
    probes = 40_000

    def requests_sent() -> int:
        # The reflector is stopped meanwhile: read the root end's probe counter alone.
        return nft_counters(None, dam.nft_table, "netdev")[f"req_out_{dam.index}"]

    kernel_dropped = []

    def choreography(pid: int) -> None:
        """All sent into a held reflector; hold the worker, release the reflector's backlog
        onto the worker's socket, then let the worker read what fitted."""
        start = requests_sent()
        psutil.Process(dam.reflector_pid).send_signal(signal.SIGSTOP)  # before loadgen starts
        _wait_for("loadgen to send every probe", lambda: requests_sent() - start >= probes)
        workers = _worker_pids(pid)
        assert len(workers) == 1, workers
        psutil.Process(workers[0]).send_signal(signal.SIGSTOP)
        try:
            psutil.Process(dam.reflector_pid).send_signal(signal.SIGCONT)
            last = [-1]

            def answered_all() -> bool:
                seen = int(query_reflector(str(dam.control_path))["requests_seen"])
                settled, last[0] = seen == last[0], seen
                return settled

            _wait_for("the reflector to answer its backlog", answered_all)
            kernel_dropped.append(socket_drops(workers[0]))
        finally:
            psutil.Process(workers[0]).send_signal(signal.SIGCONT)

    try:
        run, truth = measure(
            lab,
            [dam],
            tmp_path,
            rate_pps=20_000,
            count=probes,
            timeout="10s",
            delay="10s",
            during=choreography,
        )
    finally:
        psutil.Process(dam.reflector_pid).send_signal(signal.SIGCONT)
    t = truth[dam.address]
    r = t.reflector
    assert r is not None and r.duplicated == r.replies
    got = run.counts(dam.address)
    assert got.sent == probes == t.echo_requests_in
    # Held, the reflector's socket overflowed: those requests were never answered.
    assert t.responder_missed > 0
    delivered = got.received + got.late + got.duplicates
    # Every reply datagram the reflector sent was read, or dropped at the worker's socket.
    assert r.replies_sent - delivered == kernel_dropped[0] > 0
    assert sum(w.rx_dropped for w in run.result.outcome.workers) == kernel_dropped[0]
    assert_drops_are_reported(run)
