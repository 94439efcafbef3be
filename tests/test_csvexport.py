"""The CSV export equals the JSONL's per-second rows, and `--report` writes the HTML at the end
of a real loopback run (127.0.0.0/8 only, bounded by a probe count and a timeout)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.output.csvexport import flatten
from loadgen.output.htmlreport import PANEL_IDS
from loadgen.output.report import JSONL_SCHEMA_VERSION, RUN_HEADER_KEYS


def test_flatten_spreads_the_generator_and_joins_lists() -> None:
    row = {
        "type": "second_total",
        "rtt_p50_us": None,
        "generator_limited": True,
        "generator_limits": ["a", "b"],
        "rtt_hist": [0, 3, 1],
        "generator": {
            "requested_pps": 10.0,
            "achieved_pps": 9.5,
            "workers": [{"worker": 0, "cpu_pct": 3.5}, {"worker": 1, "cpu_pct": 4.0}],
        },
    }
    assert flatten(row) == {
        "type": "second_total",
        "rtt_p50_us": "",
        "generator_limited": "1",
        "generator_limits": "a b",
        "rtt_hist": "0 3 1",
        "generator_requested_pps": "10.0",
        "generator_achieved_pps": "9.5",
        "w0_worker": "0",
        "w0_cpu_pct": "3.5",
        "w1_worker": "1",
        "w1_cpu_pct": "4.0",
    }


@pytest.mark.root
def test_a_loopback_run_writes_csv_equal_to_jsonl_and_a_report(tmp_path: Path) -> None:
    jsonl, table, html = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "r.html"
    args = ["127.0.0.1,127.0.0.2", "-r", "400", "-c", "300", "--plain", "--jsonl", str(jsonl)]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadgen",
            "ping",
            *args,
            "--csv",
            str(table),
            "--report",
            str(html),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    objects = [json.loads(line) for line in jsonl.read_text().splitlines()]
    head = objects[0]
    assert head["type"] == "run" and head["v"] == JSONL_SCHEMA_VERSION
    assert set(RUN_HEADER_KEYS) <= set(head)
    assert head["command"][:2] == ["loadgen", "ping"] and head["targets"] == 2
    seconds = [o for o in objects if o["type"] in ("second", "second_total")]
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(seconds) > 0
    for row, obj in zip(rows, seconds, strict=True):
        want = flatten(obj)
        assert {k: row[k] for k in want} == want
        assert all(row[k] == "" for k in set(row) - set(want))  # a target's generator cells
    text = html.read_text()
    for panel in PANEL_IDS:
        assert f'id="fig-{panel}"' in text


@pytest.mark.root
def test_report_without_jsonl_reads_a_temporary_one(tmp_path: Path) -> None:
    html = tmp_path / "only.html"
    args = ["127.0.0.1", "-r", "200", "-c", "200", "--plain", "--report", str(html)]
    res = subprocess.run(
        [sys.executable, "-m", "loadgen", "ping", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert 'id="fig-rtt-cdf"' in html.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["only.html"]  # the temporary JSONL is gone
