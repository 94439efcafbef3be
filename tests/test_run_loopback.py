"""End to end on loopback: real workers, real raw sockets, exact accounting per second; IPv6
(ICMPv6 sockets) on ::1 and mixed with IPv4 at the end.

Every run is bounded by a probe count and a subprocess timeout; only 127.0.0.0/8 and ::1 are
probed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadgen.cli import exit_code
from loadgen.output.report import JSONL_SCHEMA_VERSION
from loadgen.profile import COMMAND_LINE, parse_profile
from loadgen.runner import execute

pytestmark = pytest.mark.root

OUTCOMES = ("received", "late", "lost", "errored")


def loadgen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_every_second_accounts(rows: list[dict[str, Any]]) -> None:
    seconds = [r for r in rows if r["type"] in ("second", "second_total")]
    assert seconds
    for r in seconds:
        assert r["sent"] == sum(r[k] for k in OUTCOMES), r
        assert r["unaccounted"] == 0, r


def test_ping_loopback_zero_loss_exact_per_second(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    res = loadgen("ping", "127.0.0.1", "-r", "20000", "-c", "40000", "--jsonl", str(out))
    assert res.returncode == 0, res.stderr
    assert "40000 transmitted, 40000 received, 0% packet loss" in res.stdout
    rows = read_jsonl(out)
    assert_every_second_accounts(rows)
    per_second = [r for r in rows if r["type"] == "second"]
    assert sum(r["sent"] for r in per_second) == 40000
    assert sum(r["received"] for r in per_second) == 40000
    # Paced, not bursted: every full second carries its share of 20k pps (the first and the
    # last second are partial), or the generator's self-check says it could not keep up (a
    # busy machine): a short second is never passed off as the network's.
    limited = {r["second"] for r in rows if r["type"] == "second_total" and r["generator_limited"]}
    full = [(r["second"], r["sent"]) for r in per_second][1:-1]
    assert all(abs(sent - 20000) <= 200 or s in limited for s, sent in full), (full, limited)
    summary = [r for r in rows if r["type"] == "summary"]
    assert len(summary) == 1
    assert summary[0]["total"]["received"] == 40000


def test_many_targets_more_workers_than_cpus_exact_totals(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    profile = parse_profile(
        {
            "targets": "127.0.1.0/26",  # 62 hosts
            "rate": "10k",
            "count": 100,
            "workers": 4,
            "timeout": "1s",
            "delay": "1s",
            "jsonl": str(out),
        },
        source=COMMAND_LINE,
    )
    result = execute(profile)
    assert len(result.plan.workers) == 4
    total = result.outcome.summary.total.counts
    assert total.sent == 62 * 100
    assert total.received == 62 * 100
    assert total.unaccounted == 0
    assert all(t.counts.sent == 100 for t in result.outcome.summary.per_target)
    assert exit_code(result) == 0
    assert_every_second_accounts(read_jsonl(out))


def test_check_prints_the_plan() -> None:
    res = loadgen("check", "profiles/default.toml")
    assert res.returncode == 0, res.stderr
    assert "127.0.0.1" in res.stdout
    assert "worker" in res.stdout.lower()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("ping", "127.0.0.1", "-r", "fast"), "rate"),
        (("ping", "127.0.0.1", "--bogus"), "unrecognized"),
        (("ping", "127.0.0.1", "-s", "10"), "size"),
        (("ping", "999.1.1.1"), "999.1.1.1"),  # not a target
        (("run", "no-such-profile.toml"), "no-such-profile.toml"),
        # An export that cannot even be opened is a bad flag: refused before a probe is sent.
        (("ping", "127.0.0.1", "--jsonl", "/no-such-dir/x.jsonl"), "/no-such-dir/x.jsonl"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: tuple[str, ...], needle: str) -> None:
    res = loadgen(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_full_disk_under_the_export_is_one_line_after_the_summary_exit_1() -> None:
    res = loadgen("ping", "127.0.0.1", "-c", "100", "-r", "1000", "--jsonl", "/dev/full")
    assert res.returncode == 1, res.stderr
    assert "100 transmitted, 100 received, 0% packet loss" in res.stdout
    line = one_line(res.stderr)
    assert line.startswith("loadgen: error: writing the JSONL export '/dev/full' failed")
    assert "No space left on device (ENOSPC); free some disk space" in line


def _break_export_mid_run(tmp_path: Path, damage: Any) -> subprocess.CompletedProcess[str]:
    """A 3 s run whose export `damage(path)` breaks once it holds a closed second."""
    out = tmp_path / "out.jsonl"
    args = ["ping", "127.0.0.1", "-c", "3000", "-r", "1000", "--jsonl", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_seconds(out, 1)
        damage(out)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_an_export_removed_mid_run_is_one_line_after_the_summary_exit_1(tmp_path: Path) -> None:
    res = _break_export_mid_run(tmp_path, lambda path: path.unlink())
    assert res.returncode == 1, res.stderr
    assert "3000 transmitted, 3000 received" in res.stdout
    line = one_line(res.stderr)
    assert f"the JSONL export '{tmp_path / 'out.jsonl'}' was removed or replaced" in line
    assert "leave the file alone until loadgen ends" in line


def test_an_export_made_unwritable_mid_run_is_one_line_after_the_summary_exit_1(
    tmp_path: Path,
) -> None:
    probe = tmp_path / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], check=False).returncode != 0:
        pytest.skip("chattr +i (immutable files) does not work on this file system")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    try:
        res = _break_export_mid_run(
            tmp_path, lambda path: subprocess.run(["chattr", "+i", str(path)], check=True)
        )
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "out.jsonl")], check=False)
    assert res.returncode == 1, res.stderr
    assert "3000 transmitted, 3000 received" in res.stdout
    line = one_line(res.stderr)
    assert f"writing the JSONL export '{tmp_path / 'out.jsonl'}' failed after" in line
    assert "Operation not permitted (EPERM)" in line


def test_a_full_disk_under_stdout_is_one_line_exit_1() -> None:
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [sys.executable, "-m", "loadgen", "ping", "127.0.0.1", "-c", "20", "-r", "1000"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert res.returncode == 1
    assert "writing to standard output failed: No space left on device" in one_line(res.stderr)


def test_source_address_is_where_the_replies_go(tmp_path: Path) -> None:
    """-S 127.0.0.5: every echo reply of the run goes to 127.0.0.5, as a second raw socket
    sees (nothing else on this host probes from that address)."""
    out = tmp_path / "out.jsonl"
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sniff:
        sniff.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sniff.setblocking(False)
        res = loadgen(
            "ping", "127.0.0.1", "-S", "127.0.0.5", "-I", "lo", "-c", "300", "-r", "1000",
            "--jsonl", str(out),
        )  # fmt: skip
        replies = 0
        with contextlib.suppress(BlockingIOError):
            while packet := sniff.recv(2048):
                header = (packet[0] & 0xF) * 4
                src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
                if packet[header] == 0 and (src, dst) == ("127.0.0.1", "127.0.0.5"):
                    replies += 1
    assert res.returncode == 0, res.stderr
    assert "300 transmitted, 300 received, 0% packet loss" in res.stdout
    assert replies == 300
    extra = read_jsonl(out)[-1]["extra"]
    assert (extra["source"], extra["interface"]) == ("127.0.0.5", "lo")


def test_the_largest_payload_goes_and_comes_back() -> None:
    res = loadgen("ping", "127.0.0.1", "-s", "65507", "-c", "20", "-r", "200")
    assert res.returncode == 0, res.stderr
    assert "20 transmitted, 20 received, 0% packet loss" in res.stdout


def test_without_cap_net_raw_one_line_says_how_to_fix() -> None:
    # Root without CAP_NET_RAW: drop it from the bounding set for this one process tree.
    res = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-net_raw",
            "--inh-caps=-net_raw",
            sys.executable,
            "-m",
            "loadgen",
            "ping",
            "127.0.0.1",
            "-c",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "CAP_NET_RAW" in lines[0]


def _start_run(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", "ping", "127.0.0.1,127.0.0.2", "-r", "2000", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_workers(proc: subprocess.Popen[str], n: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        # Workers are spawned children (not multiprocessing's resource tracker).
        workers = [k for k in kids if any("spawn_main" in a for a in k.cmdline())]
        if len(workers) >= n:
            return workers
        time.sleep(0.1)
    raise AssertionError("workers did not start")


def _wait_for_seconds(path: Path, n: int) -> None:
    """Until the run's export holds `n` closed seconds: a busy machine can take seconds to
    start workers, and a signal before the first reply would test nothing."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.count('"type": "second_total"') + text.count('"type":"second_total"') >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"the run did not close {n} seconds in 30 s")


