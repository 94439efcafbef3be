"""`loadgen report` from synthetic JSONL exports: every panel by id, the table's numbers equal
the JSONL's, graceful without rtt_hist/outages or a summary, and one line per bad file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from reportpage import Page

from loadgen.bench.synthrun import write_run
from loadgen.cli import main
from loadgen.output.htmlreport import COLUMNS, PANEL_IDS, write_report
from loadgen.output.runfile import ReportError, load_run, worst_key


def render(tmp_path: Path, **kw: Any) -> tuple[Page, Path]:
    src = tmp_path / "run.jsonl"
    write_run(src, **{"targets": 10, "seconds": 12, **kw})
    out = tmp_path / "run.html"
    write_report(str(src), str(out), worst=4)
    return Page(out.read_text()), src


def summary_of(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
    assert last["type"] == "summary"
    return last


def test_every_panel_is_there_with_an_inlined_png(tmp_path: Path) -> None:
    page, _ = render(tmp_path)
    expected = {f"fig-{p}" for p in PANEL_IDS} | {f"fig-smoke-{k}" for k in range(1, 5)}
    assert expected <= set(page.images)
    for img in page.images.values():
        assert str(img["src"]).startswith("data:image/png;base64,")
    assert page.header["command"] == "loadgen run synthetic.toml"
    assert page.header["kernel"] == "6.1.0-test"
    assert page.header["requested rate"] == "40 probes/s"


def test_the_tables_numbers_equal_the_jsonls_worst_first(tmp_path: Path) -> None:
    page, src = render(tmp_path)
    targets = sorted(summary_of(src)["targets"], key=worst_key)
    assert [r[1] for r in page.rows] == [t["name"] for t in targets]
    assert targets[0]["loss_pct"] > 0  # the order means something
    for row, target in zip(page.rows, targets, strict=True):
        for (_, key, decimals), text in zip(COLUMNS, row[2:], strict=True):
            want = target[key]
            if decimals is None:
                assert int(text) == want, (key, target["name"])
            else:
                assert abs(float(text) - want) <= 0.5 * 10**-decimals, (key, target["name"])


def test_without_histograms_outages_or_summary_it_degrades(tmp_path: Path) -> None:
    page, src = render(tmp_path, hist=False, summary=False)
    assert {f"fig-{p}" for p in PANEL_IDS} <= set(page.images)
    assert all(r[-1] == "n/a" and r[-2] == "n/a" for r in page.rows)
    run = load_run(str(src))
    assert run.summary is None and run.seconds == 12
    assert [t["name"] for t in run.targets][:2] == ["198.18.0.4", "198.18.0.7"]  # most loss
    assert page.header["summary"] == "none: the run ended before writing it"


def test_the_loss_grid_counts_every_probe(tmp_path: Path) -> None:
    src = tmp_path / "run.jsonl"
    write_run(src, targets=201, seconds=700, pps=1, hist=False)
    run = load_run(str(src), worst=3)
    total = summary_of(src)["total"]
    assert run.grid.sent.shape == (67, 350)  # groups of 3 targets, bins of 2 seconds
    assert int(run.grid.sent.sum()) == total["sent"]
    assert int(run.grid.lost.sum()) == total["lost"]
    assert int(run.worst[0].lost.sum()) == run.targets[0]["lost"]
    out = tmp_path / "run.html"
    written = write_report(str(src), str(out), worst=3)
    assert written.size_bytes == out.stat().st_size < 2_000_000  # bounded by the bins


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "is empty: the run closed no second"),
        ('{"type":"run","v":3}\n{"type":"second","v":3,\n', "line 2 is not a loadgen JSONL"),
        ('{"type":"second_total","v":9,"second":0}\n', "line 1 is JSONL schema v9"),
        ('{"type":"run","v":3}\n', "holds no closed second"),
    ],
)
def test_a_bad_file_is_one_line(
    tmp_path: Path, content: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    with pytest.raises(ReportError, match=says):
        load_run(str(src))
    assert main(["report", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_cli_writes_html_pngs_and_compare(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_run(a, targets=5, seconds=6)
    write_run(b, targets=5, seconds=8, seed=2)
    assert main(["report", str(a), "--png", str(tmp_path / "png"), "--compare", str(b)]) == 0
    page = Page((tmp_path / "a.html").read_text())
    assert "fig-compare" in page.images
    pngs = {p.stem for p in (tmp_path / "png").iterdir()}
    assert {i.removeprefix("fig-") for i in page.images} == pngs


def test_without_matplotlib_the_report_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert main(["report", str(tmp_path / "any.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'loadgen[report]'" in err
    # before a run starts: no probe is sent
    assert main(["ping", "127.0.0.1", "-c", "1", "--report", str(tmp_path / "r.html")]) == 2
    assert "pip install 'loadgen[report]'" in capsys.readouterr().err
