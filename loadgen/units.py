"""Parsing and formatting of the quantities a user writes: rates ("100k", "2.5M" packets per
second), durations ("30s", "500ms", "1m30s"; a bare number is seconds) and sizes ("64", "1KiB").
Every parser takes the key the value came from and raises UsageError with one line naming the key
and the value and saying what to write instead. Numbers go through Decimal, so "0.1s" is exactly
100 ms and a formatted duration parses back to the same nanosecond count.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction

from loadgen.errors import UsageError

NS_PER_S = 1_000_000_000
MAX_RATE_PPS = 1e9  # far beyond any NIC we pace; above it a value is a typo
MAX_DURATION_NS = 2**63 - 1  # records hold times as int64 nanoseconds
MAX_SIZE = 2**32

RATE_HINT = "write packets per second such as 20000, 100k or 2.5M"
DURATION_HINT = 'write a duration such as "30s", "500ms", "250us", "2m", "1m30s" or 1.5 (seconds)'
SIZE_HINT = 'write a whole number of bytes such as 64, 1500 or "1KiB"'
PERCENT_HINT = 'write a percentage such as "0.1%", "0.5%" or "0%"'

_MAX_SHOWN = 60

# A decimal number as a user writes it: digits with optional single underscores, a fraction, an
# exponent. ASCII only, so exotic Unicode digits are refused rather than guessed at.
_DIGITS = r"[0-9](?:_?[0-9])*"
_NUMBER = rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?[0-9]+)?"
_QUANTITY_RE = re.compile(rf"(?P<num>{_NUMBER})\s*(?P<unit>.*)", re.ASCII | re.DOTALL)
_DURATION_PART_RE = re.compile(rf"\s*(?P<num>{_NUMBER})\s*(?P<unit>[^\s0-9.+-]*)\s*", re.ASCII)

_RATE_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}
_RATE_SUFFIXES = ("pps", "/s")

_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small mu
    "ms": 1_000_000,
    "s": NS_PER_S,
    "sec": NS_PER_S,
    "m": 60 * NS_PER_S,
    "min": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
    "d": 86400 * NS_PER_S,
}

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "k": 10**3,
    "K": 10**3,
    "kB": 10**3,
    "KB": 10**3,
    "KiB": 2**10,
    "M": 10**6,
    "MB": 10**6,
    "MiB": 2**20,
}


def _printable(text: str) -> str:
    # Control characters and line separators would break the one-line rule.
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def show_value(value: object) -> str:
    """A value as it would appear in a profile, on one line and at most ~60 characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + _printable(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, list | tuple):
        # Only the first few items: the text is cut at _MAX_SHOWN anyway.
        text = "[" + ", ".join(show_value(v) for v in value[:10]) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{_printable(str(k))} = {show_value(v)}" for k, v in value.items())
        text += "}"
    else:
        text = _printable(repr(value))
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "\u2026"


def bad_value(key: str, value: object, problem: str, fix: str) -> str:
    """The one-line message for a bad value: what was written, what is wrong, what to do."""
    return f"key '{_printable(key)}' = {show_value(value)}: {problem}; {fix}"


