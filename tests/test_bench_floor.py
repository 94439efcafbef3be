"""The bench's kernel floor (floor.c): its output parsed, its steps laid out, and a real build
and run in the bench's namespaces against the kernel's own counters."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from loadgen.bench.cli import build_floor, ladder, parse_config
from loadgen.bench.figures import ToolCounts, parse_floor
from loadgen.bench.steps import FLOOR, LOADGEN, Step
from loadgen.bench.topology import bench_net

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


def test_parse_floor_sums_worker_lines() -> None:
    text = "sent 10 received 9 stamps 0\nnoise\nsent 5 received 5 stamps 5\n"
    assert parse_floor(text) == ToolCounts(15, 14)
    assert parse_floor("sent 10 received\n") is None
    assert parse_floor("") is None


def test_floor_steps_follow_the_worker_counts() -> None:
    cfg = parse_config(["--workers", "1,2", "--rates", "10k", "--no-peers", "--duration", "3s"])
    steps = ladder(cfg, "/bin/floor")
    floors = [s for s in steps if s.tool == FLOOR]
    assert [(s.workers, s.tx_timestamps) for s in floors] == [(1, False), (2, False), (2, True)]
    assert [s.label for s in floors] == ["floor (C) x1", "floor (C) x2", "floor (C) x2 txts"]
    assert all(s.program == "/bin/floor" and s.duration_s == 3 for s in floors)
    assert floors[2].argv(["198.18.1.1", "198.18.1.2"], Path("x")) == [
        *("/bin/floor", "3", "2", "64", "1", "198.18.1.1", "198.18.1.2")
    ]
    assert not [s for s in ladder(cfg) if s.tool == FLOOR]  # no binary: no floor steps
    assert not parse_config(["--no-floor"]).floor
    stamped = Step(LOADGEN, 4, rate_pps=1000, workers=1, duration_s=1, tx_timestamps=True)
    assert "--tx-timestamps" in stamped.argv(["198.18.1.1"], Path("j"))
    assert stamped.label == "loadgen 1k x1 txts"


@needs_cc
def test_a_bad_source_is_a_note_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "floor.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr("loadgen.bench.cli.FLOOR_SOURCE", bad)
    program, why = build_floor(tmp_path)
    assert program is None and "building the kernel floor failed" in why


@needs_cc
@pytest.mark.root
def test_the_floor_builds_runs_and_every_probe_is_answered(tmp_path: Path) -> None:
    program, why = build_floor(tmp_path)
    assert program is not None, why
    with bench_net(4) as net:
        before = net.client.read()["Icmp"]
        for stamps in (False, True):
            step = Step(FLOOR, 4, workers=2, duration_s=0.3, tx_timestamps=stamps, program=program)
            done = subprocess.run(
                ["ip", "netns", "exec", net.client_ns, *step.argv(net.targets[:4], tmp_path)],
                capture_output=True,
                text=True,
                timeout=step.run_limit_s(),
                check=False,
            )
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert len(lines) == 2 and all(ln.endswith(" 0") != stamps for ln in lines), lines
        after = net.client.read()["Icmp"]
    counts = parse_floor(done.stdout)
    assert counts is not None and counts.sent > 1000
    # The requests the floor sent in both runs were answered. It blasts with no pacing, so a
    # veth backlog can overflow now and then on a busy machine (15 in 101k once): within 0.1 %.
    requests = after["OutEchos"] - before["OutEchos"]
    replies = after["InEchoReps"] - before["InEchoReps"]
    assert 0.999 * requests <= replies <= requests, (requests, replies)
