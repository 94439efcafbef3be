"""SLA verdicts end to end against lab hosts of known loss: `loadgen ping` exits 3 when a
clause fails and 0 when it holds, and says which clause failed, for which target, in which
second. The lossy host drops every 5th echo request (nftables), so any 200 consecutive probes
lose exactly 40: the verdicts never depend on timing (latency limits are 10 s)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab import Lab, lab_down, lab_up, parse_lab_spec, remains
from loadgen.output.report import JSONL_SCHEMA_VERSION

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(120)]

EVERY = 5  # the lossy host drops every 5th probe
PROBES = 200  # per target and run: a multiple of EVERY, so exactly 40 are lost


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "lgs" + secrets.token_hex(2)  # this module's own labs
    hosts = [{"name": "clean"}, {"name": "lossy", "drop_every": EVERY}]
    spec = parse_lab_spec({"prefix": prefix, "seed": 1, "hosts": hosts}, source="sla")
    try:
        with lab_up(spec) as up:
            yield up
    finally:
        lab_down(prefix)
    assert remains(prefix) == []


def ping(
    tmp_path: Path, lab: Lab, hosts: str, *flags: str
) -> tuple[int, str, list[dict[str, Any]]]:
    """`loadgen ping` of PROBES probes to each host ("clean,lossy"): exit code, stdout, JSONL."""
    out = tmp_path / f"{secrets.token_hex(3)}.jsonl"
    addresses = ",".join(lab.host(name).address for name in hosts.split(","))
    rate = str(PROBES * (hosts.count(",") + 1))  # one second of sending
    args = ("-c", str(PROBES), "-r", rate, "-w", "1s", "-d", "1s", "--plain", "--jsonl", str(out))
    done = subprocess.run(
        [sys.executable, "-m", "loadgen", "ping", addresses, *args, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done.returncode, done.stdout, rows


def clause(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    summary = rows[-1]
    assert summary["type"] == "summary" and summary["v"] == JSONL_SCHEMA_VERSION
    found: dict[str, Any] = next(c for c in summary["sla"]["clauses"] if c["clause"] == name)
    return found


def test_zero_loss_fails_with_exit_3_naming_the_value(tmp_path: Path, lab: Lab) -> None:
    code, out, rows = ping(tmp_path, lab, "lossy", "--sla-max-loss", "0%")
    assert code == 3, out
    lossy = lab.host("lossy").address
    assert "SLA: FAIL (1 of 1 clauses), judged over the run for all targets together" in out
    assert "  FAIL max_loss <= 0%: 20% (total, the run); failed 1 of 1" in out
    loss = clause(rows, "max_loss")
    assert not loss["passed"] and loss["first_failure"]["value"] == 20.0 and loss["limit"] == 0
    assert rows[-1]["total"]["lost"] == PROBES // EVERY
    assert rows[-1]["targets"][0]["name"] == lossy


def test_loss_at_the_limit_passes_just_below_it_fails(tmp_path: Path, lab: Lab) -> None:
    code, out, rows = ping(tmp_path, lab, "lossy", "--sla-max-loss", "20%")
    assert code == 0, out
    assert "  PASS max_loss <= 20%: worst 20% (total, the run)" in out
    assert clause(rows, "max_loss")["passed"]
    code, out, _ = ping(tmp_path, lab, "lossy", "--sla-max-loss", "19.99%")
    assert code == 3, out


def test_latency_clauses_far_above_pass_on_a_lossy_host(tmp_path: Path, lab: Lab) -> None:
    flags = ("--sla-max-p99", "10s", "--sla-max-rtt", "10s", "--sla-max-jitter", "10s")
    code, out, rows = ping(tmp_path, lab, "lossy", *flags)
    assert code == 0, out
    assert "SLA: PASS, judged over the run for all targets together" in out
    assert all(c["passed"] and c["judged"] == 1 for c in rows[-1]["sla"]["clauses"])


def test_per_second_per_target_breaches_name_the_lossy_host_only(tmp_path: Path, lab: Lab) -> None:
    flags = ("--sla-max-loss", "0%", "--sla-window", "second", "--sla-scope", "target")
    code, out, rows = ping(tmp_path, lab, "clean,lossy", *flags)
    assert code == 3, out
    lossy = lab.host("lossy").address
    breaches = [r for r in rows if r["type"] == "sla_breach"]
    losing = {r["second"]: r["loss_pct"] for r in rows if r["type"] == "second" and r["lost"] > 0}
    assert breaches and {r["name"] for r in breaches} == {lossy}
    # One breach per second in which the lossy host lost anything, with that second's loss.
    assert {b["second"]: b["value"] for b in breaches} == pytest.approx(losing)
    assert all(b["clause"] == "max_loss" and b["limit"] == 0 and b["unit"] == "%" for b in breaches)
    loss = clause(rows, "max_loss")
    assert loss["failed"] == len(breaches) and loss["worst"]["name"] == lossy
    assert re.search(rf"  FAIL max_loss <= 0%: [0-9.]+% \({re.escape(lossy)}, second \d+\)", out)


def test_a_failed_export_exits_1_even_when_the_sla_fails(tmp_path: Path, lab: Lab) -> None:
    address = lab.host("lossy").address
    flags = ("-c", "50", "-r", "200", "-w", "1s", "-d", "1s", "--plain", "--sla-max-loss", "0%")
    done = subprocess.run(
        [sys.executable, "-m", "loadgen", "ping", address, *flags, "--jsonl", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "SLA: FAIL" in done.stdout  # still judged and shown
    assert "writing the JSONL export '/dev/full' failed" in done.stderr
