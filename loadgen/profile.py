"""A TOML profile plus command-line overrides, validated into one frozen `Profile`.

PROFILE_KEYS is the single table of keys: name, parser, default, help and example. Validation,
defaults and profiles/example.toml (render_example) all come from it, so a key cannot be
accepted without being documented. Every error is one line: `<source>: key '<key>' = <value>:
<what is wrong>; <what to do>`.
"""

from __future__ import annotations

import difflib
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadgen.errors import ProfileError, UsageError
from loadgen.units import (
    NS_PER_S,
    bad_value,
    format_duration,
    parse_duration_ns,
    parse_float,
    parse_int,
    parse_rate,
    parse_size,
    show_value,
)

COMMAND_LINE = "command line"
MIN_SIZE = 28  # our probe header (docs/DESIGN.md); the fill pattern follows it
MAX_SIZE = 65507 - 8  # largest IPv4 ICMP payload, less the 8-byte ICMP header
DEFAULT_DELAY_NS = 2 * NS_PER_S


@dataclass(frozen=True, slots=True)
class Profile:
    source: str  # the profile file, or "command line"
    targets: tuple[str, ...]  # as written (resolved by `targets`); () only with a lab
    rate_pps: float  # total over all targets
    rate_per_target_pps: float | None  # cap per target; plan applies min(rate, cap * n)
    count: int | None  # probes per target
    duration_ns: int | None  # neither count nor duration: run until interrupted
    size: int  # ICMP payload bytes
    ttl: int
    tos: int
    timeout_ns: int  # a reply later than this is late
    delay_ns: int  # linger: when an unanswered probe is lost and a second may close
    workers: int | None  # None: one per CPU
    cpus: tuple[int, ...] | None  # None: every CPU this process may run on
    timestamps: str  # auto | software | hardware | user
    tx_timestamps: bool
    interface: str | None
    probe: str
    family: str  # auto | ipv4 | ipv6
    max_targets: int  # cap on CIDR expansion
    top: int  # rows in the live table
    jsonl: str | None  # per-second export path
    refresh_hz: float  # live table refreshes per second
    lab: Mapping[str, Any] | None = field(hash=False)  # raw [lab] table, checked by lab/


Parser = Callable[[Any, str], Any]


@dataclass(frozen=True, slots=True)
class ProfileKey:
    name: str  # as written in TOML and in overrides
    attr: str  # the Profile field it fills
    parse: Parser  # (value, key) -> field value; raises UsageError
    default: Any
    help: str  # documentation, rendered as comments in example.toml
    example: str  # TOML written under the help in example.toml
    commented: bool = False  # example shown commented out (an optional key)


