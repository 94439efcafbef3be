"""The bench: its arithmetic, verdicts and table on made-up inputs; one bounded smoke run of the
real thing (root), and one interrupted run that must leave no namespace behind.

Timing goals are not asserted here: the smoke run checks that the figures are sane and that the
accounting adds up, not that this machine is fast.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadgen.bench.cli import ladder, parse_config
from loadgen.bench.figures import (
    Sample,
    ToolCounts,
    Window,
    achieved_pps,
    icmp_delta,
    in_echos,
    in_requests,
    loss_figures,
    pacing_error,
    parse_fping,
    parse_hping,
    parse_loadgen_jsonl,
    parse_ping,
    steady_cpu_per_million,
    steady_windows,
)
from loadgen.bench.measure import Measured
from loadgen.bench.memory import memory_figures, process_role
from loadgen.bench.output import memory_lines, render_table, results_document
from loadgen.bench.sampling import (
    EARLY_NS,
    LATE_NS,
    MAX_BRACKET_NS,
    PHASE_NS,
    SAMPLE_NS,
    TICK_NS,
    ClockMap,
    first_instant_rt,
    next_grid_instant,
    read_fits,
    retry_instant,
)
from loadgen.bench.steps import (
    FPING,
    HPING,
    LOADGEN,
    PING,
    RSS_BUDGET_BYTES,
    SYN_PORT,
    Step,
    evaluate,
    fping_count,
)
from loadgen.bench.topology import bench_namespaces, leftovers, target_addresses
from loadgen.coordinator import realtime
from loadgen.errors import UsageError
from loadgen.lab.netops import parse_snmp
from loadgen.pacer import TickGrid

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
    assert pacing_error([], 1000) is None


def test_pacing_error_is_relative_to_the_reference() -> None:
    windows = steady_windows(samples_from([1] + [1000, 900, 1100] * 20 + [1]))
    assert pace(windows, 10_000) == pytest.approx((0.1, 0.1))
    exact = steady_windows(samples_from([1] + [1000] * 30 + [1]))
    assert pace(exact, 10_000) == pytest.approx((0.0, 0.0))
    assert pace(exact, 20_000) == pytest.approx((0.5, 0.5))
    one_off = [Window(0.1, 1000, 0)] * 199 + [Window(0.1, 1030, 0)]
    p99, worst = pace(one_off, 10_000)  # one window in 200: past the p99, not past the max
    assert p99 < 0.001 and worst == pytest.approx(0.03)


def pace(windows: list[Window], reference_pps: float) -> tuple[float, float]:
    err = pacing_error(windows, reference_pps)
    assert err is not None
    return err.p99, err.max


def test_windows_use_the_measured_intervals_not_the_nominal_ones() -> None:
    s = [Sample(0, 0, 0), Sample(100, 1, 0), Sample(200_000_100, 2001, 0)]
    s += [Sample(400_000_100, 4001, 0), Sample(400_000_200, 4002, 0)]
    windows = steady_windows(s)
    assert achieved_pps(windows) == pytest.approx(10_000)


# -- tick-aligned readings ------------------------------------------------------------------


def test_reading_instants_sit_just_past_whole_milliseconds() -> None:
    for now in (0, 1, 99_999, 100_000, 100_001, 1_700_000_000_123_456_789):
        t = first_instant_rt(now)
        assert t % TICK_NS == PHASE_NS and now <= t < now + TICK_NS
    clock = ClockMap.from_readings(1_000, 5_000_000_000, 1_200)  # rt read at mono 1_100
    assert clock.to_mono(5_000_000_000) == 1_100
    assert clock.to_mono(5_000_100_000) == 101_100


def test_readings_are_done_before_loadgens_workers_take_their_turn() -> None:
    """The quiet part of a tick ends at the workers' turn (pacer.TickGrid): if the grid moves,
    the bench's phase must move with it."""
    grid = TickGrid(origin_ns=0, tick_ns=TICK_NS)
    turn_ns = grid.next_after(0) % TICK_NS
    assert PHASE_NS - EARLY_NS >= 0 and turn_ns >= PHASE_NS + LATE_NS


