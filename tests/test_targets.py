"""Target expansion, IPv4 and IPv6: addresses, CIDR ranges under a cap, host names through a
fake resolver and the family choice, link-local scopes, order and de-duplication, and one-line
errors. No DNS: every name goes to FakeResolver (or is localhost, from /etc/hosts)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import TargetError
from loadgen.targets import Resolved, Target, labels, resolve_targets, system_resolver


class FakeResolver:
    """Answers from a table and counts lookups; unknown names fail like getaddrinfo does."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, name: str) -> list[str]:
        self.calls.append(name)
        if name.lower() not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[name.lower()]


HOSTS = {
    "alpha.test": ["198.18.0.10"],
    "beta.test": ["2001:2::1", "198.18.0.11", "198.18.0.12"],
    "six.test": ["2001:2::2"],
    "dual.test": ["2001:2::20", "198.18.0.20", "2001:2::21", "198.18.0.21"],
    "link.test": ["fe80::5%veth0"],
    "bare-link.test": ["fe80::5"],
    "group.test": ["ff02::1"],
    "empty.test": [],
    "junk.test": ["not-an-address", "198.18.0.13"],
    "loop.test": ["127.0.0.1"],
}


BOTH = frozenset({4, 6})  # what the prober speaks (PROBED_FAMILIES)
V4_ONLY = frozenset({4})  # a prober without ICMPv6: the refusal path `probed` keeps


def resolve(*specs: str, max_targets: int = 1024, **kw: object) -> Resolved:
    """Through FakeResolver, as a prober of IPv4 only unless `probed` says otherwise."""
    resolver = FakeResolver(HOSTS)
    kw.setdefault("probed", V4_ONLY)
    return resolve_targets(specs, max_targets=max_targets, resolver=resolver, **kw)  # type: ignore[arg-type]


def addresses(resolved: Resolved) -> list[str]:
    return [t.address for t in resolved.targets]


def test_single_address() -> None:
    resolved = resolve("127.0.0.1")
    assert resolved.targets == (Target(index=0, address="127.0.0.1", family=4, name="127.0.0.1"),)
    assert resolved.unresolved == ()


def test_cidr_skips_network_and_broadcast_below_31() -> None:
    hosts = addresses(resolve("198.18.0.0/28"))
    assert hosts == [f"198.18.0.{i}" for i in range(1, 15)]
    assert addresses(resolve("198.18.0.0/30")) == ["198.18.0.1", "198.18.0.2"]


def test_cidr_31_and_32_keep_every_address() -> None:
    assert addresses(resolve("198.18.0.4/31")) == ["198.18.0.4", "198.18.0.5"]
    assert addresses(resolve("198.18.0.9/32")) == ["198.18.0.9"]


def test_cidr_with_host_bits_set_means_its_network() -> None:
    assert addresses(resolve("198.18.0.5/30")) == ["198.18.0.5", "198.18.0.6"]


def test_comma_and_whitespace_separated_items_keep_order_and_drop_repeats() -> None:
    resolved = resolve(" 127.0.0.3 ,127.0.0.1", "127.0.0.3  127.0.0.2,", "198.18.0.0/30")
    assert addresses(resolved) == [
        "127.0.0.3",
        "127.0.0.1",
        "127.0.0.2",
        "198.18.0.1",
        "198.18.0.2",
    ]
    assert [t.index for t in resolved.targets] == [0, 1, 2, 3, 4]


def test_a_lone_string_is_one_spec() -> None:
    resolved = resolve_targets("127.0.0.1,127.0.0.2", max_targets=10, resolver=FakeResolver({}))
    assert addresses(resolved) == ["127.0.0.1", "127.0.0.2"]


def test_names_resolve_once_to_their_first_ipv4_address_and_keep_the_name() -> None:
    resolver = FakeResolver(HOSTS)
    specs = ["beta.test", "alpha.test", "BETA.test", "junk.test", "beta.test."]
    resolved = resolve_targets(specs, max_targets=10, resolver=resolver, probed=V4_ONLY)
    assert [(t.address, t.name) for t in resolved.targets] == [
        ("198.18.0.11", "beta.test"),
        ("198.18.0.10", "alpha.test"),
        ("198.18.0.13", "junk.test"),
    ]
    assert sorted(resolver.calls) == ["alpha.test", "beta.test", "beta.test.", "junk.test"]


