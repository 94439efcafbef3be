"""Names and addresses of lab hosts: pure functions, no I/O.

Every lab takes one aligned block of the benchmarking range (198.18.0.0/15, RFC 2544; IPv6
2001:2::/48, RFC 5180) and gives host i the point-to-point pair block+2i (root side) and
block+2i+1 (the host) as a /31 (RFC 3021); every host also gets the same pair in its lab's IPv6
block, a /127 (RFC 6164), so each host has one address of each family. Every kernel object a
lab creates carries its prefix, so `lab_down_all` can find leftovers by name alone.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from loadgen.errors import LabError, ProfileError
from loadgen.lab.spec import Impairments, LabSpec

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LAB_SPACE: dict[int, IPNetwork] = {
    4: ipaddress.IPv4Network("198.18.0.0/15"),
    6: ipaddress.IPv6Network("2001:2::/48"),
}
P2P_PREFIXLEN = {4: 31, 6: 127}
MIN_BLOCK_PREFIXLEN = {4: 24, 6: 120}  # the smallest block a lab takes: readable, few blocks

# Names a lab creates: namespaces and root-side links start with "<prefix>-", nft tables are
# "<prefix>_imp". These patterns are what `lab_down_all` reaps.
LAB_NAME_RE = re.compile(r"^lg[a-z0-9]{1,6}-")
LAB_TABLE_RE = re.compile(r"^lg[a-z0-9]{1,6}_imp$")
NS_IFNAME = "eth0"  # the host's end of its link, inside its namespace


def netns_name(prefix: str, host: str) -> str:
    return f"{prefix}-{host}"


def root_ifname(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"


def nft_table(prefix: str) -> str:
    return f"{prefix}_imp"


def prefix_of(name: str) -> str | None:
    """The lab prefix a namespace, link or table name belongs to, or None if not a lab name."""
    if LAB_NAME_RE.match(name):
        return name.split("-", 1)[0]
    if LAB_TABLE_RE.match(name):
        return name.rsplit("_", 1)[0]
    return None


@dataclass(frozen=True, slots=True)
class HostPlan:
    """Where one host lives: its names and its point-to-point addresses."""

    index: int
    name: str  # e.g. "clean-3"
    group: str  # e.g. "clean"
    netns: str
    root_ifname: str
    address: str  # the host's address: what loadgen probes
    peer_address: str  # the root-side end of the link (the host's gateway)
    prefixlen: int
    impairments: Impairments
    address6: str = ""  # the host's IPv6 address (2001:2::/48)
    peer_address6: str = ""
    prefixlen6: int = P2P_PREFIXLEN[6]


def block_prefixlen(family: int, hosts: int) -> int:
    """Prefix length of the smallest block with room for `hosts` point-to-point pairs."""
    bits = LAB_SPACE[family].max_prefixlen
    need = max(1, math.ceil(math.log2(2 * max(1, hosts))))
    return min(bits - need, MIN_BLOCK_PREFIXLEN[family])


def parse_subnet(text: str, family: int, hosts: int, *, source: str) -> IPNetwork:
    """Validate a spec's explicit `subnet`: inside the lab range and big enough."""
    space = LAB_SPACE[family]
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ProfileError(
            f"{source}: lab.subnet = {text!r}: not a network; write e.g. subnet = "
            f'"{next(space.subnets(new_prefix=MIN_BLOCK_PREFIXLEN[family]))}"'
        ) from None
    if net.version != family or not net.subnet_of(space):  # type: ignore[arg-type]
        raise ProfileError(
            f"{source}: lab.subnet = {text!r}: lab hosts may only use {space}; pick a block in it"
        )
    if net.num_addresses < 2 * hosts:
        raise ProfileError(
            f"{source}: lab.subnet = {text!r}: too small for {hosts} hosts; use a "
            f"/{block_prefixlen(family, hosts)} or larger"
        )
    return net


def pick_block(family: int, hosts: int, taken: Iterable[IPNetwork]) -> IPNetwork:
    """The first aligned block of the lab range overlapping nothing in `taken`."""
    taken_list = [t for t in taken if t.version == family]
    for block in LAB_SPACE[family].subnets(new_prefix=block_prefixlen(family, hosts)):
        if not any(block.overlaps(t) for t in taken_list):
            return block
    raise LabError(
        f"no free block for {hosts} lab hosts in {LAB_SPACE[family]}; "
        "take old labs down with `loadgen lab down --all`"
    )


def plan_hosts(
    spec: LabSpec, block: IPNetwork, block6: IPNetwork | None = None
) -> tuple[HostPlan, ...]:
    """One HostPlan per host, in spec order: group by group, host by host; with `block6`, each
    host's IPv6 pair too."""
    plans: list[HostPlan] = []
    p2p = P2P_PREFIXLEN[spec.family]
    for group in spec.groups:
        for host in group.host_names():
            i = len(plans)
            root = block.network_address + 2 * i
            root6 = None if block6 is None else block6.network_address + 2 * i
            plans.append(
                HostPlan(
                    index=i,
                    name=host,
                    group=group.name,
                    netns=netns_name(spec.prefix, host),
                    root_ifname=root_ifname(spec.prefix, i),
                    address=str(root + 1),
                    peer_address=str(root),
                    prefixlen=p2p,
                    impairments=group.impairments,
                    address6="" if root6 is None else str(root6 + 1),
                    peer_address6="" if root6 is None else str(root6),
                )
            )
    for b in (block, block6):
        if b is not None and 2 * len(plans) > b.num_addresses:
            raise LabError(f"block {b} is too small for {len(plans)} hosts; use a larger subnet")
    return tuple(plans)
