"""`loadgen run --report` against a 10-host lab with impairments: the HTML shows every panel,
its table equals the JSONL's summary, and the impaired hosts lead it. The lab (prefix "lgr" +
4 hex digits, our own) comes up and down with the run, and is checked gone afterwards."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from reportpage import Page

from loadgen.lab import lab_down, remains
from loadgen.output.htmlreport import COLUMNS, PANEL_IDS
from loadgen.output.runfile import worst_key

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(150)]

HOSTS = (
    '[[lab.hosts]]\nname = "clean"\ncount = 2\n',
    '[[lab.hosts]]\nname = "outage"\ndrop_every = 100\ndrop_run = 10\n',
    '[[lab.hosts]]\nname = "lossy"\ndrop = 0.05\n',
    '[[lab.hosts]]\nname = "every10"\ndrop_every = 10\n',
    '[[lab.hosts]]\nname = "slow"\ndelay_ms = 20\n',
    '[[lab.hosts]]\nname = "jittery"\ndelay_ms = 5\njitter_ms = 3\n',
    '[[lab.hosts]]\nname = "dup"\nduplicate = 0.05\n',
    '[[lab.hosts]]\nname = "reorder"\nreorder = 0.05\n',
    '[[lab.hosts]]\nname = "unreach"\nunreachable = 0.05\n',
)


def test_report_of_a_lab_run_with_impairments(tmp_path: Path) -> None:
    prefix = "lgr" + secrets.token_hex(2)
    profile = tmp_path / "lab.toml"
    profile.write_text(
        'rate = "1k"\nduration = "4s"\ntimeout = "1s"\ndelay = "1s"\n'
        f'[lab]\nprefix = "{prefix}"\nseed = 11\n' + "".join(HOSTS)
    )
    jsonl, html = tmp_path / "lab.jsonl", tmp_path / "lab.html"
    exports = ["--jsonl", str(jsonl), "--report", str(html)]
    try:
        res = subprocess.run(
            [sys.executable, "-m", "loadgen", "run", str(profile), "--plain", *exports],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        lab_down(prefix)
    assert not remains(prefix)
    assert res.returncode == 0, res.stderr
    page = Page(html.read_text())
    assert {f"fig-{p}" for p in PANEL_IDS} | {f"fig-smoke-{k}" for k in range(1, 9)} <= set(
        page.images
    )
    summary = json.loads(jsonl.read_text().splitlines()[-1])
    targets = sorted(summary["targets"], key=worst_key)
    assert len(page.rows) == len(targets) == 10
    for row, target in zip(page.rows, targets, strict=True):
        assert row[1] == target["name"]
        for (_, key, decimals), text in zip(COLUMNS, row[2:], strict=True):
            want = target.get(key)
            if want is None:
                assert text == "n/a", key
            elif decimals is None:
                assert int(text) == want, (key, target["name"])
            else:
                assert abs(float(text) - want) <= 0.5 * 10**-decimals, (key, target["name"])
    lost = {t["name"]: t["lost"] for t in targets}  # the table is in worst_key order (above)
    assert min(lost["every10"], lost["lossy"], lost["outage"]) > 0, lost
    outage = next(r for r in page.rows if r[1] == "outage")
    cells = dict(zip([c[1] for c in COLUMNS], outage[2:], strict=True))
    assert int(cells["outages"]) >= 3 and cells["outage_longest_probes"] == "10"  # 10 in a row
    assert page.header["workers"] == str(summary["extra"]["workers"])
    assert page.header["command"].startswith("loadgen run ")