def test_first_spelling_of_an_address_wins() -> None:
    resolved = resolve("loop.test", "127.0.0.1")
    assert [(t.address, t.name) for t in resolved.targets] == [("127.0.0.1", "loop.test")]


def test_unresolvable_names_are_reported_and_the_run_goes_on() -> None:
    resolved = resolve("nowhere.test", "127.0.0.1", "six.test", "empty.test", "nowhere.test")
    assert addresses(resolved) == ["127.0.0.1"]
    assert resolved.unresolved == (
        ("nowhere.test", "Name or service not known"),
        ("six.test", "only IPv6 addresses (IPv6 probing is not implemented yet; use IPv4 targets)"),
        ("empty.test", "no address"),
    )


def test_nothing_left_is_an_error_listing_the_reasons() -> None:
    with pytest.raises(TargetError) as err:
        resolve("nowhere.test", "empty.test")
    message = str(err.value)
    assert message.startswith("no target could be resolved: nowhere.test (Name or service")
    assert "empty.test (no address)" in message
    assert message.endswith("check the names or use addresses")


def test_no_targets_at_all() -> None:
    with pytest.raises(TargetError, match="no targets given"):
        resolve(" , ")


def test_range_over_the_cap_names_spec_and_cap_without_expanding() -> None:
    with pytest.raises(TargetError) as err:
        resolve("198.18.0.0/15", max_targets=65536)
    assert str(err.value) == (
        'target "198.18.0.0/15": 131070 addresses, more than max_targets = 65536; '
        "raise max_targets or narrow the range"
    )


def test_total_over_the_cap_names_the_spec_that_crossed_it() -> None:
    assert len(resolve("198.18.0.0/29", "198.18.0.1", max_targets=6).targets) == 6
    with pytest.raises(TargetError, match=r'"198\.18\.0\.8/31": brings the total .* = 7;'):
        resolve("198.18.0.0/29", "198.18.0.8/31", max_targets=7)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("127.0.0.256", "not a valid IPv4 address"),
        ("127.000.000.001", "without leading zeros"),
        ("1.2", "not a valid IPv4 address"),
        ("0x7f000001", "not a valid IPv4 address"),
        ("198.18.0.0/33", "not a valid CIDR range"),
        ("alpha.test/24", "not a valid CIDR range"),
        ("bad_host!", "not an address, range or host name"),
        ("-dash.test", "not an address, range or host name"),
        ("a" * 64 + ".test", "not an address, range or host name"),
        ("::1", "IPv6 probing is not implemented yet; use IPv4 targets"),
        ("2001:2::/126", "IPv6 probing is not implemented yet"),
        ("[::1]", "IPv6 probing is not implemented yet"),
        ("1:2:3", "not a valid IPv6 address"),
        ("224.0.0.1", "multicast address"),  # not a target
        ("224.0.0.0/30", "multicast address"),  # not a target
        ("0.0.0.0", "unspecified address"),
        ("255.255.255.255", "broadcast address"),
    ],
)
def test_bad_specs_are_one_line_target_errors(spec: str, words: str) -> None:
    with pytest.raises(TargetError) as err:
        resolve("127.0.0.1", spec)
    message = str(err.value)
    assert words in message
    assert message.isprintable()


def test_family_is_a_parameter() -> None:
    assert addresses(resolve("beta.test", family="ipv4")) == ["198.18.0.11"]
    with pytest.raises(TargetError, match="IPv6 probing is not implemented yet"):
        resolve("127.0.0.1", family="ipv6")
    with pytest.raises(TargetError, match="unknown"):
        resolve("127.0.0.1", family="ipx")


def test_system_resolver_reads_localhost_without_dns() -> None:
    # localhost comes from /etc/hosts (nss "files"), so no query leaves the machine.
    assert "127.0.0.1" in system_resolver("localhost")
    resolved = resolve_targets(["localhost"], max_targets=4)
    assert resolved.targets[0].address.startswith("127.")
    assert resolved.targets[0].name == "localhost"


_SPEC_CHARS = "0123456789./:,[] -abcefxz_!%\t"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet=_SPEC_CHARS, max_size=20), max_size=4),
    st.sampled_from(["auto", "ipv4", "ipv6"]),
    st.sampled_from([frozenset({4}), BOTH]),
)
def test_garbage_specs_give_targets_or_a_one_line_target_error(
    specs: list[str], family: str, probed: frozenset[int]
) -> None:
    try:
        resolved = resolve_targets(
            specs, max_targets=64, family=family, resolver=FakeResolver({}), probed=probed
        )
    except TargetError as err:
        assert str(err).isprintable()
    else:
        assert 0 < len(resolved.targets) <= 64
        assert len({t.address for t in resolved.targets}) == len(resolved.targets)
        assert [t.index for t in resolved.targets] == list(range(len(resolved.targets)))
        for t in resolved.targets:
            assert t.family in probed and len(t.packed) == (4 if t.family == 4 else 16)
            assert t.ip.version == t.family and not t.ip.is_multicast


