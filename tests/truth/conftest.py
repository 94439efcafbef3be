"""Lab fixtures for the truth suite and the one way its tests run loadgen and read the truth.

Every lab gets a prefix of its own ("lgq" + 4 hex digits), is torn down when its fixture ends,
however the test ends, and the fixture then fails the test if anything carrying the prefix
(namespace, link, nft table, reflector, state file) is left.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadgen.errors import LabError
from loadgen.lab import (
    HostTruth,
    Lab,
    LabHost,
    expected_counts,
    lab_down,
    lab_up,
    mismatches,
    parse_lab_spec,
    remains,
    truth_since,
)
from loadgen.profile import Profile, parse_profile
from loadgen.runner import RunResult, execute
from loadgen.stats import Counts, TargetStats
from loadgen.targets import PROBED_FAMILIES

OUTCOMES = ("received", "late", "lost", "errored")
SIDE_EVENTS = ("duplicates", "reordered", "bitflips", "corrupted", "icmp_errors", "stale")


class Labs:
    """Brings labs up for one fixture scope; `close` takes them all down and says what is left."""

    def __init__(self, head: str = "lgq") -> None:
        self.head = head  # every prefix: this, then 4 hex digits
        self.labs: list[Lab] = []
        self.prefixes: list[str] = []

    def __call__(self, hosts: Sequence[Mapping[str, object]], seed: int = 1) -> Lab:
        prefix = self.head + secrets.token_hex(2)
        self.prefixes.append(prefix)  # before lab_up: a half-built lab is swept up too
        spec = parse_lab_spec(
            {"prefix": prefix, "seed": seed, "hosts": [dict(h) for h in hosts]}, source="truth"
        )
        lab = lab_up(spec)
        self.labs.append(lab)
        return lab

    def close(self) -> list[str]:
        left: list[str] = []
        for lab in self.labs:
            try:  # stops and reaps its reflectors
                lab.close()
            except LabError as exc:
                left.append(f"{lab.prefix}: {exc}")
        for prefix in self.prefixes:
            try:  # by name too: whatever one lab's teardown missed, the next ones still go
                lab_down(prefix)
            except LabError as exc:
                left.append(f"{prefix}: {exc}")
            left += remains(prefix)
        return left


def _labs(head: str = "lgq") -> Iterator[Labs]:
    labs = Labs(head)
    try:
        yield labs
    finally:
        left = labs.close()
    assert not left, f"left behind: {left}"


@pytest.fixture(params=[4, 6], ids=["v4", "v6"])
def version(request: pytest.FixtureRequest) -> int:
    """The IP version a truth test probes its hosts by: each such test runs for both."""
    v: int = request.param
    if v not in PROBED_FAMILIES:
        pytest.skip("loadgen does not probe IPv6 yet (loadgen.targets.PROBED_FAMILIES lacks 6)")
    return v


def told_of_shaper_drops(tx_path: str, version: int) -> bool:
    """Whether the sender hears of each drop of the root end's tbf (and sends that probe
    again): an AF_PACKET sender does (ENOBUFS), and so does a raw IPv6 socket, whose sends
    report the qdisc's verdict; a raw IPv4 socket is not told."""
    return tx_path == "packet" or version == 6


@pytest.fixture
def make_lab() -> Iterator[Labs]:
    """`make_lab(hosts, seed)` -> a Lab, down (and checked gone) when the test ends."""
    yield from _labs()


@pytest.fixture(scope="module")
def module_labs() -> Iterator[Labs]:
    """The same for labs that several tests of one module share."""
    yield from _labs()


@dataclass(frozen=True, slots=True)
class Run:
    """One loadgen run: its result and its JSONL export, read back."""

    result: RunResult
    rows: list[dict[str, Any]]
    tx_path: str = "ip"

    def index(self, address: str) -> int:
        return next(t.index for t in self.result.plan.targets if t.address == address)

    def stats(self, address: str) -> TargetStats:
        return self.result.outcome.summary.per_target[self.index(address)]

    def counts(self, address: str) -> Counts:
        return self.stats(address).counts

    def seconds(self, address: str) -> list[dict[str, Any]]:
        """The per-second JSONL rows of one target, in order."""
        i = self.index(address)
        return [r for r in self.rows if r["type"] == "second" and r["target"] == i]

    def rx_dropped(self, address: str) -> int:
        """Replies loadgen's own socket dropped, if `address` is its worker's only target."""
        i = self.index(address)
        plans = self.result.plan.workers
        w = next(k for k, wp in enumerate(plans) if any(t.index == i for t in wp.targets))
        dropped = self.result.outcome.workers[w].rx_dropped
        if dropped and len(plans[w].targets) > 1:
            raise AssertionError(f"worker {w} dropped {dropped} replies of several targets")
        return dropped


def _writing_to_a_full_pipe(pid: int) -> list[int]:
    """Processes under `pid` asleep in a pipe write (a worker the coordinator stopped reading)."""
    stuck = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            with open(f"/proc/{proc.pid}/wchan") as f:
                if "pipe_write" in f.read():
                    stuck.append(proc.pid)
        except OSError:
            continue
    return stuck


def _execute_into(conn: Connection, profile: Profile) -> None:
    """Child process: run the profile and send the RunResult (or the error) back."""
    try:
        conn.send(execute(profile))
    except BaseException as exc:
        conn.send(exc)
    finally:
        conn.close()