def _to_decimal(value: object, *, key: str, hint: str) -> tuple[Decimal, str]:
    """Split a number or string into its numeric part and its unit text (stripped)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UsageError(bad_value(key, value, "expected a number or a string", hint))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(bad_value(key, value, "not a finite number", hint))
        return Decimal(repr(value)), ""
    if isinstance(value, int):
        return Decimal(value), ""
    match = _QUANTITY_RE.fullmatch(value.strip())
    if match is None:
        raise UsageError(bad_value(key, value, "not a number", hint))
    try:
        number = Decimal(match["num"].replace("_", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid decimals
        raise UsageError(bad_value(key, value, "not a number", hint)) from None
    return number, match["unit"].strip()


def _too_big(number: Decimal) -> bool:
    # Checked before any arithmetic so "1e999999" cannot build a huge integer.
    return not number.is_zero() and number.adjusted() > 30


def parse_rate(value: str | int | float, *, key: str) -> float:
    """Packets per second: 20000, 1e5, "100k", "2.5M", "1G", optionally followed by "pps"."""
    number, unit = _to_decimal(value, key=key, hint=RATE_HINT)
    for suffix in _RATE_SUFFIXES:
        if unit.endswith(suffix):
            unit = unit[: -len(suffix)].rstrip()
            break
    if unit not in _RATE_UNITS:
        problem = f"unknown rate unit {show_value(unit)}"
        if unit == "m":
            problem += " (M is million; there are no milli-packets)"
        raise UsageError(bad_value(key, value, problem, RATE_HINT))
    if _too_big(number):
        raise UsageError(bad_value(key, value, "far too large", RATE_HINT))
    rate = float(number * _RATE_UNITS[unit])
    if not rate > 0:
        raise UsageError(bad_value(key, value, "must be more than 0", RATE_HINT))
    if rate > MAX_RATE_PPS:
        raise UsageError(bad_value(key, value, f"more than {format_rate(MAX_RATE_PPS)}", RATE_HINT))
    return rate


def _duration_unit_ns(unit: str, *, key: str, value: object) -> int:
    scale = _DURATION_UNITS_NS.get(unit.lower())
    if scale is None:
        raise UsageError(
            bad_value(key, value, f"unknown duration unit {show_value(unit)}", DURATION_HINT)
        )
    return scale


def parse_duration_ns(value: str | int | float, *, key: str) -> int:
    """A positive duration in nanoseconds: 10 or "1.5" (seconds), "500ms", "250us", "2m",
    "1m30s". Fractions of a nanosecond are rounded to the nearest nanosecond."""
    number, unit = _to_decimal(value, key=key, hint=DURATION_HINT)
    if not unit:
        total = number * NS_PER_S
        if _too_big(number):
            raise UsageError(bad_value(key, value, "far too long", DURATION_HINT))
    else:
        assert isinstance(value, str)  # only strings carry units
        total = Decimal(0)
        pos, text = 0, value.strip()
        while pos < len(text):
            part = _DURATION_PART_RE.match(text, pos)
            if part is None or not part["unit"] or part.end() == pos:
                raise UsageError(bad_value(key, value, "not a duration", DURATION_HINT))
            part_number = Decimal(part["num"].replace("_", ""))
            if part_number < 0:
                raise UsageError(bad_value(key, value, "must be more than 0", DURATION_HINT))
            if _too_big(part_number):
                raise UsageError(bad_value(key, value, "far too long", DURATION_HINT))
            total += part_number * _duration_unit_ns(part["unit"], key=key, value=value)
            pos = part.end()
    if _too_big(total):
        raise UsageError(bad_value(key, value, "far too long", DURATION_HINT))
    ns = int(total.to_integral_value(rounding=ROUND_HALF_EVEN))
    if total <= 0:
        raise UsageError(bad_value(key, value, "must be more than 0", DURATION_HINT))
    if ns < 1:
        raise UsageError(bad_value(key, value, "shorter than 1 ns", DURATION_HINT))
    if ns > MAX_DURATION_NS:
        raise UsageError(bad_value(key, value, "longer than 292 years", DURATION_HINT))
    return ns


def parse_size(value: str | int | float, *, key: str) -> int:
    """A whole, non-negative number of bytes: 64, "1500", "1500B", "1k" (1000), "1KiB" (1024)."""
    number, unit = _to_decimal(value, key=key, hint=SIZE_HINT)
    if unit not in _SIZE_UNITS:
        raise UsageError(bad_value(key, value, f"unknown size unit {show_value(unit)}", SIZE_HINT))
    if _too_big(number):
        raise UsageError(bad_value(key, value, "far too large", SIZE_HINT))
    size = number * _SIZE_UNITS[unit]
    if size != size.to_integral_value():
        raise UsageError(bad_value(key, value, "not a whole number of bytes", SIZE_HINT))
    if size < 0:
        raise UsageError(bad_value(key, value, "must not be negative", SIZE_HINT))
    if size > MAX_SIZE:
        raise UsageError(bad_value(key, value, f"more than {MAX_SIZE} bytes", SIZE_HINT))
    return int(size)


def parse_percent(value: str | int | float, *, key: str) -> Fraction:
    """A share from 0 to 100 %, written with its percent sign ("0.1%" is 1/1000), returned as an
    exact ratio; a bare 0 is 0 too, any other bare number is refused as ambiguous (0.5 or 0.5%?)."""
    number, unit = _to_decimal(value, key=key, hint=PERCENT_HINT)
    if unit != "%" and not (unit == "" and number.is_zero()):
        problem = (
            "ambiguous without a percent sign" if unit == "" else f"unknown unit {show_value(unit)}"
        )
        raise UsageError(bad_value(key, value, problem, PERCENT_HINT))
    if not 0 <= number <= 100:
        raise UsageError(bad_value(key, value, "out of range 0%..100%", PERCENT_HINT))
    return Fraction(number) / 100


def format_percent(ratio: float) -> str:
    """A ratio as a percentage for people, four significant digits: "0.1%", "20%"."""
    return f"{ratio * 100:.4g}%"


def parse_int(value: object, *, key: str, minimum: int, maximum: int) -> int:
    """A whole number in [minimum, maximum]: 5, "5", "0x10" (for bit fields such as tos)."""
    hint = f"write a whole number from {minimum} to {maximum}"
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and len(value) <= 100:
        text = value.strip().replace("_", "")
        for base in (10, 0):  # base 0 admits 0x/0o/0b prefixes
            try:
                number = int(text, base)
                break
            except ValueError:
                continue
    if number is None:
        raise UsageError(bad_value(key, value, "not a whole number", hint))
    if not minimum <= number <= maximum:
        raise UsageError(bad_value(key, value, f"out of range {minimum}..{maximum}", hint))
    return number


def parse_float(value: object, *, key: str, minimum: float, maximum: float) -> float:
    """A plain number in [minimum, maximum]: 4, 2.5, "3"."""
    hint = f"write a number from {minimum:g} to {maximum:g}"
    number, unit = _to_decimal(value, key=key, hint=hint)
    if unit:
        raise UsageError(bad_value(key, value, "takes no unit", hint))
    if _too_big(number) or not minimum <= float(number) <= maximum:
        raise UsageError(bad_value(key, value, f"out of range {minimum:g}..{maximum:g}", hint))
    return float(number)


def format_rate(pps: float) -> str:
    """A rate for people, four significant digits: "666.7 pps", "2.5k pps", "1.2M pps".
    parse_rate reads it back to within 0.05 %."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(pps) >= scale:
            return f"{pps / scale:.4g}{prefix} pps"
    return f"{pps:.4g} pps"


