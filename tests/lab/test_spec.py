"""Lab spec parsing, naming and addressing: pure, no root needed."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from loadgen.errors import LabError, ProfileError, TargetError
from loadgen.lab import parse_lab_spec
from loadgen.lab.addressing import (
    LAB_NAME_RE,
    LAB_SPACE,
    parse_subnet,
    pick_block,
    plan_hosts,
    prefix_of,
)
from loadgen.lab.hostcfg import nft_ruleset
from loadgen.lab.lab import lab_targets
from loadgen.lab.spec import IFNAMSIZ, MAX_HOSTS, DropBy, parse_rate_bps
from loadgen.lab.state import LabHost
from loadgen.profile import parse_profile

DEMO = Path(__file__).resolve().parents[2] / "profiles" / "lab-demo.toml"


def spec_of(**lab: Any) -> Any:
    lab.setdefault("hosts", [{"name": "a"}])
    return parse_lab_spec(lab, source="t.toml")


def test_groups_expand_to_named_hosts_with_p2p_addresses() -> None:
    spec = spec_of(
        prefix="lgab12", hosts=[{"name": "clean", "count": 3}, {"name": "lossy", "drop": 0.1}]
    )
    block = ipaddress.ip_network("198.18.4.0/24")
    plans = plan_hosts(spec, block)
    assert [p.name for p in plans] == ["clean-0", "clean-1", "clean-2", "lossy"]
    assert [p.address for p in plans] == ["198.18.4.1", "198.18.4.3", "198.18.4.5", "198.18.4.7"]
    assert [p.peer_address for p in plans][:2] == ["198.18.4.0", "198.18.4.2"]
    assert all(p.prefixlen == 31 for p in plans)
    assert plans[3].netns == "lgab12-lossy" and plans[3].root_ifname == "lgab12-3"
    assert not plans[0].impairments.needs_reflector
    assert plans[3].impairments.nft_drops and not plans[3].impairments.needs_reflector


@pytest.mark.parametrize(
    ("lab", "needle"),
    [
        ({"prefix": "xx12"}, "lab.prefix = 'xx12'"),
        ({"prefix": "lgabcdefg"}, "lab.prefix"),
        ({"family": 6}, "every host gets an IPv6 address too"),
        ({"colour": "red"}, "lab.colour = 'red': unknown key"),
        ({"hosts": []}, "[[lab.hosts]]"),
        ({"hosts": [{"name": "Bad Name"}]}, "lab.hosts[0].name"),
        ({"hosts": [{"name": "a", "drop": 1.5}]}, "lab.hosts[0].drop = 1.5: must be a share"),
        ({"hosts": [{"name": "a", "drop_every": 1}]}, "drop_every = 1"),
        ({"hosts": [{"name": "a", "drop_every": 4, "drop_run": 4}]}, "drop_run = 4"),
        ({"hosts": [{"name": "a", "drop_run": 2}]}, "greater than drop_run"),
        ({"hosts": [{"name": "a", "count": 0}]}, "lab.hosts[0].count = 0"),
        ({"hosts": [{"name": "a", "delay_ms": -1}]}, "lab.hosts[0].delay_ms = -1"),
        ({"hosts": [{"name": "a", "rate_limit": "fast"}]}, "rate_limit = 'fast'"),
        ({"hosts": [{"name": "a", "echo_limit_pps": -5}]}, "echo_limit_pps = -5"),
        ({"hosts": [{"name": "a", "jitter_dist": "pareto"}]}, "'uniform' or 'normal'"),
        ({"hosts": [{"name": "a", "drop_by": "tc"}]}, "'nft' or 'reflector'"),
        ({"hosts": [{"name": "a"}, {"name": "a"}]}, "used twice"),
        ({"hosts": [{"name": "a", "unreachable": 0.6, "time_exceeded": 0.6}]}, "<= 1"),
        ({"hosts": [{"name": "a", "colour": 1}]}, "lab.hosts[0].colour = 1: unknown key"),
        (
            {"hosts": [{"name": "a", "remark_dscp_fwd": 64}]},
            "remark_dscp_fwd = 64: must be 0 to 63",
        ),
        ({"hosts": [{"name": "a", "remark_dscp_rev": "gold"}]}, "remark_dscp_rev = 'gold'"),
        ({"hosts": [{"name": "a", "remark_ecn_fwd": 4}]}, "remark_ecn_fwd = 4: must be 0 to 3"),
        ({"hosts": [{"name": "a", "remark_ecn_rev": True}]}, "remark_ecn_rev = True"),
        ({"prefix": "lgabcdef", "hosts": [{"name": "a", "count": 100_000}]}, "lab.hosts[0].count"),
        ({"hosts": [{"name": "a", "delay_fwd_ms": 5}]}, "delay_fwd_ms = 5: delays STAMP"),
        ({"hosts": [{"name": "a", "stamp_port": 1, "delay_rev_ms": -2}]}, "delay_rev_ms = -2"),
        ({"hosts": [{"name": "a", "stamp_port": 70000}]}, "stamp_port = 70000"),
    ],
)
def test_bad_specs_give_one_line_errors_naming_the_key(lab: dict[str, Any], needle: str) -> None:
    lab.setdefault("hosts", [{"name": "a"}])
    with pytest.raises(ProfileError) as err:
        parse_lab_spec(lab, source="t.toml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("t.toml: ")
    assert needle in msg


def test_remarks_rewrite_one_direction_each() -> None:
    host = {"name": "a", "remark_dscp_fwd": "cs1", "remark_ecn_fwd": "ce", "remark_dscp_rev": 10}
    imp = spec_of(hosts=[host]).groups[0].impairments
    assert (imp.remark_dscp_fwd, imp.remark_ecn_fwd, imp.remark_dscp_rev) == (8, 3, 10)
    assert imp.remark_ecn_rev == -1 and not imp.needs_reflector
    for version, field in ((4, "ip"), (6, "ip6")):
        text = nft_ruleset("t_imp", imp, version)
        into, out = text.split("chain output")
        assert f"{field} dscp set 8" in into and f"{field} ecn set 3" in into
        assert f"{field} dscp set 10" in out and "ecn set" not in out
    clean = nft_ruleset("t_imp", spec_of().groups[0].impairments)
    assert "dscp set" not in clean and "ecn set" not in clean


def test_interface_names_fit_ifnamsiz_for_the_longest_prefix_and_most_hosts() -> None:
    spec = spec_of(prefix="lgabcdef", hosts=[{"name": "a", "count": MAX_HOSTS}])
    plans = plan_hosts(spec, LAB_SPACE[4])
    assert max(len(p.root_ifname) for p in plans) <= IFNAMSIZ
    assert len({p.address for p in plans}) == MAX_HOSTS


def test_defaults_and_value_forms() -> None:
    spec = spec_of(hosts=[{"name": "a", "unreachable": True, "rate_limit": "1.5mbit"}])
    assert LAB_NAME_RE.match(spec.prefix + "-0") and len(spec.prefix) == 6
    imp = spec.groups[0].impairments
    assert imp.unreachable == 1.0 and imp.rate_limit_bps == 1_500_000
    assert imp.needs_reflector and imp.drop_by is DropBy.NFT
    assert "unreachable=1.0" in imp.describe()
    assert parse_rate_bps("512kbit") == 512_000
    assert (
        spec_of(hosts=[{"name": "a", "drop": 0.2, "drop_by": "reflector"}])
        .groups[0]
        .impairments.needs_reflector
    )


def test_a_stamp_host_delays_one_direction_without_an_icmp_reflector() -> None:
    host = {"name": "a", "stamp_port": 8620, "delay_rev_ms": 2.5}
    imp = spec_of(hosts=[host]).groups[0].impairments
    assert (imp.stamp_port, imp.delay_fwd_ms, imp.delay_rev_ms) == (8620, 0.0, 2.5)
    assert not imp.needs_reflector
    assert imp.describe() == "stamp_port=8620 delay_rev_ms=2.5"


def test_subnet_must_lie_in_the_lab_range_and_fit() -> None:
    assert str(parse_subnet("198.19.1.0/24", 4, 10, source="t")) == "198.19.1.0/24"
    with pytest.raises(ProfileError, match=r"may only use 198\.18\.0\.0/15"):
        parse_subnet("10.0.0.0/24", 4, 10, source="t")  # not a target
    with pytest.raises(ProfileError, match="too small"):
        parse_subnet("198.18.0.0/30", 4, 10, source="t")
    with pytest.raises(ProfileError, match="not a network"):
        parse_subnet("198.18.0.1/24", 4, 10, source="t")


def test_pick_block_skips_taken_blocks_and_sizes_for_the_hosts() -> None:
    taken = [ipaddress.ip_network("198.18.0.0/24"), ipaddress.ip_network("198.18.1.7/32")]
    assert str(pick_block(4, 10, taken)) == "198.18.2.0/24"
    assert str(pick_block(4, 300, [])) == "198.18.0.0/22"
    everything = [LAB_SPACE[4]]
    with pytest.raises(LabError, match="lab down --all"):
        pick_block(4, 1, everything)


def test_prefix_of_recognises_only_lab_names() -> None:
    assert prefix_of("lgab12-clean-3") == "lgab12"
    assert prefix_of("lgab12-0") == "lgab12"
    assert prefix_of("lgab12_imp") == "lgab12"
    assert prefix_of("eth0") is None and prefix_of("lg-x") is None and prefix_of("lgab12") is None


def test_nft_ruleset_has_counters_always_and_drops_only_when_asked() -> None:
    clean = spec_of(hosts=[{"name": "a"}]).groups[0].impairments
    lossy = spec_of(hosts=[{"name": "a", "drop": 0.25, "drop_every": 4}]).groups[0].impairments
    plain = nft_ruleset("t_imp", clean)
    assert "numgen" not in plain and 'counter name "req_in"' in plain
    text = nft_ruleset("t_imp", lossy)
    assert "numgen inc mod 4 == 3" in text
    assert "numgen random mod 1000000 < 250000" in text
    six = nft_ruleset("t_imp", lossy, 6)
    assert six.startswith("table ip6 t_imp") and "icmp " not in six
    assert six.count("icmpv6 type echo-request @th,64,32 0x4c47454e") == 3
    runs = spec_of(hosts=[{"name": "a", "drop_every": 10, "drop_run": 4}]).groups[0].impairments
    assert "numgen inc mod 10 >= 6 counter" in nft_ruleset("t_imp", runs)
    limited = spec_of(hosts=[{"name": "a", "echo_limit_pps": 20_000}]).groups[0].impairments
    assert "limit rate" not in plain and not limited.needs_reflector
    rule = 'limit rate over 20000/second burst 200 packets counter name "drop_limit" drop'
    assert rule in nft_ruleset("t_imp", limited) and rule in nft_ruleset("t_imp", limited, 6)


def test_every_host_gets_an_ipv6_pair_in_the_benchmarking_range() -> None:
    spec = spec_of(hosts=[{"name": "a", "count": 3}])
    block6 = pick_block(6, spec.host_count, [])
    plans = plan_hosts(spec, pick_block(4, spec.host_count, []), block6)
    assert block6.version == 6 and block6.overlaps(ipaddress.IPv6Network("2001:2::/48"))
    assert [(p.peer_address6, p.address6) for p in plans] == [
        ("2001:2::", "2001:2::1"),
        ("2001:2::2", "2001:2::3"),
        ("2001:2::4", "2001:2::5"),
    ]
    assert {p.prefixlen6 for p in plans} == {127}


def _host(name: str, group: str, address: str) -> LabHost:
    spec = spec_of()
    six = "2001:2::" + address.rsplit(".", 1)[1]
    return LabHost(
        0,
        name,
        group,
        address,
        "",
        31,
        "",
        "",
        "",
        "",
        spec.groups[0].impairments,
        "kernel",
        address6=six,
    )


def test_lab_targets_expand_selectors_and_pass_other_tokens() -> None:
    hosts = [
        _host("clean-0", "clean", "198.18.0.1"),
        _host("clean-1", "clean", "198.18.0.3"),
        _host("dup", "dup", "198.18.0.5"),
    ]
    assert lab_targets(hosts, ["lab:all"]) == ["198.18.0.1", "198.18.0.3", "198.18.0.5"]
    assert lab_targets(hosts, ["lab:clean", "lab:dup"]) == [
        "198.18.0.1",
        "198.18.0.3",
        "198.18.0.5",
    ]
    assert lab_targets(hosts, ["lab:clean-1", "127.0.0.1"]) == ["198.18.0.3", "127.0.0.1"]
    # lab6: names the same hosts' IPv6 addresses; an IPv6 address passes through as it is.
    assert lab_targets(hosts, ["lab6:clean", "lab:dup", "2001:2::7", "::1"]) == [
        "2001:2::1",
        "2001:2::3",
        "198.18.0.5",
        "2001:2::7",
        "::1",
    ]
    with pytest.raises(TargetError, match=re.escape("lab:all or lab:<clean|dup>")):
        lab_targets(hosts, ["lab:nope"])


def test_the_demo_profile_lab_parses() -> None:
    data = tomllib.loads(DEMO.read_text())
    spec = parse_lab_spec(data["lab"], source=str(DEMO))
    groups = {g.name: g for g in spec.groups}
    assert groups["clean"].count == 16
    assert spec.host_count >= 16 + 12
    kinds = {k for g in spec.groups for k in g.impairments.describe().split() if g.name != "clean"}
    for key in (
        "drop",
        "drop_every",
        "delay_ms",
        "jitter_ms",
        "duplicate",
        "reorder",
        "bitflip",
        "corrupt",
        "unreachable",
        "time_exceeded",
        "icmp_ratelimit_pps",
        "rate_limit_bps",
    ):
        assert any(k.startswith(key + "=") for k in kinds), key
    assert "targets" not in data  # every lab host is a target
    profile = parse_profile(data, source=str(DEMO))
    assert profile.lab is not None and profile.targets == ()


def test_tcp_keys_parse_and_are_checked() -> None:
    spec = spec_of(hosts=[{"name": "web", "tcp_open": [80], "tcp_closed": [81], "tcp_drop": 0.5}])
    imp = spec.groups[0].impairments
    assert (imp.tcp_open, imp.tcp_closed, imp.tcp_ports, imp.tcp_drop) == (
        (80,),
        (81,),
        (80, 81),
        0.5,
    )
    assert imp.tcp_backlog == 4096 and imp.tcp_syncookies == -1
    assert "tcp_open=(80,)" in imp.describe()
    bad: list[tuple[dict[str, object], str]] = [
        ({"tcp_open": [0]}, "list of distinct ports"),
        ({"tcp_open": [80, 80]}, "list of distinct ports"),
        ({"tcp_open": 80}, "list of distinct ports"),
        ({"tcp_open": [80], "tcp_closed": [80]}, "open, closed, filtered or unreachable, once"),
        ({"tcp_drop": 0.1}, "add tcp_open"),
        ({"tcp_open": [80], "tcp_syncookies": 3}, "from -1 to 2"),
        ({"tcp_open": [80], "tcp_backlog": 0}, "from 1 to 65535"),
    ]
    for keys, fix in bad:
        with pytest.raises(ProfileError, match=fix):
            spec_of(hosts=[{"name": "web", **keys}])
