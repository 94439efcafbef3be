"""What one `loadgen search` is asked: the `[search]` keys and flags, presets applied.

Owns SEARCH_KEYS (the key table of the `[search]` profile table, which flags of the same names
override), the presets (`rfc2544`, `quick`) and `SearchSettings`, the frozen result: explicit
keys beat the preset, the preset beats the defaults. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loadgen.errors import UsageError
from loadgen.search.goals import Goal, parse_goal, parse_ratio
from loadgen.units import NS_PER_S, bad_value, parse_duration_ns, parse_int, parse_rate, parse_size

INITIAL_TRIAL_NS = NS_PER_S  # the first phase's trials, when the final ones are longer


def _list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _goals(value: Any, key: str) -> tuple[tuple[str, float], ...]:
    goals = tuple(parse_goal(item, key) for item in _list(value))
    if not goals:
        raise UsageError(bad_value(key, value, "no goal", 'write goals = ["ndr", "pdr:0.5%"]'))
    return goals


def _sizes(value: Any, key: str) -> tuple[int, ...]:
    from loadgen.profile_keys import MAX_SIZE, MIN_SIZE  # noqa: PLC0415 (it imports this module)

    sizes = tuple(parse_size(item, key=key) for item in _list(value))
    if not sizes or not all(MIN_SIZE <= s <= MAX_SIZE for s in sizes):
        fix = f"write payload sizes from {MIN_SIZE} to {MAX_SIZE}, such as [64, 512, 1400]"
        raise UsageError(bad_value(key, value, "no size, or one out of range", fix))
    return sizes


def _percents(value: Any, key: str) -> tuple[float, ...]:
    hint = "write percentages of the result such as [10, 50, 90]"
    out = []
    for item in _list(value):
        number = parse_ratio(f"{str(item).rstrip('%')}%", key)
        if number <= 0:
            raise UsageError(bad_value(key, value, "0 % is no load", hint))
        out.append(number * 100)
    return tuple(out)


def _preset(value: Any, key: str) -> str:
    if isinstance(value, str) and value.strip().lower() in PRESETS:
        return value.strip().lower()
    raise UsageError(bad_value(key, value, "unknown preset", 'write "rfc2544" or "quick"'))


def _duration(value: Any, key: str) -> int:
    return parse_duration_ns(value, key=key)


def _duration_or_0(value: Any, key: str) -> int:
    """A duration, or none at all (0, "0s") where leaving something out is allowed."""
    zero = (0, "0", "0s", "0ms")
    if not isinstance(value, bool) and (value in zero or str(value).strip() in zero):
        return 0
    return parse_duration_ns(value, key=key)


def _rate(value: Any, key: str) -> float:
    return parse_rate(value, key=key)


def _count(maximum: int) -> Any:
    return lambda value, key: parse_int(value, key=key, minimum=1, maximum=maximum)


# name: (parser, default, help). Rates are total packets per second over all targets.
SEARCH_KEYS: dict[str, tuple[Any, Any, str]] = {
    "preset": (_preset, None, '"rfc2544" (60 s trials, strict: no loss) or "quick" (1 s trials)'),
    "goals": (
        _goals,
        "ndr, pdr:0.5%",
        '"ndr" (no loss) and/or "pdr:RATIO" (at most RATIO lost; both)',
    ),
    "max_rate": (_rate, None, "highest load tried, total pps over all targets (required)"),
    "min_rate": (_rate, None, "lowest load tried, total pps (default: max_rate / 100)"),
    "trial": (_duration, 10 * NS_PER_S, "final trial duration (10s)"),
    "sum": (_duration, 30 * NS_PER_S, "trial time at a load before it is decided (30s)"),
    "exceed": (
        parse_ratio,
        0.5,
        "share of that time allowed above the loss ratio; 0 = strict (0.5)",
    ),
    "width": (parse_ratio, 0.005, "relative precision to stop at: (upper - lower) / upper (0.5 %)"),
    "max_trials": (_count(100_000), 100, "stop after this many trials (100)"),
    "max_time": (_duration, 30 * 60 * NS_PER_S, "stop after this long (30m)"),
    "warmup": (_duration_or_0, 0, "traffic before each trial, not counted (whole seconds; 0s)"),
    "pause": (_duration_or_0, NS_PER_S, "quiet time between trials (1s)"),
    "sizes": (_sizes, None, "one search per ICMP payload size (default: the profile's size)"),
    "repeat": (_count(1000), 1, "whole searches per size; results give median and spread (1)"),
    "latency_at": (_percents, (), "latency trials at these percentages of each result (none)"),
    "output": (lambda v, k: str(v), None, "JSON file (default search-YYYYmmdd-HHMMSS.json)"),
}

PRESETS: dict[str, dict[str, Any]] = {
    "rfc2544": {
        "goals": (("ndr", 0.0),),
        "trial": 60 * NS_PER_S,
        "sum": 60 * NS_PER_S,
        "exceed": 0.0,
        "initial": 60 * NS_PER_S,
    },
    "quick": {
        "trial": NS_PER_S,
        "sum": NS_PER_S,
        "width": 0.02,
        "pause": 0,
        "max_time": 120 * NS_PER_S,
        "initial": NS_PER_S,
    },
}


def parse_search_table(value: Any, key: str) -> Mapping[str, Any]:
    """The `[search]` table (or the flags) -> {name: parsed value}, only the keys given."""
    if not isinstance(value, Mapping):
        raise UsageError(bad_value(key, value, "expected a table", "write it as a [search] table"))
    out: dict[str, Any] = {}
    for name, raw in value.items():
        if name not in SEARCH_KEYS:
            known = ", ".join(SEARCH_KEYS)
            raise UsageError(bad_value(f"{key}.{name}", raw, "unknown key", f"use one of {known}"))
        if raw is not None:
            out[name] = SEARCH_KEYS[name][0](raw, f"{key}.{name}")
    return out


@dataclass(frozen=True, slots=True)
class SearchSettings:
    goals: tuple[Goal, ...]
    min_rate_pps: float
    max_rate_pps: float
    initial_ns: int  # the first phase's trial duration
    max_trials: int
    max_time_ns: int
    warmup_ns: int  # whole seconds
    pause_ns: int
    sizes: tuple[int, ...]
    repeat: int
    latency_at: tuple[float, ...]  # percent of each result
    output: str | None
    preset: str | None


def search_settings(given: Mapping[str, Any], profile_size: int) -> SearchSettings:
    """Settings from parsed keys (profile table merged with flags): defaults, then the preset,
    then what was given. Raises UsageError for what does not fit together."""
    preset = given.get("preset")
    values = {name: spec[1] for name, spec in SEARCH_KEYS.items()}
    values["goals"] = _goals(values["goals"], "search.goals")
    values["initial"] = None
    values.update(PRESETS.get(preset or "", {}))
    values.update(given)
    if values["max_rate"] is None:
        raise UsageError("search: no max_rate; give --max-rate RATE (total pps over all targets)")
    max_rate = float(values["max_rate"])
    min_rate = float(values["min_rate"] or max_rate / 100)
    if min_rate > max_rate:
        raise UsageError(
            bad_value("search.min_rate", min_rate, "above max_rate", "lower it or raise max_rate")
        )
    trial_ns, sum_ns = int(values["trial"]), int(values["sum"])
    if trial_ns <= 0 or sum_ns < trial_ns:
        fix = "give a trial above 0 and a sum at least as long"
        raise UsageError(bad_value("search.sum", sum_ns / NS_PER_S, "shorter than trial", fix))
    if values["warmup"] % NS_PER_S:
        fix = 'write whole seconds, such as "1s": trials are counted by the second'
        raise UsageError(bad_value("search.warmup", values["warmup"], "not whole seconds", fix))
    goals = tuple(
        Goal(name, ratio, float(values["exceed"]), trial_ns, sum_ns, float(values["width"]))
        for name, ratio in values["goals"]
    )
    initial = values["initial"] or min(trial_ns, INITIAL_TRIAL_NS)
    return SearchSettings(
        goals=goals,
        min_rate_pps=min_rate,
        max_rate_pps=max_rate,
        initial_ns=min(int(initial), trial_ns),
        max_trials=int(values["max_trials"]),
        max_time_ns=int(values["max_time"]),
        warmup_ns=int(values["warmup"]),
        pause_ns=int(values["pause"]),
        sizes=values["sizes"] or (profile_size,),
        repeat=int(values["repeat"]),
        latency_at=tuple(values["latency_at"]),
        output=values["output"],
        preset=preset,
    )
