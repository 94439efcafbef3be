"""The bench: its arithmetic, verdicts and table on made-up inputs; one bounded smoke run of the
real thing (root), and one interrupted run that must leave no namespace behind.

Timing goals are not asserted here: the smoke run checks that the figures are sane and that the
accounting adds up, not that this machine is fast.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadgen.bench.cli import ladder, parse_config
from loadgen.bench.figures import (
    Sample,
    ToolCounts,
    achieved_pps,
    icmp_delta,
    loss_figures,
    pacing_error_p99,
    parse_fping,
    parse_loadgen_jsonl,
    parse_ping,
    parse_snmp,
    steady_cpu_per_million,
    steady_windows,
)
from loadgen.bench.measure import Measured
from loadgen.bench.output import render_table, results_document
from loadgen.bench.steps import FPING, LOADGEN, PING, Step, evaluate, fping_count
from loadgen.bench.topology import bench_namespaces, leftovers, target_addresses
from loadgen.errors import UsageError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and raw sockets need root")

SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 1000
Icmp: InMsgs InErrors InEchos InEchoReps OutMsgs OutEchos OutEchoReps
Icmp: 10 0 7 3 12 3 7
IcmpMsg: InType0 InType8 OutType0 OutType8
IcmpMsg: 3 7 7 3
"""


# -- /proc/net/snmp -------------------------------------------------------------------------


def test_parse_snmp_pairs_names_with_values() -> None:
    snmp = parse_snmp(SNMP)
    assert snmp["Icmp"]["InEchos"] == 7
    assert snmp["Icmp"]["OutEchoReps"] == 7
    assert snmp["IcmpMsg"]["OutType8"] == 3
    assert snmp["Ip"]["DefaultTTL"] == 64


def test_parse_snmp_reads_this_kernels_file() -> None:
    with open("/proc/net/snmp", encoding="ascii") as f:
        snmp = parse_snmp(f.read())
    assert {"InEchos", "InEchoReps", "OutEchos", "OutEchoReps"} <= set(snmp["Icmp"])


@pytest.mark.parametrize(
    "text",
    [
        "Icmp: InMsgs InEchos\n",  # header without values
        "Icmp: InMsgs InEchos\nIcmp: 1\n",  # one value short
        "Icmp: InMsgs\nTcp: 1\n",  # lines of two protocols
    ],
)
def test_parse_snmp_refuses_text_that_does_not_pair_up(text: str) -> None:
    with pytest.raises(ValueError):
        parse_snmp(text)


def test_icmp_delta_is_growth_per_counter() -> None:
    before = parse_snmp(SNMP)
    after = parse_snmp(SNMP.replace("Icmp: 10 0 7 3 12 3 7", "Icmp: 110 0 57 53 162 53 57"))
    d = icmp_delta(before, after)
    assert d["InEchos"] == 50 and d["OutEchos"] == 50 and d["InMsgs"] == 100 and d["InErrors"] == 0


# -- windows, pacing, cost ------------------------------------------------------------------


def samples_from(counts_per_window: list[int], dt_ns: int = 100_000_000) -> list[Sample]:
    out, total = [Sample(0, 0, 0.0)], 0
    for i, c in enumerate(counts_per_window, 1):
        total += c
        out.append(Sample(i * dt_ns, total, i * 0.05))
    return out


def test_steady_windows_drop_idle_and_partial_ends() -> None:
    # idle, partial start, three full windows, partial end, idle
    windows = steady_windows(samples_from([0, 0, 300, 1000, 1000, 1000, 400, 0]))
    assert [w.packets for w in windows] == [1000, 1000, 1000]
    assert achieved_pps(windows) == pytest.approx(10_000)
    assert steady_cpu_per_million(windows) == pytest.approx(0.15 * 1e6 / 3000)


def test_steady_windows_of_a_too_short_run_are_empty() -> None:
    assert steady_windows(samples_from([0, 500, 400, 0])) == []
    assert achieved_pps([]) is None
    assert pacing_error_p99([], 1000) is None


