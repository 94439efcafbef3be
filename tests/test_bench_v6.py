"""The bench's IPv6 side on made-up inputs: /proc/net/snmp6 counters named as IPv4's, the IPv6
addresses and steps (ping -6 -f, loadgen to 2001:2:0:1::/64), the --v6-rates ladder placed
next to its IPv4 twins, and the line comparing IPv6's CPU per probe with IPv4's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest

from loadgen.bench.cli import ladder, parse_config
from loadgen.bench.figures import icmp6_counters, icmp_delta, in_echos
from loadgen.bench.output import family_lines, family_pairs, render_table, results_document
from loadgen.bench.steps import LOADGEN, PING, Step, StepResult
from loadgen.bench.topology import target_addresses
from loadgen.errors import UsageError
from loadgen.lab.netops import parse_snmp6

# Lines of a captured /proc/net/snmp6 (kernel 6.18): names padded with spaces, then a tab.
SNMP6 = """\
Ip6InReceives                   \t5110105
Ip6InHdrErrors                  \t0
Icmp6InMsgs                     \t5096064
Icmp6InErrors                   \t19
Icmp6OutMsgs                    \t5101717
Icmp6InCsumErrors               \t18
Icmp6InEchos                    \t2515450
Icmp6InEchoReplies              \t2580042
Icmp6OutEchos                   \t2585867
Icmp6OutEchoReplies             \t2515450
Icmp6InType128                  \t2515450
Udp6InDatagrams                 \t12
"""


def test_parse_snmp6_reads_name_value_lines() -> None:
    six = parse_snmp6(SNMP6)
    assert six["Icmp6InEchos"] == 2515450 and six["Icmp6OutEchoReplies"] == 2515450
    assert six["Icmp6InEchoReplies"] == 2580042 and six["Udp6InDatagrams"] == 12
    assert len(six) == 12


def test_icmp6_counters_take_the_names_of_ipv4s() -> None:
    c = icmp6_counters(SNMP6)
    assert c["InEchos"] == 2515450 and c["OutEchoReps"] == 2515450
    assert c["InEchoReps"] == 2580042 and c["OutEchos"] == 2585867
    assert c["InCsumErrors"] == 18 and "InType128" not in c
    assert in_echos(SNMP6, family=6) == 2515450


def test_icmp6_counters_read_this_kernels_file() -> None:
    with open("/proc/net/snmp6", encoding="ascii") as f:
        c = icmp6_counters(f.read())
    assert {"InEchos", "InEchoReps", "OutEchos", "OutEchoReps"} <= set(c)


def test_icmp_delta_of_either_family() -> None:
    before = {"Icmp": {"InEchos": 5}, "Icmp6": icmp6_counters(SNMP6)}
    after6 = SNMP6.replace("2515450", "2515550")
    after = {"Icmp": {"InEchos": 7}, "Icmp6": icmp6_counters(after6)}
    assert icmp_delta(before, after)["InEchos"] == 2
    d6 = icmp_delta(before, after, family=6)
    assert d6["InEchos"] == 100 and d6["OutEchoReps"] == 100 and d6["OutEchos"] == 0


def test_ipv6_targets_and_command_lines_stay_in_the_benchmarking_range(tmp_path: Path) -> None:
    six = target_addresses(family=6)
    assert len(set(six)) == 64 and six[0] == "2001:2:0:1::1" and six[-1] == "2001:2:0:1::40"
    assert all(ipaddress.ip_address(t) in ipaddress.ip_network("2001:2::/48") for t in six)
    ping6 = Step(PING, 1, count=10, family=6)
    assert ping6.label == "ping -6 -f" and ping6.v4_twin == "ping -f"
    argv = ping6.argv(six, tmp_path / "o")
    assert argv[:3] == ["ping", "-6", "-f"] and argv[-1] == "2001:2:0:1::1"
    assert "-6" not in Step(PING, 1, count=10).argv(target_addresses(), tmp_path / "o")
    lg6 = Step(LOADGEN, 64, rate_pps=100e3, workers=2, duration_s=2, family=6)
    assert lg6.label == "loadgen 100k x2 v6" and lg6.v4_twin == "loadgen 100k x2"
    argv = lg6.argv(six[:2], tmp_path / "o.jsonl")
    assert argv[argv.index("ping") + 1] == "2001:2:0:1::1,2001:2:0:1::2"
    assert Step(LOADGEN, 64, rate_pps=100e3, workers=2).v4_twin == ""


def test_v6_steps_follow_their_ipv4_twins() -> None:
    cfg = parse_config([])
    assert cfg.v6_rates_pps == (100e3, 250e3)
    labels = [s.label for s in ladder(cfg)]
    assert labels[:3] == ["ping -f", "ping -6 -f", "fping"]
    assert sum(label.endswith(" v6") for label in labels) == 2
    for rate in ("100k", "250k"):
        i = labels.index(f"loadgen {rate} x2")
        assert labels[i + 1] == f"loadgen {rate} x2 v6"
    v6 = [s for s in ladder(cfg) if s.family == 6 and s.tool == LOADGEN]
    assert all(s.targets == 64 and s.workers == 2 and s.duration_s == 10 for s in v6)


def test_v6_rates_flag() -> None:
    base = ["--no-peers", "--tx-rates", "none", "--packet-rates", "none", "--overload", "none"]
    base += ["--syn-rates", "none", "--connect-rates", "none"]
    only = parse_config([*base, "--rates", "100k", "--workers", "2", "--v6-rates", "100k,50k"])
    assert [s.label for s in ladder(only)] == [
        "loadgen 100k x2",
        "loadgen 100k x2 v6",
        "loadgen 50k x2 v6",  # no IPv4 twin: after the IPv4 steps
    ]
    off = parse_config(["--v6-rates", "none", "--tx-rates", "none"])
    assert off.v6_rates_pps == () and all(s.family == 4 for s in ladder(off))
    assert parse_config(["--soak", "1m"]).v6_rates_pps == ()
    with pytest.raises(UsageError):
        parse_config(["--v6-rates", "lots"])


def result(label: str, family: int, cpu: tuple[float, float], twin: str = "") -> StepResult:
    return StepResult(
        label=label,
        tool=LOADGEN,
        targets=64,
        workers=2,
        requested_pps=100e3,
        achieved_pps=99e3,
        pacing_p99=0.0,
        pacing_max=0.0,
        pacing_reference="requested",
        windows=20,
        windows_off_grid=0,
        sent=1_000_000,
        answered=1_000_000,
        loss=None,
        cpu_s=cpu[0],
        cpu_s_per_m=cpu[0],
        cpu_s_per_m_steady=cpu[1],
        peak_rss_bytes=200 << 20,
        processes=4,
        wall_s=12.0,
        exit_code=0,
        problems=(),
        family=family,
        v4_twin=twin,
    )


def test_the_v6_line_compares_cpu_per_probe_with_the_ipv4_twin() -> None:
    v4 = result("loadgen 100k x2", 4, (12.0, 10.0))
    v6 = result("loadgen 100k x2 v6", 6, (13.8, 10.5), twin="loadgen 100k x2")
    lone = result("loadgen 50k x2 v6", 6, (20.0, 15.0), twin="loadgen 50k x2")
    [pair] = family_pairs([v4, v6, lone])  # no IPv4 twin ran for the 50k one
    assert pair.ratio == pytest.approx(1.15) and pair.ratio_steady == pytest.approx(1.05)
    lines = family_lines([v4, v6, lone])
    assert lines[0].startswith("IPv6 against IPv4") and "1.10" in lines[0]
    assert lines[1].strip().startswith("loadgen 100k x2: v4 12.0/10.0, v6 13.8/10.5")
    assert "v6/v4 1.15/1.05" in lines[1] and len(lines) == 2
    assert lines[1] in render_table([v4, v6]).splitlines()
    assert family_lines([v4]) == [] and family_pairs([v6]) == []
    doc = results_document([v4, v6], machine={}, config={}, started="t", wall_s=1)
    assert json.loads(json.dumps(doc))["v6_vs_v4"][0]["ratio_steady"] == pytest.approx(1.05)
    no_cpu = dataclasses.replace(v4, cpu_s_per_m_steady=None)
    assert family_pairs([no_cpu, v6])[0].ratio_steady is None
