"""The lab spec: the `[lab]` table of a profile parsed into frozen values.

Owns validation of every lab key (one-line `ProfileError`s naming key, value and fix), the
name rules that keep interface names within IFNAMSIZ, and which impairments need a reflector
process instead of the kernel's own echo responder.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from loadgen.cos import dscp_name
from loadgen.errors import ProfileError

IFNAMSIZ = 15  # usable characters of a Linux interface name (16 with the NUL)
PREFIX_RE = re.compile(r"^lg[a-z0-9]{1,6}$")
GROUP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
MAX_HOSTS = 4096
# Root-side links are named "<prefix>-<index>": 8 + 1 + 4 characters at most, within IFNAMSIZ.
assert len("lg" + "x" * 6) + 1 + len(str(MAX_HOSTS - 1)) <= IFNAMSIZ
RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$")
RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}  # as tc(8)

LAB_KEYS = ("prefix", "seed", "family", "subnet", "hosts")
SHARE_KEYS = ("drop", "duplicate", "reorder", "bitflip", "corrupt", "unreachable", "time_exceeded")
# TCP services (tcpcfg): ports with a listener, ports the kernel refuses (RST), ports nft drops,
# ports nft answers with an ICMP unreachable, a share of SYNs nft drops, the listener's backlog,
# the namespace's tcp_syncookies (-1: as is).
TCP_KEYS = (
    "tcp_open",
    "tcp_closed",
    "tcp_filtered",
    "tcp_unreachable",
    "tcp_drop",
    "tcp_backlog",
    "tcp_syncookies",
)
TCP_PORT_KEYS = TCP_KEYS[:4]
# A STAMP host: `loadgen reflect --stateful` on stamp_port, behind the lab's delay relay
# (lab/relay.py), which holds each test packet delay_fwd_ms on its way in and each reply
# delay_rev_ms on its way out.
STAMP_KEYS = ("stamp_port", "delay_fwd_ms", "delay_rev_ms")
# DSCP / ECN rewritten by nftables in the host: on every packet arriving (fwd: on the way to
# the host) or leaving (rev: on the way back); -1 = left alone.
REMARK_KEYS = ("remark_dscp_fwd", "remark_dscp_rev", "remark_ecn_fwd", "remark_ecn_rev")
ECN_NAMES = ("not-ect", "ect1", "ect0", "ce")  # RFC 3168 codepoints 0..3, as nft names them
HOST_KEYS = (
    "name",
    "count",
    "reflector",
    *SHARE_KEYS,
    "drop_every",
    "drop_run",
    "drop_by",
    "delay_ms",
    "jitter_ms",
    "jitter_dist",
    "icmp_ratelimit_pps",
    "icmp_ratelimit_burst",
    "rate_limit",
    "echo_limit_pps",
    *REMARK_KEYS,
    *TCP_KEYS,
    *STAMP_KEYS,
)


class DropBy(StrEnum):
    """Where `drop` and `drop_every` happen: nftables in the host (default) or the reflector."""

    NFT = "nft"
    REFLECTOR = "reflector"


class JitterDist(StrEnum):
    UNIFORM = "uniform"  # delay + U(-jitter, +jitter), clipped at 0
    NORMAL = "normal"  # delay + N(0, jitter), clipped at 0


@dataclass(frozen=True, slots=True)
class Impairments:
    """What one host does to the echo requests it receives. Shares are probabilities 0..1."""

    drop: float = 0.0
    drop_every: int = 0  # drop the N-th, 2N-th, ... request; 0 = off
    drop_run: int = 0  # with drop_every N: drop the last R of every N requests in a row (0: 1)
    drop_by: DropBy = DropBy.NFT
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_dist: JitterDist = JitterDist.UNIFORM
    duplicate: float = 0.0
    reorder: float = 0.0
    bitflip: float = 0.0
    corrupt: float = 0.0
    unreachable: float = 0.0
    time_exceeded: float = 0.0
    icmp_ratelimit_pps: int = 0
    icmp_ratelimit_burst: int = 0  # 0 = max(1, pps // 20), the kernel's 1000/s : 50 ratio
    rate_limit_bps: int = 0  # tbf for our probes on both ends of the host's link; 0 = off
    echo_limit_pps: int = 0  # nft `limit rate` on our echo requests: beyond it, dropped; 0 = off
    reflector: bool = False  # answer with a reflector even without reflector impairments
    remark_dscp_fwd: int = -1  # DSCP set on every packet arriving at the host; -1 = off
    remark_dscp_rev: int = -1  # ... on every packet leaving it
    remark_ecn_fwd: int = -1  # ECN codepoint (0..3) set on arriving packets; -1 = off
    remark_ecn_rev: int = -1
    tcp_open: tuple[int, ...] = ()
    tcp_closed: tuple[int, ...] = ()
    tcp_filtered: tuple[int, ...] = ()
    tcp_unreachable: tuple[int, ...] = ()
    tcp_drop: float = 0.0
    tcp_backlog: int = 4096
    tcp_syncookies: int = -1
    stamp_port: int = 0  # 0: no STAMP reflector
    delay_fwd_ms: float = 0.0
    delay_rev_ms: float = 0.0

    @property
    def tcp_ports(self) -> tuple[int, ...]:
        """Every TCP port the host serves (open, closed, filtered or unreachable): what its
        counters match."""
        return self.tcp_open + self.tcp_closed + self.tcp_filtered + self.tcp_unreachable

    @property
    def nft_drops(self) -> bool:
        return self.drop_by is DropBy.NFT and (self.drop > 0 or self.drop_every > 0)

    @property
    def needs_reflector(self) -> bool:
        """True when the kernel's echo responder cannot produce these impairments."""
        reflector_drop = self.drop_by is DropBy.REFLECTOR and (self.drop > 0 or self.drop_every > 0)
        return (
            self.reflector
            or reflector_drop
            or any(
                v > 0
                for v in (
                    self.delay_ms,
                    self.jitter_ms,
                    self.duplicate,
                    self.reorder,
                    self.bitflip,
                    self.corrupt,
                    self.unreachable,
                    self.time_exceeded,
                    self.icmp_ratelimit_pps,
                )
            )
        )

    def describe(self) -> str:
        """Short human text: only the keys that differ from a clean host."""
        clean = Impairments()
        parts = []
        for name in HOST_KEYS[2:]:
            key = "rate_limit_bps" if name == "rate_limit" else name
            value = getattr(self, key)
            if value != getattr(clean, key):
                parts.append(f"{key}={value}")
        return " ".join(parts) or "clean"


