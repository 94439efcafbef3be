"""The truth over the datagram path: loadgen on datagram ICMP sockets counts known loss (nft
drops), duplicates and ICMP errors (a reflector's unreachables and time-exceeded messages, read
from the error queue) exactly, for IPv4 and IPv6: as root forced onto that path, and as an
ordinary user (uid 65534, no groups, no capabilities) for real. The whole lab lives under a
network namespace of the test's own, where ping_group_range is opened, so the machine's
setting is never touched; the lab's prefix is swept from outside too, however the child ends.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest
from private_netns import NOBODY, in_private_netns, nobody_loadgen

from loadgen.lab import (
    Lab,
    expected_counts,
    lab_down,
    lab_up,
    mismatches,
    parse_lab_spec,
    remains,
    truth_since,
)
from loadgen.stats import Counts

from .conftest import assert_counts_match, run_loadgen

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(240)]

HOSTS: list[dict[str, object]] = [
    {"name": "nftdrop", "drop": 0.05, "drop_every": 10},
    {"name": "dup", "duplicate": 0.05},
    {"name": "unreach", "unreachable": 0.05},
    {"name": "ttl", "time_exceeded": 0.05},
]
RATE, COUNT = 2_000, 1_000
_BLOCK = re.compile(
    r"--- (\S+) loadgen statistics ---\n(\d+) transmitted, (\d+) received, \S+ packet loss, "
    r"(\d+) late, (\d+) errors\n(\d+) duplicates, (\d+) reordered, (\d+) bitflips, "
    r"(\d+) corrupted, (\d+) icmp errors, (\d+) stale"
)


def _printed_counts(stdout: str) -> dict[str, Counts]:
    """Each target's counts from the summary loadgen printed (up to 4 targets: a block each)."""
    out = {}
    for m in _BLOCK.finditer(stdout):
        sent, received, late, errored, dup, reord, flips, corrupt, icmp, stale = map(
            int, m.groups()[1:]
        )
        lost = sent - received - late - errored
        out[m.group(1)] = Counts(
            sent, received, late, lost, errored, dup, flips, corrupt, icmp, stale, reord
        )
    return out


def _as_nobody(
    lab: Lab, version: int
) -> dict[str, tuple[Counts, dict[str, tuple[int, int | None]]]]:
    """loadgen run by uid 65534 inside this namespace, and each host's truth for the run."""
    found = nobody_loadgen()
    assert not isinstance(found, str), found
    argv, env = found
    hosts = [lab.host(str(h["name"])) for h in HOSTS]
    addresses = [h.address_of(version) for h in hosts]
    before = lab.truth(hosts, version)
    res = subprocess.run(
        ["setpriv", *NOBODY, *argv, "ping", ",".join(addresses), "-r", str(RATE), "-c",
         str(COUNT), "-w", "3s", "-d", "3s", "--plain"],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "probes: ICMP via datagram socket (ping_group_range)" in res.stdout
    lab.wait_idle()
    after = lab.truth(hosts, version)
    printed = _printed_counts(res.stdout)
    out = {}
    for address in addresses:
        want = expected_counts(truth_since(after[address], before[address]))
        out[address] = (printed[address], mismatches(printed[address], want))
    return out


def _measure(prefix: str, version: int, tmp_path: Path) -> dict[str, object]:
    spec = parse_lab_spec({"prefix": prefix, "seed": 11, "hosts": HOSTS}, source="truth")
    with lab_up(spec) as lab:
        hosts = [lab.host(str(h["name"])) for h in HOSTS]
        before = lab.truth(hosts, version)
        run = run_loadgen(
            tmp_path,
            [h.address_of(version) for h in hosts],
            rate_pps=RATE,
            count=COUNT,
            icmp_socket="datagram",
        )
        lab.wait_idle()
        after = lab.truth(hosts, version)
        truth = {a: truth_since(after[a], before[a]) for a in after}
        assert str(run.result.plan.icmp_path) == "datagram"
        assert_counts_match(run, truth)
        as_root = {h.name: run.counts(h.address_of(version)) for h in hosts}
        names = {h.address_of(version): h.name for h in hosts}
        nobody = {names[a]: got for a, got in _as_nobody(lab, version).items()}
        return {"root": as_root, "nobody": nobody}


@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
def test_datagram_path_counts_equal_the_truth(version: int, tmp_path: Path) -> None:
    if isinstance(found := nobody_loadgen(), str):
        pytest.skip(found)
    prefix = "lgdg" + secrets.token_hex(2)
    try:
        got = in_private_netns(lambda: _measure(prefix, version, tmp_path), timeout_s=200)
    finally:
        lab_down(prefix)
    assert not remains(prefix)
    root: dict[str, Counts] = got["root"]  # type: ignore[assignment]
    nobody: dict[str, tuple[Counts, dict[str, tuple[int, int | None]]]] = got["nobody"]  # type: ignore[assignment]
    for name, (counts, wrong) in nobody.items():
        assert wrong == {}, f"{name} as uid 65534: (loadgen, truth) {wrong}"
        assert counts.sent == COUNT
    for by_name in (root, {n: c for n, (c, _) in nobody.items()}):
        assert by_name["nftdrop"].lost >= COUNT // 10  # every 10th, and 5% of the rest
        assert by_name["dup"].duplicates > 0
        for name in ("unreach", "ttl"):
            assert by_name[name].errored > 0 and by_name[name].icmp_errors > 0
            assert by_name[name].lost == 0
