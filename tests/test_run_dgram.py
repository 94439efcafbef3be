"""Whole runs over datagram ICMP sockets on loopback, each in a network namespace of its own
(ping_group_range is per namespace, so the machine's setting is never touched): as root forced
onto the datagram path, with the raw path's figures; as an ordinary user (uid 65534, no groups,
no capabilities) for real, with exact counts; as root without CAP_NET_RAW, where auto picks the
datagram path; and with a range that admits nobody, the one-line error naming both fixes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from private_netns import NOBODY, in_private_netns, nobody_loadgen

from loadgen.profile import parse_profile
from loadgen.runner import RunResult, execute
from loadgen.stats import Counts

pytestmark = pytest.mark.root

WORKTREE = Path(__file__).resolve().parents[1]
TARGETS = "127.0.0.1,::1"
COUNT = 300
SLOW_OK = ("-w", "3s", "-d", "3s", "--plain")  # a busy machine's late reply is not ours to count


def _run(icmp_socket: str) -> RunResult:
    profile = parse_profile(
        # A timeout no busy machine reaches: a late loopback reply would be its figure, not ours.
        {
            "targets": TARGETS,
            "rate": 600,
            "count": COUNT,
            "icmp_socket": icmp_socket,
            "timeout": "3s",
            "delay": "3s",
        },
        source="test",
    )
    return execute(profile)


def test_the_datagram_path_counts_what_the_raw_path_counts() -> None:
    runs = in_private_netns(lambda: (_run("raw"), _run("datagram")))
    raw, datagram = runs
    assert str(raw.plan.icmp_path) == "raw" and str(datagram.plan.icmp_path) == "datagram"
    for result in runs:
        assert not result.outcome.failures
        per_target = [ts.counts for ts in result.outcome.summary.per_target]
        assert per_target == [Counts(sent=COUNT, received=COUNT)] * 2
        assert {ts.rx_ts for ts in result.outcome.summary.per_target} == {"kernel"}
    assert [ts.counts for ts in raw.outcome.summary.per_target] == [
        ts.counts for ts in datagram.outcome.summary.per_target
    ]


REJECT_SECOND = """table inet lgdgrun {
 chain input {
  type filter hook input priority 0;
  ip daddr 127.0.0.2 icmp type echo-request reject with icmp type host-unreachable
 }
}
"""


def _with_errors(icmp_socket: str) -> list[Counts]:
    subprocess.run(["nft", "-f", "-"], input=REJECT_SECOND, text=True, check=True, timeout=10)
    profile = parse_profile(
        {"targets": "127.0.0.1,127.0.0.2", "rate": 400, "count": 100, "delay": "3s",
         "timeout": "3s", "icmp_socket": icmp_socket},
        source="test",
    )  # fmt: skip
    return [ts.counts for ts in execute(profile).outcome.summary.per_target]


def test_icmp_errors_count_the_same_on_both_paths() -> None:
    """Every request to 127.0.0.2 is answered with an unreachable: errored and an ICMP error
    each, once per probe, whether read as packets (raw) or from the error queue (datagram)."""
    raw = in_private_netns(lambda: _with_errors("raw"))
    datagram = in_private_netns(lambda: _with_errors("datagram"))
    assert (
        raw
        == datagram
        == [
            Counts(sent=100, received=100),
            Counts(sent=100, errored=100, icmp_errors=100),
        ]
    )


def _as(user: list[str], ping_range: str, *args: str) -> subprocess.CompletedProcess[str]:
    found = nobody_loadgen()
    if isinstance(found, str):
        pytest.skip(found)
    argv, env = found
    script = 'ip link set lo up && sysctl -qw net.ipv4.ping_group_range="$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script, ping_range, "setpriv", *user, *argv, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )


def _assert_exact(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stderr
    blocks = re.findall(r"(\d+) transmitted, (\d+) received, (\S+) packet loss", res.stdout)
    assert blocks == [(str(COUNT), str(COUNT), "0%")] * 2 + [(str(2 * COUNT), str(2 * COUNT), "0%")]
    assert "0 late, 0 errors" in res.stdout
    assert "probes: ICMP via datagram socket (ping_group_range)" in res.stdout


def test_an_ordinary_user_pings_with_exact_counts() -> None:
    res = _as(NOBODY, "65534 65534", "ping", TARGETS, "-c", str(COUNT), "-r", "600", *SLOW_OK)
    _assert_exact(res)
    # The worker's note says what the path changes.
    assert "the kernel picks each worker's echo identifier" in res.stderr


def test_root_without_cap_net_raw_falls_to_the_datagram_path() -> None:
    dropped = ["--bounding-set=-net_raw", "--inh-caps=-all"]
    res = _as(dropped, "0 0", "ping", TARGETS, "-c", str(COUNT), "-r", "600", *SLOW_OK)
    _assert_exact(res)


def test_a_range_that_excludes_the_user_is_one_line_with_both_fixes() -> None:
    res = _as(NOBODY, "0 65533", "ping", "127.0.0.1", "-c", "10", "--plain")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("loadgen: error: ICMP needs a raw socket")
    assert "setcap cap_net_raw+ep" in lines[0]
    assert 'sysctl -w net.ipv4.ping_group_range="0 2147483647"' in lines[0]
    assert "(0 65533)" in lines[0] and "uid 65534" in lines[0]
    assert res.stdout == ""


def test_check_says_which_path_a_run_would_use() -> None:
    res = _as(NOBODY, "0 2147483647", "check", str(WORKTREE / "profiles/default.toml"))
    assert res.returncode == 0, res.stderr
    assert "sent through: ICMP via datagram socket (ping_group_range)" in res.stdout
