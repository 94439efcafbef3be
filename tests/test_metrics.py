"""Prometheus metrics: names, label modes, the listen address, the collector's text (parsed by
prometheus-client's own parser), the HTTP endpoint, the atomic textfile and contrib/."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.coordinator import Display, GeneratorView
from loadgen.errors import UsageError
from loadgen.metrics import Listen, families, labelled_targets, parse_labels, parse_listen
from loadgen.output.prometheus import MetricsDisplay, MetricsExporter
from loadgen.stats import Aggregator
from loadgen.wire.records import BURST_DTYPE, RECORD_DTYPE, RecordKind

S = 1_000_000_000
START = 1_700_000_000 * S
US = 1000
NAMES = ["alpha", "bravo", "charlie"]
CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def aggregated() -> Aggregator:
    """Three targets over two seconds: alpha answers, bravo loses 4 in a row, charlie is slow."""
    rows: list[tuple[int, int, int, int]] = []
    for i in range(6):
        rows += [(i, 0, RecordKind.SENT, 0), (i, 0, RecordKind.RECEIVED, 20 * US)]
        rows += [(i, 1, RecordKind.SENT, 0), (i, 1, RecordKind.LOST if i < 4 else 1, 9 * US)]
        rows += [(S + i, 2, RecordKind.SENT, 0), (S + i, 2, RecordKind.RECEIVED, 3000 * US)]
    records = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for j, (tx, target, kind, rtt) in enumerate(rows):
        records[j] = (START + tx, rtt if kind == 1 else 0, target, kind, 0, kind == 0)
    agg = Aggregator(3, START, S, linger_ns=2 * S)
    agg.add(records)
    bursts = np.zeros(1, dtype=BURST_DTYPE)
    bursts[0] = (START, START + 4, 1, 4)
    agg.add_bursts(bursts)
    agg.close_all()
    return agg


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus-client: (name, labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_listen_is_loopback_unless_an_address_is_written_out() -> None:
    assert parse_listen(":9464", "metrics") == Listen("127.0.0.1", 9464)
    assert parse_listen("9464", "metrics") == Listen("127.0.0.1", 9464)
    assert parse_listen(9464, "metrics") == Listen("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9100", "metrics") == Listen("0.0.0.0", 9100)
    assert str(parse_listen("[::1]:9464", "metrics")) == "[::1]:9464"
    for bad in ("localhost:9464", ":99999", "", "host", True):
        with pytest.raises(UsageError, match="key 'metrics'") as err:
            parse_listen(bad, "metrics")
        assert "\n" not in str(err.value)


def test_label_modes() -> None:
    summary = aggregated().cumulative()
    assert parse_labels(" TOP:2 ", "metrics_labels") == "top:2"
    with pytest.raises(UsageError, match="top:N"):
        parse_labels("top:0", "metrics_labels")
    assert [t.target for t in labelled_targets("auto", summary)] == [0, 1, 2]
    assert labelled_targets("total", summary) == []
    # The worst first: bravo lost most; charlie's p99 is higher than alpha's.
    assert [t.target for t in labelled_targets("top:2", summary)] == [1, 2]


def render(agg: Aggregator, mode: str = "target") -> str:
    """What a scrape gets: the collector's metrics, written by prometheus-client."""
    exporter = MetricsExporter(None, None, mode, NAMES)
    exporter.update(agg, None, ())
    text: bytes = generate_latest(exporter.registry)
    return text.decode()


def test_the_textfile_text_is_what_prometheus_client_writes(tmp_path: Path) -> None:
    agg = aggregated()
    path = tmp_path / "m.prom"
    exporter = MetricsExporter(None, str(path), "target", ['we"ird\\name\n', *NAMES[1:]])
    exporter.update(agg, None, [])
    ours = path.read_text()
    theirs = generate_latest(exporter.registry).decode()
    assert scrape(ours) == scrape(theirs)
    assert len(scrape(ours)) > 100
    assert [line for line in ours.splitlines() if line.startswith("#")] == [
        line for line in theirs.splitlines() if line.startswith("#")
    ]