def test_a_read_stands_for_its_instant_only_in_the_ticks_quiet_part() -> None:
    i = 10 * TICK_NS + PHASE_NS
    assert read_fits(i, i + 5_000, i + 40_000)
    assert read_fits(i, i + LATE_NS - MAX_BRACKET_NS, i + LATE_NS)
    assert not read_fits(i, i + 5_000, i + 5_000 + MAX_BRACKET_NS + 1)  # preempted mid-read
    assert not read_fits(i, i + 100_000, i + LATE_NS + 1)  # ran into the workers' turn
    assert not read_fits(i, i - EARLY_NS - 1, i - EARLY_NS + 9_000)  # the last tick's batch
    # Retry: at once while a read still fits, else at a later tick's instant, never one past.
    assert retry_instant(i, i + 20_000) == i
    assert retry_instant(i, i + LATE_NS - MAX_BRACKET_NS + 1) == i + TICK_NS
    assert retry_instant(i, i + 3 * TICK_NS + 1) == i + 4 * TICK_NS


def test_the_100ms_grid_skips_points_it_fell_behind_and_never_drifts() -> None:
    first = 7 * TICK_NS + PHASE_NS
    assert next_grid_instant(first, first + 40_000) == first + SAMPLE_NS
    assert next_grid_instant(first, first + 2 * TICK_NS) == first + SAMPLE_NS  # a late retry
    assert next_grid_instant(first, first + 250 * TICK_NS) == first + 3 * SAMPLE_NS


def tick_sender(rate_pps: int, batch_ns: tuple[int, int]) -> Callable[[int], int]:
    """A tick-paced sender's count of probes counted by a time: every 1 ms tick from 0 sends
    rate/1000 probes, counted evenly from batch_ns[0] to batch_ns[1] past its mark."""
    per_tick = rate_pps // 1000
    marks = np.arange(2100, dtype=np.int64)[:, None] * TICK_NS
    spread = np.arange(per_tick, dtype=np.int64) * (batch_ns[1] - batch_ns[0]) // per_tick
    sends = np.sort((marks + batch_ns[0] + spread).ravel())
    return lambda t_ns: int(np.searchsorted(sends, t_ns, side="right"))


