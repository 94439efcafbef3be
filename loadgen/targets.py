"""Target strings -> the ordered, de-duplicated list of addresses a run probes.

Accepts IPv4 addresses, CIDR ranges (expanded under a cap, before any address is built), host
names (each resolved once, through an injectable resolver) and comma/space separated lists.
Names that do not resolve are reported, not fatal, unless nothing is left. The only I/O is the
default resolver's DNS lookup.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from loadgen.errors import TargetError
from loadgen.units import show_value

Resolver = Callable[[str], list[str]]

IPV6_NOT_YET = "IPv6 probing is not implemented yet; use IPv4 targets"
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)", re.ASCII)
_NUMERIC_RE = re.compile(r"[0-9.]+|0[xX][0-9a-fA-F.xX]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class Target:
    index: int  # position in the run's target list; the wire carries it (global target index)
    address: str
    family: int  # 4 or 6
    name: str  # the host name as written, else the address


@dataclass(frozen=True, slots=True)
class Resolved:
    targets: tuple[Target, ...]
    unresolved: tuple[tuple[str, str], ...]  # (spec, reason) for names that did not resolve


def system_resolver(name: str) -> list[str]:
    """Every address getaddrinfo gives for `name`, in its order, without repeats."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)  # one entry per address
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _split(specs: Sequence[str]) -> Iterator[str]:
    if isinstance(specs, str):  # a lone string is one spec, not a sequence of characters
        specs = [specs]
    for spec in specs:
        if not isinstance(spec, str):
            raise TargetError(f"target {show_value(spec)}: not a string; write targets as text")
        yield from spec.replace(",", " ").split()


def _check_unicast(address: ipaddress.IPv4Address, spec: str) -> None:
    kind = (
        "multicast"
        if address.is_multicast
        else "unspecified"
        if address.is_unspecified
        else "broadcast"
        if address == ipaddress.IPv4Address("255.255.255.255")
        else None
    )
    if kind:
        raise TargetError(f"target {show_value(spec)}: {kind} address; probe unicast addresses")


def _network_hosts(network: ipaddress.IPv4Network) -> tuple[int, Iterator[ipaddress.IPv4Address]]:
    """How many usable hosts a range has, and an iterator over them (built lazily)."""
    if network.prefixlen >= 31:  # RFC 3021 point-to-point /31 and a /32: every address is a host
        return network.num_addresses, iter(network)
    return network.num_addresses - 2, network.hosts()


def _parse_range(spec: str, max_targets: int) -> list[ipaddress.IPv4Address]:
    try:
        network = ipaddress.ip_network(spec, strict=False)
    except ValueError:
        raise TargetError(
            f"target {show_value(spec)}: not a valid CIDR range; write it like 198.18.0.0/24"
        ) from None
    if network.version == 6:
        raise TargetError(f"target {show_value(spec)}: {IPV6_NOT_YET}")
    assert isinstance(network, ipaddress.IPv4Network)
    if network.is_multicast or network.prefixlen == 32:
        _check_unicast(network.network_address, spec)
    count, hosts = _network_hosts(network)
    if count > max_targets:
        raise TargetError(
            f"target {show_value(spec)}: {count} addresses, more than max_targets = "
            f"{max_targets}; "
            "raise max_targets or narrow the range"
        )
    return list(hosts)


def _parse_address(spec: str) -> str:
    """An address literal: IPv4 in dotted-quad form; IPv6 is recognised and refused."""
    if ":" in spec or spec.startswith("["):
        try:
            ipaddress.IPv6Address(spec.strip("[]"))
        except ValueError:
            raise TargetError(
                f"target {show_value(spec)}: not a valid address; write e.g. 127.0.0.1"
            ) from None
        raise TargetError(f"target {show_value(spec)}: {IPV6_NOT_YET}")
    try:
        address = ipaddress.IPv4Address(spec)
    except ValueError:
        raise TargetError(
            f"target {show_value(spec)}: not a valid IPv4 address; "
            "write four numbers 0-255 without leading zeros, like 127.0.0.1"
        ) from None
    _check_unicast(address, spec)
    return str(address)