def test_the_text_parses_and_counters_equal_the_summary() -> None:
    agg = aggregated()
    summary = agg.cumulative()
    got = scrape(render(agg))
    for name, field in (
        ("loadgen_probes_sent_total", "sent"),
        ("loadgen_replies_total", "received"),
        ("loadgen_probes_lost_total", "lost"),
        ("loadgen_replies_late_total", "late"),
    ):
        for ts, label in [*zip(summary.per_target, NAMES, strict=True), (summary.total, "total")]:
            assert got[(name, (("target", label),))] == getattr(ts.counts, field), (name, label)
    assert got[("loadgen_outages_total", (("target", "bravo"),))] == 1
    assert got[("loadgen_outages_total", (("target", "total"),))] == 1
    # Cumulative buckets from rtt_hist: alpha's 20 µs are in (16, 32] µs.
    alpha = summary.per_target[0].rtt.hist
    assert alpha == (0, 0, 6)
    bucket = "loadgen_rtt_seconds_bucket"
    assert got[(bucket, (("le", "1.6e-05"), ("target", "alpha")))] == 0
    assert got[(bucket, (("le", "3.2e-05"), ("target", "alpha")))] == 6
    assert got[(bucket, (("le", "+Inf"), ("target", "total")))] == summary.total.rtt.count
    assert got[("loadgen_rtt_seconds_count", (("target", "charlie"),))] == 6
    assert got[("loadgen_rtt_seconds_sum", (("target", "charlie"),))] == pytest.approx(0.018)
    assert got[("loadgen_build_info", (("version", __import__("loadgen").__version__),))] == 1
    assert got[("loadgen_seconds_closed", ())] == 2


def test_total_mode_has_only_the_total_series() -> None:
    got = scrape(render(aggregated(), "total"))
    targets = {dict(labels).get("target") for _, labels in got}
    assert targets == {"total", None}


@pytest.fixture
def exporter_at() -> Iterator[list[MetricsExporter]]:
    made: list[MetricsExporter] = []
    yield made
    for e in made:
        e.close()


def test_the_endpoint_answers_on_loopback_by_default(exporter_at: list[MetricsExporter]) -> None:
    exporter = MetricsExporter(parse_listen(":0", "metrics"), None, "auto", NAMES)
    exporter_at.append(exporter)
    assert exporter.address is not None and exporter.address.host == "127.0.0.1"
    assert exporter.server.server_address[0] == "127.0.0.1"
    exporter.update(aggregated(), None, ())
    url = f"http://{exporter.address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        got = scrape(answer.read().decode())
    assert got[("loadgen_probes_sent_total", (("target", "total"),))] == 18


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError) as err:
            MetricsExporter(Listen("127.0.0.1", port), None, "auto", NAMES)
    text = str(err.value)
    assert "\n" not in text and f"127.0.0.1:{port}" in text
    assert "in use" in text and "--metrics :PORT" in text


def test_the_textfile_is_replaced_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "loadgen.prom"
    exporter = MetricsExporter(None, str(path), "auto", NAMES)
    agg = aggregated()
    exporter.update(agg, None, ())
    first = os.stat(path)
    with open(path) as reader:  # a reader of the old file keeps all of it
        exporter.update(agg, None, ())
        old = reader.read()
    second = os.stat(path)
    assert first.st_ino != second.st_ino  # a new file took the name: write, then rename
    assert old == path.read_text() and scrape(old)
    assert sorted(os.listdir(tmp_path)) == ["loadgen.prom"]  # no temporary file left
    assert oct(second.st_mode & 0o777) == oct(0o644)


def test_a_textfile_that_cannot_be_written_is_one_note(tmp_path: Path) -> None:
    notes: list[str] = []

    class Notes(Display):
        def note(self, text: str) -> None:
            notes.append(text)

    exporter = MetricsExporter(None, str(tmp_path / "m.prom"), "auto", NAMES)
    shown = MetricsDisplay(Notes(), exporter)
    agg = aggregated()
    view = GeneratorView(0, 0.0, 0.0, (), False)
    (tmp_path / "m.prom").mkdir()  # rename over a directory fails
    shown.refresh(agg, view)
    shown.stopped()
    assert len(notes) == 1 and "metrics textfile" in notes[0] and "\n" not in notes[0]
    with pytest.raises(UsageError, match="not writable"):
        MetricsExporter(None, str(tmp_path / "missing" / "m.prom"), "auto", NAMES)


def test_a_missing_prometheus_client_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(UsageError) as err:
        MetricsExporter(None, None, "auto", NAMES)
    assert "loadgen[metrics]" in str(err.value) and "\n" not in str(err.value)


