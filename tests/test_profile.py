"""Profiles: defaults and accepted spellings come from the key table, every key is documented in
profiles/example.toml, and every mistake is one line naming the source, key and value."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import ProfileError
from loadgen.profile import (
    COMMAND_LINE,
    Profile,
    load_profile,
    parse_profile,
    render_example,
)
from loadgen.profile_keys import PROFILE_KEYS

S = 1_000_000_000
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
EXAMPLE = PROFILES / "example.toml"
# `<source>: key '<key>' = <value>: <what is wrong>; <what to do>`, on one line.
ERROR_SHAPE = re.compile(r"^(?P<source>[^:]+): key '(?P<key>[^']*)' = (?P<value>.+): .+; .+$")


def parse(**data: Any) -> Profile:
    return parse_profile({"targets": ["127.0.0.1"], **data}, source="t.toml")


def error_of(**data: Any) -> str:
    with pytest.raises(ProfileError) as err:
        parse_profile(data, source="t.toml")
    return str(err.value)


def test_example_toml_is_generated_from_the_key_table() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), (
        "profiles/example.toml is stale; regenerate it with render_example()"
    )


def test_every_key_is_documented_in_example_toml() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in PROFILE_KEYS:
        assert f"# {key.name}: " in text, key.name
        assert re.search(
            rf"^(# )?({re.escape(key.name)} = |\[{{1,2}}{key.name}\]{{1,2}})", text, re.M
        ), key.name


def test_example_toml_parses_and_uses_only_loopback() -> None:
    profile = load_profile(str(EXAMPLE))
    assert profile.source == str(EXAMPLE)
    assert profile.targets == ("127.0.0.1", "127.0.0.2", "127.0.0.8/30")
    assert profile.rate_pps == 2000.0
    assert profile.duration_ns == 10 * S


def test_default_profile_is_a_short_loopback_demo() -> None:
    profile = load_profile(str(PROFILES / "default.toml"))
    assert all(t.startswith("127.") for t in profile.targets)
    assert profile.duration_ns is not None and profile.duration_ns <= 10 * S
    assert profile.timeout_ns <= profile.delay_ns


def test_defaults_come_from_the_table() -> None:
    profile = parse()
    for key in PROFILE_KEYS:
        if key.name not in ("targets", "delay"):
            assert getattr(profile, key.attr) == key.default, key.name
    assert (profile.rate_pps, profile.size, profile.ttl, profile.tos) == (1000.0, 64, 64, 0)
    assert (profile.timeout_ns, profile.delay_ns) == (1 * S, 2 * S)
    assert (profile.count, profile.duration_ns, profile.workers, profile.cpus) == (None,) * 4
    assert (profile.timestamps, profile.probe, profile.family) == ("auto", "icmp", "auto")
    assert (profile.max_targets, profile.top, profile.refresh_hz) == (65536, 20, 4.0)
    assert profile.tx_timestamps is False


def test_table_attrs_are_exactly_the_profile_fields() -> None:
    fields = [f.name for f in dataclasses.fields(Profile)]
    assert fields == ["source"] + [key.attr for key in PROFILE_KEYS]


@pytest.mark.parametrize(
    "targets",
    [
        "127.0.0.1, 127.0.0.2,127.0.0.3",
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        ["127.0.0.1,127.0.0.2", " 127.0.0.3 "],
    ],
)
def test_targets_list_or_comma_string(targets: Any) -> None:
    assert parse(targets=targets).targets == ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def test_values_with_units_or_plain_numbers() -> None:
    profile = parse(rate="100k", rate_per_target=500, duration=30, timeout="500ms", delay=1.5)
    assert profile.rate_pps == 100_000.0
    assert profile.rate_per_target_pps == 500.0
    assert profile.duration_ns == 30 * S
    assert profile.timeout_ns == S // 2
    assert profile.delay_ns == 3 * S // 2
    other = parse(size="1KiB", tos="0x10", count="10", workers="2", cpus="0-2,5", refresh_hz="2")
    assert (other.size, other.tos, other.count, other.workers) == (1024, 16, 10, 2)
    assert other.cpus == (0, 1, 2, 5)
    assert other.refresh_hz == 2.0
    assert parse(cpus=[1, 0]).cpus == (1, 0)
    assert parse(cpus="all").cpus is None
    assert parse(workers="auto").workers is None
    assert parse(tx_timestamps="yes").tx_timestamps is True
    assert parse(timestamps="Hardware").timestamps == "hardware"
    assert parse(interface="lo").interface == "lo"
    assert parse(jsonl="out.jsonl").jsonl == "out.jsonl"
    assert parse(lab={"hosts": 2}).lab == {"hosts": 2}


def test_delay_defaults_to_at_least_the_timeout() -> None:
    assert parse(timeout="3s").delay_ns == 3 * S
    assert parse(timeout="3s", delay="5s").delay_ns == 5 * S


def test_delay_shorter_than_timeout_is_refused_saying_so() -> None:
    message = error_of(targets="127.0.0.1", timeout="2s", delay="1s")
    assert ERROR_SHAPE.match(message)
    assert "key 'delay' = \"1s\"" in message
    assert "shorter than timeout (2s)" in message
    assert "set delay >= 2s" in message


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("rate", "fast", "not a number"),
        ("rate_per_target", 0, "more than 0"),
        ("count", 0, "out of range"),
        ("count", 1.5, "whole number"),
        ("duration", "forever", "not a number"),
        ("size", 27, "out of range 28..65507"),
        ("size", 65508, "out of range 28..65507"),
        ("ttl", 0, "out of range 1..255"),
        ("tos", 256, "out of range 0..255"),
        ("timeout", "-1s", "more than 0"),
        ("workers", 0, "out of range"),
        ("cpus", [0, 0], "listed twice"),
        ("cpus", "x", "not a whole number"),
        ("timestamps", "hw", "unknown value"),
        ("tx_timestamps", "maybe", "not a boolean"),
        ("interface", "eth0/1", "not a valid interface name"),
        ("interface", "a" * 16, "not a valid interface name"),
        ("port", 0, "out of range 1..65535"),
        ("port", "80,80", "listed twice"),
        ("port", "90-80", "out of range 90..65535"),
        ("port", "http", "not a whole number"),
        ("port", 443, 'probe = "icmp" has no port'),
        ("probe", "gre", "unknown value"),
        ("family", "ipv5", "unknown value"),
        ("max_targets", 0, "out of range"),
        ("top", -1, "out of range"),
        ("jsonl", "", "not a file path"),
        ("refresh_hz", 10, "out of range 2..4"),
        ("lab", "yes", "expected a table"),
        ("targets", [], "no targets"),
        ("targets", [1], "not a string"),
    ],
)
def test_bad_values_are_one_line_naming_source_key_and_value(
    key: str, value: Any, words: str
) -> None:
    data = {"targets": "127.0.0.1", key: value}
    message = error_of(**data)
    match = ERROR_SHAPE.match(message)
    assert match, message
    assert (match["source"], match["key"]) == ("t.toml", key)
    assert words in message


def test_unknown_key_suggests_the_closest_known_key() -> None:
    message = error_of(targets="127.0.0.1", timout="1s")
    assert ERROR_SHAPE.match(message)
    assert "key 'timout' = \"1s\": unknown key; did you mean 'timeout'?" in message
    assert "did you mean 'rate'?" in error_of(targets="127.0.0.1", pps=5)
    assert "did you mean 'size'?" in error_of(targets="127.0.0.1", packet_size=5)
    assert "profiles/example.toml" in error_of(targets="127.0.0.1", zzz=1)


def test_missing_targets() -> None:
    message = error_of(rate="1k")
    assert message.startswith("t.toml: key 'targets' is missing; add targets = [")


def test_profile_is_frozen_and_hashable_even_with_a_lab_table() -> None:
    profile = parse(lab={"hosts": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.rate_pps = 5.0  # type: ignore[misc]
    assert hash(profile) == hash(parse(lab={"hosts": 3}))


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "p.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_load_profile_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'targets = ["127.0.0.1"]\nrate = "2k"\nsize = 100\n')
    profile = load_profile(path, {"rate": "5k", "count": 3, "size": None})
    assert profile.source == path
    assert (profile.rate_pps, profile.count, profile.size) == (5000.0, 3, 100)


def test_bad_override_is_blamed_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'targets = ["127.0.0.1"]\nrate = "2k"\n')
    with pytest.raises(ProfileError) as err:
        load_profile(path, {"rate": "lots"})
    assert str(err.value).startswith(f"{COMMAND_LINE}: key 'rate' = \"lots\": not a number; ")
    with pytest.raises(ProfileError, match=f"^{COMMAND_LINE}: key 'rates' .*'rate'"):
        load_profile(path, {"rates": "1k"})
    # A value that came from the file is still blamed on the file.
    with pytest.raises(ProfileError, match=f"^{re.escape(path)}: key 'ttl'"):
        load_profile(write(tmp_path, 'targets = "127.0.0.1"\nttl = 0\n'), {"rate": "1k"})


def test_load_profile_file_problems_are_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ProfileError, match=r"nope\.toml: no such file; check the path"):
        load_profile(missing)
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(str(tmp_path))
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(write(tmp_path, b'targets = "\xff"\n'))
    with pytest.raises(ProfileError) as err:
        load_profile(write(tmp_path, 'targets = ["127.0.0.1"]\nrate = 100k\n'))
    message = str(err.value)
    assert "not valid TOML" in message
    assert "line 2, column" in message
    assert "\n" not in message


_KNOWN = [key.name for key in PROFILE_KEYS]
_ANY_VALUE = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*_KNOWN, "bogus"]), _ANY_VALUE, max_size=4))
def test_any_mapping_gives_a_profile_or_one_line_profile_error(data: dict[str, Any]) -> None:
    try:
        profile = parse_profile(data, source="fuzz.toml")
    except ProfileError as err:
        message = str(err)
        assert message.startswith("fuzz.toml: key '")
        assert message.isprintable()
    else:
        assert profile.targets or profile.lab is not None
        assert profile.delay_ns >= profile.timeout_ns


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="[]{}=\"'.,=\n #abc0123456789-_kms", max_size=60),
        st.binary(max_size=40),
    )
)
def test_any_file_content_gives_a_profile_or_one_line_profile_error(
    tmp_path_factory: pytest.TempPathFactory, text: str | bytes
) -> None:
    path = write(tmp_path_factory.mktemp("fuzz"), text)
    try:
        load_profile(path)
    except ProfileError as err:
        assert str(err).startswith(path + ": ") or str(err).startswith(COMMAND_LINE)
        assert str(err).isprintable()


def test_deeply_nested_toml_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="nested too deeply"):
        load_profile(write(tmp_path, "targets = " + "[" * 5000 + "]" * 5000 + "\n"))


def test_none_counts_as_absent() -> None:
    profile = parse_profile({"targets": "127.0.0.1", "rate": None, "count": None}, source="flags")
    assert (profile.rate_pps, profile.count) == (1000.0, None)


def test_a_lab_profile_may_leave_targets_to_the_lab() -> None:
    profile = parse_profile({"lab": {"hosts": 2}}, source="lab.toml")
    assert profile.targets == ()
    assert profile.lab == {"hosts": 2}