def execute_bounded(profile: Profile, timeout_s: float, during: Callable[[int], None]) -> RunResult:
    """runner.execute in a forked child that is stopped if it outlives `timeout_s`, so a hung
    run fails its test instead of the whole session. `during(pid)` runs meanwhile."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_execute_into, args=(there, profile), name="loadgen-run")
    child.start()
    there.close()
    try:
        during(child.pid or 0)
        if not here.poll(timeout_s):
            stuck = _writing_to_a_full_pipe(child.pid or 0)
            raise AssertionError(
                f"loadgen did not finish within {timeout_s:.0f} s"
                + (f"; workers {stuck} wait to write to the coordinator" if stuck else "")
            )
        got = here.recv()
    finally:
        if child.is_alive():
            child.terminate()  # the coordinator's SIGTERM path stops its workers
            child.join(5)
        if child.is_alive():
            child.kill()
        child.join(5)
        here.close()
    if isinstance(got, BaseException):
        raise got
    assert isinstance(got, RunResult)
    return got


def run_loadgen(
    tmp_path: Path,
    targets: Sequence[str],
    *,
    rate_pps: float,
    count: int,
    timeout: str = "3s",
    delay: str = "3s",
    during: Callable[[int], None] = lambda pid: None,
    **keys: object,
) -> Run:
    """Probe `targets` with `count` probes each at `rate_pps` in total; linger `delay` for the
    last replies. Every lab RTT is far below the timeout, so no reply is late or missed, even
    when a busy machine keeps a user-space reflector off its CPU for a few hundred ms (a run
    ends as soon as every probe is resolved, so only lost probes wait this long)."""
    jsonl = tmp_path / f"run-{secrets.token_hex(3)}.jsonl"
    profile = parse_profile(
        {
            "targets": list(targets),
            "rate": rate_pps,
            "count": count,
            "timeout": timeout,
            "delay": delay,
            "jsonl": str(jsonl),
            **keys,
        },
        source="truth",
    )
    bound_s = 20 + 3 * count * len(targets) / rate_pps  # start-up, sending, linger, slack
    result = execute_bounded(profile, bound_s, during)
    assert not result.outcome.failures, result.outcome.failures
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return Run(result, rows, str(keys.get("tx_path", "ip")))


def measure(
    lab: Lab, hosts: Sequence[LabHost], tmp_path: Path, version: int = 4, **run_keys: Any
) -> tuple[Run, dict[str, HostTruth]]:
    """Run loadgen against `hosts`' addresses of IP `version` and return the run with each
    host's truth (for that version) for that run, keyed by those addresses.

    One host, with no source, interface or tx path asked for: loadgen's probes leave from the
    root end of that host's link, so its socket sees only that link's traffic. Its kernel drop
    counter (rx_dropped, which the truth takes as lost replies) counts every packet that reached
    the socket and was refused, the ones its filter rejects too (a full buffer; an ICMPv6
    checksum error): unbound, the replies of every other lab on a busy machine would count."""
    if len(hosts) == 1 and not {"source", "interface", "tx_path"} & run_keys.keys():
        h = hosts[0]
        run_keys["source"] = h.peer_address if version == 4 else h.peer_address6
    before = lab.truth(hosts, version)
    run = run_loadgen(tmp_path, [h.address_of(version) for h in hosts], **run_keys)
    lab.wait_idle(hosts=hosts)
    after = lab.truth(hosts, version)
    return run, {a: truth_since(after[a], before[a]) for a in after}


def pin_reflectors(
    quiet: Sequence[LabHost], timed: Sequence[LabHost], version: int = 4
) -> dict[str, int]:
    """Pin `quiet` hosts' reflectors to the first CPU, where loadgen pins its one worker, and
    the `timed` ones (delays) to the last, so a reflector's timer never waits for a worker to
    give up its CPU. Returns the profile keys that ask for that one worker."""
    cpus = sorted(os.sched_getaffinity(0))
    for hosts, cpu in ((quiet, cpus[0]), (timed, cpus[-1])):
        for h in hosts:
            pid = h.reflector_pid if version == 4 else h.reflector_pid6
            assert pid is not None, f"{h.name} has no IPv{version} reflector"
            os.sched_setaffinity(pid, {cpu})
    return {"workers": 1}


def assert_exports_add_up(run: Run) -> None:
    """Every second accounts for every probe it sent; seconds add up to the run's totals."""
    anomalies = run.result.outcome.summary.anomalies
    assert anomalies.invalid_records == anomalies.late_records == anomalies.rtt_dropped == 0
    side_in_seconds = 0
    for target in run.result.plan.targets:
        rows = run.seconds(target.address)
        for r in rows:
            assert r["sent"] == sum(r[k] for k in OUTCOMES) and r["unaccounted"] == 0, r
        total = run.counts(target.address)
        for key in (*OUTCOMES, "sent"):
            assert sum(r[key] for r in rows) == getattr(total, key), (target.name, key)
        side_in_seconds += sum(r[k] for r in rows for k in SIDE_EVENTS)
    # A side event for a second already closed (a stale reply) is in the totals only.
    all_side = sum(getattr(run.result.outcome.summary.total.counts, k) for k in SIDE_EVENTS)
    assert side_in_seconds + anomalies.side_events_after_close == all_side


def assert_counts_match(run: Run, truth: Mapping[str, HostTruth]) -> None:
    """loadgen's counts for every host equal what the host's truth says, figure by figure."""
    for address, t in truth.items():
        got = run.counts(address)
        refuses = told_of_shaper_drops(run.tx_path, t.family)
        want = expected_counts(t, rx_dropped=run.rx_dropped(address), shaper_refuses=refuses)
        assert mismatches(got, want) == {}, f"{t.name}: (loadgen, truth) {mismatches(got, want)}"
        assert got.late == 0 and got.unaccounted == 0, (t.name, got)
    assert_exports_add_up(run)
