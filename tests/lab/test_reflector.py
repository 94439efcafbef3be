"""The reflector against an independent sender: every impairment it claims is exactly what
arrives, seeded decisions replay exactly, and it keeps up with >= 20k requests per second; for
ICMP and ICMPv6 alike (a host runs one reflector per IP version)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from loadgen.lab import Lab, LabHost, lab_down, lab_up, parse_lab_spec
from loadgen.lab.hostcfg import reflector_config
from loadgen.lab.impair import Action, Decider, ReflectorCounts
from loadgen.lab.reap import is_reflector
from loadgen.lab.spread import STEP_NS as HOLD_STEP_NS
from loadgen.lab.state import run_dir
from loadgen.lab.truth import HostTruth

from .blast import blast
from .conftest import wait_until
from .probe import Observed, probe

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(90)]

HOSTS = [
    {"name": "dup", "duplicate": 0.1},
    {"name": "reorder", "reorder": 0.1},
    {"name": "flip", "bitflip": 0.1},
    {"name": "corrupt", "corrupt": 0.1},
    {"name": "unreach", "unreachable": 0.2},
    {"name": "ttl", "time_exceeded": 0.2},
    {"name": "limited", "icmp_ratelimit_pps": 300},
    {"name": "drops", "drop": 0.1, "drop_every": 9, "drop_by": "reflector"},
    {"name": "slow", "delay_ms": 20, "jitter_ms": 5},
    {"name": "plain", "reflector": True},
    {"name": "starved", "reflector": True},
]
N = 600
VERSIONS = pytest.mark.parametrize("version", [4, 6])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "lgr" + secrets.token_hex(2)
    spec = parse_lab_spec({"prefix": prefix, "seed": 11, "hosts": HOSTS}, source="test")
    try:
        with lab_up(spec) as up:
            yield up
    finally:
        lab_down(prefix)


def run(
    lab: Lab, name: str, version: int, count: int = N, rate_pps: float = 3000, size: int = 64
) -> tuple[LabHost, Observed, HostTruth]:
    host = lab.host(name)
    address = host.address_of(version)
    before = lab.truth([host], version)[address]
    assert before.reflector is not None and before.reflector.requests_seen == 0, "one run per host"
    obs = probe(address, count, rate_pps, size=size, settled=lambda: lab.settled(host, version))
    lab.wait_idle(hosts=[host])
    return host, obs, lab.truth([host], version)[address]


def replay(lab: Lab, host: LabHost, count: int, version: int) -> np.ndarray:
    """The fates the reflector's seeded streams give requests 0..count-1 (one batch)."""
    cfg = reflector_config(host, lab.seed_of(host, version), "", False, version)
    return Decider(cfg, 0).decide(count, 0).action


@VERSIONS
def test_every_host_is_answered_by_its_reflector(lab: Lab, version: int) -> None:
    assert all(h.responder == "reflector" for h in lab.hosts)
    assert all(h.reflector_pid and h.reflector_pid6 for h in lab.hosts)
    _, obs, t = run(lab, "plain", version)
    assert t.reflector is not None
    assert len(obs.replied) == N == t.reflector.requests_seen == t.reflector.replies_sent
    assert t.echo_requests_in == N and t.echo_replies_out == N
    assert obs.duplicates == obs.bitflips == obs.corrupted == obs.reordered == 0


@VERSIONS
def test_duplicates(lab: Lab, version: int) -> None:
    _, obs, t = run(lab, "dup", version)
    r = t.reflector
    assert r is not None and r.duplicated > 0
    assert obs.duplicates == r.duplicated
    assert r.replies_sent == r.replies + r.duplicated == t.echo_replies_out
    assert len(obs.replied) == N


@VERSIONS
def test_reordering(lab: Lab, version: int) -> None:
    _, obs, t = run(lab, "reorder", version)
    r = t.reflector
    assert r is not None and r.reordered > 0
    assert obs.reordered == r.reordered == r.out_of_order
    assert len(obs.replied) == N == r.replies_sent  # held back, never lost


