"""A profile's lab for the length of one run: up, targets chosen, always down afterwards.

The runner calls `lab_for_profile(profile)`; `profile_lab` also hands out the `Lab`, for
callers that compare the run's results with `lab.truth()` before the lab goes down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from loadgen.errors import TargetError
from loadgen.lab.lab import Lab, lab_targets, lab_up
from loadgen.lab.spec import parse_lab_spec
from loadgen.profile import Profile
from loadgen.targets import Target


@dataclass(frozen=True, slots=True)
class ProfileLab:
    lab: Lab
    targets: tuple[Target, ...]  # in the order the profile asked for them


def select_targets(lab: Lab, tokens: tuple[str, ...]) -> tuple[Target, ...]:
    """Targets for `tokens` ("lab:all", "lab:<group>", "lab:<host>", or lab addresses of
    either family); no tokens means every host's IPv4 address."""
    by_address = {h.address: (h, 4) for h in lab.hosts}
    by_address |= {h.address6: (h, 6) for h in lab.hosts if h.address6}
    addresses = lab_targets(lab.hosts, tokens) if tokens else [h.address for h in lab.hosts]
    outside = [a for a in addresses if a not in by_address]
    if outside:
        raise TargetError(
            f"{outside[0]} is not a host of this lab; with a [lab] table, use lab:all, "
            "lab:<group> or lab:<host> (see `loadgen lab status`)"
        )
    hosts = [(a, *by_address[a]) for a in dict.fromkeys(addresses)]
    return tuple(
        Target(index=i, address=a, family=v, name=h.name) for i, (a, h, v) in enumerate(hosts)
    )


@contextlib.contextmanager
def profile_lab(profile: Profile) -> Iterator[ProfileLab]:
    """Bring up the profile's [lab]; tear it down when the block ends, however it ends."""
    if profile.lab is None:
        raise TargetError(f"{profile.source} has no [lab] table; add one or give targets")
    spec = parse_lab_spec(profile.lab, source=profile.source)
    with lab_up(spec, source=profile.source) as lab:
        yield ProfileLab(lab, select_targets(lab, profile.targets))


@contextlib.contextmanager
def lab_for_profile(profile: Profile) -> Iterator[tuple[Target, ...]]:
    """The runner's entry: the lab's targets for the run."""
    with profile_lab(profile) as pl:
        yield pl.targets