def test_tick_aligned_windows_see_whole_ticks_where_others_see_parts_of_one() -> None:
    """The reason for the phase: 100 ms windows of a 1 ms tick sender hold 100 ticks plus or
    minus part of one (up to +/- 1 %) unless both ends fall between two ticks' batches; there,
    timed by their instants, they hold exactly 100 whatever the readings' own lateness."""
    # The batch counted from 350 us to 950 us past the mark, as at 100k pps on 2 cores.
    sent_by = tick_sender(100_000, batch_ns=(350_000, 950_000))
    jitter = [13, 61, 2, 95, 40, 17, 7, 88, 120, 33]  # us: how late each read came

    def readings(phase_us: int) -> list[Sample]:
        out = [Sample(0, 0, 0.0)]
        for n in range(20):
            instant_us = 50_000 + phase_us + n * 100_000
            t_us = instant_us + jitter[n % len(jitter)]
            fits = read_fits(instant_us * 1000, t_us * 1000 - 1000, t_us * 1000 + 1000)
            instant = instant_us * 1000 if fits else None
            out.append(Sample(t_us * 1000, sent_by(t_us * 1000), 0.0, instant))
        return out

    aligned = steady_windows(readings(PHASE_NS // 1000), tick_paced=True)
    assert len(aligned) == 18 and all(w.on_grid for w in aligned)
    assert pace(aligned, 100_000) == pytest.approx((0.0, 0.0))
    # The same readings timed by when they were taken: 93 us of read jitter costs 0.09 %.
    by_reads = steady_windows(readings(PHASE_NS // 1000), tick_paced=False)
    assert pace(by_reads, 100_000)[1] == pytest.approx(0.00093, abs=0.00002)
    # Mid-tick readings land while a batch is being counted: how late each came decides how
    # much of it they see, 15 probes in 93 us here, over the 0.1 % being judged.
    mid_tick = steady_windows(readings(600), tick_paced=True)
    assert pace(mid_tick, 100_000)[1] == pytest.approx(0.0015)


def test_windows_fall_back_to_the_reads_where_a_reading_has_no_instant() -> None:
    s = [Sample(0, 0, 0, 0), Sample(100_000_050, 10, 0, 100_000_000)]
    s += [Sample(200_000_050, 20, 0, 200_000_000), Sample(300_900_000, 30, 0, None)]
    s += [Sample(400_000_070, 40, 0, 400_000_000), Sample(500_000_000, 50, 0, 500_000_000)]
    w = steady_windows(s, tick_paced=True)  # the first and last are dropped as partial
    assert [x.on_grid for x in w] == [True, False, False]
    assert [x.dt_s for x in w] == pytest.approx([0.1, 0.10089995, 0.09910007])


def test_in_echos_reads_the_responders_counter() -> None:
    assert in_echos(SNMP) == 7


@pytest.mark.root
def test_the_real_time_sampler_does_not_pass_its_priority_to_the_tool() -> None:
    probe = "import os; print(os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)"
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    with realtime(2) as granted:
        assert granted
        assert os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
        assert os.sched_getparam(0).sched_priority == 2
        child = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
    assert child.stdout.split() == [str(os.SCHED_OTHER), "0"], child
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


def test_a_refused_real_time_priority_changes_nothing() -> None:
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    with realtime(100) as granted:  # above SCHED_FIFO's 99: refused (EINVAL) even for root
        assert not granted
        assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


# -- memory over a run ----------------------------------------------------------------------


def rss_samples(seconds: int, grow: dict[int, int], reclaim_at: int = 10**9) -> list[Sample]:
    """One reading a second: idle, then sending for `seconds`. Process pid's anonymous memory
    grows by grow[pid] bytes a second from 4 MiB, beside 6 MiB of file pages that the kernel
    reclaims down to 2 MiB from second `reclaim_at` on; pid 30 appears only after 40 s."""
    out = []
    for t in range(seconds + 3):
        file_b = (6 << 20) if t < reclaim_at else (2 << 20)
        rss = tuple(
            (pid, (4 << 20) + g * t + file_b, (4 << 20) + g * t)
            for pid, g in sorted(grow.items())
            if pid != 30 or t > 40
        )
        out.append(Sample(t * 1_000_000_000, 1000 * min(t, seconds), 0, None, rss))
    return out


def test_memory_compares_rss_30s_into_sending_with_its_end() -> None:
    samples = rss_samples(60, {10: 0, 20: 4096, 30: 0})
    roles = {10: "main", 20: "spawned", 30: "spawned"}
    mem = memory_figures(samples, peaks={10: 11 << 20, 20: 12 << 20}, roles=roles)
    assert mem is not None
    assert (mem.early_s, mem.end_s) == (30, 59)  # the last reading while still sending
    assert [p.pid for p in mem.processes] == [10, 20]  # pid 30 was not there at 30 s
    main, worker = mem.processes
    assert main.rss.growth_bytes == 0 and main.peak_bytes == 11 << 20 and main.role == "main"
    assert worker.rss.early_bytes == (10 << 20) + 30 * 4096
    assert worker.rss.growth_bytes == worker.anon.growth_bytes == 29 * 4096
    assert worker.anon.end_bytes == (4 << 20) + 59 * 4096 and worker.role == "spawned"
    assert mem.rss.growth_bytes == 29 * 4096
    assert mem.rss.end_bytes - mem.rss.early_bytes == mem.rss.growth_bytes
    assert mem.track_s == (30,) and mem.rss.track_bytes == (mem.rss.early_bytes,)
    assert memory_figures(rss_samples(25, {10: 0}), {}, {}) is None  # sent for under 30 s
    assert memory_figures([Sample(0, 5, 0), Sample(1, 5, 0)], {}, {}) is None  # never sent


def test_reclaimed_file_pages_do_not_hide_a_climb_in_anonymous_memory() -> None:
    mem = memory_figures(rss_samples(100, {10: 1024, 20: 0}, reclaim_at=70), {}, {})
    assert mem is not None
    assert mem.rss.growth_bytes < 0 < mem.anon.growth_bytes == 69 * 1024


def test_memory_track_reads_every_30s_and_skips_gaps() -> None:
    samples = rss_samples(100, {10: 1024, 20: 0})
    mem = memory_figures(samples, {}, {})
    assert mem is not None and mem.track_s == (30, 60, 90)
    assert mem.anon.track_bytes == tuple((8 << 20) + 1024 * t for t in (30, 60, 90))
    assert mem.processes[0].rss.track_bytes == tuple((10 << 20) + 1024 * t for t in (30, 60, 90))
    gappy = [x for x in samples if not 50 < x.t_ns / 1e9 < 95]  # the sampler stalled 45 s
    mem = memory_figures(gappy, {}, {})
    assert mem is not None and mem.track_s == (30, 95)


def test_process_roles_from_command_lines() -> None:
    spawn = ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(x=1)"]
    assert process_role(["python", "-m", "loadgen"], root=True) == "main"
    assert process_role(spawn, root=False) == "spawned"
    tracker = ["python", "-c", "from multiprocessing.resource_tracker import main;main(7)"]
    assert process_role(tracker, root=False) == "resource tracker"
    assert process_role(["/usr/bin/ping", "-f"], root=False) == "ping"


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


def measured(
    stdout: str = "",
    stderr: str = "",
    exit_code: int | None = 0,
    samples: list[Sample] | None = None,
    realtime: bool = True,
) -> Measured:
    if samples is None:  # tick-aligned readings 100 ms apart
        samples = [
            dataclasses.replace(s, instant_ns=s.t_ns)
            for s in samples_from([10] + [100] * 20 + [10])
        ]
    return Measured(
        argv=("tool",),
        exit_code=exit_code,
        timed_out=exit_code is None,
        wall_s=3.0,
        cpu_s=0.5,
        peak_rss_bytes=50 << 20,
        processes=2,
        samples=tuple(samples),
        client={"OutEchos": 100, "InEchoReps": 100},
        responder={"InEchos": 100, "OutEchoReps": 100},
        stdout=stdout,
        stderr=stderr,
        peaks={41: 30 << 20, 42: 20 << 20},
        roles={41: "main", 42: "spawned"},
        sampler_realtime=realtime,
    )


LG_STEP = Step(LOADGEN, 64, rate_pps=1000, workers=1, duration_s=2)


def test_a_sound_loadgen_step(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(jsonl()) + "\n")
    r = evaluate(LG_STEP, measured(), out)
    assert not r.broken, r.problems
    assert r.achieved_pps == pytest.approx(1000)
    assert r.pacing_p99 == pytest.approx(0.0) and r.pacing_max == pytest.approx(0.0)
    assert r.windows == 20 and r.windows_off_grid == 0
    assert r.loss is not None and r.loss.self_client == 1  # 100 in the kernel, 99 counted
    assert r.cpu_s_per_m == pytest.approx(0.5 * 1e6 / 100)
    assert any("generator-limited" in n for n in r.notes)
    assert r.memory is None  # sent for 2 s: no reading 30 s in
    assert r.peak_rss_by_role == (("main", 30 << 20), ("spawned", 20 << 20))
    assert "peak RSS by process (MiB): main 30, spawned 20" in r.notes
    assert not any("budget" in n for n in r.notes)


def test_loadgen_over_its_memory_budget_is_noted_not_broken(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(jsonl()) + "\n")
    big = dataclasses.replace(measured(), peak_rss_bytes=401 << 20)
    r = evaluate(LG_STEP, big, out)
    assert not r.broken
    assert "peak RSS 401 MiB is over loadgen's budget of 400 MiB" in r.notes


def test_readings_off_the_tick_grid_and_a_normal_priority_sampler_are_noted(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(jsonl()) + "\n")
    plain = samples_from([10] + [100] * 20 + [10])  # no instants
    r = evaluate(LG_STEP, measured(samples=plain, realtime=False), out)
    assert r.windows_off_grid == 20 and not r.broken
    assert any("20 window(s) timed by their reads" in n for n in r.notes), r.notes
    assert any("SCHED_FIFO" in n for n in r.notes)
    peer = evaluate(
        Step(PING, 1, count=100),
        measured(stdout="100 packets transmitted, 100 received", samples=plain),
        tmp_path / "x",
    )
    assert peer.windows_off_grid == 0  # peers are timed by their reads anyway


def test_only_loadgen_at_a_probe_per_tick_and_worker_is_tick_paced() -> None:
    assert LG_STEP.tick_paced
    assert not Step(LOADGEN, 64, rate_pps=1500, workers=2, duration_s=1).tick_paced
    assert Step(LOADGEN, 64, rate_pps=100_000, workers=2, duration_s=1).tick_paced
    assert not Step(PING, 1, count=10).tick_paced and not Step(FPING, 2, count=10).tick_paced


def test_a_long_run_reports_memory_in_the_table_and_the_results(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text("\n".join(jsonl()) + "\n")
    samples = rss_samples(45, {41: 0, 42: 8192})
    r = evaluate(LG_STEP, measured(samples=samples), out)
    assert r.memory is not None and r.memory.rss.growth_bytes == 14 * 8192
    lines = memory_lines(r)
    assert lines[0] == "loadgen 1k x1: memory at 30 s -> at 44 s of sending:"
    assert lines[1].split()[:8] == ["pid", "41", "main", "VmRSS", "10.0", "->", "10.0", "MiB"]
    assert lines[1].count(" +0 KiB") == 2 and lines[1].endswith("peak 30.0 MiB")
    assert lines[2].split()[2:3] == ["spawned"] and lines[2].count(" +112 KiB") == 2
    assert "RssAnon    4.2 ->    4.3 MiB" in lines[2]
    assert lines[3].split()[0] == "all" and lines[3].count(" +112 KiB") == 2
    assert len(lines) == 4  # one track reading (30 s): no track line
    long = evaluate(LG_STEP, measured(samples=rss_samples(95, {41: 0, 42: 1 << 20})), out)
    track = "VmRSS 50.0 80.0 110.0; RssAnon 38.0 68.0 98.0"
    assert memory_lines(long)[-1] == f"  all, every 30 s (MiB): {track}"
    assert set(lines) <= set(render_table([r]).splitlines())
    doc = json.loads(
        json.dumps(results_document([r], machine={}, config={}, started="t", wall_s=1))
    )
    assert doc["steps"][0]["memory"]["processes"][1]["anon"]["growth_bytes"] == 14 * 8192


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
    hping = shutil.which("hping3") is not None  # the SYN peer, when installed
    assert [s.tool for s in steps[:3]] == [PING, PING, FPING] and len(steps) == 24 + hping
    assert steps[-1] == Step(LOADGEN, 64, rate_pps=2e6, workers=2, duration_s=10, overload=True)
    assert steps[-1].label == "loadgen 2000k x2 overload"
    stamped = [s for s in steps if s.tx_timestamps]
    assert [(s.rate_pps, s.workers) for s in stamped] == [(100e3, 2), (150e3, 2)]
    linked = [s for s in steps if s.link_tx]
    assert [(s.rate_pps, s.workers) for s in linked] == [(200e3, 2), (250e3, 2), (300e3, 2)]
    assert linked[0].label == "loadgen 200k x2 pkt"
    assert linked[0].argv(["198.18.1.1"], Path("j"))[-2:] == ["--tx-path", "packet"]
    connects = [s for s in steps if s.connect_port]
    assert [(s.rate_pps, s.workers, s.targets, s.duration_s) for s in connects] == [
        (20e3, 2, 8, 5),
        (60e3, 2, 8, 5),
    ]
    assert connects[1].label == "loadgen 60k x2 connect"
    assert connects[0].argv(["198.18.1.1"], Path("j"))[-6:] == [
        *("--tcp-connect", "8080", "-w", "200ms", "-d", "500ms")
    ]
    assert parse_config(["--quick"]).duration_s == 2
    only = ["--tx-rates", "none", "--packet-rates", "none", "--overload", "none"]
    only += ["--v6-rates", "none", "--syn-rates", "none", "--connect-rates", "none"]
    small = parse_config(
        ["--rates", "5k", "--workers", "1", "--no-peers", "--duration", "1s", *only]
    )
    assert ladder(small) == [Step(LOADGEN, 64, rate_pps=5000, workers=1, duration_s=1)]
    bad_flags = (
        ["--workers", "two"],
        ["--rates", "fast"],
        ["--tx-rates", "x"],
        ["--overload", "lots"],
        ["--targets", "65"],
    )
    for bad in (*bad_flags, ["--bogus"]):
        with pytest.raises(UsageError):
            parse_config(bad)


def test_syn_steps_send_to_the_closed_port_next_to_hping3(tmp_path: Path) -> None:
    steps = ladder(parse_config(["--syn-rates", "50k,80k"]))
    syn = [s for s in steps if s.probe == "tcp-syn"]
    loadgen_syn = [s for s in syn if s.tool == LOADGEN]
    assert [(s.rate_pps, s.workers) for s in loadgen_syn] == [(50e3, 2), (80e3, 2)]
    assert loadgen_syn[0].label == "loadgen 50k x2 syn"
    assert loadgen_syn[0].argv(["198.18.1.1"], tmp_path / "j")[-2:] == ["--tcp", str(SYN_PORT)]
    peer = Step(HPING, 1, duration_s=3, probe="tcp-syn")
    argv = peer.argv(["198.18.1.1", "198.18.1.2"], tmp_path / "j")
    assert argv == [
        *("timeout", "-s", "INT", "3", "hping3", "-S", "-p", str(SYN_PORT), "--flood"),
        "198.18.1.1",
    ]
    assert peer.run_limit_s() == 18
    assert ([s.tool for s in syn] == [HPING, LOADGEN, LOADGEN]) == (
        shutil.which("hping3") is not None
    )
    out = "--- 198.18.1.1 hping statistic ---\n"
    out += "812345 packets transmitted, 0 packets received, 100% packet loss\n"
    assert parse_hping(out) == ToolCounts(812345, 0)
    assert parse_hping("hping3: no statistics") is None
    snmp = "Tcp: RtoAlgorithm InSegs OutSegs\nTcp: 1 4242 17\n"
    assert in_requests(snmp, 4, "tcp-syn") == 4242


def test_soak_flags() -> None:
    cfg = parse_config(["--soak", "10m"])
    assert (cfg.soak, cfg.peers, cfg.duration_s, cfg.floor) == (True, False, 600, False)
    assert ladder(cfg) == [Step(LOADGEN, 64, rate_pps=100_000, workers=2, duration_s=600)]
    assert ladder(cfg)[0].run_limit_s() < 700  # bounded like every step
    other = parse_config(["--soak", "45s", "--rates", "50k", "--workers", "1", "--targets", "8"])
    assert ladder(other) == [Step(LOADGEN, 8, rate_pps=50_000, workers=1, duration_s=45)]
    for bad in (
        ["--soak", "10m", "--duration", "5s"],
        ["--soak", "10m", "--quick"],
        ["--soak", "30s"],  # memory is compared with its reading at 30 s
        ["--soak", "1m", "--rates", "50k,100k"],
        ["--soak", "1m", "--workers", "1,2"],
        ["--soak", "soon"],
    ):
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


@pytest.mark.root
def test_smoke_run_gives_sane_figures_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ("--rates", "5k", "--workers", "1", "--duration", "1s", "--ping-count", "2000")
    # --no-floor: the floor has its own test
    more: tuple[str, ...] = ("--tx-rates", "5k", "--packet-rates", "5k", "--v6-rates", "5k")
    more += ("--no-floor", "--connect-rates", "5k", "--syn-rates", "5k", "--stamp-rates", "none")
    proc = subprocess.Popen(
        bench(*args, *more, "--fping-count", "20", "--output", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert not [n for n in bench_namespaces() if n.startswith(f"loadgen-bench-{proc.pid}-")]
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["machine"]["cores"] >= 1 and doc["machine"]["kernel"]
    steps = {s["label"]: s for s in doc["steps"]}
    # Asked far more than it can do: it sends what it can, accounts for all of it, and its
    # memory stays within the budget.
    over = steps.pop("loadgen 2000k x1 overload")
    assert 0 < over["sent"] < 2_000_000 and over["loss"]["self_client"] == 0, over
    assert over["loss"]["wire_requests"] == 0 and over["peak_rss_bytes"] < RSS_BUDGET_BYTES
    # TCP connects to 8 addresses: every handshake the responder completed, loadgen counted.
    connect = steps.pop("loadgen 5k x1 connect")
    assert connect["sent"] == connect["answered"] > 0 and connect["loss"] is None, connect
    tcpext = next(n for n in connect["notes"] if n.startswith("responder TcpExt"))
    assert f"TCPDeferAcceptDrop {connect['sent']}" in tcpext and "ListenOverflows 0" in tcpext
    # SYNs to the responder's closed port: each answered by a RST, each counted, and the
    # responder's TCP took in exactly what loadgen sent; hping3 when installed.
    syn = steps.pop("loadgen 5k x1 syn")
    assert syn["sent"] == syn["answered"] == syn["kernel_responder"]["InSegs"] > 0, syn
    assert syn["loss"] is None and not syn["problems"], syn
    hping = steps.pop(HPING, None)
    assert (hping is not None) == (shutil.which("hping3") is not None)
    assert hping is None or (hping["sent"] > 0 and not hping["problems"]), hping
    loadgens = ("loadgen 5k x1", "loadgen 5k x1 v6", "loadgen 5k x1 txts", "loadgen 5k x1 pkt")
    assert set(steps) == {*loadgens, PING, "ping -6 -f", FPING}
    expected_sent = {**dict.fromkeys(loadgens, 5000), PING: 2000, FPING: 20 * 64}
    expected_sent["ping -6 -f"] = 2000
    # The IPv6 steps are refereed by the responder's snmp6 counters, as exactly as IPv4's.
    assert steps["loadgen 5k x1 v6"]["family"] == 6 and steps["ping -6 -f"]["family"] == 6
    for label, s in steps.items():
        # A deadline cuts a loadgen that fell behind its timetable on a busy machine; then
        # its self-check must have said so. Otherwise every planned probe went.
        limited = any("generator-limited" in note for note in s["notes"])
        if label in loadgens and limited:
            assert 0 < s["sent"] <= expected_sent[label], s
        else:
            assert s["sent"] == expected_sent[label], s
        assert s["loss"]["wire_requests"] == 0 and s["loss"]["self_client"] == 0, s
        assert s["kernel_responder"]["OutEchoReps"] == s["sent"], s
        assert s["cpu_s"] > 0, s
    lg = steps["loadgen 5k x1"]
    assert lg["processes"] >= 2 and lg["peak_rss_bytes"] > 10 << 20  # coordinator + worker
    # Never above the rate asked; how far below is the machine's speed, not a test matter.
    assert 0 < lg["achieved_pps"] <= 5000 * 1.2
    assert lg["pacing_p99"] is not None and lg["pacing_p99"] >= 0
    assert "loadgen 5k x1" in stdout
    pairs = {p["v6_label"]: p for p in doc["v6_vs_v4"]}
    assert set(pairs) == {"ping -6 -f", "loadgen 5k x1 v6"}
    assert pairs["loadgen 5k x1 v6"]["v4_label"] == "loadgen 5k x1"
    assert pairs["loadgen 5k x1 v6"]["ratio"] > 0
    assert "IPv6 against IPv4" in stdout


@pytest.mark.root
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