# --- IPv6 -----------------------------------------------------------------------------------


def resolve6(*specs: str, family: str = "auto", max_targets: int = 1024) -> Resolved:
    return resolve(*specs, probed=BOTH, family=family, max_targets=max_targets)


def test_ipv6_literals_are_canonical_and_deduplicated() -> None:
    resolved = resolve6("::1", "[2001:2::10]", "2001:0002:0:0::10", "0:0::1", "127.0.0.1")
    assert resolved.targets == (
        Target(index=0, address="::1", family=6, name="::1"),
        Target(index=1, address="2001:2::10", family=6, name="2001:2::10"),
        Target(index=2, address="127.0.0.1", family=4, name="127.0.0.1"),
    )
    assert resolved.targets[1].packed == bytes.fromhex("20010002" + "00" * 10 + "0010")
    assert resolved.targets[2].packed == b"\x7f\0\0\1" and resolved.targets[2].scope == ""


def test_link_local_targets_carry_their_scope() -> None:
    got = resolve6("fe80::1%veth0", "FE80::1%veth1", "fe80::1%veth0", "fe80::2%7").targets
    assert [t.address for t in got] == ["fe80::1%veth0", "fe80::1%veth1", "fe80::2%7"]
    assert [t.scope for t in got] == ["veth0", "veth1", "7"]
    assert got[0].packed == bytes.fromhex("fe80" + "00" * 13 + "01")  # no scope on the wire


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            "fe80::1",
            "a link-local address needs the interface it is on; write it like fe80::1%eth0",
        ),
        ("fe80::/126", "needs the interface it is on"),
        ("2001:2::1%veth0", "applies only to link-local fe80::/10 addresses; write 2001:2::1"),
        ("::1%lo", "applies only to link-local"),
        ("fe80::1%" + "x" * 16, "is not an interface name; write it like fe80::1%eth0"),
        ("fe80::1%..", "is not an interface name"),
        ("fe80::1%a:b", "is not an interface name"),
        ("fe80::1%", "not a valid IPv6 address"),
        ("ff02::1", "multicast address"),
        ("ff02::1%veth0", "multicast address"),
        ("ff00::/126", "multicast address"),
        ("::", "unspecified address"),
        ("::/128", "unspecified address"),
        ("::/127", "unspecified address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped address; write it as 127.0.0.1"),
        ("2001:2::/129", "not a valid CIDR range; write it like 198.18.0.0/24 or 2001:2::/120"),
        ("2001:2::/126%veth0", "not a valid CIDR range"),
        ("198.18.0.0%veth0/30", "not a valid CIDR range"),
        ("::ffff:127.0.0.0/126", "an IPv4-mapped address"),
    ],
)
def test_bad_ipv6_specs_are_one_line_target_errors(spec: str, words: str) -> None:
    with pytest.raises(TargetError) as err:
        resolve6("::1", spec)
    message = str(err.value)
    assert words in message
    assert message.isprintable() and "\n" not in message


def test_ipv6_ranges_skip_only_the_subnet_router_anycast_address() -> None:
    assert addresses(resolve6("2001:2::/126")) == ["2001:2::1", "2001:2::2", "2001:2::3"]
    assert addresses(resolve6("2001:2::4/127")) == ["2001:2::4", "2001:2::5"]  # RFC 6164
    assert addresses(resolve6("2001:2::9/128")) == ["2001:2::9"]
    assert addresses(resolve6("2001:2::5/126")) == ["2001:2::5", "2001:2::6", "2001:2::7"]
    scoped = resolve6("fe80::%veth0/126").targets
    assert [t.address for t in scoped] == ["fe80::1%veth0", "fe80::2%veth0", "fe80::3%veth0"]
    assert {t.scope for t in scoped} == {"veth0"} and {t.family for t in scoped} == {6}


