"""The table of profile keys and the small parsers behind it.

PROFILE_KEYS names every key once: its Profile field, parser, default, help and example. A parser
takes (value, key) and returns the field's value or raises a one-line UsageError that says what
to write instead. `profile` validates with this table and renders profiles/example.toml from it.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loadgen.errors import UsageError
from loadgen.metrics import parse_labels, parse_listen
from loadgen.placement import parse_placements
from loadgen.search.settings import SEARCH_KEYS, parse_search_table
from loadgen.sla import Scope, SlaSpec, Window
from loadgen.units import (
    NS_PER_S,
    bad_value,
    parse_duration_ns,
    parse_float,
    parse_int,
    parse_percent,
    parse_rate,
    parse_size,
    show_value,
)
from loadgen.wire.family import IPV4, IPV6
from loadgen.wire.icmp import MIN_PAYLOAD
from loadgen.wire.probekind import ProbeKind

# `size` is the ICMP payload: our probe header (docs/DESIGN.md) at least, and at most what one
# datagram of either family holds: IPv4's 65535 - 20 (IP header) - 8 (ICMP header) = 65507 is
# the smaller, and one size serves every target of a run.
MIN_SIZE, MAX_SIZE = MIN_PAYLOAD, min(IPV4.max_payload, IPV6.max_payload)
DEFAULT_DELAY_NS = 2 * NS_PER_S


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
    keys: tuple[ProfileKey, ...] = ()  # a table's own keys, written "<table>.<key>" in errors


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


def _numbers(value: Any, key: str, what: str, bounds: tuple[int, int], hint: str) -> list[int]:
    """Whole numbers in bounds, as a list or a comma string, "a-b" a range; each once."""
    low_bound, high_bound = bounds
    numbers: list[int] = []
    for item in _split_list(value, key, hint):
        if isinstance(item, str) and "-" in item.strip("-"):
            low, _, high = item.partition("-")
            first = parse_int(low, key=key, minimum=low_bound, maximum=high_bound)
            last = parse_int(high, key=key, minimum=first, maximum=high_bound)
            numbers.extend(range(first, last + 1))
        elif isinstance(item, bool) or not isinstance(item, int | str):
            raise UsageError(bad_value(key, value, f"{show_value(item)} is not a {what}", hint))
        else:
            numbers.append(parse_int(item, key=key, minimum=low_bound, maximum=high_bound))
    if not numbers:
        raise UsageError(bad_value(key, value, f"no {what}s", hint))
    if len(set(numbers)) != len(numbers):
        raise UsageError(bad_value(key, value, f"a {what} is listed twice", hint))
    return numbers


def _cpus(value: Any, key: str) -> tuple[int, ...] | None:
    hint = 'write a list of CPU numbers such as [0, 1] or "0-3", or "all"'
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    return tuple(_numbers(value, key, "CPU", (0, 4095), hint))


def _ports(value: Any, key: str) -> tuple[int, ...]:
    """A port, a list of them ("80,443", [80, 443]) or a range ("8000-8010"), in order."""
    hint = 'write a port such as 443, a list such as "80,443" or a range such as "8000-8010"'
    return tuple(
        _numbers(value if isinstance(value, list) else [value], key, "port", (1, 65535), hint)
    )


def _workers(value: Any, key: str) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return parse_int(value, key=key, minimum=1, maximum=1024)


def _choice(options: tuple[str, ...]) -> Parser:
    def parse(value: Any, key: str) -> str:
        hint = "write one of " + ", ".join(f'"{o}"' for o in options)
        text = value.strip().lower() if isinstance(value, str) else None
        if text in options:
            return text
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


def _source(value: Any, key: str) -> str:
    fix = 'write an address of this host, such as "127.0.0.1" or "::1" (see `ip -brief addr`)'
    try:
        address = ipaddress.ip_address(value.strip() if isinstance(value, str) else "")
    except ValueError:
        raise UsageError(bad_value(key, value, "not an IP address", fix)) from None
    if address.is_unspecified or address.is_multicast:
        raise UsageError(bad_value(key, value, "not an address a probe can come from", fix))
    if (
        isinstance(address, ipaddress.IPv6Address)
        and address.is_link_local
        and not address.scope_id
    ):
        fix = f'write it with its interface, like "{address}%eth0"'
        raise UsageError(bad_value(key, value, "a link-local address needs a scope", fix))
    return str(address)


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


def table_keys(table: ProfileKey, value: Any) -> dict[str, Any]:
    """The keys of a table value parsed by the table's own key list: {attr: value}. An unknown
    key gets a did-you-mean; errors name the key as "<table>.<key>"."""
    known = {k.name: k for k in table.keys}
    items = _table(value, table.name)
    out: dict[str, Any] = {}
    for name, item in items.items():
        sub = known.get(name)
        if sub is None:
            close = difflib.get_close_matches(str(name), list(known), n=1)
            fix = f"did you mean '{close[0]}'?" if close else "see profiles/example.toml"
            raise UsageError(bad_value(f"{table.name}.{name}", item, "unknown key", fix))
        out[sub.attr] = sub.parse(item, f"{table.name}.{name}")
    return out


def _sla(value: Any, key: str) -> SlaSpec:
    spec = SlaSpec(**table_keys(_KEY_OF[key], value))
    if not spec.limits:
        fix = 'add a clause such as max_loss = "0.1%" or max_p99 = "2ms"'
        raise UsageError(bad_value(key, value, "no clause to judge the run by", fix))
    return spec


SLA_KEYS: tuple[ProfileKey, ...] = (
    ProfileKey(
        "max_loss",
        "max_loss_ratio",
        _unit(parse_percent),
        None,
        'Most loss allowed, with its percent sign: "0.1%", "0%". Loss is lost / sent, as in '
        "the summary (late and errored probes are not lost).",
        'max_loss = "0.1%"',
    ),
    ProfileKey(
        "max_p99",
        "max_p99_ns",
        _unit(parse_duration_ns),
        None,
        "Highest 99th percentile RTT allowed. A window that sent probes and got no reply in "
        "time fails every RTT clause.",
        'max_p99 = "2ms"',
    ),
    ProfileKey(
        "max_rtt",
        "max_rtt_ns",
        _unit(parse_duration_ns),
        None,
        "Highest RTT allowed.",
        'max_rtt = "10ms"',
    ),
    ProfileKey(
        "max_jitter",
        "max_jitter_ns",
        _unit(parse_duration_ns),
        None,
        "Highest jitter allowed (mean absolute difference of consecutive RTTs of a target).",
        'max_jitter = "500us"',
    ),
    ProfileKey(
        "min_rate",
        "min_rate_pps",
        _unit(parse_rate),
        None,
        'Fewest probes per second really sent (per target with scope = "target"), judged on '
        "whole seconds of sending only; set it a little below the rate: a 1 ms tick may spill "
        "into the next second.",
        'min_rate = "1900"',
    ),
    ProfileKey(
        "window",
        "window",
        lambda value, key: Window(_choice(tuple(Window))(value, key)),
        Window.RUN,
        'Judge each clause over the whole run ("run") or in every closed second ("second"). '
        'Default "run".',
        'window = "run"',
    ),
    ProfileKey(
        "scope",
        "scope",
        lambda value, key: Scope(_choice(tuple(Scope))(value, key)),
        Scope.TOTAL,
        'Judge all targets together ("total") or every target on its own ("target"). '
        'Default "total".',
        'scope = "total"',
    ),
)

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
        "(never more than targets). A worker probes targets of one family: a run mixing IPv4 "
        "and IPv6 has at least one worker per family.",
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
        "tx_path",
        "tx_path",
        _choice(("ip", "packet")),
        "ip",
        'How probes leave: "ip" (a raw IP socket: the kernel routes every packet) or "packet" '
        "(finished IPv4 packets written to the link through an AF_PACKET socket, next hops "
        "read from the routing and neighbour tables at start: about a quarter less kernel work "
        "per probe, but the host's netfilter output rules do not see them; tc still does). "
        'Default "ip".',
        'tx_path = "ip"',
    ),
    ProfileKey(
        "icmp_socket",
        "icmp_socket",
        _choice(("auto", "raw", "datagram")),
        "auto",
        'Which socket carries ICMP: "raw" (root or CAP_NET_RAW), "datagram" (a datagram ICMP '
        "socket, open to any user whose group net.ipv4.ping_group_range admits: the kernel "
        "picks each socket's identifier and drops corrupted replies, which then count as "
        'lost) or "auto" (raw where allowed, else datagram). Default "auto".',
        'icmp_socket = "auto"',
    ),
    ProfileKey(
        "interface",
        "interface",
        _interface,
        None,
        "Send and receive only on this interface: every socket of the run is bound to it "
        '(SO_BINDTODEVICE; with tx_path = "packet" next hops are looked up through it), '
        "and a target the routing table does not reach through it is refused at start. It is "
        "also the NIC asked for hardware timestamps. Default: routing decides.",
        'interface = "lo"',
        commented=True,
    ),
    ProfileKey(
        "source",
        "source_address",
        _source,
        None,
        "Send probes from this address of this host (the sockets are bound to it, so only "
        "replies to it are counted); every target must be of its family. Default: the "
        "routing table picks it per target.",
        'source = "127.0.0.1"',
        commented=True,
    ),
    ProfileKey(
        "probe",
        "probe",
        lambda value, key: ProbeKind(_choice(tuple(ProbeKind))(value, key)),
        ProbeKind.ICMP,
        'Probe kind: "icmp" (echo request), "tcp-syn" (half-open SYN, root; a SYN-ACK or a '
        'RST is an answer, a RST also counts as refused), "tcp-connect" (a full handshake '
        'through the kernel, any user), "udp" or "stamp" (RFC 8762, port 862 unless port is '
        'given). `loadgen check` says which kinds this build sends. Default "icmp".',
        'probe = "icmp"',
    ),
    ProfileKey(
        "port",
        "ports",
        _ports,
        (),
        "Destination port of tcp-syn, tcp-connect, udp and stamp probes (not icmp): a port, a "
        'list "80,443" or a range "8000-8010"; several are dealt over the targets round-robin '
        "in target order (target i gets port i mod the number of ports). Default: none (stamp: "
        "862).",
        "port = 443",
        commented=True,
    ),
    ProfileKey(
        "suppress_rst",
        "suppress_rst",
        _bool,
        False,
        "tcp-syn only: add a temporary nftables table (inet loadgen_rst_<pid>) that drops this "
        "host's RSTs from the workers' source ports, so targets keep their half-open state "
        "(and retransmit SYN-ACKs, seen as duplicates) instead of being reset. Removed when "
        "the run ends; a killed run's table is reaped by the next one or `loadgen lab down`. "
        "Root. Default false.",
        "suppress_rst = false",
        commented=True,
    ),
    ProfileKey(
        "stamp_cos",
        "stamp_cos",
        _bool,
        True,
        "stamp only: every test packet carries RFC 8972's Class of Service TLV asking the "
        "reply to carry the DSCP of tos, and loadgen reports the DSCP/ECN as sent, as the "
        'reflector received it and as the reply came back ("remarked" where they differ). '
        "false sends bare RFC 8762 packets (for a reflector that mishandles TLVs). Default "
        "true.",
        "stamp_cos = true",
        commented=True,
    ),
    ProfileKey(
        "family",
        "family",
        _choice(("auto", "ipv4", "ipv6")),
        "auto",
        'Address family: "auto" (a host name gives its first A and its first AAAA '
        'address; IPv4 and IPv6 targets mix in one run), "ipv4" or "ipv6" (names give that '
        'family only, and literals of the other are refused). Default "auto".',
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
        "report",
        "report",
        _path,
        None,
        "At the end of the run write an HTML report with plots (see `loadgen report`) to this "
        "file; needs loadgen[report]. Default: no report.",
        'report = "run.html"',
        commented=True,
    ),
    ProfileKey(
        "csv",
        "csv",
        _path,
        None,
        "Write the per-second rows of the JSONL export as CSV, with a header row, to this file. "
        "Default: no CSV.",
        'csv = "run.csv"',
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
        "clock_limit",
        "clock_limit_ns",
        _unit(parse_duration_ns),
        NS_PER_S // 1000,
        "Workers on a TCP stream (other hosts: --cluster): each one's clock offset to the "
        "coordinator is measured over its stream and applied to its send seconds; one whose "
        "offset is known only to worse than ± this is flagged in the table and the JSONL. "
        "Default 1ms.",
        'clock_limit = "1ms"',
        commented=True,
    ),
    ProfileKey(
        "placement",
        "placements",
        parse_placements,
        (),
        "[[placement]] tables (after every other key), for --cluster: node (a Ray node's "
        "address), targets (some of the profile's; each target in one placement), rate (their "
        "total; default their share of rate) and workers (default 1) on that node.",
        '[[placement]]\n# node = "198.18.7.2"\n# targets = ["198.18.9.2"]\n# rate = "2k"',
        commented=True,
    ),
    ProfileKey(
        "host_lost",
        "host_lost",
        _choice(("stop", "continue")),
        "stop",
        "When a worker on a TCP stream is lost (its host died or was cut off: named, its "
        'probes unresolved): "stop" the run, or "continue" with the others. Default "stop".',
        'host_lost = "stop"',
        commented=True,
    ),
    # Outages and live metrics (the `outages` and `metrics` modules).
    ProfileKey(
        "outage_min",
        "outage_min",
        _int_in(1, 1_000_000),
        3,
        "An outage is a run of at least this many consecutive lost probes of one target "
        "(shorter runs count only as loss bursts). Default 3.",
        "outage_min = 3",
    ),
    ProfileKey(
        "metrics",
        "metrics",
        parse_listen,
        None,
        'Serve Prometheus metrics at http://ADDR/metrics during the run: ":9464" listens on '
        '127.0.0.1 only; any other address (such as "0.0.0.0:9464") must be written out. '
        "Needs prometheus-client (pip install 'loadgen[metrics]'). Default: no endpoint.",
        'metrics = ":9464"',
        commented=True,
    ),
    ProfileKey(
        "metrics_textfile",
        "metrics_textfile",
        _path,
        None,
        "Write the same metrics to this file every closed second, atomically (write, then "
        "rename), for node_exporter's textfile collector. Default: no file.",
        'metrics_textfile = "/var/lib/node_exporter/loadgen.prom"',
        commented=True,
    ),
    ProfileKey(
        "metrics_labels",
        "metrics_labels",
        parse_labels,
        "auto",
        'Which targets get series of their own: "target" (every one), "total" (none), "top:N" '
        '(the N worst by loss, then p99), "auto" (every one up to 1000 targets, else top:100). '
        'The all-targets series, target="total", is always there.',
        'metrics_labels = "auto"',
    ),
    ProfileKey(
        "sla",
        "sla",
        _sla,
        None,
        "An [sla] table (after every other key): clauses the run must meet, or it exits 3 (see "
        "README, SLA verdicts); flags --sla-max-loss, --sla-max-p99, ... add to it. Default: "
        "no SLA.",
        "[sla]",
        commented=True,
        keys=SLA_KEYS,
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
    ProfileKey(
        "search",
        "search",
        parse_search_table,
        None,
        "A [search] table (after every other key) sets `loadgen search`: the highest load "
        "the targets carry within each goal's loss (RFC 9971); flags of the same names "
        "override it. Its keys: "
        + "; ".join(f"{name}: {spec[2]}" for name, spec in SEARCH_KEYS.items())
        + ".",
        '[search]\n# max_rate = "40k"\n# goals = ["ndr", "pdr:0.5%"]\n# trial = "10s"',
        commented=True,
    ),
)

_KEY_OF = {key.name: key for key in PROFILE_KEYS}