def _is_host_name(spec: str) -> bool:
    name = spec[:-1] if spec.endswith(".") else spec  # a fully qualified name may end in "."
    if not name or len(name) > 253 or _NUMERIC_RE.fullmatch(name):
        return False  # all-numeric: a mistyped address, never a name (getaddrinfo takes "1.2")
    return all(_LABEL_RE.fullmatch(label) for label in name.split("."))


def _resolve(spec: str, resolver: Resolver) -> tuple[str | None, str]:
    """The first IPv4 address of a name, or None and the reason it has none."""
    try:
        answers = resolver(spec)
    except (OSError, UnicodeError) as err:
        return None, (err.args[-1] if err.args else str(err)) or type(err).__name__
    valid: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for answer in answers:
        try:
            valid.append(ipaddress.ip_address(answer))
        except ValueError:
            continue  # a resolver that returns junk: skip that answer, not the whole name
    ipv4 = [str(a) for a in valid if a.version == 4]
    if ipv4:
        return ipv4[0], ""
    if valid:
        return None, f"only IPv6 addresses ({IPV6_NOT_YET})"
    return None, "no address"


def resolve_targets(
    specs: Sequence[str],
    *,
    max_targets: int,
    family: str = "auto",
    resolver: Resolver | None = None,
) -> Resolved:
    """Expand and resolve target specs, in order, dropping repeated addresses (first wins).

    Raises TargetError for bad syntax, IPv6, a range or total over max_targets, or when no
    target is left; names that do not resolve are returned in `unresolved`.
    """
    if family == "ipv6":
        raise TargetError(f'family = "ipv6": {IPV6_NOT_YET} and family = "ipv4" or "auto"')
    if family not in ("auto", "ipv4"):
        raise TargetError(f'family = {show_value(family)}: unknown; write "auto" or "ipv4"')
    if max_targets < 1:
        raise TargetError(f"max_targets = {max_targets}: must be at least 1; raise it")
    resolve = resolver if resolver is not None else system_resolver
    seen: dict[str, str] = {}  # address -> name, in first-seen order
    unresolved: list[tuple[str, str]] = []
    looked_up: dict[str, tuple[str | None, str]] = {}
    for spec in list(_split(specs)):
        found: list[tuple[str, str]]  # (address, name)
        if "/" in spec:
            found = [(str(a), str(a)) for a in _parse_range(spec, max_targets)]
        elif ":" in spec or spec.startswith("[") or _NUMERIC_RE.fullmatch(spec):
            address = _parse_address(spec)
            found = [(address, address)]
        elif _is_host_name(spec):
            key = spec.lower()
            if key not in looked_up:
                looked_up[key] = _resolve(spec, resolve)
            address_or_none, reason = looked_up[key]
            if address_or_none is None:
                if (spec, reason) not in unresolved:
                    unresolved.append((spec, reason))
                continue
            _check_unicast(ipaddress.IPv4Address(address_or_none), spec)
            found = [(address_or_none, spec)]
        else:
            raise TargetError(
                f"target {show_value(spec)}: not an address, range or host name; "
                "write e.g. 127.0.0.1, 198.18.0.0/24 or localhost"
            )
        for address, name in found:
            seen.setdefault(address, name)
        if len(seen) > max_targets:
            raise TargetError(
                f"target {show_value(spec)}: brings the total to more than max_targets = "
                f"{max_targets}; raise max_targets or narrow the range"
            )
    if not seen:
        if unresolved:
            names = ", ".join(f"{spec} ({reason})" for spec, reason in unresolved)
            raise TargetError(
                f"no target could be resolved: {names}; check the names or use addresses"
            )
        raise TargetError("no targets given; name at least one, like 127.0.0.1")
    targets = tuple(
        Target(index=i, address=address, family=4, name=name)
        for i, (address, name) in enumerate(seen.items())
    )
    return Resolved(targets=targets, unresolved=tuple(unresolved))
