"""Summary text and the JSONL export, from records aggregated for real."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadgen.errors import UsageError
from loadgen.output import report
from loadgen.output.report import JSONL_SCHEMA_VERSION, JsonlWriter
from loadgen.output.summary import summary_text
from loadgen.stats import Aggregator, RunSummary, SecondReport
from loadgen.wire.records import RECORD_DTYPE, RecordFlag, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
K = RecordKind
NAMES = ("alpha.test", "bravo.test", "charlie.test")
US = 1000


def run(
    rows: list[tuple[int, int, int, int]], n_targets: int = 3
) -> tuple[list[SecondReport], RunSummary]:
    """rows: (tx offset, target, kind, rtt_ns); every reply carries RX_KERNEL."""
    records = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, (tx, target, kind, rtt) in enumerate(rows):
        probes = 1 if kind == K.SENT else 0  # a SENT record per probe
        records[i] = (START + tx, rtt, target, kind, RecordFlag.RX_KERNEL, probes)
    agg = Aggregator(n_targets, START, S)
    agg.add(records)
    reports = agg.close_all()
    return reports, agg.cumulative()


def probe(tx: int, target: int, kind: int, rtt: int = 0) -> list[tuple[int, int, int, int]]:
    return [(tx, target, K.SENT, 0), (tx, target, kind, rtt)]


def sample_run() -> tuple[list[SecondReport], RunSummary]:
    rows = probe(0, 0, K.RECEIVED, 100 * US) + probe(1, 0, K.RECEIVED, 300 * US)
    rows += probe(2, 0, K.LOST) + probe(3, 0, K.LATE, 2 * S)
    rows += probe(S + 5, 1, K.RECEIVED, 50 * US) + probe(S + 6, 1, K.ERRORED)
    rows += [(S + 6, 1, K.ICMP_ERROR, 0), (0, 0, K.DUPLICATE, 120 * US)]
    return run(rows)


def test_summary_text_reads_like_ping() -> None:
    _, summary = sample_run()
    text = summary_text(summary, NAMES)
    assert "--- alpha.test loadgen statistics ---" in text
    assert "4 transmitted, 2 received, 25% packet loss, 1 late, 0 errors\n" in text
    assert "1 duplicates, 0 reordered, 0 bitflips, 0 corrupted, 0 icmp errors, 0 stale" in text
    assert "rtt min/avg/max/mdev = 0.100/0.200/0.300/0.100 ms" in text
    assert "rtt p50/p90/p99 = " in text and "jitter = 0.200 ms" in text
    assert "--- bravo.test loadgen statistics ---" in text
    assert "2 transmitted, 1 received, 0% packet loss, 0 late, 1 errors" in text
    assert "1 icmp errors" in text
    assert "charlie.test" not in text and "1 targets sent nothing" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "--- total (3 targets, 2 s) loadgen statistics ---" in text
    assert "6 transmitted, 3 received, 16.67% packet loss" in text
    assert "timestamps: rx kernel, tx user" in text
    assert "WARNING" not in text


def test_summary_text_warns_about_unaccounted_probes_and_anomalies() -> None:
    rows = [*probe(0, 0, K.RECEIVED, 10 * US), (1, 0, K.SENT, 0), (0, 5, K.SENT, 0)]
    _, summary = run(rows)
    text = summary_text(summary, NAMES)
    assert text.count("WARNING: +1 probes unaccounted for") == 2  # alpha and the total
    assert "WARNING: BUG: 1 invalid records ignored" in text


def test_the_total_row_of_one_family_carries_it(tmp_path: Path) -> None:
    reports, _ = sample_run()
    path = tmp_path / "six.jsonl"
    with JsonlWriter(str(path), families=(6, 6, 6)) as out:
        out.write_second(reports[0], NAMES)
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [o["family"] for o in objs] == [6] * len(objs) and objs[-1]["target"] == -1


def test_jsonl_round_trip(tmp_path: Path) -> None:
    reports, summary = sample_run()
    path = tmp_path / "run.jsonl"
    with JsonlWriter(str(path), families=(4, 6, 4)) as out:
        for report in reports:
            out.write_second(report, NAMES)
        out.write_summary(summary, NAMES, {"rate_pps": 1000, "profile": "lab"})
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [o["type"] for o in objs] == ["second", "second_total"] * 2 + ["summary"]
    assert all(o["v"] == JSONL_SCHEMA_VERSION for o in objs)
    alpha = objs[0]
    assert (alpha["second"], alpha["target"], alpha["name"]) == (0, 0, "alpha.test")
    assert alpha["t"] == pytest.approx(START / S)
    assert (alpha["sent"], alpha["received"], alpha["late"], alpha["lost"]) == (4, 2, 1, 1)
    assert alpha["loss_pct"] == 25.0 and alpha["duplicates"] == 1 and alpha["unaccounted"] == 0
    assert alpha["rtt_count"] == 2
    assert (alpha["rtt_min_us"], alpha["rtt_avg_us"], alpha["rtt_max_us"]) == (100, 200, 300)
    assert alpha["rtt_mdev_us"] == 100 and alpha["rtt_jitter_us"] == 200
    assert alpha["rtt_p50_us"] == 200 and alpha["rtt_p90_us"] == 280
    assert (alpha["rx_ts"], alpha["tx_ts"]) == ("kernel", "user")
    total1 = objs[3]
    assert (total1["second"], total1["target"], total1["name"]) == (1, -1, "total")
    assert (total1["errored"], total1["icmp_errors"], total1["t"]) == (1, 1, START / S + 1)
    # Each target's IP version; the total of a run mixing both families has none.
    assert (alpha["family"], total1["family"]) == (4, None)
    summary_obj = objs[-1]
    assert summary_obj["seconds"] == 2 and summary_obj["extra"]["rate_pps"] == 1000
    assert [t["name"] for t in summary_obj["targets"]] == list(NAMES)
    assert [t["family"] for t in summary_obj["targets"]] == [4, 6, 4]
    charlie = summary_obj["targets"][2]
    assert charlie["sent"] == 0 and charlie["rtt_avg_us"] is None and charlie["rx_ts"] == "none"
    assert summary_obj["total"]["sent"] == 6 and summary_obj["anomalies"]["late_records"] == 0
    assert summary_obj["rtt_pct_rel_error"] < 0.01


def test_jsonl_is_flushed_after_every_second(tmp_path: Path) -> None:
    reports, _ = sample_run()
    path = tmp_path / "live.jsonl"
    out = JsonlWriter(str(path))
    out.write_second(reports[0], NAMES)
    lines = path.read_text().splitlines()  # read while the writer is still open
    assert len(lines) == 2 and json.loads(lines[-1])["type"] == "second_total"
    out.close()


def test_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="pick a writable path"):
        JsonlWriter(str(tmp_path / "missing-dir" / "x.jsonl"))


def test_a_full_disk_stops_the_export_with_one_line_and_never_raises() -> None:
    reports, summary = sample_run()
    out = JsonlWriter("/dev/full")
    for r in reports:
        out.write_second(r, NAMES)  # the run goes on: nothing raises
    out.write_summary(summary, NAMES)
    out.close()
    assert out.error is not None and "\n" not in out.error
    assert out.error.startswith("writing the JSONL export '/dev/full' failed after 0 lines: ")
    assert "(ENOSPC)" in out.error and "free some disk space" in out.error


def test_an_export_removed_during_the_run_is_a_failure(tmp_path: Path) -> None:
    reports, _ = sample_run()
    path = tmp_path / "gone.jsonl"
    out = JsonlWriter(str(path))
    out.write_second(reports[0], NAMES)
    path.unlink()
    out.write_second(reports[1], NAMES)  # the kernel takes it: the file is only unlinked
    out.close()
    assert out.error == (
        f"the JSONL export {str(path)!r} was removed or replaced during the run (its 4 lines "
        "went with it); leave the file alone until loadgen ends"
    )
    kept = JsonlWriter(str(tmp_path / "kept.jsonl"))
    kept.write_second(reports[0], NAMES)
    kept.close()
    assert kept.error is None


def test_a_pipe_whose_reader_left_is_named_with_its_fix(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    out = JsonlWriter(str(fifo))
    os.close(reader)
    reports, _ = sample_run()
    out.write_second(reports[0], NAMES)
    out.close()
    assert out.error is not None and "(EPIPE)" in out.error
    assert "keep it reading" in out.error


def test_every_documented_key_is_written(tmp_path: Path) -> None:
    reports, _ = sample_run()
    path = tmp_path / "keys.jsonl"
    with JsonlWriter(str(path)) as out:
        out.write_second(reports[0], NAMES)
    obj: dict[str, Any] = json.loads(path.read_text().splitlines()[0])
    doc = report.__doc__ or ""
    for key in obj:
        word = key[4:-3] if key.startswith("rtt_") and key.endswith("_us") else key
        assert word in doc, f"{key} is written but not documented"
    for rtt in ("min", "avg", "max", "mdev", "p50", "p90", "p99", "jitter"):
        assert f"rtt_{rtt}_us" in obj