@VERSIONS
def test_bitflips_land_in_the_fill_with_a_valid_checksum(lab: Lab, version: int) -> None:
    _, obs, t = run(lab, "flip", version)
    r = t.reflector
    assert r is not None and r.bitflipped > 0 and r.bitflip_skipped == 0
    assert obs.bitflips == r.bitflipped  # the sender checks the checksum first: it was valid
    assert obs.corrupted == 0
    assert len(obs.replied) == N - r.bitflipped


@VERSIONS
def test_corrupted_checksums(lab: Lab, version: int) -> None:
    _, obs, t = run(lab, "corrupt", version)
    r = t.reflector
    assert r is not None and r.corrupted > 0
    assert len(obs.replied) == N - r.corrupted and obs.bitflips == 0
    if version == 4:
        assert obs.corrupted == r.corrupted
        assert t.echo_replies_out == r.replies_sent == N
    else:  # the kernel writes ICMPv6 checksums: a corrupted reply is held back, a loss
        assert obs.corrupted == 0 and obs.lost() == set(range(N)) - obs.replied
        assert t.echo_replies_out == r.replies_sent == N - r.corrupted


@VERSIONS
@pytest.mark.parametrize(("name", "kind"), [("unreach", "unreachable"), ("ttl", "time_exceeded")])
def test_icmp_errors_quote_the_request_and_replay_from_the_seed(
    lab: Lab, name: str, kind: str, version: int
) -> None:
    host, obs, t = run(lab, name, version, size=1300)
    r = t.reflector
    assert r is not None
    errors = obs.unreachable if kind == "unreachable" else obs.time_exceeded
    sent = r.unreachable_sent if kind == "unreachable" else r.time_exceeded_sent
    assert len(errors) == sent == t.icmp_errors_out > 0
    # Like Linux: IPv4 576 - 20 - 8; IPv6 1280 - 40 - 8 (RFC 4443 2.4(c)).
    assert set(obs.error_quote_lens) == {548 if version == 4 else 1232}
    assert t.errors_back == t.icmp_errors_out
    want = Action.UNREACHABLE if kind == "unreachable" else Action.TIME_EXCEEDED
    assert errors == set(np.flatnonzero(replay(lab, host, N, version) == want).tolist())
    assert obs.replied == set(range(N)) - errors


@VERSIONS
def test_icmp_rate_limit(lab: Lab, version: int) -> None:
    # 0.5 s at 2000/s against 300/s
    _, obs, t = run(lab, "limited", version, count=1000, rate_pps=2000)
    r = t.reflector
    assert r is not None
    assert r.rate_limited + r.replies == 1000
    assert len(obs.lost()) == r.rate_limited
    # burst (300 // 20 = 15) plus ~0.5 s of refill at 300/s, with slack for scheduling
    assert 100 < r.replies < 260


@VERSIONS
def test_reflector_drops_replay_exactly_from_the_seed(lab: Lab, version: int) -> None:
    host, obs, t = run(lab, "drops", version)
    r = t.reflector
    assert r is not None
    predicted = set(np.flatnonzero(replay(lab, host, N, version) == Action.DROP).tolist())
    assert {k for k in range(8, N, 9)} <= predicted  # the 9th, 18th, ... request
    assert obs.lost() == predicted
    assert r.dropped == len(predicted)
    assert t.nft_dropped == 0  # drop_by = "reflector": nothing dropped in nftables


@VERSIONS
def test_delay_and_jitter(lab: Lab, version: int) -> None:
    _, obs, t = run(lab, "slow", version, count=300, rate_pps=1000)
    r = t.reflector
    assert r is not None and r.delayed == 300 and r.pending == 0
    assert obs.reordered == r.out_of_order > 0  # 5 ms of jitter at 1 ms spacing reorders
    assert len(obs.replied) == 300
    rtt_ms = np.array(obs.rtt_ns) / 1e6
    assert rtt_ms.min() >= 15.0  # delay 20 - jitter 5: never earlier
    # The RTT is the reflector's hold plus a path of microseconds: what the prober saw is what
    # the reflector says it held (a starved reflector holds longer, and says so), not a
    # figure about this machine's speed.
    path_ns = 2_000_000
    assert np.median(obs.rtt_ns) <= r.hold_ns_p50 + HOLD_STEP_NS + path_ns
    assert r.delay_ns_max <= 25_000_000
    # What it held a reply beyond its delay is a small part of the hold (both binned).
    assert r.overhead_ns_p50 >= 0
    assert r.overhead_ns_p50 + 15_000_000 <= r.hold_ns_p50 + HOLD_STEP_NS


