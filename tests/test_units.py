"""Rates, durations and sizes: accepted spellings, exact round trips, and garbage that can only
ever raise a one-line UsageError naming the key."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import UsageError
from loadgen.units import (
    MAX_RATE_PPS,
    bad_value,
    format_duration,
    format_rate,
    parse_duration_ns,
    parse_float,
    parse_int,
    parse_rate,
    parse_size,
    show_value,
)

MS = 1_000_000
S = 1_000_000_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100k", 100_000.0),
        ("2.5M", 2_500_000.0),
        ("20000", 20_000.0),
        (1e5, 100_000.0),
        (20000, 20_000.0),
        ("100_000", 100_000.0),
        ("1G", 1e9),
        ("100kpps", 100_000.0),
        (" 100 k pps ", 100_000.0),
        ("50/s", 50.0),
        ("0.5", 0.5),
        ("1e3", 1000.0),
    ],
)
def test_parse_rate_accepts(value: str | float, expected: float) -> None:
    assert parse_rate(value, key="rate") == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be more than 0"),
        (-5, "must be more than 0"),
        ("100m", "M is million"),
        ("100q", "unknown rate unit"),
        ("fast", "not a number"),
        ("2G", "more than"),
        (float("inf"), "not a finite number"),
        (True, "expected a number or a string"),
        ("", "not a number"),
    ],
)
def test_parse_rate_refuses_with_key_value_and_fix(value: object, problem: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_rate(value, key="rate")  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith(f"key 'rate' = {show_value(value)}: ")
    assert problem in message
    assert "100k" in message  # says what to write instead


@pytest.mark.parametrize(
    ("value", "expected_ns"),
    [
        ("30s", 30 * S),
        ("500ms", 500 * MS),
        ("2m", 120 * S),
        ("1.5", 1500 * MS),
        (10, 10 * S),
        (0.1, 100 * MS),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("17ns", 17),
        ("1m30s", 90 * S),
        ("1h 30m", 5400 * S),
        ("2 min", 120 * S),
        ("1d", 86400 * S),
        ("0.1s", 100 * MS),
        ("1.0000000004s", S),  # rounded to the nearest nanosecond
        ("500MS", 500 * MS),
    ],
)
def test_parse_duration_accepts(value: str | float, expected_ns: int) -> None:
    assert parse_duration_ns(value, key="timeout") == expected_ns


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0s", "must be more than 0"),
        ("-1s", "must be more than 0"),
        ("1m-30s", "must be more than 0"),
        ("0.1ns", "shorter than 1 ns"),
        ("5 fortnights", "unknown duration unit"),
        ("s", "not a number"),
        ("1s2", "not a duration"),
        ("1e99999s", "far too long"),
        ("300y", "unknown duration unit"),
        (None, "expected a number or a string"),
    ],
)
def test_parse_duration_refuses(value: object, problem: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_duration_ns(value, key="delay")  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith("key 'delay' = ")
    assert problem in message
    assert "500ms" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [(64, 64), ("1500", 1500), ("1500B", 1500), ("1k", 1000), ("1KiB", 1024), (64.0, 64)],
)
def test_parse_size_accepts(value: str | int | float, expected: int) -> None:
    assert parse_size(value, key="size") == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [("1.5", "whole number"), ("-1", "negative"), ("64 bits", "unknown size unit"), ("5G", "unit")],
)
def test_parse_size_refuses(value: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_size(value, key="size")


def test_parse_int_bases_and_range() -> None:
    assert parse_int("0x10", key="tos", minimum=0, maximum=255) == 16
    assert parse_int("64", key="ttl", minimum=1, maximum=255) == 64
    assert parse_int(3.0, key="count", minimum=1, maximum=10) == 3
    with pytest.raises(UsageError, match=r"out of range 1\.\.255"):
        parse_int(0, key="ttl", minimum=1, maximum=255)
    with pytest.raises(UsageError, match="not a whole number"):
        parse_int(True, key="ttl", minimum=1, maximum=255)
    with pytest.raises(UsageError, match="not a whole number"):
        parse_int("1.5", key="ttl", minimum=1, maximum=255)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1, "1ns"),
        (250_000, "250us"),
        (1_250_000, "1.25ms"),
        (500 * MS, "500ms"),
        (1500 * MS, "1.5s"),
        (59 * S, "59s"),
        (90 * S, "1m30s"),
        (3600 * S + 5 * S, "1h5s"),
        (1_234_567_891, "1234567.891us"),
        (0, "0s"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@pytest.mark.parametrize(
    ("pps", "text"),
    [(666.666, "666.7 pps"), (2000.0, "2k pps"), (100_000.0, "100k pps"), (2.5e6, "2.5M pps")],
)
def test_format_rate(pps: float, text: str) -> None:
    assert format_rate(pps) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_duration_round_trip_is_exact(ns: int) -> None:
    assert parse_duration_ns(format_duration(ns), key="d") == ns


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=MAX_RATE_PPS))
def test_rate_round_trip_within_display_precision(pps: float) -> None:
    back = parse_rate(format_rate(pps), key="rate")
    assert math.isclose(back, pps, rel_tol=5e-4)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_size_round_trip(size: int) -> None:
    assert parse_size(str(size), key="size") == size
    assert parse_size(f"{size}B", key="size") == size


_GARBAGE = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789.eE+-_ kKMGmsuµnhd/pB\n", max_size=20),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.binary(max_size=5),
)


@settings(max_examples=400, deadline=None)
@given(_GARBAGE)
def test_garbage_only_ever_raises_a_one_line_usage_error(value: object) -> None:
    for parse in (parse_rate, parse_duration_ns, parse_size):
        try:
            parse(value, key="k")  # type: ignore[arg-type]
        except UsageError as err:
            message = str(err)
            assert message.startswith("key 'k' = ")
            assert message.isprintable()  # one line, no control characters
            assert len(message) < 300
    for bounded in (parse_int, parse_float):
        try:
            bounded(value, key="k", minimum=0, maximum=10)
        except UsageError as err:
            assert str(err).isprintable()


def test_show_value_keeps_messages_on_one_line() -> None:
    assert show_value("a\nb") == '"a\\u000ab"'
    assert show_value([1, "x", True]) == '[1, "x", true]'
    assert len(show_value("x" * 500)) == 60
    assert bad_value("rate", "1q", "unknown unit", "write 100k") == (
        "key 'rate' = \"1q\": unknown unit; write 100k"
    )


def test_parse_float_range_and_units() -> None:
    assert parse_float("3", key="refresh_hz", minimum=2, maximum=4) == 3.0
    assert parse_float(2.5, key="refresh_hz", minimum=2, maximum=4) == 2.5
    with pytest.raises(UsageError, match=r"out of range 2\.\.4"):
        parse_float(10, key="refresh_hz", minimum=2, maximum=4)
    with pytest.raises(UsageError, match="takes no unit"):
        parse_float("3Hz", key="refresh_hz", minimum=2, maximum=4)
