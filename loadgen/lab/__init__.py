"""The lab: network-namespace test hosts with known impairments and exact ground truth.

    spec = parse_lab_spec(profile.lab, source=path)      # the profile's [lab] table
    with lab_up(spec) as lab:                            # torn down on exit, also on errors
        targets = lab.select(["lab:all"])                # host addresses in 198.18.0.0/15
        ...                                              # probe them
        truth = lab.truth()                              # address -> HostTruth
        truth6 = lab.truth(version=6)                    # the same for lab.select(["lab6:all"])
    expected_counts(truth[address])                      # what loadgen must report for it

Never imported by `loadgen run` unless a profile has a [lab] table.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadgen.lab.compare import (
        AmbiguousTruth,
        ExpectedCounts,
        expected_counts,
        lost_at_host,
        mismatches,
        truth_since,
    )
    from loadgen.lab.lab import Lab, attach_lab, lab_targets, lab_up
    from loadgen.lab.reap import LabInfo, Teardown, lab_down, lab_down_all, lab_status, remains
    from loadgen.lab.spec import HostGroup, Impairments, LabSpec, parse_lab_spec
    from loadgen.lab.state import LabHost
    from loadgen.lab.truth import HostTruth, LinkCounters

# Imported on first use: a reflector process (`-m loadgen.lab.reflector`) loads this package
# too, and should not pay for pyroute2 it never uses.
_HOME = {
    "AmbiguousTruth": "compare",
    "ExpectedCounts": "compare",
    "expected_counts": "compare",
    "lost_at_host": "compare",
    "mismatches": "compare",
    "truth_since": "compare",
    "Lab": "lab",
    "attach_lab": "lab",
    "lab_targets": "lab",
    "lab_up": "lab",
    "LabInfo": "reap",
    "Teardown": "reap",
    "lab_down": "reap",
    "lab_down_all": "reap",
    "lab_status": "reap",
    "remains": "reap",
    "HostGroup": "spec",
    "Impairments": "spec",
    "LabSpec": "spec",
    "parse_lab_spec": "spec",
    "LabHost": "state",
    "HostTruth": "truth",
    "LinkCounters": "truth",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'loadgen.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(f"loadgen.lab.{home}"), name)


__all__ = [
    "AmbiguousTruth",
    "ExpectedCounts",
    "HostGroup",
    "HostTruth",
    "Impairments",
    "Lab",
    "LabHost",
    "LabInfo",
    "LabSpec",
    "LinkCounters",
    "Teardown",
    "attach_lab",
    "expected_counts",
    "lab_down",
    "lab_down_all",
    "lab_status",
    "lab_targets",
    "lab_up",
    "lost_at_host",
    "mismatches",
    "parse_lab_spec",
    "remains",
    "truth_since",
]
