"""Target expansion: addresses, CIDR ranges under a cap, host names through a fake resolver,
order and de-duplication, and one-line errors. No DNS: every name goes to FakeResolver."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import TargetError
from loadgen.targets import Resolved, Target, resolve_targets, system_resolver


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
    "beta.test": ["2001:db8::1", "198.18.0.11", "198.18.0.12"],
    "six.test": ["2001:db8::2"],
    "empty.test": [],
    "junk.test": ["not-an-address", "198.18.0.13"],
    "loop.test": ["127.0.0.1"],
}


def resolve(*specs: str, max_targets: int = 1024, **kw: object) -> Resolved:
    resolver = FakeResolver(HOSTS)
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
    resolved = resolve_targets(specs, max_targets=10, resolver=resolver)
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
        ("2001:db8::/126", "IPv6 probing is not implemented yet"),
        ("[::1]", "IPv6 probing is not implemented yet"),
        ("1:2:3", "not a valid address"),
        ("224.0.0.1", "multicast address"),
        ("224.0.0.0/30", "multicast address"),
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


_SPEC_CHARS = "0123456789./:,[] -abcxz_!\t"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=_SPEC_CHARS, max_size=20), max_size=4))
def test_garbage_specs_give_targets_or_a_one_line_target_error(specs: list[str]) -> None:
    try:
        resolved = resolve_targets(specs, max_targets=64, resolver=FakeResolver({}))
    except TargetError as err:
        assert str(err).isprintable()
    else:
        assert 0 < len(resolved.targets) <= 64
        assert len({t.address for t in resolved.targets}) == len(resolved.targets)
        assert [t.index for t in resolved.targets] == list(range(len(resolved.targets)))
