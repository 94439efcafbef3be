"""Target strings -> the ordered, de-duplicated list of addresses a run probes.

Accepts IPv4 and IPv6 addresses (link-local ones with a scope, fe80::1%eth0), CIDR ranges of
both (expanded under a cap, before any address is built), host names (each resolved once,
through an injectable resolver, to its first address of each family the `family` choice allows)
and comma/space separated lists. Names that do not resolve are reported, not fatal, unless
nothing is left. The only I/O is the default resolver's DNS lookup.
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
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IPV6_NOT_YET = "IPv6 probing is not implemented yet; use IPv4 targets"
# The families the worker can probe: both. A caller that passes `probed` without 6 gets IPv6
# targets parsed in full and then refused with IPV6_NOT_YET.
PROBED_FAMILIES = frozenset({4, 6})
# The profile's `family` choice -> the address families a host name may give.
FAMILY_CHOICES = {"auto": (4, 6), "ipv4": (4,), "ipv6": (6,)}
_IFNAMSIZ = 16  # interface names are at most 15 bytes (linux/if.h, dev_valid_name)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)", re.ASCII)
_NUMERIC_RE = re.compile(r"[0-9.]+|0[xX][0-9a-fA-F.xX]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class Target:
    index: int  # position in the run's target list; the wire carries it (global target index)
    address: str  # canonical text; a link-local IPv6 address carries its scope: fe80::1%eth0
    family: int  # 4 or 6 (wire.family.family_of gives its wire facts)
    name: str  # the host name as written, else the address

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def packed(self) -> bytes:
        """The address as it goes on the wire: 4 or 16 bytes, network order, no scope."""
        return self.ip.packed

    @property
    def scope(self) -> str:
        """The interface (name or index) of a link-local IPv6 target, else ""."""
        ip = self.ip
        return (ip.scope_id or "") if isinstance(ip, ipaddress.IPv6Address) else ""


def labels(targets: Sequence[Target]) -> tuple[str, ...]:
    """What tables and summaries call each target: its name, or `name (address)` where one
    name stands for several targets (a host name with A and AAAA addresses)."""
    seen: dict[str, int] = {}
    for t in targets:
        seen[t.name] = seen.get(t.name, 0) + 1
    return tuple(
        f"{t.name} ({t.address})" if seen[t.name] > 1 and t.name != t.address else t.name
        for t in targets
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    targets: tuple[Target, ...]
    unresolved: tuple[tuple[str, str], ...]  # (spec, reason) for names that did not resolve


def system_resolver(name: str) -> list[str]:
    """Every address getaddrinfo gives for `name` (A and AAAA), in its order, without repeats;
    a link-local IPv6 answer with its scope."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)  # one entry per address
    found = []
    for info in infos:
        sockaddr = info[4]
        host = str(sockaddr[0])
        if len(sockaddr) == 4 and "%" not in host and sockaddr[3]:
            host = f"{host}%{sockaddr[3]}"  # the scope as an interface index
        found.append(host)
    return list(dict.fromkeys(found))


def _split(specs: Sequence[str]) -> Iterator[str]:
    if isinstance(specs, str):  # a lone string is one spec, not a sequence of characters
        specs = [specs]
    for spec in specs:
        if not isinstance(spec, str):
            raise TargetError(f"target {show_value(spec)}: not a string; write targets as text")
        yield from spec.replace(",", " ").split()


def _check_unicast(address: IPAddress, spec: str) -> None:
    """Refuse what an echo request cannot be sent to as one probe of one host; IPv6: a
    link-local address needs its scope (the interface), and only it takes one."""
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
    if not isinstance(address, ipaddress.IPv6Address):
        return
    bare = ipaddress.IPv6Address(address.packed)
    if address.ipv4_mapped is not None:
        raise TargetError(
            f"target {show_value(spec)}: an IPv4-mapped address; write it as {address.ipv4_mapped}"
        )
    if address.is_link_local and not address.scope_id:
        raise TargetError(
            f"target {show_value(spec)}: a link-local address needs the interface it is on; "
            f"write it like {bare}%eth0"
        )
    if address.scope_id and not address.is_link_local:
        raise TargetError(
            f"target {show_value(spec)}: a scope (%{address.scope_id}) applies only to "
            f"link-local fe80::/10 addresses; write {bare}"
        )
    scope = address.scope_id or ""
    if scope and (len(scope.encode()) >= _IFNAMSIZ or scope in (".", "..") or any(
        c in "/:" or c.isspace() for c in scope
    )):  # fmt: skip
        raise TargetError(
            f"target {show_value(spec)}: {show_value(scope)} is not an interface name; "
            f"write it like {bare}%eth0"
        )


