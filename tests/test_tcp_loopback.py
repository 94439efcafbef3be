"""TCP SYN probes end to end on loopback, IPv4 and IPv6: real workers and raw TCP sockets
against listeners this test opens on ephemeral ports (open: SYN-ACK) and ports it closed again
(closed: the kernel's RST, counted as received and as refused). Bounded by count and timeout;
only 127.0.0.0/8 and ::1 are probed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

COUNT = 400


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def listeners() -> Iterator[dict[str, int]]:
    """An open and a closed port on 127.0.0.1 and on ::1."""
    socks, ports = [], {}
    for name, family, host in (("v4", socket.AF_INET, "127.0.0.1"), ("v6", socket.AF_INET6, "::1")):
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen(1024)
        socks.append(listener)
        ports[name] = listener.getsockname()[1]
        with socket.socket(family, socket.SOCK_STREAM) as gone:
            gone.bind((host, 0))
            ports[f"{name}_closed"] = gone.getsockname()[1]
    yield ports
    for listener in socks:
        listener.close()


def summary_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    summary = next(r for r in rows if r["type"] == "summary")
    for r in rows:
        if r["type"] in ("second", "second_total"):
            assert r["unaccounted"] == 0, r
    return {t["name"]: t for t in summary["targets"]} | {"total": summary["total"]}


@pytest.mark.parametrize("version", ["v4", "v6"])
def test_syn_probes_count_open_and_closed_ports_exactly(
    version: str, listeners: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    if version == "v4":
        targets, ports = "127.0.0.1,127.0.0.2", f"{listeners['v4']},{listeners['v4_closed']}"
        expect = {"127.0.0.1": 0, "127.0.0.2": COUNT}  # 127.0.0.2 gets the closed port
    else:
        targets, ports = "::1", str(listeners["v6_closed"])
        expect = {"::1": COUNT}
    args = ("-c", str(COUNT), "-r", "4k", "--jsonl", str(out), "--plain")
    res = loadgen("ping", targets, "--tcp", ports, *args)
    assert res.returncode == 0, res.stderr
    got = summary_rows(out)
    for name, refused in expect.items():
        row = got[name]
        assert (row["sent"], row["received"], row["lost"], row["refused"]) == (
            COUNT,
            COUNT,
            0,
            refused,
        ), row
    if version == "v6":  # and the open port of ::1, in a run of its own (one target, one port)
        res = loadgen("ping", "::1", "--tcp", str(listeners["v6"]), *args)
        assert res.returncode == 0, res.stderr
        row = summary_rows(out)["::1"]
        assert (row["sent"], row["received"], row["refused"]) == (COUNT, COUNT, 0), row


@pytest.fixture
def rejecting() -> Iterator[str]:
    """An nft table of this test's own that answers SYNs to port 7 of 127.0.0.3 and ::1 with
    an ICMP error (host / address unreachable) on the way in; removed however the test ends."""
    table = f"lgs_tcperr_{os.getpid()}"
    match = "tcp dport 7 tcp flags syn / syn,ack,rst,fin counter"
    rules = (
        f"table inet {table} {{\n  chain inp {{\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    ip daddr 127.0.0.3 {match} reject with icmp type host-unreachable\n"
        f"    ip6 daddr ::1 {match} reject with icmpv6 type addr-unreachable\n  }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)
    try:
        yield table
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False, timeout=10)


@pytest.mark.parametrize("target", ["127.0.0.3", "::1"])
def test_an_icmp_error_quoting_a_syn_makes_it_errored(
    target: str, rejecting: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    res = loadgen("ping", target, "--tcp", "7", "-c", str(COUNT), "-r", "4k", "--jsonl", str(out))
    assert res.returncode == 1, res.stderr  # nothing came back but errors
    row = summary_rows(out)[target]
    listing = subprocess.run(
        ["nft", "list", "table", "inet", rejecting],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    rule = next(line for line in listing.splitlines() if f"daddr {target} " in line)
    rejected = int(rule.split("counter packets ")[1].split()[0])
    assert rejected == COUNT
    assert (row["sent"], row["errored"], row["icmp_errors"], row["lost"]) == (
        COUNT,
        COUNT,
        COUNT,
        0,
    ), row