def _split_list(value: Any, key: str, hint: str) -> list[Any]:
    """A TOML array, or a string of items separated by commas and/or whitespace."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for item in value:
            items.extend(item.replace(",", " ").split() if isinstance(item, str) else [item])
        return items
    raise UsageError(bad_value(key, value, "expected a list or a comma-separated string", hint))


def _targets(value: Any, key: str) -> tuple[str, ...]:
    hint = 'write targets = ["127.0.0.1", "127.0.0.8/30", "localhost"]'
    items = _split_list(value, key, hint)
    for item in items:
        if not isinstance(item, str):
            raise UsageError(bad_value(key, value, f"{show_value(item)} is not a string", hint))
    if not items:
        raise UsageError(bad_value(key, value, "no targets", hint))
    return tuple(items)


def _cpus(value: Any, key: str) -> tuple[int, ...] | None:
    hint = 'write a list of CPU numbers such as [0, 1] or "0-3", or "all"'
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    cpus: list[int] = []
    for item in _split_list(value, key, hint):
        if isinstance(item, str) and "-" in item.strip("-"):
            low, _, high = item.partition("-")
            first = parse_int(low, key=key, minimum=0, maximum=4095)
            last = parse_int(high, key=key, minimum=first, maximum=4095)
            cpus.extend(range(first, last + 1))
        else:
            cpus.append(parse_int(item, key=key, minimum=0, maximum=4095))
    if not cpus:
        raise UsageError(bad_value(key, value, "no CPUs", hint))
    if len(set(cpus)) != len(cpus):
        raise UsageError(bad_value(key, value, "a CPU is listed twice", hint))
    return tuple(cpus)


def _workers(value: Any, key: str) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return parse_int(value, key=key, minimum=1, maximum=1024)


def _choice(options: tuple[str, ...], not_yet: tuple[str, ...] = ()) -> Parser:
    def parse(value: Any, key: str) -> str:
        hint = "write one of " + ", ".join(f'"{o}"' for o in options)
        text = value.strip().lower() if isinstance(value, str) else None
        if text in options:
            return text
        if text in not_yet:
            raise UsageError(bad_value(key, value, "not implemented yet", hint))
        close = difflib.get_close_matches(text or "", options, n=1)
        guess = f"did you mean {show_value(close[0])}? " if close else ""
        raise UsageError(bad_value(key, value, "unknown value", guess + hint))

    return parse


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise UsageError(bad_value(key, value, "not a boolean", "write true or false"))


def _size(value: Any, key: str) -> int:
    size = parse_size(value, key=key)
    if not MIN_SIZE <= size <= MAX_SIZE:
        fix = f"write a payload size from {MIN_SIZE} (the probe header) to {MAX_SIZE} bytes"
        raise UsageError(bad_value(key, value, f"out of range {MIN_SIZE}..{MAX_SIZE}", fix))
    return size


def _interface(value: Any, key: str) -> str:
    # The kernel's own rule for device names (dev_valid_name): under 16 bytes, no '/', ':' or
    # whitespace, not "." or "..".
    ok = (
        isinstance(value, str)
        and 0 < len(value.encode()) < 16
        and value not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in value)
    )
    if not ok:
        fix = 'write an interface name such as "lo" or "eth0" (see `ip link`)'
        raise UsageError(bad_value(key, value, "not a valid interface name", fix))
    return str(value)


def _path(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        fix = 'write a file path such as "run.jsonl"'
        raise UsageError(bad_value(key, value, "not a file path", fix))
    return value


def _table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        fix = f"write it as a [{key}] table after every other key"
        raise UsageError(bad_value(key, value, "expected a table", fix))
    return dict(value)


def _int_in(minimum: int, maximum: int) -> Parser:
    return lambda value, key: parse_int(value, key=key, minimum=minimum, maximum=maximum)


def _unit(parse: Callable[..., Any]) -> Parser:
    return lambda value, key: parse(value, key=key)


PROFILE_KEYS: tuple[ProfileKey, ...] = (
    ProfileKey(
        "targets",
        "targets",
        _targets,
        None,
        "What to probe: IPv4 addresses, CIDR ranges (network and broadcast addresses are skipped "
        "below /31) and host names (resolved once, at start). A list, or one string separated "
        "by commas. Required, unless a [lab] table provides the hosts. Test ranges: 127.0.0.0/8 "
        "here; 198.18.0.0/15 only inside the lab.",
        'targets = ["127.0.0.1", "127.0.0.2", "127.0.0.8/30"]',
    ),
    ProfileKey(
        "rate",
        "rate_pps",
        _unit(parse_rate),
        1000.0,
        "Total probes per second over all targets, split evenly per target: 20000, 1e5, "
        '"100k", "2.5M". Default 1000.',
        'rate = "2k"',
    ),
    ProfileKey(
        "rate_per_target",
        "rate_per_target_pps",
        _unit(parse_rate),
        None,
        "Cap per target: the total becomes min(rate, rate_per_target * number of targets). "
        "Default: no cap.",
        "rate_per_target = 500",
        commented=True,
    ),
    ProfileKey(
        "count",
        "count",
        _int_in(1, 10**12),
        None,
        "Probes per target (like fping -c), then stop. With duration too, whichever comes "
        "first. With neither, run until interrupted (Ctrl-C).",
        "count = 2000",
        commented=True,
    ),
    ProfileKey(
        "duration",
        "duration_ns",
        _unit(parse_duration_ns),
        None,
        'How long to send: "30s", "500ms", "2m", "1m30s", or a number of seconds.',
        'duration = "10s"',
    ),
    ProfileKey(
        "size",
        "size",
        _size,
        64,
        f"ICMP payload bytes, {MIN_SIZE} (our probe header) to {MAX_SIZE}. Default 64.",
        "size = 64",
    ),
    ProfileKey(
        "ttl", "ttl", _int_in(1, 255), 64, "IP time to live, 1-255. Default 64.", "ttl = 64"
    ),
    ProfileKey(
        "tos",
        "tos",
        _int_in(0, 255),
        0,
        'IP type of service byte (DSCP << 2 | ECN), 0-255; "0x10" works. Default 0.',
        "tos = 0",
    ),
    ProfileKey(
        "timeout",
        "timeout_ns",
        _unit(parse_duration_ns),
        NS_PER_S,
        "A reply later than this counts as late rather than received. Default 1s.",
        'timeout = "1s"',
    ),
    ProfileKey(
        "delay",
        "delay_ns",
        _unit(parse_duration_ns),
        DEFAULT_DELAY_NS,
        "Linger: how long after sending an unanswered probe is given up as lost, and how far "
        "behind real time each second is closed. At least the timeout. Default 2s (or the "
        "timeout, if longer).",
        'delay = "2s"',
    ),
    ProfileKey(
        "workers",
        "workers",
        _workers,
        None,
        'Worker processes, each with its own raw socket. Default "auto": one per CPU in cpus '
        "(never more than targets).",
        'workers = "auto"',
    ),
    ProfileKey(
        "cpus",
        "cpus",
        _cpus,
        None,
        'CPUs to pin workers on, round-robin: [0, 1] or "0-3". Default "all": every CPU this '
        "process may run on.",
        'cpus = "all"',
    ),
    ProfileKey(
        "timestamps",
        "timestamps",
        _choice(("auto", "software", "hardware", "user")),
        "auto",
        'Receive timestamps: "auto" (kernel, hardware when asked and available, else user '
        'space), "software" (kernel), "hardware" (NIC), "user". Default "auto".',
        'timestamps = "auto"',
    ),
    ProfileKey(
        "tx_timestamps",
        "tx_timestamps",
        _bool,
        False,
        "Take send times from kernel TX timestamps (error queue) instead of user space just "
        "before each send batch. Default false.",
        "tx_timestamps = false",
    ),
    ProfileKey(
        "interface",
        "interface",
        _interface,
        None,
        "Send and receive only on this interface (SO_BINDTODEVICE). Default: routing decides.",
        'interface = "lo"',
        commented=True,
    ),
    ProfileKey(
        "probe",
        "probe",
        _choice(("icmp",), not_yet=("tcp-syn", "udp")),
        "icmp",
        'Probe kind: "icmp" (echo request). "tcp-syn" and "udp" are not implemented yet.',
        'probe = "icmp"',
    ),
    ProfileKey(
        "family",
        "family",
        _choice(("auto", "ipv4", "ipv6")),
        "auto",
        'Address family for host names: "auto", "ipv4", "ipv6" (IPv6 probing is not '
        'implemented yet). Default "auto".',
        'family = "auto"',
    ),
    ProfileKey(
        "max_targets",
        "max_targets",
        _int_in(1, 2**24),
        65536,
        "Refuse to expand targets to more than this many addresses (a /16 is 65534). "
        "Default 65536.",
        "max_targets = 65536",
    ),
    ProfileKey(
        "top",
        "top",
        _int_in(1, 10000),
        20,
        "Rows in the live table (the targets with most loss first). Default 20.",
        "top = 20",
    ),
    ProfileKey(
        "jsonl",
        "jsonl",
        _path,
        None,
        "Write one JSON line per target per second to this file. Default: no export.",
        'jsonl = "run.jsonl"',
        commented=True,
    ),
    ProfileKey(
        "refresh_hz",
        "refresh_hz",
        lambda value, key: parse_float(value, key=key, minimum=2, maximum=4),
        4.0,
        "Live table refreshes per second, 2-4. Default 4.",
        "refresh_hz = 4",
    ),
    ProfileKey(
        "lab",
        "lab",
        _table,
        None,
        "A [lab] table (after every other key) builds network-namespace test hosts on "
        "198.18.0.0/15 with impairments before the run; its keys are checked by the lab package. "
        "Default: no lab, probe real targets.",
        "[lab]",
        commented=True,
    ),
)

_KEYS = {key.name: key for key in PROFILE_KEYS}
# Names people bring from other tools, mapped to ours for the did-you-mean hint.
_ALIASES = {
    "hosts": "targets",
    "pps": "rate",
    "interval": "rate",
    "packet_size": "size",
    "payload": "size",
    "wait": "timeout",
    "linger": "delay",
    "processes": "workers",
    "dscp": "tos",
    "output": "jsonl",
}


def _unknown_key_fix(name: str) -> str:
    close = difflib.get_close_matches(name, list(_KEYS), n=1)
    guess = close[0] if close else _ALIASES.get(name.lower())
    if guess:
        return f"did you mean '{guess}'?"
    return "see profiles/example.toml for every key"


def _build(data: Mapping[str, Any], source: str, origins: Mapping[str, str]) -> Profile:
    def fail(name: str, message: str) -> ProfileError:
        return ProfileError(f"{origins.get(name, source)}: {message}")

    # TOML has no null, so None only comes from flags that were not given: treat it as absent.
    data = {name: value for name, value in data.items() if value is not None}

    for name, value in data.items():
        if name not in _KEYS:
            problem = bad_value(str(name), value, "unknown key", _unknown_key_fix(str(name)))
            raise fail(name, problem)
    values: dict[str, Any] = {}
    for key in PROFILE_KEYS:
        if key.name in data:
            try:
                values[key.attr] = key.parse(data[key.name], key.name)
            except UsageError as err:
                raise fail(key.name, str(err)) from None
        else:
            values[key.attr] = key.default
    if values["targets"] is None:
        if values["lab"] is None:
            raise fail("targets", "key 'targets' is missing; add targets = [\"127.0.0.1\"]")
        values["targets"] = ()  # the lab's hosts are the targets
    if "delay" not in data:
        values["delay_ns"] = max(DEFAULT_DELAY_NS, values["timeout_ns"])
    elif values["delay_ns"] < values["timeout_ns"]:
        timeout = format_duration(values["timeout_ns"])
        problem = f"shorter than timeout ({timeout}): a probe would be lost before it is late"
        raise fail("delay", bad_value("delay", data["delay"], problem, f"set delay >= {timeout}"))
    return Profile(source=source, **values)


def parse_profile(data: Mapping[str, Any], *, source: str) -> Profile:
    """Validate a mapping of profile keys (TOML names; a None value counts as absent) into a
    Profile; raise ProfileError."""
    return _build(data, source, {})


def load_profile(path: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Read a TOML profile, let `overrides` (command-line flags, TOML key names; None values
    ignored) replace its keys, and validate. Errors in an override name the command line."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ProfileError(
            f"{path}: no such file; check the path, or start from profiles/example.toml"
        ) from None
    except IsADirectoryError:
        raise ProfileError(f"{path}: is a directory; give the path of a .toml file") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ProfileError(
            f"{path}: cannot read it ({reason}); check the path and its permissions"
        ) from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: not UTF-8 text; save the profile as UTF-8") from None
    except RecursionError:
        raise ProfileError(f"{path}: arrays or tables nested too deeply; flatten them") from None
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(
            f"{path}: not valid TOML: {err}; fix the syntax there "
            '(strings need quotes: rate = "100k")'
        ) from None
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    return _build({**data, **given}, path, dict.fromkeys(given, COMMAND_LINE))


_EXAMPLE_HEADER = """\
# loadgen example profile: every key loadgen reads, with its default and what it does.
# Run it:    loadgen run profiles/example.toml     (see the plan first: loadgen check ...)
# Values with units may be strings ("100k", "30s", "500ms") or plain numbers (rates in probes
# per second, durations in seconds, sizes in bytes). Lines starting with "# key =" show an
# optional key left at its default.
#
# This file is generated from PROFILE_KEYS in loadgen/profile.py; edit the table, then run
#   .venv/bin/python -c 'import loadgen.profile as p; print(p.render_example(), end="")' \\
#     > profiles/example.toml
"""


def render_example() -> str:
    """The text of profiles/example.toml: every key, its help as comments, an example value."""
    blocks = [_EXAMPLE_HEADER.rstrip("\n")]
    for key in PROFILE_KEYS:
        lines = ["# " + line for line in textwrap.wrap(f"{key.name}: {key.help}", width=98)]
        lines.append(("# " if key.commented else "") + key.example)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