@dataclass(frozen=True, slots=True)
class _Families:
    choice: str  # the profile's family: "auto", "ipv4" or "ipv6"
    probed: frozenset[int]  # the families the prober speaks

    @property
    def allowed(self) -> tuple[int, ...]:
        return tuple(f for f in FAMILY_CHOICES[self.choice] if f in self.probed)

    def check(self, address: IPAddress, spec: str) -> None:
        """A literal or range of a family the run does not probe: one line saying why."""
        if address.version in self.allowed:
            return
        if address.version not in self.probed:
            raise TargetError(f"target {show_value(spec)}: {IPV6_NOT_YET}")
        raise TargetError(
            f"target {show_value(spec)}: an IPv{address.version} address but family = "
            f'"{self.choice}"; remove it or set family = "auto"'
        )


def _network_hosts(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> tuple[int, Iterator[IPAddress]]:
    """How many usable hosts a range has, and an iterator over them (built lazily). IPv4 below
    /31 leaves out the network and broadcast addresses. IPv6 below /127 leaves out the first,
    the Subnet-Router anycast address (RFC 4291 2.6.1): any router on the link answers it, so
    it measures no one host. IPv6 has no broadcast; RFC 2526's reserved anycast addresses at
    the top of a /64 are not left out (a lab gives them to hosts like any other)."""
    if network.prefixlen >= network.max_prefixlen - 1:
        # IPv4 /31 (RFC 3021) and IPv6 /127 (RFC 6164) point-to-point links, a single address:
        # every address is a host.
        return network.num_addresses, iter(network)
    if network.version == 6:
        return network.num_addresses - 1, network.hosts()
    return network.num_addresses - 2, network.hosts()


def _parse_range(spec: str, max_targets: int, families: _Families) -> list[IPAddress]:
    """A CIDR range's hosts; a link-local IPv6 range takes its scope as an address does,
    before the prefix length: fe80::%eth0/126."""
    text, _, scope = spec.partition("%")
    scope, slash, prefix = scope.partition("/")
    try:
        if scope and not slash:
            raise ValueError("a scope after the prefix length")
        network = ipaddress.ip_network(text + slash + prefix, strict=False)
        # Its first host stands for the range in the checks (see _network_hosts).
        whole = network.prefixlen >= network.max_prefixlen - 1
        host: IPAddress = network[0] if whole else network[1]
        if scope:
            host = ipaddress.IPv6Address(f"{host}%{scope}")  # ValueError on an IPv4 range
    except ValueError:
        raise TargetError(
            f"target {show_value(spec)}: not a valid CIDR range; write it like 198.18.0.0/24 "
            "or 2001:2::/120"
        ) from None
    families.check(host, spec)
    _check_unicast(host, spec)
    count, hosts = _network_hosts(network)
    if count > max_targets:
        raise TargetError(
            f"target {show_value(spec)}: {count} addresses, more than max_targets = "
            f"{max_targets}; "
            "raise max_targets or narrow the range"
        )
    if scope:
        return [ipaddress.IPv6Address(f"{host}%{scope}") for host in hosts]
    return list(hosts)


def _parse_address(spec: str, families: _Families) -> tuple[str, int]:
    """An address literal: IPv4 in dotted-quad form, IPv6 (brackets allowed, a scope after
    %); its canonical text and family."""
    if ":" in spec or spec.startswith("["):
        text = spec[1:-1] if spec.startswith("[") and spec.endswith("]") else spec
        try:
            address: IPAddress = ipaddress.IPv6Address(text)
        except ValueError:
            raise TargetError(
                f"target {show_value(spec)}: not a valid IPv6 address; write e.g. ::1, "
                "2001:2::10 or fe80::1%eth0"
            ) from None
    else:
        try:
            address = ipaddress.IPv4Address(spec)
        except ValueError:
            raise TargetError(
                f"target {show_value(spec)}: not a valid IPv4 address; "
                "write four numbers 0-255 without leading zeros, like 127.0.0.1"
            ) from None
    families.check(address, spec)
    _check_unicast(address, spec)
    return str(address), address.version


def _is_host_name(spec: str) -> bool:
    name = spec[:-1] if spec.endswith(".") else spec  # a fully qualified name may end in "."
    if not name or len(name) > 253 or _NUMERIC_RE.fullmatch(name):
        return False  # all-numeric: a mistyped address, never a name (getaddrinfo takes "1.2")
    return all(_LABEL_RE.fullmatch(label) for label in name.split("."))


def _resolve(spec: str, resolver: Resolver, families: _Families) -> tuple[list[IPAddress], str]:
    """The first address of each allowed family a name has, in the resolver's order; or none
    and the reason."""
    try:
        answers = resolver(spec)
    except (OSError, UnicodeError) as err:
        return [], (err.args[-1] if err.args else str(err)) or type(err).__name__
    valid: list[IPAddress] = []
    for answer in answers:
        try:
            valid.append(ipaddress.ip_address(answer))
        except ValueError:
            continue  # a resolver that returns junk: skip that answer, not the whole name
    picked: dict[int, IPAddress] = {}
    for address in valid:
        if address.version in families.allowed:
            picked.setdefault(address.version, address)
    if picked:
        return list(picked.values()), ""
    if not valid:
        return [], "no address"
    other = valid[0].version
    if other not in families.probed:
        return [], f"only IPv{other} addresses ({IPV6_NOT_YET})"
    return [], f'no IPv{6 if other == 4 else 4} address; it has IPv{other} ones: family = "auto"'


def resolve_targets(
    specs: Sequence[str],
    *,
    max_targets: int,
    family: str = "auto",
    resolver: Resolver | None = None,
    probed: frozenset[int] = PROBED_FAMILIES,
) -> Resolved:
    """Expand and resolve target specs, in order, dropping repeated addresses (first wins).
    `family` ("auto", "ipv4", "ipv6") says which address families names give and literals
    may have; `probed` which families the prober speaks (others are refused in one line).

    Raises TargetError for bad syntax, a family left out, a range or total over max_targets,
    or when no target is left; names that do not resolve are returned in `unresolved`.
    """
    if family not in FAMILY_CHOICES:
        raise TargetError(f'family = {show_value(family)}: unknown; write "auto", "ipv4" or "ipv6"')
    families = _Families(family, probed)
    if not families.allowed:
        raise TargetError(f'family = "{family}": {IPV6_NOT_YET} and family = "ipv4" or "auto"')
    if max_targets < 1:
        raise TargetError(f"max_targets = {max_targets}: must be at least 1; raise it")
    resolve = resolver if resolver is not None else system_resolver
    seen: dict[str, tuple[str, int]] = {}  # address -> (name, family), in first-seen order
    unresolved: list[tuple[str, str]] = []
    looked_up: dict[str, tuple[list[IPAddress], str]] = {}
    for spec in list(_split(specs)):
        found: list[tuple[str, str, int]]  # (address, name, family)
        if "/" in spec:
            found = [(str(a), str(a), a.version) for a in _parse_range(spec, max_targets, families)]
        elif ":" in spec or spec.startswith("[") or _NUMERIC_RE.fullmatch(spec):
            address, version = _parse_address(spec, families)
            found = [(address, address, version)]
        elif _is_host_name(spec):
            key = spec.lower()
            if key not in looked_up:
                looked_up[key] = _resolve(spec, resolve, families)
            addresses, reason = looked_up[key]
            if not addresses:
                if (spec, reason) not in unresolved:
                    unresolved.append((spec, reason))
                continue
            for a in addresses:
                _check_unicast(a, spec)
            found = [(str(a), spec, a.version) for a in addresses]
        else:
            raise TargetError(
                f"target {show_value(spec)}: not an address, range or host name; "
                "write e.g. 127.0.0.1, 198.18.0.0/24 or localhost"
            )
        for address, name, version in found:
            seen.setdefault(address, (name, version))
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
        Target(index=i, address=address, family=version, name=name)
        for i, (address, (name, version)) in enumerate(seen.items())
    )
    return Resolved(targets=targets, unresolved=tuple(unresolved))
