"""STAMP one-way delays against a delay applied to one direction at a time, with known truth.

Each lab host runs `loadgen reflect` behind the lab's delay relay (`stamp_port`,
`delay_fwd_ms`, `delay_rev_ms`): the relay holds each test packet on its way in, or each reply
on its way out, and records per packet what it did and what it saw (its hold, and the one-way
delay around it from the packets' own stamps and its kernel receive stamps). The namespaces
share one clock, so the truth is exact: forward, the relay sees T1 and T2 of every packet, so
loadgen's T2 - T1 must equal it; reverse, it sees T3 and its own send, so T4 - T3 is that plus
one hop (from the relay's send to the sender's kernel receive stamp), which gets 50 us. The
delay itself is in the relay's hold, never in the reflector's residence. No bound here is a time
taken from this machine's speed: a busy machine makes the holds and the path longer, and the
truth with them.
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab import Lab, lab_down, lab_up, parse_lab_spec, remains

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(600)]

PORT = 8620
PROBES = 800
RATE_PPS = 200
HOP_US = 50  # the one hop the relay cannot see: its send of a reply to loadgen's receive stamp
EXACT_US = 0.01  # timestamp format conversions (NTP fractions) on either side
# (forward, reverse) delay in ms of each host: one direction, the other, both alike
DELAYS_MS = {"fwd": (5.0, 0.0), "rev": (0.0, 5.0), "both": (4.0, 4.0)}


@pytest.fixture(scope="module")
def delay_lab() -> Iterator[Lab]:
    prefix = "lgowd" + secrets.token_hex(2)[:3]
    hosts = [
        {"name": name, "stamp_port": PORT, "delay_fwd_ms": f, "delay_rev_ms": r}
        for name, (f, r) in DELAYS_MS.items()
    ]
    spec = parse_lab_spec({"prefix": prefix, "seed": 5, "hosts": hosts}, source="truth")
    try:
        lab = lab_up(spec)
        yield lab
        lab.close()
    finally:
        lab_down(prefix)
        left = remains(prefix)
        assert not left, f"lab {prefix} left behind: {left}"


def per_packet(lab: Lab, name: str) -> dict[str, list[int]]:
    """The relay's per-packet record so far: hold_fwd, seen_fwd, hold_rev, seen_rev (ns)."""
    truth = lab.relay_truth(lab.host(name))
    record: dict[str, list[int]] = json.loads(Path(truth["samples_path"]).read_text())
    return record


def ping(address: str, jsonl: Path) -> tuple[str, list[dict[str, Any]]]:
    cmd = [sys.executable, "-m", "loadgen", "ping", address, "--stamp", str(PORT)]
    cmd += ["-r", str(RATE_PPS), "-c", str(PROBES), "--jsonl", str(jsonl)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout, [json.loads(line) for line in jsonl.read_text().splitlines()]


def median_band_us(truth: list[int], n_second: int) -> tuple[float, float]:
    """Where the median of any `n_second` of the `truth` samples must lie: at least half of
    them are at or below it, so at least n/2 of all are, and likewise above."""
    ordered = sorted(truth)
    half = math.ceil(n_second / 2)
    return ordered[half - 1] / 1e3, ordered[len(ordered) - half] / 1e3


@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("name", list(DELAYS_MS))
def test_one_way_delays_equal_what_the_relay_did(
    delay_lab: Lab, name: str, version: int, tmp_path: Path
) -> None:
    delay_fwd_ms, delay_rev_ms = DELAYS_MS[name]
    host = delay_lab.host(name)
    before = len(per_packet(delay_lab, name)["seen_fwd"])
    stdout, rows = ping(host.address_of(version), tmp_path / "owd.jsonl")
    truth = {k: v[before:] for k, v in per_packet(delay_lab, name).items()}
    total = next(r for r in rows if r["type"] == "summary")["total"]
    # Every probe came back through the relay: the truth covers exactly loadgen's samples.
    assert total["sent"] == total["received"] == total["owd_fwd_count"] == PROBES
    assert len(truth["seen_fwd"]) == PROBES, "the relay answered other probes than ours"

    # The relay held every packet at least as long as asked, and that hold is inside the
    # one-way delay of its direction (never in the other, never in the reflector).
    for way, delay_ms in (("fwd", delay_fwd_ms), ("rev", delay_rev_ms)):
        holds, seen = truth[f"hold_{way}"], truth[f"seen_{way}"]
        assert min(holds) >= delay_ms * 1e6
        assert all(s >= h for s, h in zip(seen, holds, strict=True))
        assert total[f"owd_{way}_min_us"] >= min(holds) / 1e3 - EXACT_US
    res_min_us = total["residence_min_us"]
    assert 0 <= res_min_us < min(d for d in (delay_fwd_ms, delay_rev_ms) if d) * 1e3 / 2

    # Forward: loadgen's T2 - T1 is what the relay saw of the same packets, to the ns.
    seen_fwd_us = [s / 1e3 for s in truth["seen_fwd"]]
    assert total["owd_fwd_min_us"] == pytest.approx(min(seen_fwd_us), abs=EXACT_US)
    assert total["owd_fwd_avg_us"] == pytest.approx(sum(seen_fwd_us) / PROBES, abs=EXACT_US)
    # Reverse: what the relay saw plus its last hop.
    seen_rev_min_us = min(truth["seen_rev"]) / 1e3
    assert seen_rev_min_us - EXACT_US <= total["owd_rev_min_us"] <= seen_rev_min_us + HOP_US
    assert total["owd_rev_avg_us"] >= sum(truth["seen_rev"]) / 1e3 / PROBES - EXACT_US

    # Each second's median lies where the truth allows a median of that many of its samples.
    seconds = [r for r in rows if r["type"] == "second" and r["owd_fwd_count"]]
    assert sum(r["owd_fwd_count"] for r in seconds) == PROBES
    for r in seconds:
        lo, hi = median_band_us(truth["seen_fwd"], r["owd_fwd_count"])
        assert lo - EXACT_US <= r["owd_fwd_p50_us"] <= hi + EXACT_US, (r["second"], lo, hi)
        lo, hi = median_band_us(truth["seen_rev"], r["owd_rev_count"])
        assert lo - EXACT_US <= r["owd_rev_p50_us"] <= hi + HOP_US, (r["second"], lo, hi)

    # The round trip is the sum of its parts, and holds at least both holds of one packet.
    parts = total["owd_fwd_avg_us"] + total["residence_avg_us"] + total["owd_rev_avg_us"]
    assert total["rtt_avg_us"] - EXACT_US <= parts <= total["rtt_max_us"]
    both_holds = [f + r for f, r in zip(truth["hold_fwd"], truth["hold_rev"], strict=True)]
    assert total["rtt_min_us"] >= min(both_holds) / 1e3

    # One clock: the offset estimate is off by half the asymmetry of the minima and by no more
    # (so about 0 when both ways are delayed alike), and no one-way figure is negative.
    asymmetry_us = (min(seen_fwd_us) - seen_rev_min_us) / 2
    assert asymmetry_us - HOP_US / 2 - EXACT_US <= total["owd_offset_us"] <= asymmetry_us + EXACT_US
    if delay_fwd_ms == delay_rev_ms:
        assert abs(total["owd_offset_us"]) < delay_fwd_ms * 1e3 / 10
    assert "one-way min/avg" in stdout
    assert "one-way delay is negative" not in stdout
