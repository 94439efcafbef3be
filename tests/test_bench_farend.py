"""The bench's far-end steps: the ladder search against a fake far end, the parsing of the C
blaster's, loadgen's and irtt's outputs (irtt's from a sample recorded here), the lines the
steps show, their flags, and one short real run in a namespace of their own."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from loadgen.bench import farend
from loadgen.bench import farfigures as ff
from loadgen.bench.cli import parse_config
from loadgen.bench.farend import FarConfig, run_far_end
from loadgen.errors import UsageError
from loadgen.lab.netops import list_netns


def fake_far_end(capacity_pps: float, blaster_pps: float = 1e9) -> tuple[list[float], object]:
    """A far end that answers everything up to its capacity and a share beyond; a blaster
    that sends at most blaster_pps. Returns the rates asked, in order, and the measure."""
    asked: list[float] = []

    def measure(rate: float) -> ff.Rung:
        asked.append(rate)
        sent = round(min(rate, blaster_pps) * 2)
        back = sent if rate <= capacity_pps else round(sent * capacity_pps / rate)
        return ff.Rung(rate, sent, back, 2.0, far_cpu_s=back * 10e-6)

    return asked, measure


def test_the_ladder_climbs_to_the_first_failure_then_bisects() -> None:
    asked, measure = fake_far_end(45_000)
    rungs = ff.search_ladder([70_000, 10_000, 40_000, 100_000], measure)  # type: ignore[arg-type]
    # 100k is never tried: 70k failed. Then 55k (fails) and 48k (fails): 40k is the ceiling.
    assert asked == [10_000, 40_000, 70_000, 55_000, 48_000]
    assert [r.held for r in rungs] == [True, True, False, False, False]
    best = ff.best_held(rungs)
    assert best is not None and best.rate_pps == 40_000
    assert best.cpu_us_per_packet == pytest.approx(10.0)


def test_the_bisection_moves_up_when_the_middle_holds_and_stops_at_its_width() -> None:
    asked, measure = fake_far_end(60_000)
    rungs = ff.search_ladder([40_000, 70_000], measure, refine=5)  # type: ignore[arg-type]
    assert asked == [40_000, 70_000, 55_000, 62_000, 58_000, 60_000, 61_000]
    assert ff.best_held(rungs).rate_pps == 60_000  # type: ignore[union-attr]
    asked, measure = fake_far_end(1e9)
    assert len(ff.search_ladder([1_000, 2_000], measure)) == 2  # type: ignore[arg-type]
    assert asked == [1_000, 2_000]  # all held: nothing to refine


def test_nothing_held_and_a_slow_blaster_are_no_ceiling() -> None:
    asked, measure = fake_far_end(5_000)
    rungs = ff.search_ladder([10_000, 20_000], measure)  # type: ignore[arg-type]
    assert asked == [10_000] and ff.best_held(rungs) is None
    assert "held none of its ladder" in ff.ceiling_line("reflect x1", rungs, rungs)
    # Everything came back, but the blaster sent 80% of the rate: the rate was not offered.
    asked, measure = fake_far_end(1e9, blaster_pps=16_000)
    rungs = ff.search_ladder([10_000, 20_000], measure, refine=0)  # type: ignore[arg-type]
    assert [r.held for r in rungs] == [True, False] and rungs[1].back == 1.0


def test_a_held_rung_above_a_failed_one_is_no_ceiling() -> None:
    ok, bad = ff.Rung(10_000, 100, 100, 0.01, None), ff.Rung(20_000, 200, 150, 0.01, None)
    lucky = ff.Rung(30_000, 300, 300, 0.01, None)
    assert ff.best_held([ok, bad, lucky]) is ok
    assert ok.cpu_us_per_packet is None and ff.Rung(1, 0, 0, 0.0, 1.0).back == 0.0


def test_the_ceiling_line_gives_ratios_to_the_c_echo() -> None:
    echo = [ff.Rung(100_000, 200_000, 200_000, 2.0, 0.8)]  # 4 us per packet
    refl = [ff.Rung(40_000, 80_000, 80_000, 2.0, 1.6), ff.Rung(70_000, 140_000, 9, 2.0, 1.0)]
    line = ff.ceiling_line("reflect x1", refl, echo, (96 << 20, 1 << 20))
    assert line == (
        "reflect x1: holds 40.0k pps (>= 99.9% back) = 0.40x the C echo's 100.0k; "
        "CPU 20.00 us/pkt = 5.0x the echo's; peak RSS 96.0 MiB = 96x the echo's"
    )
    assert ff.ceiling_line("echo (C)", echo, echo, (1 << 20, None)) == (
        "echo (C): holds 100.0k pps (>= 99.9% back); CPU 4.00 us/pkt; peak RSS 1.0 MiB"
    )
    assert ff.rung_line("reflect x1", dataclasses.replace(refl[1], rcvbuf_drops=7)) == (
        "reflect x1 70.0k: sent 140,000 (70.0k/s), back 0.006%, far-end CPU 111111.11 us/pkt, "
        "UDP receive-buffer drops 7: not held"
    )


def test_the_blaster_and_echo_lines_parse() -> None:
    assert ff.parse_blast("sent 20000 received 19990 seconds 1.000532\n") == ff.Blast(
        20_000, 19_990, 1.000532
    )
    assert ff.parse_blast("udpblast: sendmmsg: Bad address\n") is None
    assert ff.parse_echo("echoed 123\n") == 123 and ff.parse_echo("") is None


def _second(n: int, pps: float, cpu_pct: float) -> str:
    workers = [{"worker": 0, "achieved_pps": pps, "cpu_pct": cpu_pct}]
    return json.dumps(
        {
            "type": "second_total",
            "second": n,
            "generator": {"achieved_pps": pps, "workers": workers},
        }
    )


def test_worker_cpu_per_probe_leaves_out_the_first_second() -> None:
    lines = [
        _second(0, 20_000, 100.0),  # start-up: not counted
        _second(1, 20_000, 40.0),
        _second(2, 20_000, 50.0),
        '{"type": "second", "second": 1}',
        _second(3, 0, 5.0),  # nothing sent: nothing to divide
    ]
    assert ff.worker_cpu_us_per_probe(lines) == pytest.approx(0.9 * 1e6 / 40_000)
    assert ff.worker_cpu_us_per_probe(lines[:1]) is None


def test_sender_lines_are_ratios_to_icmp() -> None:
    icmp = ff.SenderRun("icmp", 20_000, 60_000, 60_000, 2.4, 20.0)
    stamp = ff.SenderRun("stamp", 20_000, 60_000, 59_940, 3.0, 25.0, 50, 10)
    assert ff.sender_line(stamp, icmp) == (
        "loadgen stamp 20.0k x1: sent 60,000, back 99.900%, lost fwd/rev 50/10; workers' CPU "
        "25.00 us/probe = 1.25x ICMP's (whole run 50.0)"
    )
    assert "ICMP's" not in ff.sender_line(icmp, icmp)


# irtt 0.9.0's client JSON (`irtt client -i 10us -d 2s -o x.json`), trimmed to what is read.
IRTT_SAMPLE = {
    "version": {"irtt": "0.9.0", "protocol": 1, "json_format": 1},
    "config": {
        "local_address": "127.0.0.1:45103",
        "remote_address": "127.0.0.1:42112",
        "params": {"proto_version": 1, "duration": 2000000000, "interval": 10000, "length": 60},
    },
    "stats": {
        "server_packets_received": 16300,
        "packets_sent": 16332,
        "packets_received": 16290,
        "upstream_loss_percent": 0.1959,
        "downstream_loss_percent": 0.0614,
        "duration": 2202002133,
        "rtt": {"n": 16290, "min": 12598, "median": 68842, "max": 12205749},
    },
    "round_trips": [{"seqno": 0, "lost": "false"}],
}


def test_irtt_json_parses_and_its_line_compares_with_loadgen() -> None:
    irtt = ff.parse_irtt(json.dumps(IRTT_SAMPLE))
    assert irtt == ff.Irtt(10_000, 2_000_000_000, 16_332, 16_290, 16_300, 0.1959, 0.0614, 68842)
    assert irtt.sent_pps == 8166 and irtt.loss_pct == pytest.approx(100 * 42 / 16332)
    stamp = ff.SenderRun("stamp", 20_000, 60_000, 60_000, 3.0, 25.0)
    assert ff.irtt_line(irtt, 1.6332, 0.4075, stamp) == (
        "irtt -i 10us: 8.2k pps = 0.41x loadgen stamp's, loss 0.257% (up 0.196%, down 0.061%), "
        "client CPU 100.0 us/pkt = 2.00x loadgen stamp's whole run, server 25.0 us/pkt"
    )
    assert ff.parse_irtt("{}") is None and ff.parse_irtt("not json") is None
    assert ff.parse_irtt(json.dumps({**IRTT_SAMPLE, "stats": {"packets_sent": "x"}})) is None


def test_flags() -> None:
    assert parse_config([]).stamp_rates_pps == (10e3, 20e3, 40e3, 70e3, 100e3, 150e3)
    cfg = parse_config(["--stamp-only", "--stamp-rates", "5k,50k"])
    assert cfg.stamp_only and cfg.stamp_rates_pps == (5e3, 50e3)
    assert parse_config(["--stamp-rates", "none"]).stamp_rates_pps == ()
    with pytest.raises(UsageError, match="--stamp-only runs the far-end steps"):
        parse_config(["--stamp-only", "--stamp-rates", "none"])


@pytest.mark.root
def test_a_short_far_end_run_accounts_and_cleans_up() -> None:
    lines: list[str] = []
    steps = run_far_end(FarConfig((2_000.0,), 1.0, 1_000.0, 1.0), lines.append, [])
    assert not [s for s in steps if s.problems], [s.problems for s in steps]
    labels = [s.label for s in steps]
    assert labels[:4] == ["echo (C)", "echo (C) ceiling", "reflect x1", "reflect x1 ceiling"]
    assert labels[4:] == ["pair", "sender icmp", "sender udp", "sender stamp", "irtt"]
    for ladder in (steps[1], steps[3]):
        (rung,) = ladder.figures["rungs"]
        assert 0 < rung["received"] <= rung["sent"] and rung["far_cpu_s"] is not None
        assert ladder.figures["peak_rss_bytes"] > 0 and rung["rcvbuf_drops"] is not None
    # The pair at the rate the reflector held (2k for 1 s), the senders at 1k.
    for step, count in zip(steps[4:8], (2_000, 1_000, 1_000, 1_000), strict=True):
        run = step.figures["run"]
        assert 0 < run["answered"] <= run["sent"] == count, step.line
    assert lines == [s.line for s in steps]
    assert f"lgsb-{os.getpid()}" not in list_netns()
    assert steps[-1].line.startswith("irtt -i 10us:") or "not installed" in steps[-1].line


def test_without_irtt_its_step_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("loadgen.bench.farend.shutil.which", lambda name: None)
    step = farend._irtt("lgsb-none", tmp_path, 1.0, None)
    assert step.line == "irtt: not installed (`make bench-sysdeps` installs it): step left out"
    assert not step.problems and "\n" not in step.line