@dataclass(frozen=True, slots=True)
class HostGroup:
    """`count` identical hosts named `name` (count 1) or `name-0` .. `name-{count-1}`."""

    name: str
    count: int
    impairments: Impairments

    def host_names(self) -> tuple[str, ...]:
        if self.count == 1:
            return (self.name,)
        return tuple(f"{self.name}-{i}" for i in range(self.count))


@dataclass(frozen=True, slots=True)
class LabSpec:
    prefix: str
    seed: int
    family: int  # of `subnet`: 4; every host also gets an IPv6 address from 2001:2::/48
    subnet: str | None  # None = the lab picks a free block of 198.18.0.0/15
    groups: tuple[HostGroup, ...]

    @property
    def host_count(self) -> int:
        return sum(g.count for g in self.groups)


def random_prefix() -> str:
    return "lg" + secrets.token_hex(2)


def parse_rate_bps(text: str) -> int:
    """tc(8)-style rate ("1mbit", "512kbit") -> bits per second; ValueError if malformed."""
    m = RATE_RE.match(text.strip().lower())
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * RATE_UNITS[m.group(2)])


class _Keys:
    """Reads typed values from one TOML table, raising one-line errors that name the key."""

    def __init__(self, table: Mapping[str, Any], where: str, source: str) -> None:
        self.table, self.where, self.source = table, where, source

    def fail(self, key: str, value: object, fix: str) -> ProfileError:
        return ProfileError(f"{self.source}: {self.where}.{key} = {value!r}: {fix}")

    def check_known(self, allowed: tuple[str, ...]) -> None:
        for key, value in self.table.items():
            if key not in allowed:
                known = ", ".join(allowed)
                raise self.fail(key, value, f"unknown key; use one of {known}")

    def share(self, key: str) -> float:
        value = self.table.get(key, 0.0)
        if value is True:
            return 1.0
        if value is False:
            return 0.0
        ok = isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1
        if not ok:
            raise self.fail(key, value, f"must be a share from 0 to 1; write e.g. {key} = 0.1")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, value, f"must be true or false; write e.g. {key} = true")
        return value

    def count(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, value, f"must be a whole number from {low} to {high}")
        return value

    def ms(self, key: str) -> float:
        value = self.table.get(key, 0.0)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not 0 <= value <= 60_000:
            raise self.fail(key, value, "must be milliseconds from 0 to 60000, e.g. 20 or 0.5")
        return float(value)

    def choice(self, key: str, enum: type[StrEnum], default: StrEnum) -> Any:
        value = self.table.get(key, default.value)
        try:
            return enum(value)
        except ValueError:
            names = " or ".join(repr(e.value) for e in enum)
            raise self.fail(key, value, f"must be {names}") from None

    def ports(self, key: str) -> tuple[int, ...]:
        value = self.table.get(key, [])
        ok = isinstance(value, list) and all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
        )
        if not ok or len(set(value)) != len(value):
            raise self.fail(key, value, f"must be a list of distinct ports, e.g. {key} = [80]")
        return tuple(value)

    def codepoint(self, key: str, high: int, names: Mapping[str, int]) -> int:
        """A DSCP (high 63) or ECN (high 3) codepoint: a number or a name; -1 when unset."""
        value = self.table.get(key, -1)
        if isinstance(value, str) and value.lower() in names:
            return names[value.lower()]
        if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= high:
            some = ", ".join(list(names)[:4])
            raise self.fail(key, value, f"must be 0 to {high} or a name ({some}, ...)")
        return value

    def rate_bps(self, key: str) -> int:
        value = self.table.get(key, 0)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            bps = value
        elif isinstance(value, str):
            try:
                bps = parse_rate_bps(value)
            except ValueError:
                bps = -1
        else:
            bps = -1
        if bps != 0 and not 8_000 <= bps <= 100_000_000_000:
            raise self.fail(key, value, 'must be a tc rate from 8kbit to 100gbit, e.g. "1mbit"')
        return bps


