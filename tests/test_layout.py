"""The layout's one rule, checked: the pure core never touches the kernel.

Pure modules take bytes and `now_ns`; they never open a socket, read a clock or a file
descriptor, start a process or import the kernel-facing package `loadgen.net`. Only `loadgen.net`
(and the drivers, the lab and the bench) may import `socket`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "loadgen"

PURE = (
    "wire/__init__.py",
    "wire/family.py",
    "wire/icmp.py",
    "wire/batch.py",
    "wire/bpf.py",
    "wire/records.py",
    "wire/messages.py",
    "wire/stream.py",
    "lease.py",
    "clockoffset.py",
    "placement.py",
    "clusterplan.py",
    "wire/stamp.py",
    "wire/stamp_tlv.py",
    "wire/stamp_probe.py",
    "reflect_core.py",
    "stamp_figures.py",
    "oneway.py",
    "wire/probekind.py",
    "wire/tcp.py",
    "wire/connect.py",
    "connlimits.py",
    "errors.py",
    "units.py",
    "pacer.py",
    "turns.py",
    "tracker.py",
    "stats.py",
    "moments.py",
    "selfcheck.py",
    "closing.py",
    "sla.py",
    "plan.py",
    "profile.py",
    "profile_keys.py",
    "rtthist.py",
    "outages.py",
    "metrics.py",
    "output/ui.py",
    "output/summary.py",
    "search/goals.py",
    "search/controller.py",
    "search/settings.py",
)

FORBIDDEN = (
    "socket",
    "os",
    "time",
    "select",
    "selectors",
    "subprocess",
    "ctypes",
    "fcntl",
    "signal",
    "multiprocessing",
    "asyncio",
    "loadgen.net",
    "loadgen.lab",
    "loadgen.bench",
    "loadgen.worker",
    "loadgen.coordinator",
    "loadgen.runner",
    "loadgen.cli",
)

# Modules outside loadgen/net/ that may import `socket`: DNS, the drivers and presentation that
# writes files are named here so that a new one is a deliberate choice.
SOCKET_ALLOWED = ("targets.py", "worker.py", "coordinator.py", "remote.py")


def imported_modules(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth of the file (function-level too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden_in(names: set[str]) -> list[str]:
    return sorted(
        name for name in names for bad in FORBIDDEN if name == bad or name.startswith(bad + ".")
    )


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_not_touch_the_kernel(module: str) -> None:
    path = PACKAGE / module
    assert path.exists(), f"{module} moved: update PURE"
    assert forbidden_in(imported_modules(path)) == []


def test_the_rule_catches_a_function_level_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    import time\n    from loadgen.net import sockets\n")
    assert forbidden_in(imported_modules(sneaky)) == ["loadgen.net", "loadgen.net.sockets", "time"]


def test_only_the_net_package_and_named_drivers_import_socket() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("net/", "lab/", "bench/")) or rel in SOCKET_ALLOWED:
            continue
        if "socket" in imported_modules(path):
            offenders.append(rel)
    assert offenders == []