@VERSIONS
def test_reflector_keeps_up_with_20k_pps(lab: Lab, version: int) -> None:
    host = lab.host("plain")
    address = host.address_of(version)
    before = lab.truth([host], version)[address]
    sent, took = blast(address, 25_000, 1.0)
    assert before.reflector is not None
    base = before.reflector.replies_sent
    latest = [before]

    def caught_up() -> bool:  # every request that arrived has been answered
        latest[0] = now = lab.truth([host], version)[address]
        arrived = now.echo_requests_in - before.echo_requests_in
        r = now.reflector
        return arrived >= 25_000 and r is not None and r.replies_sent - base >= arrived

    wait_until(caught_up, timeout_s=10.0, poll_s=0.1)
    after = latest[0]
    assert after.reflector is not None
    seen = after.reflector.requests_seen - before.reflector.requests_seen
    replied = after.reflector.replies_sent - before.reflector.replies_sent
    arrived = after.echo_requests_in - before.echo_requests_in
    # The blast aims at 25k pps; how fast this machine let it go is its own business (a slow
    # one tests a lower rate), what the reflector must do is answer every request that came.
    assert sent == 25_000
    assert arrived == sent
    assert seen == replied == arrived, f"reflector fell behind: {seen} of {arrived} in {took:.2f}s"
    assert after.responder_missed == 0


@VERSIONS
def test_a_reflector_kept_off_its_cpu_delays_the_probe_and_wait_idle(
    lab: Lab, version: int
) -> None:
    """Stopped (as a busy machine can keep it off its CPU) through the whole probe and well past
    its linger, the reflector still answers all: the probe listens until the lab says every
    probe is through, and wait_idle until the reflector has read what the kernel queued."""
    host = lab.host("starved")
    pid = host.reflector_pid if version == 4 else host.reflector_pid6
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    wake = threading.Timer(1.5, os.kill, (pid, signal.SIGCONT))
    wake.start()
    try:
        obs = probe(host.address_of(version), 200, 1000, settled=lambda: lab.settled(host, version))
    finally:
        wake.cancel()
        os.kill(pid, signal.SIGCONT)
    assert len(obs.replied) == obs.sent == 200
    # Stopped again with requests queued: wait_idle must not take its stale counts as idle.
    os.kill(pid, signal.SIGSTOP)
    more = probe(host.address_of(version), 100, 1000, linger_s=0.0)  # sending is bounded too
    wake = threading.Timer(0.5, os.kill, (pid, signal.SIGCONT))
    wake.start()
    try:
        lab.wait_idle(hosts=[host])
    finally:
        wake.cancel()
        os.kill(pid, signal.SIGCONT)
    t = lab.truth([host], version)[host.address_of(version)]
    assert more.sent > 0 and t.requests_out == 200 + more.sent
    assert (
        t.reflector is not None
        and t.reflector.requests_seen == t.echo_requests_in == t.requests_out
    )


@VERSIONS
def test_sigterm_writes_the_final_counts(prefix: str, version: int) -> None:
    spec = parse_lab_spec({"prefix": prefix, "hosts": [{"name": "d", "delay_ms": 500}]}, source="t")
    with lab_up(spec) as lab:
        host = lab.host("d")
        pid = host.reflector_pid if version == 4 else host.reflector_pid6
        assert pid is not None
        # replies still queued when it stops
        obs = probe(host.address_of(version), 20, rate_pps=1000, linger_s=0.0)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while is_reflector(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = run_dir(prefix) / ("d.stats.json" if version == 4 else "d.6.stats.json")
        final = ReflectorCounts.from_dict(json.loads(stats.read_text()))
    # The probe's sending is bounded in time, so a busy machine may send a few fewer than 20.
    assert obs.sent >= 10
    assert final.requests_seen == obs.sent
    assert final.unsent_at_exit + final.replies_sent == obs.sent and final.unsent_at_exit > 0
    assert final.pending == 0