def _tcp_keys(keys: _Keys) -> dict[str, Any]:
    """The TCP service keys of one host group, checked against each other."""
    tcp: dict[str, Any] = {k: keys.ports(k) for k in TCP_PORT_KEYS}
    tcp["tcp_drop"] = keys.share("tcp_drop")
    tcp["tcp_backlog"] = keys.count("tcp_backlog", 4096, 1, 65535)
    tcp["tcp_syncookies"] = keys.count("tcp_syncookies", -1, -1, 2)
    served = [p for k in TCP_PORT_KEYS for p in tcp[k]]
    if len(set(served)) != len(served):
        raise keys.fail(
            "tcp_open", tcp["tcp_open"], "a port may be open, closed, filtered or unreachable, once"
        )
    if tcp["tcp_drop"] and not served:
        raise keys.fail("tcp_drop", tcp["tcp_drop"], "drops SYNs to served ports; add tcp_open")
    return tcp


def _stamp_keys(keys: _Keys) -> dict[str, Any]:
    """The STAMP reflector keys of one host group: delays need the reflector they stand before."""
    stamp: dict[str, Any] = {k: keys.ms(k) for k in STAMP_KEYS[1:]}
    stamp["stamp_port"] = keys.count("stamp_port", 0, 0, 65535)
    for key in STAMP_KEYS[1:]:
        if stamp[key] and not stamp["stamp_port"]:
            raise keys.fail(
                key, keys.table[key], "delays STAMP packets: set stamp_port too, e.g. 8620"
            )
    return stamp


def _remark_keys(keys: _Keys) -> dict[str, Any]:
    dscp = {
        name: dscp for dscp, name in ((d, dscp_name(d)) for d in range(64)) if name != str(dscp)
    }
    ecn = {name: i for i, name in enumerate(ECN_NAMES)}
    out: dict[str, Any] = {k: keys.codepoint(k, 63, dscp) for k in REMARK_KEYS[:2]}
    out.update((k, keys.codepoint(k, 3, ecn)) for k in REMARK_KEYS[2:])
    return out


