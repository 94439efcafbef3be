"""An SLA that holds on loopback: `loadgen run` of a profile with an [sla] table, plus a flag
that adds a clause to it, exits 0 and says PASS per clause; bounded by a probe count, and its
limits (0% loss, 10 s) never depend on how fast this machine is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PROFILE = """\
targets = ["127.0.0.1", "127.0.0.2"]
rate = 400
count = 200
timeout = "1s"
delay = "1s"

[sla]
max_loss = "0%"
max_p99 = "10s"
window = "second"
scope = "target"
"""


def test_a_profile_sla_that_holds_exits_0(tmp_path: Path) -> None:
    profile, out = tmp_path / "sla.toml", tmp_path / "out.jsonl"
    profile.write_text(PROFILE)
    flags = ("--plain", "--jsonl", str(out), "--sla-max-rtt", "10s")
    done = subprocess.run(
        [sys.executable, "-m", "loadgen", "run", str(profile), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-4] == "SLA: PASS, judged over every second for every target"
    assert [line.split(":")[0] for line in lines[-3:]] == [
        "  PASS max_loss <= 0%",
        "  PASS max_p99 <= 10s",
        "  PASS max_rtt <= 10s",
    ]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if r["type"] == "sla_breach"]
    sla = rows[-1]["sla"]
    active = {(r["second"], r["target"]) for r in rows if r["type"] == "second" and r["sent"]}
    assert sla["passed"] and [c["judged"] for c in sla["clauses"]] == [len(active)] * 3
