"""The profile's `[[placement]]` tables: which Ray node runs workers for which targets at what
rate (`--cluster`). Parsed here, placed by `clusterplan`. Pure.

    [[placement]]
    node = "198.18.7.2"          # the node's address, as `ray start --node-ip-address` gave it
    targets = ["198.18.9.2"]     # some of the profile's targets; every target in one placement
    rate = "2k"                  # these targets' total; default: their share of `rate`
    workers = 1                  # worker processes on that node, default 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadgen.errors import UsageError
from loadgen.units import bad_value, parse_int, parse_rate

_KEYS = ("node", "targets", "rate", "workers")


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    targets: tuple[str, ...]  # as written; resolved and matched to the profile's targets
    rate_pps: float | None  # None: the profile's rate, shared by target count
    workers: int


def parse_placements(value: Any, key: str) -> tuple[Placement, ...]:
    """An array of tables, each with a node and its targets."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UsageError(
            bad_value(key, value, "not an array of tables", "write [[placement]] tables")
        )
    return tuple(_placement(t, f"{key}[{i}]") for i, t in enumerate(value))


def _placement(table: dict[str, Any], key: str) -> Placement:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise UsageError(f"{key}: unknown key {unknown[0]!r}: a placement has {', '.join(_KEYS)}")
    node = table.get("node")
    if not isinstance(node, str) or not node.strip():
        raise UsageError(f'{key}: node is missing: write node = "ADDRESS" of a Ray node')
    targets = table.get("targets")
    if isinstance(targets, str):
        targets = targets.replace(",", " ").split()
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise UsageError(f'{key}.targets: write the node\'s targets, like targets = ["198.18.9.2"]')
    rate = table.get("rate")
    return Placement(
        node=node.strip(),
        targets=tuple(t.strip() for t in targets),
        rate_pps=None if rate is None else parse_rate(rate, key=f"{key}.rate"),
        workers=parse_int(table.get("workers", 1), key=f"{key}.workers", minimum=1, maximum=256),
    )
