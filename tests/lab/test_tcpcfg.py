"""The lab's TCP configuration text and truth arithmetic: pure, no root needed."""

from __future__ import annotations

import pytest

from loadgen.lab.compare import AmbiguousTruth
from loadgen.lab.spec import Impairments
from loadgen.lab.tcpcfg import host_tcp_ruleset, root_tcp_ruleset, tcp_sysctls
from loadgen.lab.tcptruth import TcpExpected, TcpTruth, tcp_expected


def test_host_ruleset_counts_and_drops_only_served_ports_from_the_lab_range() -> None:
    imp = Impairments(
        tcp_open=(80,), tcp_closed=(81,), tcp_filtered=(82,), tcp_unreachable=(83,), tcp_drop=0.25
    )
    v4 = host_tcp_ruleset("lgx_tcp", imp, 4)
    assert v4.startswith("table ip lgx_tcp")
    syn = "ip saddr 198.18.0.0/15 tcp dport { 80, 81, 82, 83 } "
    syn += "tcp flags & (fin | syn | rst | ack) == syn"
    assert f'{syn} counter name "syn_in"' in v4
    flags = "tcp flags & (fin | syn | rst | ack)"
    assert f'tcp dport {{ 82 }} {flags} == syn counter name "syn_filtered" drop' in v4
    assert "numgen random mod 1000000 < 250000" in v4
    assert (
        "tcp dport { 83 }" in v4 and '"syn_rejected" reject with icmp type host-unreachable' in v4
    )
    assert f'tcp sport {{ 80 }} {flags} == syn | ack counter name "synack_out"' in v4
    assert 'tcp sport { 81 } tcp flags & rst == rst counter name "rst_out"' in v4
    v6 = host_tcp_ruleset("lgx_tcp", imp, 6)
    assert "table ip6 lgx_tcp" in v6 and "ip6 saddr 2001:2::/48" in v6 and "198.18" not in v6
    # the input chain counts every SYN before either drop rule sees it
    assert v4.index('"syn_in"') < v4.index('"syn_filtered"') < v4.index('"syn_dropped"')
    assert "reject with icmpv6 type addr-unreachable" in v6


def test_root_ruleset_names_its_counters_per_host_and_version() -> None:
    text = root_tcp_ruleset("lgx_imp", 3, "lgx-3", Impairments(tcp_open=(80,)))
    for name in ("syn_out_3", "syn6_out_3", "synack_back_3", "synack6_back_3"):
        assert f'counter name "{name}"' in text
    assert "rst_back_3" in text and 'name "rst_back_3"' not in text  # no closed port: no rule
    assert 'hook egress device "lgx-3"' in text


def test_sysctls_leave_syncookies_alone_unless_asked() -> None:
    assert tcp_sysctls(Impairments()) == {"net.core.somaxconn": "4096"}
    rejecting = tcp_sysctls(Impairments(tcp_unreachable=(83,)))
    assert rejecting["net.ipv4.icmp_ratemask"] == "0"  # every rejected SYN gets its error
    asked = tcp_sysctls(Impairments(tcp_backlog=8192, tcp_syncookies=2))
    assert asked == {"net.core.somaxconn": "8192", "net.ipv4.tcp_syncookies": "2"}


def truth(**kw: int) -> TcpTruth:
    base = dict(
        syn_out=10,
        syn_in=10,
        syn_filtered=0,
        syn_rejected=0,
        syn_dropped=0,
        synack_out=0,
        rst_out=0,
        synack_back=0,
        rst_back=0,
    )
    return TcpTruth(address="198.18.0.1", name="h", family=4, **{**base, **kw})


def test_expected_counts_from_the_counters() -> None:
    t = truth(syn_dropped=3, synack_out=5, rst_out=2, synack_back=5, rst_back=2)
    assert tcp_expected(t) == TcpExpected(sent=10, received=7, refused=2, lost=3)
    # an ICMP error answered a SYN to an unreachable port: errored, neither received nor lost
    t = truth(syn_rejected=4, synack_out=6, synack_back=6)
    assert tcp_expected(t) == TcpExpected(sent=10, received=6, refused=0, lost=0, errored=4)
    # SYNs lost on the link, and ones a full accept queue dropped (ListenDrops), are lost too
    t = truth(syn_in=9, synack_out=6, synack_back=6, listen_drops=3)
    assert tcp_expected(t) == TcpExpected(sent=10, received=6, refused=0, lost=4)
    assert t.since(truth(syn_out=4, syn_in=4)).syn_out == 6


@pytest.mark.parametrize(
    "kw",
    [
        {"synack_out": 12, "synack_back": 12},  # retransmitted answers
        {"synack_out": 6, "synack_back": 6},  # 4 SYNs vanished without a ListenDrop
        {"synack_out": 10, "synack_back": 9},  # an answer lost on the way back
        {"syn_in": 11, "synack_out": 11, "synack_back": 11},  # more in than out
    ],
)
def test_counters_that_do_not_add_up_are_ambiguous(kw: dict[str, int]) -> None:
    with pytest.raises(AmbiguousTruth):
        tcp_expected(truth(**kw))