def test_ctrl_c_stops_sending_and_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = _start_run("--jsonl", str(out))
    try:
        _wait_for_workers(proc, 2)
        _wait_for_seconds(out, 2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "interrupted" in stderr
    assert "transmitted" in stdout
    rows = read_jsonl(out)
    assert_every_second_accounts(rows)
    summary = rows[-1]
    assert summary["type"] == "summary"
    assert summary["total"]["sent"] == summary["total"]["received"] > 1000


def test_a_dead_worker_is_named_and_the_run_fails(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = _start_run("--workers", "2", "--jsonl", str(out))
    try:
        workers = _wait_for_workers(proc, 2)
        _wait_for_seconds(out, 1)
        workers[0].kill()
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "died unexpectedly" in stderr
    assert "signal 9" in stderr
    assert "transmitted" in stdout  # the summary of what was measured is still written
    # What the dead worker left in flight is unresolved for a known reason, not a bug.
    assert "a bug" not in stdout and "BUG" not in stdout, stdout


def test_tx_timestamps_flag_gives_kernel_to_kernel_rtts(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    res = loadgen(
        "ping", "127.0.0.1", "-r", "5000", "-c", "2000", "--tx-timestamps", "--jsonl", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert "timestamps: rx kernel, tx kernel" in res.stdout
    summary = read_jsonl(out)[-1]
    assert summary["total"]["received"] == 2000
    assert summary["total"]["tx_ts"] == "kernel"


# -- IPv6 ---------------------------------------------------------------------------------
def test_ping_ipv6_loopback_zero_loss_exact_per_second(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    res = loadgen("ping", "::1", "-r", "20000", "-c", "20000", "--jsonl", str(out))
    assert res.returncode == 0, res.stderr
    assert "20000 transmitted, 20000 received, 0% packet loss" in res.stdout
    rows = read_jsonl(out)
    assert_every_second_accounts(rows)
    assert sum(r["sent"] for r in rows if r["type"] == "second") == 20000
    assert {r["family"] for r in rows if r["type"] != "summary"} == {6}
    summary = rows[-1]
    assert summary["v"] == JSONL_SCHEMA_VERSION and summary["targets"][0]["family"] == 6
    assert summary["total"]["received"] == 20000


def test_a_mixed_run_counts_each_target_exactly(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    profile = parse_profile(
        {
            "targets": "127.0.0.1,::1,127.0.0.2,::1",  # ::1 repeated: probed once
            "rate": "6k",
            "count": 2000,
            "workers": 1,  # still one worker per family: a worker owns one socket
            "jsonl": str(out),
        },
        source=COMMAND_LINE,
    )
    result = execute(profile)
    assert [w.family for w in result.plan.workers] == [4, 6]
    per_target = result.outcome.summary.per_target
    assert [(t.counts.sent, t.counts.received) for t in per_target] == [(2000, 2000)] * 3
    assert result.outcome.summary.total.counts.unaccounted == 0
    assert exit_code(result) == 0
    rows = read_jsonl(out)
    assert_every_second_accounts(rows)
    assert [t["family"] for t in rows[-1]["targets"]] == [4, 6, 4]
    assert rows[-1]["total"]["family"] is None


def test_probe_flags_work_over_ipv6(tmp_path: Path) -> None:
    """-t/-z (hop limit, traffic class; on the wire: test_sockets6.py), -s, -S, -I and
    --tx-timestamps on ::1: every probe answered, RTTs from kernel stamps on both sides."""
    out = tmp_path / "out.jsonl"
    res = loadgen(
        "ping", "::1", "-6", "-t", "9", "-z", "0x20", "-s", "1400", "-S", "::1", "-I", "lo",
        "--tx-timestamps", "-r", "2000", "-c", "1000", "--jsonl", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "1000 transmitted, 1000 received, 0% packet loss" in res.stdout
    assert "timestamps: rx kernel, tx kernel" in res.stdout
    summary = read_jsonl(out)[-1]
    assert summary["total"]["tx_ts"] == "kernel"
    assert (summary["extra"]["source"], summary["extra"]["interface"]) == ("::1", "lo")


def test_the_largest_ipv6_payload_goes_and_comes_back() -> None:
    res = loadgen("ping", "::1", "-s", "65507", "-c", "20", "-r", "200")
    assert res.returncode == 0, res.stderr
    assert "20 transmitted, 20 received, 0% packet loss" in res.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("::1", "--tx-path", "packet"), 'tx_path = "packet" sends IPv4 only'),
        (("::1", "-4"), 'an IPv6 address but family = "ipv4"'),
        (("fe80::1",), "a link-local address needs the interface it is on"),
        (("ff02::1",), "multicast address"),
        (("::1,127.0.0.1", "-S", "::1"), "source ::1 is IPv6 but target 127.0.0.1 is IPv4"),
    ],
)
def test_what_ipv6_cannot_do_is_one_line_exit_2(args: tuple[str, ...], words: str) -> None:
    res = loadgen("ping", *args, "-c", "1")
    assert res.returncode == 2, res.stdout
    assert len(res.stderr.splitlines()) == 1 and words in res.stderr, res.stderr