def _parse_group(table: Mapping[str, Any], where: str, source: str) -> HostGroup:
    keys = _Keys(table, where, source)
    keys.check_known(HOST_KEYS)
    name = table.get("name")
    if not isinstance(name, str) or not GROUP_NAME_RE.match(name):
        raise keys.fail("name", name, 'needs a lowercase name like "lossy" (a-z, 0-9, _)')
    shares: dict[str, Any] = {k: keys.share(k) for k in SHARE_KEYS}
    imp = Impairments(
        drop_every=keys.count("drop_every", 0, 0, 1_000_000),
        drop_run=keys.count("drop_run", 0, 0, 1_000_000),
        drop_by=keys.choice("drop_by", DropBy, DropBy.NFT),
        delay_ms=keys.ms("delay_ms"),
        jitter_ms=keys.ms("jitter_ms"),
        jitter_dist=keys.choice("jitter_dist", JitterDist, JitterDist.UNIFORM),
        icmp_ratelimit_pps=keys.count("icmp_ratelimit_pps", 0, 0, 10_000_000),
        icmp_ratelimit_burst=keys.count("icmp_ratelimit_burst", 0, 0, 10_000_000),
        rate_limit_bps=keys.rate_bps("rate_limit"),
        echo_limit_pps=keys.count("echo_limit_pps", 0, 0, 10_000_000),
        reflector=keys.flag("reflector"),
        **_remark_keys(keys),
        **shares,
        **_tcp_keys(keys),
        **_stamp_keys(keys),
    )
    if imp.drop_every == 1:
        raise keys.fail("drop_every", 1, "1 would drop everything; use drop = 1.0 or N >= 2")
    if imp.drop_run and not imp.drop_every > imp.drop_run:
        raise keys.fail(
            "drop_run",
            imp.drop_run,
            "drops the last R of every drop_every requests: set drop_every greater than drop_run",
        )
    if imp.unreachable + imp.time_exceeded > 1:
        raise keys.fail("unreachable", imp.unreachable, "unreachable + time_exceeded must be <= 1")
    return HostGroup(name=name, count=keys.count("count", 1, 1, MAX_HOSTS), impairments=imp)


def parse_lab_spec(data: Mapping[str, Any], *, source: str) -> LabSpec:
    """Validate a profile's raw `[lab]` table. Raises ProfileError naming key, value and fix."""
    keys = _Keys(data, "lab", source)
    keys.check_known(LAB_KEYS)
    prefix = data.get("prefix", random_prefix())
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        raise keys.fail("prefix", prefix, 'must be "lg" and 1-6 of a-z0-9, e.g. "lgdemo"')
    family = data.get("family", 4)
    if family != 4:
        raise keys.fail(
            "family", family, "must be 4 (subnet's family); every host gets an IPv6 address too"
        )
    seed = data.get("seed", secrets.randbits(32))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise keys.fail("seed", seed, "must be a whole number >= 0")
    subnet = data.get("subnet")
    if subnet is not None and not isinstance(subnet, str):
        raise keys.fail("subnet", subnet, 'must be a string like "198.18.4.0/24"')
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) for h in hosts):
        raise keys.fail("hosts", hosts, 'needs at least one [[lab.hosts]] table with name = "..."')
    groups = tuple(_parse_group(h, f"lab.hosts[{i}]", source) for i, h in enumerate(hosts))
    seen: set[str] = set()
    for i, g in enumerate(groups):
        if g.name in seen:
            raise ProfileError(
                f"{source}: lab.hosts[{i}].name = {g.name!r}: used twice; give each group its own"
            )
        seen.add(g.name)
    spec = LabSpec(prefix=prefix, seed=seed, family=family, subnet=subnet, groups=groups)
    if spec.host_count > MAX_HOSTS:
        raise ProfileError(
            f"{source}: lab.hosts: {spec.host_count} hosts in all; lower the counts to "
            f"{MAX_HOSTS} or fewer"
        )
    return spec
