"""The lab's kernel side: hosts reachable, nftables drops counted exactly, tbf accounted,
and nothing left behind by lab_down, a failed lab_up, or a process killed mid-run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import loadgen.lab.lab as lab_module
from loadgen.errors import LabError
from loadgen.lab import Lab, lab_down, lab_down_all, lab_status, lab_up, parse_lab_spec
from loadgen.lab.addressing import pick_block
from loadgen.lab.netops import list_netns, nft, nft_tables, ns_pids
from loadgen.lab.state import STATE_DIR, state_path
from loadgen.lab.truth import LinkCounters

from .conftest import wait_until
from .probe import probe

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(60)]


def leftovers(prefix: str) -> list[str]:
    """Every namespace, root link and root nft table that still carries `prefix`."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = [n for n in list_netns() if n.startswith(prefix + "-")]
    found += re.findall(rf"\d+: ({prefix}-\d+)[@:]", links)
    found += [t for _, t in nft_tables(None) if t.startswith(prefix)]
    if state_path(prefix).exists():
        found.append(str(state_path(prefix)))
    return found


def small_lab(prefix: str, **extra: object) -> Lab:
    hosts: list[dict[str, object]] = [{"name": "clean", "count": 2}, {"name": "lossy", **extra}]
    return lab_up(parse_lab_spec({"prefix": prefix, "seed": 1, "hosts": hosts}, source="test"))


