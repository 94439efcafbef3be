"""DSCP/ECN per direction against `loadgen reflect` in lab hosts: one host rewrites DSCP and ECN
with nftables on the way in (cs1, CE) and other values on the way out (af21, ECT(1)); a clean
host rewrites nothing. loadgen sends EF with ECT(0) and must report exactly what the rules set,
per direction: forward as the reflector received it (RFC 8972 Class of Service TLV), reverse as
the reply arrived (the reflector sends DSCP1, Not-ECT), for IPv4 and IPv6; "not remarked" on the
clean host.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab import Lab, lab_down, lab_up, parse_lab_spec, remains

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(300)]

PORT = 8621
PROBES = 400
SENT_TOS = 46 << 2 | 2  # EF, ECT(0)
REMARK = {"remark_dscp_fwd": "cs1", "remark_ecn_fwd": "ce"}
REMARK |= {"remark_dscp_rev": "af21", "remark_ecn_rev": "ect1"}


@pytest.fixture(scope="module")
def cos_lab() -> Iterator[Lab]:
    prefix = "lgcos" + secrets.token_hex(1)
    hosts = [{"name": "clean"}, {"name": "remark", **REMARK}]
    lab = lab_up(parse_lab_spec({"prefix": prefix, "seed": 5, "hosts": hosts}, source="truth"))
    try:
        yield lab
    finally:
        lab.close()
        lab_down(prefix)
        left = remains(prefix)
        assert not left, f"lab {prefix} left behind: {left}"


def reflect_at(netns: str, address: str) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "loadgen", "reflect"]
    cmd += ["--bind", address, "--port", str(PORT), "--workers", "1", "--plain"]
    cmd += ["--duration", "60", "--allow", "198.18.0.0/15,2001:2::/48"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first per-second line: the worker's socket is bound
    if "pps" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"reflector did not start: {line!r} {err}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("version", [4, 6])
def test_remarking_is_reported_per_direction(cos_lab: Lab, version: int, tmp_path: Path) -> None:
    clean, remark = cos_lab.hosts
    addresses = [h.address if version == 4 else h.address6 for h in (clean, remark)]
    reflectors = [reflect_at(h.netns, a) for h, a in zip((clean, remark), addresses, strict=True)]
    out = tmp_path / "cos.jsonl"
    cmd = [sys.executable, "-m", "loadgen", "ping", ",".join(addresses), "--stamp", str(PORT)]
    cmd += ["-z", str(SENT_TOS), "-r", "400", "-c", str(PROBES), "--jsonl", str(out)]
    try:
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        for proc in reflectors:
            stop(proc)
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = [json.loads(line) for line in out.read_text().splitlines()]
    summary = next(r for r in rows if r["type"] == "summary")
    by_name = {t["name"]: t for t in summary["targets"]}
    sent = {"dscp": 46, "ecn": 2}
    for row in by_name.values():
        assert row["received"] == PROBES and row["cos_count"] == PROBES
        assert (row["cos_sent"], row["cos_rp"], row["cos_variants"]) == (sent, 0, 1)
    kept = by_name[addresses[0]]
    assert (kept["cos_fwd"], kept["cos_rev"]) == (sent, {"dscp": 46, "ecn": 0})
    assert (kept["cos_fwd_remarked"], kept["cos_rev_remarked"]) == (False, False)
    changed = by_name[addresses[1]]
    assert changed["cos_fwd"] == {"dscp": 8, "ecn": 3}  # what the input rule set
    assert changed["cos_rev"] == {"dscp": 18, "ecn": 1}  # what the output rule set
    assert (changed["cos_fwd_remarked"], changed["cos_rev_remarked"]) == (True, True)
    # A second row shows the marking only where it changed: each target's first, then none.
    marked = [r for r in rows if r["type"] == "second" and "cos_fwd" in r]
    assert sorted(r["name"] for r in marked) == sorted(addresses)
    assert all(r["cos_fwd"] == by_name[r["name"]]["cos_fwd"] for r in marked)
    assert "at reflector ef/ect0 (not remarked)" in res.stdout
    assert "at reflector cs1/ce (remarked)" in res.stdout
    assert "back af21/ect1 (remarked)" in res.stdout
