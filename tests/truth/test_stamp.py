"""STAMP against `loadgen reflect --stateful` running inside a lab host's namespace, behind drops
in each direction with known truth: nft counters in the host that match only UDP to or from the
reflector's port count what was dropped going there and coming back. loadgen's lost_forward and
lost_reverse must equal the two counters exactly. The namespaces share one clock, so the
one-way figures are checked against the RTT they split (forward + residence + reverse), never
against wall-clock expectations. (This kernel has no netem, so no delay is injected.)
"""

from __future__ import annotations

import json
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
from loadgen.lab.netops import nft, nft_counters

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(300)]

PORT = 8620
PROBES = 3000
# Every 10th test packet reaching the host is dropped on its way in, every 7th reply on its
# way out; the nft counters of those two rules are the truth.
TABLE = "lgstampx"
RULES = f"""
table inet {TABLE} {{
    counter fwd_drop {{ }}
    counter rev_drop {{ }}
    chain input {{
        type filter hook input priority -10;
        udp dport {PORT} numgen inc mod 10 == 3 counter name fwd_drop drop
    }}
    chain output {{
        type filter hook output priority -10;
        udp sport {PORT} numgen inc mod 7 == 5 counter name rev_drop drop
    }}
}}
"""


@pytest.fixture
def stamp_lab() -> Iterator[Lab]:
    prefix = "lgst" + secrets.token_hex(1)
    spec = parse_lab_spec({"prefix": prefix, "seed": 3, "hosts": [{"name": "far"}]}, source="truth")
    lab = lab_up(spec)
    try:
        yield lab
    finally:
        lab.close()
        lab_down(prefix)
        left = remains(prefix)
        assert not left, f"lab {prefix} left behind: {left}"


def reflect_in(lab: Lab) -> subprocess.Popen[str]:
    host = lab.hosts[0]
    cmd = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "loadgen", "reflect"]
    cmd += ["--bind", host.address, "--port", str(PORT), "--workers", "1", "--stateful"]
    cmd += ["--plain", "--duration", "90", "--allow", "198.18.0.0/15"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first per-second line: the worker's socket is bound
    if "pps" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"reflector did not start: {line!r} {err}")
    return proc


def test_forward_and_reverse_loss_equal_the_drop_counters(stamp_lab: Lab, tmp_path: Path) -> None:
    host = stamp_lab.hosts[0]
    nft(host.netns, ["-f", "-"], stdin=RULES)
    reflector = reflect_in(stamp_lab)
    try:
        out = tmp_path / "stamp.jsonl"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadgen",
                "ping",
                host.address,
                "--stamp",
                str(PORT),
                "-r",
                "1000",
                "-c",
                str(PROBES),
                "--jsonl",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=90,
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
    # The reflector answered what got past the input drops (its summary may wrap).
    assert re.search(rf"{PROBES - PROBES // 10:,}\s+reflected", summary), summary
    truth = nft_counters(host.netns, TABLE, family="inet")
    rows: list[dict[str, Any]] = [json.loads(line) for line in out.read_text().splitlines()]
    total = next(r for r in rows if r["type"] == "summary")["total"]
    assert total["sent"] == PROBES
    assert total["lost"] == truth["fwd_drop"] + truth["rev_drop"]
    assert total["lost_forward"] == truth["fwd_drop"] == PROBES // 10
    assert total["lost_reverse"] == truth["rev_drop"] > 0
    assert total["received"] + total["lost"] + total["late"] + total["errored"] == PROBES
    for r in rows:
        if r["type"] == "second":
            assert r["lost"] == r["lost_forward"] + r["lost_reverse"], r
    # One clock for both ends: no one-way figure is negative, and the three parts of a reply's
    # round trip (forward, in the reflector, reverse) add up to T4 - T1, where T1, the STAMP
    # timestamp, is taken when the batch is built, just before the send time RTTs count from.
    assert min(total["owd_fwd_min_us"], total["owd_rev_min_us"], total["residence_min_us"]) >= 0
    parts = total["owd_fwd_avg_us"] + total["residence_avg_us"] + total["owd_rev_avg_us"]
    assert total["owd_fwd_count"] == total["rtt_count"] == total["received"]
    assert total["rtt_avg_us"] - 0.01 <= parts <= total["rtt_max_us"]
