"""suppress_rst: the nftables table's script, and on loopback (root) that the table is there
while a SYN run sends, gone after it, and reaped by name once a killed run's process is gone.
Runs are bounded by count and timeout; only 127.0.0.1 is probed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from loadgen.errors import ProfileError
from loadgen.net import rstguard
from loadgen.profile import parse_profile


def test_the_table_drops_rsts_from_the_blocks_only() -> None:
    text = rstguard.ruleset("loadgen_rst_42", [(61512, 62023), (61000, 61511)])
    assert text.startswith("table inet loadgen_rst_42 {")
    assert "type filter hook output priority 0; policy accept;" in text
    assert "tcp sport { 61000-61511, 61512-62023 } tcp flags & rst == rst counter drop" in text


def test_suppress_rst_is_for_tcp_syn_only() -> None:
    with pytest.raises(ProfileError, match="only tcp-syn probes have RSTs to suppress"):
        parse_profile({"targets": "127.0.0.1", "suppress_rst": True}, source="r.toml")
    ok = parse_profile(
        {"targets": "127.0.0.1", "probe": "tcp-syn", "port": 80, "suppress_rst": True},
        source="r.toml",
    )
    assert ok.suppress_rst


def rst_tables() -> set[str]:
    out = subprocess.run(
        ["nft", "list", "tables", "inet"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if rstguard.TABLE_PREFIX in line}


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def start(port: int, count: int) -> subprocess.Popen[str]:
    args = ["ping", "127.0.0.1", "--tcp", str(port), "--suppress-rst", "-r", "100", "--plain"]
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args, "-c", str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_table(proc: subprocess.Popen[str]) -> str:
    name = f"{rstguard.TABLE_PREFIX}{proc.pid}"
    for _ in range(200):  # at most 20 s
        if name in rst_tables() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert name in rst_tables(), proc.communicate(timeout=30)
    return name


@pytest.mark.root
def test_the_table_lives_exactly_as_long_as_the_run(listener: int) -> None:
    proc = start(listener, 300)  # 3 s of sending
    name = wait_for_table(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "300 transmitted, 300 received" in out
    assert name not in rst_tables()


@pytest.mark.root
def test_a_killed_runs_table_is_reaped_by_name(listener: int) -> None:
    proc = start(listener, 3000)  # 30 s: killed long before
    name = wait_for_table(proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=30)
    psutil.wait_procs(children, timeout=30)
    assert name in rst_tables()
    assert name in rstguard.reap_stale()
    assert name not in rst_tables()
