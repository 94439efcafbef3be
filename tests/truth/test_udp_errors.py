"""UDP and STAMP probes to lab hosts with nothing on the port: each host's kernel answers with
port unreachables, as many as its ICMP rate limit lets out. An nft counter in the host, behind
`probematch.udp_error` (errors quoting one of our probes to that port), is the truth: loadgen's
errored probes and icmp_errors equal it, and the rest of the probes are lost. One host has the
kernel's default limit, the other none (its namespace's sysctls lifted: never the machine's)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.lab import Lab, lab_down, lab_up, parse_lab_spec, remains
from loadgen.lab.netops import in_netns, nft, nft_counters, write_sysctl
from loadgen.lab.probematch import udp_error
from loadgen.wire.stamp_batch import stamp_spec

from .conftest import run_loadgen

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(240)]

PORT = 18790
COUNT = 600  # per host
RATE_PPS = 600
SIZE = 64  # the profile's default payload
TABLE = "lguerr"
NO_LIMITS = {
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000",
    "net.ipv4.icmp_msgs_burst": "1000000",
    "net.ipv6.icmp.ratelimit": "0",
}


def _lift_limits() -> None:
    for key, value in NO_LIMITS.items():
        write_sysctl(key, value)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "lgue" + secrets.token_hex(2)
    hosts = [{"name": "limited"}, {"name": "unlimited"}]
    spec = parse_lab_spec({"prefix": prefix, "seed": 9, "hosts": hosts}, source="udp-errors")
    try:
        with lab_up(spec) as up:
            in_netns(up.host("unlimited").netns, _lift_limits)
            yield up
    finally:
        lab_down(prefix)
    assert remains(prefix) == []


def _count_errors(netns: str, version: int, magic_at: int) -> None:
    """A fresh table in the host counting the errors about our probes that leave it."""
    family = "ip" if version == 4 else "ip6"
    nft(netns, ["-f", "-"], stdin=f"table {family} {TABLE} {{}}\ndelete table {family} {TABLE}\n")
    rules = f"""table {family} {TABLE} {{
  counter err_out {{}}
  chain output {{
    type filter hook output priority 0; policy accept;
    {udp_error(version, PORT, magic_at)} counter name "err_out"
  }}
}}
"""
    nft(netns, ["-f", "-"], stdin=rules)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("probe", ["udp", "stamp"])
def test_errored_probes_equal_the_hosts_port_unreachables(
    lab: Lab, probe: str, version: int, tmp_path: Path
) -> None:
    # STAMP with the Class of Service TLV (the default): our header inside Extra Padding.
    magic_at = stamp_spec(0, 1, SIZE, 0).payload_at if probe == "stamp" else 0
    hosts = lab.state.hosts
    for host in hosts:
        _count_errors(host.netns, version, magic_at)
    run = run_loadgen(
        tmp_path,
        [h.address_of(version) for h in hosts],
        rate_pps=RATE_PPS,
        count=COUNT,
        probe=probe,
        port=PORT,
        size=SIZE,
    )
    family = "ip" if version == 4 else "ip6"
    truth = {h.name: nft_counters(h.netns, TABLE, family)["err_out"] for h in hosts}
    for host in hosts:
        got = run.counts(host.address_of(version))
        errors = truth[host.name]
        assert (got.sent, got.received, got.late) == (COUNT, 0, 0), host.name
        assert (got.errored, got.icmp_errors, got.lost) == (errors, errors, COUNT - errors), (
            host.name,
            errors,
        )
    assert truth["unlimited"] == COUNT
    assert truth["limited"] < COUNT  # the kernel's default limit held some back