_COARSE_UNITS = ((3600 * NS_PER_S, "h"), (60 * NS_PER_S, "m"), (NS_PER_S, "s"))
_FINE_UNITS = ((NS_PER_S, "s"), (1_000_000, "ms"), (1_000, "us"))


def format_duration(ns: int) -> str:
    """A duration exactly, in the largest units that keep it short: "2m", "1m30s", "1.5s",
    "500ms", "250us", "17ns". parse_duration_ns(format_duration(ns)) == ns for ns >= 1."""
    if ns < 0:
        return "-" + format_duration(-ns)
    if ns == 0:
        return "0s"
    if ns % NS_PER_S == 0 and ns >= 60 * NS_PER_S:
        parts, rest = [], ns
        for scale, unit in _COARSE_UNITS:
            whole, rest = divmod(rest, scale)
            if whole:
                parts.append(f"{whole}{unit}")
        return "".join(parts)
    for scale, unit in _FINE_UNITS:
        # At most three decimals: 1.5s and 1.25ms rather than 1500ms and 1250us.
        if ns % (scale // 1000 or 1) == 0 and ns >= scale:
            whole, frac = divmod(ns, scale)
            if frac == 0:
                return f"{whole}{unit}"
            digits = f"{frac * 1000 // scale:03d}".rstrip("0")
            return f"{whole}.{digits}{unit}"
    return f"{ns}ns"
