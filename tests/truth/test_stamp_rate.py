"""STAMP at rate: `loadgen ping --stamp` against `loadgen reflect --stateful` in a lab host's
namespace, with nft drops each way, must count every probe exactly, forward and reverse loss
equal to the two drop counters, however fast it goes. LOADGEN_TRUTH_STAMP_PPS (default 5k)
and LOADGEN_TRUTH_STAMP_WORKERS (sender workers, default 1) raise it. The reflector and the
sender are pinned to different CPUs; a socket that overflowed (the reflector's, counted by its
namespace, or the sender's, counted by its workers) is reported as the machine's limit.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab import Lab, lab_down, lab_up, parse_lab_spec, remains
from loadgen.lab.netops import nft, nft_counters, parse_snmp

from .test_stamp import PORT, RULES, TABLE

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(300)]

RATE_PPS = int(os.environ.get("LOADGEN_TRUTH_STAMP_PPS", "5000"))  # any machine; 20k+ by hand
WORKERS = int(os.environ.get("LOADGEN_TRUTH_STAMP_WORKERS", "1"))
SECONDS = 3


@pytest.fixture
def rate_lab() -> Iterator[Lab]:
    prefix = "lgrf" + secrets.token_hex(1)
    spec = parse_lab_spec({"prefix": prefix, "seed": 5, "hosts": [{"name": "far"}]}, source="truth")
    lab = lab_up(spec)
    try:
        yield lab
    finally:
        lab.close()
        lab_down(prefix)
        left = remains(prefix)
        assert not left, f"lab {prefix} left behind: {left}"


def pinned(last: bool) -> list[str]:
    """taskset to the first (sender) or last (reflector) CPU, when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(cpus[-1 if last else 0])] if len(cpus) > 1 else []


def rcvbuf_errors(netns: str) -> int:
    text = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return parse_snmp(text)["Udp"]["RcvbufErrors"]


def test_loss_stays_exact_at_rate(rate_lab: Lab, tmp_path: Path) -> None:
    host = rate_lab.hosts[0]
    nft(host.netns, ["-f", "-"], stdin=RULES)
    probes = RATE_PPS * SECONDS
    overflowed = rcvbuf_errors(host.netns)
    cmd = ["ip", "netns", "exec", host.netns, *pinned(True), sys.executable, "-m", "loadgen"]
    cmd += ["reflect", "--bind", host.address, "--port", str(PORT), "--workers", "1"]
    cmd += ["--stateful", "--plain", "--duration", "120", "--allow", "198.18.0.0/15"]
    reflector = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reflector.stdout is not None
        first = reflector.stdout.readline()  # the first per-second line: the socket is bound
        assert "pps" in first, f"reflector did not start: {first!r}"
        out = tmp_path / "stamp.jsonl"
        ping = [*pinned(False), sys.executable, "-m", "loadgen", "ping", host.address]
        ping += ["--stamp", str(PORT), "-r", str(RATE_PPS), "-c", str(probes)]
        ping += ["--workers", str(WORKERS), "--plain", "--jsonl", str(out)]
        res = subprocess.run(
            ping,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        reflector.send_signal(signal.SIGINT)
        try:  # communicate: reads and closes its pipes too
            summary, _ = reflector.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            reflector.kill()
            summary, _ = reflector.communicate(timeout=10)
    assert res.returncode == 0, res.stderr
    truth = nft_counters(host.netns, TABLE, family="inet")
    rows: list[dict[str, Any]] = [json.loads(line) for line in out.read_text().splitlines()]
    sender_drops = sum(
        w["rx_drops"]
        for r in rows
        if r["type"] == "second_total"
        for w in r["generator"]["workers"]
    )
    total = next(r for r in rows if r["type"] == "summary")["total"]
    figures = {
        k: total[k]
        for k in ("sent", "received", "lost", "lost_forward", "lost_reverse", "late", "errored")
    }
    per_second = [r["sent"] for r in rows if r["type"] == "second_total" and r["sent"]]
    sending_s = len(per_second)
    reflector_drops = rcvbuf_errors(host.netns) - overflowed
    rate = f"{RATE_PPS} pps asked, {probes / max(sending_s, 1):.0f} sent (per second {per_second})"
    print(f"{rate}: {figures}, {truth}, reflector socket drops {reflector_drops}")
    limit = f"this machine's limit at {RATE_PPS} pps: lower LOADGEN_TRUTH_STAMP_PPS"
    assert reflector_drops == 0, f"the reflector's socket dropped {reflector_drops}: {limit}"
    assert sender_drops == 0, f"the sender's sockets dropped {sender_drops}: {limit}"
    assert total["sent"] == probes
    assert total["received"] + total["lost"] + total["late"] + total["errored"] == probes
    # The reflector answered exactly what got past the input drops (its summary may wrap),
    # and every probe lost was dropped by one of the two rules.
    assert re.search(rf"{probes - truth['fwd_drop']:,}\s+reflected", summary), summary
    assert total["lost"] == truth["fwd_drop"] + truth["rev_drop"]
    # Then the sender's split of its losses by the reflector's sequence (stamp_figures).
    assert total["lost_forward"] == truth["fwd_drop"] == probes // 10
    assert total["lost_reverse"] == truth["rev_drop"] > 0
