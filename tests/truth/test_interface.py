"""-I/--interface and -S/--source in the lab: each lab host is reachable through its own link
only, so binding to one host's link must reach that host (raw IP and packet paths alike, the
counts equal to the host's own) and refuse the others in one line before a probe leaves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.lab import Lab

from .conftest import Labs, assert_counts_match, measure

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def lab(module_labs: Labs) -> Lab:
    return module_labs([{"name": "near"}, {"name": "far"}], seed=11)


@pytest.mark.parametrize("tx_path", ["ip", "packet"])
def test_bound_to_a_hosts_link_its_probes_and_replies_all_count(
    lab: Lab, tmp_path: Path, tx_path: str
) -> None:
    near = lab.host("near")
    run, truth = measure(
        lab, [near], tmp_path, rate_pps=1000, count=500, interface=near.root_ifname,
        tx_path=tx_path,
    )  # fmt: skip
    assert run.counts(near.address).received == 500
    assert truth[near.address].echo_requests_in == 500
    assert_counts_match(run, truth)


def test_source_address_of_another_link_gets_the_replies(lab: Lab, tmp_path: Path) -> None:
    """From far's root-side address, out of near's link: near answers that address (by its
    default route back), and the bound socket only takes replies to it, so every reply
    counted went to the source asked for."""
    near, far = lab.host("near"), lab.host("far")
    run, truth = measure(
        lab, [near], tmp_path, rate_pps=1000, count=300, interface=near.root_ifname,
        source=far.peer_address,
    )  # fmt: skip
    assert run.counts(near.address).received == 300
    assert_counts_match(run, truth)
    assert run.rows[-1]["extra"]["source"] == far.peer_address


def test_a_target_behind_another_interface_is_refused_in_one_line(lab: Lab) -> None:
    near, far = lab.host("near"), lab.host("far")
    before = lab.truth([near, far])
    res = subprocess.run(
        [
            sys.executable, "-m", "loadgen", "ping", f"{near.address},{far.address}",
            "-I", near.root_ifname, "-c", "100", "-r", "1000",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"loadgen: error: target {far.address} is not reachable through interface "
        f"{near.root_ifname} (the routing table sends it through {far.root_ifname}): drop it "
        "from the targets, or the interface setting (-I/--interface)"
    ]
    assert res.stdout == ""
    after = lab.truth([near, far])
    for h in (near, far):  # refused before a probe left
        assert after[h.address].echo_requests_in == before[h.address].echo_requests_in