def test_hosts_answer_ping_and_lab_down_leaves_nothing(prefix: str) -> None:
    with small_lab(prefix, drop_every=1000) as lab:
        assert len(lab.hosts) == 3
        assert {h.name for h in lab.hosts} == {"clean-0", "clean-1", "lossy"}
        for h in lab.hosts:
            assert h.address.startswith("198.1")  # 198.18.0.0/15 only
            assert h.address6.startswith("2001:2:")  # 2001:2::/48 only
            for address in (h.address, h.address6):
                out = subprocess.run(
                    ["ping", "-c", "3", "-i", "0.01", "-W", "1", address],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
                assert " 3 received" in out.stdout, out.stdout
        assert [i.status for i in lab_status() if i.prefix == prefix] == ["up"]
        for version in (4, 6):
            truth = lab.truth(version=version)
            for h in lab.hosts:
                t = truth[h.address_of(version)]
                assert t.responder == "kernel"
                # ping's requests are not our probes: the kernel saw them, no truth counts them.
                assert t.requests_seen == t.kernel_echo_replies == 3
                assert t.requests_out == t.echo_requests_in == t.echo_replies_out == 0
        assert leftovers(prefix)
    assert leftovers(prefix) == []
    assert not [i for i in lab_status() if i.prefix == prefix]


@pytest.mark.parametrize("version", [4, 6])
def test_nft_drops_match_counters_exactly(prefix: str, version: int) -> None:
    with small_lab(prefix, drop=0.1, drop_every=7) as lab:
        host = lab.host("lossy")
        address = host.address_of(version)
        obs = probe(address, 2000, rate_pps=4000)
        t = lab.truth([host], version)[address]
    assert t.family == version
    assert t.requests_out == 2000
    assert obs.sent == t.echo_requests_in == 2000
    assert t.nft_dropped_every == 2000 // 7  # the 7th, 14th, ... request
    assert len(obs.lost()) == t.nft_dropped == t.nft_dropped_every + t.nft_dropped_random
    assert len(obs.replied) == t.requests_seen == t.kernel_echo_replies == t.echo_replies_out
    # 10% of the 1715 requests left after drop_every: far outside these bounds means no numgen.
    assert 100 < t.nft_dropped_random < 260
    assert obs.duplicates == obs.bitflips == obs.corrupted == 0


@pytest.mark.parametrize("version", [4, 6])
def test_tbf_drops_are_all_of_the_loss(prefix: str, version: int) -> None:
    with small_lab(prefix, rate_limit="1mbit") as lab:
        host = lab.host("lossy")
        address = host.address_of(version)
        # 1000-byte probes at 1000/s is 8 Mbit/s against 1 Mbit/s: tbf must drop most.
        obs = probe(address, 500, rate_pps=1000, size=1000)
        t = lab.truth([host], version)[address]
        other = lab.truth([host], 10 - version)[host.address_of(10 - version)]
    # Each version has a shaper of its own: the other one saw nothing.
    assert other.root_link == other.host_link == LinkCounters()
    dropped = t.root_link.shaped_drops + t.host_link.shaped_drops
    assert dropped > 200
    assert len(obs.lost()) == dropped
    assert t.requests_out == 500
    assert t.lost_towards_host == t.root_link.shaped_drops
    # An IPv6 raw socket hears of each drop at its own end's qdisc (ENOBUFS); IPv4's does not.
    assert obs.refused == (t.root_link.shaped_drops if version == 6 else 0)
    assert t.lost_on_the_way_back == t.host_link.shaped_drops


def test_lab_up_refuses_a_prefix_in_use(prefix: str) -> None:
    with small_lab(prefix):
        with pytest.raises(LabError, match="already up"):
            small_lab(prefix)
        assert len([n for n in list_netns() if n.startswith(prefix)]) == 3
    assert leftovers(prefix) == []


def test_a_failure_half_way_leaves_nothing(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []

    def failing_nft(netns: str | None, args: list[str], stdin: str | None = None) -> str:
        calls.append(netns)
        if len(calls) == 2:  # the second host's ruleset: the first host is fully built
            raise LabError("nft refused (test)")
        return real_nft(netns, args, stdin)

    real_nft = nft
    monkeypatch.setattr(lab_module, "nft", failing_nft)
    with pytest.raises(LabError, match="test"):
        small_lab(prefix, delay_ms=1)
    assert len(calls) == 2
    assert leftovers(prefix) == []


CRASHER = textwrap.dedent(
    """
    import sys, time
    from loadgen.lab import lab_up, parse_lab_spec
    spec = parse_lab_spec({"prefix": sys.argv[1], "hosts": [
        {"name": "clean"}, {"name": "slow", "delay_ms": 5}]}, source="crash")
    lab = lab_up(spec)
    print("up", flush=True)
    time.sleep(60)
    """
)


def crash_a_lab(prefix: str) -> None:
    """Bring a lab up in a child process and SIGKILL it: no teardown runs."""
    child = subprocess.Popen([sys.executable, "-c", CRASHER, prefix], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"up"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert len([n for n in list_netns() if n.startswith(prefix + "-")]) == 2


def test_lab_down_all_reaps_a_lab_left_by_a_killed_process(prefix: str) -> None:
    crash_a_lab(prefix)
    status = [i for i in lab_status() if i.prefix == prefix]
    assert len(status) == 1 and status[0].namespaces == 2
    done = lab_down_all(prefix_re=re.compile(re.escape(prefix)))
    assert done.prefixes == (prefix,)
    assert len(done.namespaces) == 2 and len(done.links) == 2
    assert leftovers(prefix) == []


def test_lab_down_reaps_by_name_without_a_state_file(prefix: str) -> None:
    crash_a_lab(prefix)
    state_path(prefix).unlink()
    assert [i.status for i in lab_status() if i.prefix == prefix] == ["orphan"]
    # The reflector got SIGTERM when its parent died: let it write its counts and go.
    namespaces = [n for n in list_netns() if n.startswith(prefix + "-")]
    assert wait_until(lambda: not any(ns_pids(n) for n in namespaces))
    done = lab_down(prefix)
    assert len(done.namespaces) == 2
    assert leftovers(prefix) == []
    assert not list(Path(STATE_DIR / prefix).glob("*"))


def test_a_block_held_by_a_state_file_of_another_version_is_not_handed_out(
    tmp_path: Path,
) -> None:
    """Another loadgen version's lab, still being built, holds its block: its state file is
    not ours to parse, but its blocks are read all the same."""
    other = tmp_path / "lgother.json"
    other.write_text(
        '{"version": 999, "subnet": "198.18.0.0/24", "subnet6": "2001:2::/120",'  # not a target
        ' "hosts": [{"a_field_we_do_not_know": 1}]}'
    )
    (tmp_path / "lgbroken.json").write_text("{not json")
    taken = lab_module._taken(tmp_path, 4)
    assert any(str(t) == "198.18.0.0/24" for t in taken)  # not a target
    assert any(str(t) == "2001:2::/120" for t in lab_module._taken(tmp_path, 6))  # not a target
    block = pick_block(4, 2, taken)
    assert not block.overlaps(next(t for t in taken if str(t) == "198.18.0.0/24"))
