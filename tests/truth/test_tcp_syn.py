"""SYN probes against the lab's TCP hosts, both IP versions: open (a listener: SYN-ACK),
closed (the host's RST: received and refused), filtered (nft drop: lost) and a random share of
SYNs dropped by nft (lost), each counted exactly against the host's nft counters for the run
(`tcp_expected`). The lab has a prefix of its own ("lgs" + 4 hex digits) and is checked gone."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.lab import Lab, lab_down, lab_up, parse_lab_spec, remains
from loadgen.lab.tcptruth import tcp_expected
from loadgen.net.families import route_sources

from .conftest import run_loadgen

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(180)]

PORT = 80
HOSTS: list[dict[str, object]] = [
    {"name": "open", "tcp_open": [PORT]},
    {"name": "closed", "tcp_closed": [PORT]},
    {"name": "filtered", "tcp_filtered": [PORT]},
    {"name": "lossy", "tcp_open": [PORT], "tcp_drop": 0.2},
]
COUNT = 2500  # per host: 10k SYNs at 10k per second
RATE_PPS = 10_000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "lgs" + secrets.token_hex(2)
    spec = parse_lab_spec({"prefix": prefix, "seed": 5, "hosts": HOSTS}, source="tcp-syn")
    try:
        with lab_up(spec) as up:
            yield up
    finally:
        lab_down(prefix)
    assert remains(prefix) == []


@pytest.mark.parametrize("version", [4, 6])
def test_syn_counts_equal_the_lab_counters(lab: Lab, version: int, tmp_path: Path) -> None:
    hosts = lab.state.hosts
    addresses = [h.address_of(version) for h in hosts]
    # Each host is behind a link of its own: the pseudo-header of its SYNs needs that link's
    # root-end address, which the routing table picks per target.
    sources = route_sources(addresses, version, source=None, interface=None)
    assert len(set(sources)) == len(hosts)
    before = lab.tcp_truth(hosts, version)
    run = run_loadgen(
        tmp_path,
        addresses,
        rate_pps=RATE_PPS,
        count=COUNT,
        probe="tcp-syn",
        port=PORT,
    )
    after = lab.tcp_truth(hosts, version)
    for host in hosts:
        address = host.address_of(version)
        truth = after[address].since(before[address])
        want = tcp_expected(truth)
        got = run.counts(address)
        assert want.sent == COUNT, (host.name, truth)
        assert (got.sent, got.received, got.refused, got.lost) == (
            want.sent,
            want.received,
            want.refused,
            want.lost,
        ), (host.name, truth)
        assert (got.late, got.errored, got.duplicates, got.stale) == (0, 0, 0, 0), host.name
    assert run.counts(lab.host("open").address_of(version)).received == COUNT
    assert run.counts(lab.host("closed").address_of(version)).refused == COUNT
    assert run.counts(lab.host("filtered").address_of(version)).lost == COUNT
    lossy = run.counts(lab.host("lossy").address_of(version))
    assert 0 < lossy.lost < COUNT