def test_pacing_error_is_relative_to_the_reference() -> None:
    windows = steady_windows(samples_from([1] + [1000, 900, 1100] * 20 + [1]))
    assert pacing_error_p99(windows, 10_000) == pytest.approx(0.1)
    exact = steady_windows(samples_from([1] + [1000] * 30 + [1]))
    assert pacing_error_p99(exact, 10_000) == pytest.approx(0.0)
    assert pacing_error_p99(exact, 20_000) == pytest.approx(0.5)


def test_windows_use_the_measured_intervals_not_the_nominal_ones() -> None:
    s = [Sample(0, 0, 0), Sample(100, 1, 0), Sample(200_000_100, 2001, 0)]
    s += [Sample(400_000_100, 4001, 0), Sample(400_000_200, 4002, 0)]
    windows = steady_windows(s)
    assert achieved_pps(windows) == pytest.approx(10_000)


# -- loss -----------------------------------------------------------------------------------


def test_loss_figures_say_where_probes_went_missing() -> None:
    client = {"OutEchos": 1000, "InEchoReps": 990}
    responder = {"InEchos": 995, "OutEchoReps": 995}
    loss = loss_figures(ToolCounts(sent=1000, answered=985), client, responder)
    assert loss.wire_requests == 5  # sent, never reached the responder
    assert loss.wire_replies == 5  # answered, never reached the client kernel
    assert loss.self_client == 5  # reached the client kernel, not counted by the tool
    assert loss.self_responder == 10
    assert loss.kernel_sent == 1000


# -- tool output ----------------------------------------------------------------------------


def test_parse_ping_counts_duplicates_as_replies() -> None:
    out = "--- 198.18.1.1 ping statistics ---\n100 packets transmitted, 98 received, +2 duplicates"
    assert parse_ping(out) == ToolCounts(100, 100)
    assert parse_ping("5 packets transmitted, 5 received, 0% packet loss") == ToolCounts(5, 5)
    assert parse_ping("ping: connect: Network is unreachable") is None


def test_parse_fping_sums_targets() -> None:
    err = (
        "198.18.1.1 : xmt/rcv/%loss = 10/10/0%, min/avg/max = 0.01/0.02/0.03\n"
        "198.18.1.2 : xmt/rcv/%loss = 10/7/30%, min/avg/max = 0.01/0.02/0.03\n"
    )
    assert parse_fping(err) == (ToolCounts(20, 17), 2)
    assert parse_fping("fping: not enough sequence numbers available!") is None


def jsonl(unaccounted: int = 0, failures: tuple[str, ...] = (), **total: int) -> list[str]:
    counts = {"sent": 100, "received": 97, "late": 1, "lost": 2, "errored": 0}
    counts |= {"duplicates": 1, "bitflips": 0, "corrupted": 0, "stale": 0} | total
    extra = {"failures": list(failures), "interrupted": False, "send_errors": 0}
    extra |= {"rx_dropped": 0, "generator_limited_seconds": [3]}
    rows: list[dict[str, Any]] = [
        {"type": "second", "v": 1, "unaccounted": 0},
        {"type": "second_total", "v": 1, "unaccounted": unaccounted},
        {"type": "summary", "v": 1, "total": {**counts, "unaccounted": 0}, "extra": extra},
    ]
    return [json.dumps(r) for r in rows]


def test_parse_loadgen_jsonl_totals() -> None:
    totals = parse_loadgen_jsonl(jsonl())
    assert totals is not None
    assert totals.counts == ToolCounts(sent=100, answered=99)  # received + late + duplicate
    assert totals.unaccounted == 0 and totals.limited_seconds == 1
    bad = parse_loadgen_jsonl(jsonl(unaccounted=-2))
    assert bad is not None and bad.unaccounted == 2
    assert parse_loadgen_jsonl(jsonl()[:2]) is None  # died before the summary


# -- verdicts -------------------------------------------------------------------------------


