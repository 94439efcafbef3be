"""TCP connect probes against the lab's TCP hosts, both IP versions: loadgen's counts equal the
lab's counters exactly (open, closed, filtered, unreachable and randomly dropping hosts), as
root and as an
unprivileged user. The probe timeout (500 ms) is below the kernel's first SYN retransmission
(1 s), so every probe is one SYN and the counters count probes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_connect_loopback import as_nobody, outdir

from loadgen.lab import Lab
from loadgen.lab.tcptruth import TcpExpected, TcpTruth, tcp_expected

from .conftest import Labs, run_loadgen

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(120)]

PORT = 80
COUNT = 1000
HOSTS: list[dict[str, object]] = [
    {"name": "open", "tcp_open": [PORT]},
    {"name": "closed", "tcp_closed": [PORT]},
    {"name": "filtered", "tcp_filtered": [PORT]},
    {"name": "lossy", "tcp_open": [PORT], "tcp_drop": 0.2},
    {"name": "unreach", "tcp_unreachable": [PORT]},
]
TIMING = {"timeout": "500ms", "delay": "3s"}  # a RST read late is late, not lost


@pytest.fixture(scope="module")
def lab(module_labs: Labs) -> Iterator[Lab]:
    yield module_labs(HOSTS, seed=5)


def truths(lab: Lab, version: int) -> dict[str, TcpTruth]:
    """Each TCP host's truth by host name."""
    return {t.name: t for t in lab.tcp_truth(version=version).values()}


def since(after: dict[str, TcpTruth], before: dict[str, TcpTruth]) -> dict[str, TcpExpected]:
    return {name: tcp_expected(after[name].since(before[name])) for name in after}


def check(got: dict[str, dict[str, int]], expected: dict[str, TcpExpected]) -> None:
    for name, exp in expected.items():
        g = got[name]
        assert g["sent"] == exp.sent == COUNT, (name, g, exp)
        assert (g["received"] + g["late"], g["lost"], g["errored"]) == (
            exp.received,
            exp.lost,
            exp.errored,
        ), (name, g, exp)
        assert g["refused"] == exp.refused, (name, g, exp)
    assert expected["open"].received == COUNT and expected["closed"].refused == COUNT
    assert expected["filtered"].lost == COUNT and 0 < expected["lossy"].lost < COUNT
    assert expected["unreach"].errored == COUNT  # an ICMP error quoting each SYN


def test_connect_counts_match_the_lab_exactly(lab: Lab, version: int, tmp_path: Path) -> None:
    addresses = {h.name: h.address_of(version) for h in lab.hosts}
    before = truths(lab, version)
    run = run_loadgen(
        tmp_path,
        list(addresses.values()),
        rate_pps=len(HOSTS) * 2000,
        count=COUNT,
        probe="tcp-connect",
        port=PORT,
        timeout=TIMING["timeout"],
        delay=TIMING["delay"],
    )
    got = {}
    for name, address in addresses.items():
        c = run.counts(address)
        got[name] = {
            k: getattr(c, k) for k in ("sent", "received", "late", "lost", "errored", "refused")
        }
        assert c.unaccounted == 0
    check(got, since(truths(lab, version), before))


def run_as_nobody(targets: list[str], out: Path) -> list[dict[str, Any]]:
    cmd = [*as_nobody(), sys.executable, "-m", "loadgen", "ping", ",".join(targets)]
    cmd += ["--tcp-connect", str(PORT), "-r", str(len(HOSTS) * 1000), "-c", str(COUNT), "--plain"]
    cmd += ["-w", TIMING["timeout"], "-d", TIMING["delay"], "--jsonl", str(out)]
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False, env=env)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_connect_without_root_counts_exactly(lab: Lab, version: int, tmp_path: Path) -> None:
    names = {h.address_of(version): h.name for h in lab.hosts}
    before = truths(lab, version)
    rows = run_as_nobody(list(names), outdir(tmp_path) / "nobody.jsonl")
    (summary,) = [r for r in rows if r["type"] == "summary"]
    got = {names[t["name"]]: t for t in summary["targets"]}
    check(got, since(truths(lab, version), before))
