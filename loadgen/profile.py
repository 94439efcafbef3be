"""A TOML profile plus command-line overrides, validated into one frozen `Profile`.

Validation, defaults and profiles/example.toml (render_example) all come from the key table in
`profile_keys`, so a key cannot be accepted without being documented. Every error is one line:
`<source>: key '<key>' = <value>: <what is wrong>; <what to do>`.
"""

from __future__ import annotations

import difflib
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadgen.errors import ProfileError, UsageError
from loadgen.metrics import Listen
from loadgen.placement import Placement
from loadgen.profile_keys import DEFAULT_DELAY_NS, PROFILE_KEYS, table_keys
from loadgen.sla import SlaSpec
from loadgen.units import bad_value, format_duration
from loadgen.wire.probekind import DEFAULT_PORTS, PORT_KINDS, ProbeKind

COMMAND_LINE = "command line"


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
    tx_path: str  # ip | packet
    icmp_socket: str  # auto | raw | datagram
    interface: str | None  # bind every socket to it
    source_address: str | None  # key `source`: bind every socket to this address
    probe: ProbeKind
    ports: tuple[int, ...]  # key `port`: dealt over targets round-robin; () for icmp
    suppress_rst: bool  # tcp-syn: drop this host's RSTs to SYN-ACKs (net/rstguard)
    stamp_cos: bool  # stamp: Class of Service TLV, DSCP/ECN per direction (RFC 8972 4.4)
    family: str  # auto | ipv4 | ipv6
    max_targets: int  # cap on CIDR expansion
    top: int  # rows in the live table
    jsonl: str | None  # per-second export path
    report: str | None  # HTML report written at the end
    csv: str | None  # per-second CSV export path
    refresh_hz: float  # live table refreshes per second
    clock_limit_ns: int  # a worker on another host whose clock offset bound is past it is flagged
    placements: tuple[Placement, ...]  # [[placement]]: workers on Ray nodes (--cluster)
    host_lost: str  # stop | continue: what the others do when a stream worker is lost
    outage_min: int  # lost probes in a row that make an outage
    metrics: Listen | None  # serve /metrics here during the run
    metrics_textfile: str | None  # write the metrics here every closed second
    metrics_labels: str  # auto | total | target | top:N
    sla: SlaSpec | None  # the [sla] clauses the run is judged by
    lab: Mapping[str, Any] | None = field(hash=False)  # raw [lab] table, checked by lab/
    search: Mapping[str, Any] | None = field(default=None, hash=False)  # [search], parsed


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
    if values["tx_path"] == "packet" and values["tx_timestamps"]:
        name = "tx_path" if "tx_path" in origins else "tx_timestamps"
        raise fail(
            name,
            'tx_path = "packet" with tx_timestamps = true: kernel TX stamps are taken on the '
            'raw IP socket only; drop one of them (tx_path = "ip" keeps the stamps)',
        )
    _check_ports(values, data, fail)
    return Profile(source=source, **values)


def _check_ports(
    values: dict[str, Any], data: Mapping[str, Any], fail: Callable[[str, str], ProfileError]
) -> None:
    """A port goes with the kinds that have one, and those kinds need one."""
    kind: ProbeKind = values["probe"]
    if values["suppress_rst"] and kind is not ProbeKind.TCP_SYN:
        problem = f'only tcp-syn probes have RSTs to suppress, and probe = "{kind}"'
        fix = "drop suppress_rst, or probe with --tcp PORT"
        raise fail("suppress_rst", bad_value("suppress_rst", data["suppress_rst"], problem, fix))
    if kind not in PORT_KINDS and values["ports"]:
        problem = f'probe = "{kind}" has no port'
        fix = 'drop port, or set probe = "tcp-syn" (--tcp PORT) for probes to a port'
        raise fail("port", bad_value("port", data["port"], problem, fix))
    if kind in PORT_KINDS and not values["ports"]:
        if kind not in DEFAULT_PORTS:
            raise fail(
                "probe",
                f'probe = "{kind}" needs a port; add port = 443 (a list "80,443" or a range '
                '"8000-8010" works too)',
            )
        values["ports"] = DEFAULT_PORTS[kind]


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
    origins = dict.fromkeys(given, COMMAND_LINE)
    for name, value in given.items():
        key = _KEYS.get(name)
        if key is not None and key.keys and isinstance(data.get(name), Mapping):
            # Flags of a table (--sla-*) add to the file's table: each is checked alone here,
            # so a bad flag is named as such and the rest of the table stays the file's.
            try:
                table_keys(key, value)
            except UsageError as err:
                raise ProfileError(f"{COMMAND_LINE}: {err}") from None
            given[name] = {**data[name], **value}
            origins[name] = path
    return _build({**data, **given}, path, origins)


_EXAMPLE_HEADER = """\
# loadgen example profile: every key loadgen reads, with its default and what it does.
# Run it:    loadgen run profiles/example.toml     (see the plan first: loadgen check ...)
# Values with units may be strings ("100k", "30s", "500ms") or plain numbers (rates in probes
# per second, durations in seconds, sizes in bytes). Lines starting with "# key =" show an
# optional key left at its default.
#
# This file is generated from PROFILE_KEYS in loadgen/profile_keys.py; edit the table, then run
#   .venv/bin/python -c 'import loadgen.profile as p; print(p.render_example(), end="")' \\
#     > profiles/example.toml
"""


def render_example() -> str:
    """The text of profiles/example.toml: every key, its help as comments, an example value."""
    blocks = [_EXAMPLE_HEADER.rstrip("\n")]
    for key in PROFILE_KEYS:
        lines = ["# " + line for line in textwrap.wrap(f"{key.name}: {key.help}", width=98)]
        lines.append(("# " if key.commented else "") + key.example)
        for sub in key.keys:  # a table's keys, under its header
            lines += ["# " + line for line in textwrap.wrap(f"{sub.name}: {sub.help}", width=98)]
            lines.append(("# " if key.commented else "") + sub.example)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