def measured(stdout: str = "", stderr: str = "", exit_code: int | None = 0) -> Measured:
    return Measured(
        argv=("tool",),
        exit_code=exit_code,
        timed_out=exit_code is None,
        wall_s=3.0,
        cpu_s=0.5,
        peak_rss_bytes=50 << 20,
        processes=2,
        samples=tuple(samples_from([10] + [100] * 20 + [10])),
        client={"OutEchos": 100, "InEchoReps": 100},
        responder={"InEchos": 100, "OutEchoReps": 100},
        stdout=stdout,
        stderr=stderr,
    )


LG_STEP = Step(LOADGEN, 64, rate_pps=1000, workers=1, duration_s=2)


def test_a_sound_loadgen_step(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(jsonl()) + "\n")
    r = evaluate(LG_STEP, measured(), out)
    assert not r.broken, r.problems
    assert r.achieved_pps == pytest.approx(1000)
    assert r.pacing_p99 == pytest.approx(0.0)
    assert r.loss is not None and r.loss.self_client == 1  # 100 in the kernel, 99 counted
    assert r.cpu_s_per_m == pytest.approx(0.5 * 1e6 / 100)
    assert any("generator-limited" in n for n in r.notes)


@pytest.mark.parametrize(
    ("lines", "exit_code", "problem"),
    [
        (jsonl(unaccounted=3), 0, "3 probes unaccounted"),
        (jsonl(failures=("worker 0: died",)), 1, "failure: worker 0: died"),
        (jsonl()[:2], 1, "no summary"),
        (jsonl(), None, "hung"),
    ],
)
def test_broken_loadgen_steps(
    tmp_path: Path, lines: list[str], exit_code: int | None, problem: str
) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(lines) + "\n")
    r = evaluate(LG_STEP, measured(exit_code=exit_code), out)
    assert r.broken
    assert any(problem in p for p in r.problems), r.problems


def test_a_lossy_peer_is_a_result_not_a_broken_run(tmp_path: Path) -> None:
    text = "100 packets transmitted, 90 received, 10% packet loss"
    r = evaluate(Step(PING, 1, count=100), measured(stdout=text, exit_code=1), tmp_path / "x")
    assert not r.broken
    assert r.pacing_reference == "achieved" and r.pacing_p99 == pytest.approx(0.0)
    garbled = evaluate(Step(PING, 1, count=100), measured(stdout="??"), tmp_path / "x")
    assert garbled.broken


def test_fping_must_report_every_target(tmp_path: Path) -> None:
    err = "198.18.1.1 : xmt/rcv/%loss = 10/10/0%\n"
    r = evaluate(Step(FPING, 2, count=10), measured(stderr=err), tmp_path / "x")
    assert any("1 of 2 targets" in p for p in r.problems)


def test_step_command_lines_probe_only_the_bench_addresses(tmp_path: Path) -> None:
    targets = target_addresses()
    assert len(targets) == 64 and len(set(targets)) == 64
    lab_space = ipaddress.ip_network("198.18.0.0/15")
    assert all(ipaddress.ip_address(t) in lab_space for t in targets)
    argv = LG_STEP.argv(targets[:3], tmp_path / "o.jsonl")
    assert argv[argv.index("ping") + 1] == "198.18.1.1,198.18.1.2,198.18.1.3"
    assert argv[argv.index("-r") + 1] == "1000"
    fping = Step(FPING, 64, count=fping_count(5000, 64)).argv(targets, tmp_path / "o")
    assert fping[fping.index("-c") + 1] == "1023"  # capped: fping has 65535 sequence numbers
    assert Step(PING, 1, count=10).argv(targets, tmp_path / "o")[-1] == "198.18.1.1"
    with pytest.raises(ValueError):
        target_addresses(65)


# -- table, results, flags ------------------------------------------------------------------