def test_ipv6_range_over_the_cap_is_refused_without_expanding() -> None:
    with pytest.raises(TargetError) as err:
        resolve6("2001:2::/64", max_targets=65536)
    assert str(err.value) == (
        'target "2001:2::/64": 18446744073709551615 addresses, more than max_targets = 65536; '
        "raise max_targets or narrow the range"
    )
    assert len(resolve6("2001:2::/120", max_targets=255).targets) == 255
    with pytest.raises(TargetError, match="255 addresses, more than max_targets = 254"):
        resolve6("2001:2::/120", "::1", max_targets=254)
    with pytest.raises(TargetError, match="brings the total"):
        resolve6("2001:2::/120", "::1", max_targets=255)


def test_names_give_their_first_address_of_each_allowed_family() -> None:
    both = resolve6("dual.test").targets
    assert [(t.address, t.family, t.name) for t in both] == [
        ("2001:2::20", 6, "dual.test"),
        ("198.18.0.20", 4, "dual.test"),
    ]
    assert addresses(resolve6("dual.test", family="ipv4")) == ["198.18.0.20"]
    assert addresses(resolve6("dual.test", family="ipv6")) == ["2001:2::20"]
    assert addresses(resolve6("six.test", "link.test")) == ["2001:2::2", "fe80::5%veth0"]


def test_a_name_without_the_chosen_family_is_unresolved_with_the_fix() -> None:
    resolved = resolve6("six.test", "127.0.0.1", family="ipv4")
    assert resolved.unresolved == (
        ("six.test", 'no IPv4 address; it has IPv6 ones: family = "auto"'),
    )
    resolved = resolve6("alpha.test", "::1", family="ipv6")
    assert resolved.unresolved == (
        ("alpha.test", 'no IPv6 address; it has IPv4 ones: family = "auto"'),
    )


def test_literals_of_a_family_left_out_are_refused() -> None:
    with pytest.raises(TargetError, match=r'"::1": an IPv6 address but family = "ipv4"; remove'):
        resolve6("127.0.0.1", "::1", family="ipv4")
    with pytest.raises(TargetError, match=r'an IPv4 address but family = "ipv6"; remove it or'):
        resolve6("::1", "198.18.0.0/30", family="ipv6")


def test_names_answering_unusable_ipv6_addresses_are_errors() -> None:
    with pytest.raises(TargetError, match=r'"bare-link\.test": a link-local address needs'):
        resolve6("bare-link.test")
    with pytest.raises(TargetError, match=r'"group\.test": multicast address'):
        resolve6("group.test")


def test_the_prober_speaks_both_families_by_default() -> None:
    resolved = resolve_targets(
        ["127.0.0.1", "::1", "dual.test"], max_targets=8, resolver=FakeResolver(HOSTS)
    )
    assert [(t.address, t.family) for t in resolved.targets] == [
        ("127.0.0.1", 4),
        ("::1", 6),
        ("2001:2::20", 6),
        ("198.18.0.20", 4),
    ]


def test_a_prober_without_ipv6_refuses_it_and_names_keep_ipv4() -> None:
    """`probed` without 6: IPv6 parsed, then refused."""
    assert addresses(resolve("dual.test")) == ["198.18.0.20"]
    for spec in ("::1", "2001:2::/126", "fe80::1%veth0"):
        with pytest.raises(TargetError, match=r"IPv6 probing is not implemented yet"):
            resolve(spec)
    with pytest.raises(TargetError, match="not a valid IPv6 address"):
        resolve("1:2:3")  # a typo still says what is wrong with it


def test_family_choice_is_checked() -> None:
    with pytest.raises(TargetError, match=r'unknown; write "auto", "ipv4" or "ipv6"'):
        resolve6("::1", family="inet6")


def test_system_resolver_gives_both_families_for_localhost() -> None:
    # /etc/hosts only (nss "files"): no query leaves the machine. Whether it lists ::1 varies.
    resolved = resolve_targets(["localhost"], max_targets=4, probed=BOTH)
    assert 1 <= len(resolved.targets) <= 2
    assert all(t.ip.is_loopback and t.name == "localhost" for t in resolved.targets)
    assert len({t.family for t in resolved.targets}) == len(resolved.targets)


def test_labels_tell_the_addresses_of_one_name_apart() -> None:
    resolved = resolve_targets(
        ["dual.test", "::1", "alpha.test"], max_targets=8, resolver=FakeResolver(HOSTS)
    )
    assert labels(resolved.targets) == (
        "dual.test (2001:2::20)",
        "dual.test (198.18.0.20)",
        "::1",
        "alpha.test",
    )