def _exposed_names() -> set[str]:
    names = set()
    for fam in families(
        aggregated().cumulative(),
        NAMES,
        "auto",
        buckets=19,
        generator=None,
        workers=[(0, 1, 2, 3)],
        version="x",
    ):
        names |= {name for name, _, _ in fam.samples()}
    return names


METRIC_NAME = re.compile(r"\b(?:[a-z_]+:)?loadgen_[a-z0-9_]+(?::[a-z0-9_]+)?\b")


def test_the_recording_rules_parse_and_use_only_real_metrics() -> None:
    rules: Any = yaml.safe_load((CONTRIB / "prometheus" / "loadgen-rules.yml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"]}
    assert "target:loadgen_loss_ratio:rate1m" in records
    assert "target:loadgen_rtt_seconds:p99_1m" in records
    exposed = _exposed_names()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = set(METRIC_NAME.findall(rule["expr"]))
            assert used and used <= exposed | records, (rule["record"], used - exposed)


def test_the_dashboard_parses_and_queries_only_real_metrics() -> None:
    dash = json.loads((CONTRIB / "grafana" / "loadgen-dashboard.json").read_text())
    rules: Any = yaml.safe_load((CONTRIB / "prometheus" / "loadgen-rules.yml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"]}
    exposed = _exposed_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(METRIC_NAME.findall(expr))
        assert used and used <= exposed | records, (expr, used - exposed - records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


COUNTERS = (
    ("loadgen_probes_sent_total", "sent"),
    ("loadgen_replies_total", "received"),
    ("loadgen_replies_late_total", "late"),
    ("loadgen_probes_lost_total", "lost"),
    ("loadgen_duplicates_total", "duplicates"),
    ("loadgen_reordered_total", "reordered"),
    ("loadgen_bitflips_total", "bitflips"),
    ("loadgen_icmp_errors_total", "icmp_errors"),
)


@pytest.mark.root
@pytest.mark.timeout(90)
def test_a_run_serves_closed_seconds_and_ends_equal_to_the_jsonl(tmp_path: Path) -> None:
    """A real run on loopback, scraped over HTTP while it runs: every scrape equals the JSONL's
    seconds closed by then, and the textfile written at the end equals the JSONL summary."""
    port = _free_port()
    jsonl, prom = tmp_path / "run.jsonl", tmp_path / "run.prom"
    args = ["ping", "127.0.0.1,127.0.0.2", "-r", "400", "-c", "1000", "--plain"]
    args += ["--metrics", f":{port}", "--metrics-textfile", str(prom), "--jsonl", str(jsonl)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scrapes = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    got = scrape(r.read().decode())
            except OSError:  # not serving yet, or already closed
                got = {}
            if got.get(("loadgen_seconds_closed", ()), 0) >= 1:
                scrapes.append(got)
            time.sleep(0.25)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"metrics at http://127.0.0.1:{port}/metrics" in err
    assert scrapes, "no scrape during the run saw a closed second"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for got in scrapes:
        closed = got[("loadgen_seconds_closed", ())]
        for name, field in COUNTERS:
            for label in ("127.0.0.1", "127.0.0.2", "total"):
                want = sum(
                    r[field]
                    for r in rows
                    if r["type"] in ("second", "second_total")
                    and r["name"] == label
                    and r["second"] < closed
                )
                assert got[(name, (("target", label),))] == want, (name, label, closed)
    end = scrape(prom.read_text())
    summary = rows[-1]
    assert end[("loadgen_seconds_closed", ())] == summary["seconds"]
    for row in [*summary["targets"], summary["total"]]:
        target = ("target", str(row["name"]))
        for name, field in COUNTERS:
            assert end[(name, (target,))] == row[field], (name, target)
        assert end[("loadgen_rtt_seconds_count", (target,))] == row["rtt_count"]
        assert end[("loadgen_outages_total", (target,))] == row["outages"]
        below_16us = sum(row["rtt_hist"][:2])
        assert end[("loadgen_rtt_seconds_bucket", (("le", "1.6e-05"), target))] == below_16us
    assert end[("loadgen_probes_sent_total", (("target", "total"),))] == 2000


def test_the_command_line_says_a_port_in_use_in_one_line_before_sending() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["ping", "127.0.0.1", "-c", "3", "--metrics", f":{port}"]
        res = subprocess.run(
            [sys.executable, "-m", "loadgen", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Address already in use" in res.stderr