def test_table_and_results_document(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(jsonl()) + "\n")
    good = evaluate(LG_STEP, measured(), out)
    out.write_text("\n".join(jsonl(unaccounted=1)) + "\n")
    bad = evaluate(Step(LOADGEN, 64, rate_pps=2000, workers=2, duration_s=2), measured(), out)
    table = render_table([good, bad]).splitlines()
    assert table[0].split()[:3] == ["step", "tgts", "req"]
    assert table[1].startswith("loadgen 1k x1") and table[1].endswith("ok")
    assert table[2].startswith("loadgen 2k x2") and table[2].endswith("BROKEN")
    assert "loadgen 2k x2: BROKEN: 1 probes unaccounted" in table
    doc = results_document([good, bad], machine={"cores": 2}, config={}, started="t", wall_s=1)
    assert doc["ok"] is False and doc["broken"] == ["loadgen 2k x2"]
    assert json.loads(json.dumps(doc))["steps"][0]["loss"]["self_client"] == 1


def test_flags_and_ladder() -> None:
    cfg = parse_config([])
    assert cfg.duration_s == 10 and cfg.workers == (1, 2) and cfg.targets == 64
    assert cfg.rates_pps == (50e3, 100e3, 200e3, 250e3, 300e3)
    steps = ladder(cfg)
    assert [s.tool for s in steps[:2]] == [PING, FPING] and len(steps) == 12
    assert parse_config(["--quick"]).duration_s == 2
    small = parse_config(["--rates", "5k", "--workers", "1", "--no-peers", "--duration", "1s"])
    assert ladder(small) == [Step(LOADGEN, 64, rate_pps=5000, workers=1, duration_s=1)]
    for bad in (["--workers", "two"], ["--rates", "fast"], ["--targets", "65"], ["--bogus"]):
        with pytest.raises(UsageError):
            parse_config(bad)


def test_leftovers_are_only_namespaces_of_dead_benches() -> None:
    names = ["loadgen-bench-11-client", "loadgen-bench-11-responder", "loadgen-bench-12-client"]
    names += ["lgab12-host", "other"]
    found = leftovers(names, alive=lambda pid: pid == 12)
    assert found == ["loadgen-bench-11-client", "loadgen-bench-11-responder"]


# -- the real thing -------------------------------------------------------------------------


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "loadgen.bench", *args]


@needs_root
def test_smoke_run_gives_sane_figures_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ("--rates", "5k", "--workers", "1", "--duration", "1s", "--ping-count", "2000")
    proc = subprocess.Popen(
        bench(*args, "--fping-count", "20", "--output", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert not [n for n in bench_namespaces() if n.startswith(f"loadgen-bench-{proc.pid}-")]
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["machine"]["cores"] >= 1 and doc["machine"]["kernel"]
    steps = {s["tool"]: s for s in doc["steps"]}
    assert set(steps) == {LOADGEN, PING, FPING}
    expected_sent = {LOADGEN: 5000, PING: 2000, FPING: 20 * 64}
    for tool, s in steps.items():
        assert s["sent"] == expected_sent[tool], s
        assert s["loss"]["wire_requests"] == 0 and s["loss"]["self_client"] == 0, s
        assert s["kernel_responder"]["OutEchoReps"] == s["sent"], s
        assert s["cpu_s"] > 0, s
    lg = steps[LOADGEN]
    assert lg["processes"] >= 2 and lg["peak_rss_bytes"] > 10 << 20  # coordinator + worker
    assert lg["achieved_pps"] == pytest.approx(5000, rel=0.2)
    assert lg["pacing_p99"] is not None and lg["pacing_p99"] >= 0
    assert "loadgen 5k x1" in stdout


@needs_root
def test_an_interrupted_bench_removes_its_namespaces(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ("--no-peers", "--rates", "2k", "--workers", "1", "--duration", "30s")
    proc = subprocess.Popen(
        bench(*args, "--output", str(out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ours = {f"loadgen-bench-{proc.pid}-client", f"loadgen-bench-{proc.pid}-responder"}
    try:
        deadline = time.monotonic() + 20
        while not ours <= set(bench_namespaces()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ours <= set(bench_namespaces()), "the bench did not build its namespaces"
        time.sleep(2)  # into the loadgen step
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not ours & set(bench_namespaces())
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
