"""`loadgen lab up PROFILE | status | down [PREFIX] [--all]`: each returns an exit code.

They write their report to `out` (stdout by default) and raise LoadgenError subclasses for the
CLI to print; `format_*` build the text, so tests and other front ends can use it directly.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import TextIO

from loadgen.errors import LabError, ProfileError, UsageError
from loadgen.lab.lab import Lab, lab_up
from loadgen.lab.reap import LabInfo, Teardown, lab_down, lab_down_all, lab_status
from loadgen.lab.spec import parse_lab_spec
from loadgen.lab.state import state_path
from loadgen.net import rstguard


def load_lab_table(path: str) -> dict[str, object]:
    """The [lab] table of a TOML file (a full profile or a lab-only file)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}; check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    lab = data.get("lab")
    if not isinstance(lab, dict):
        raise ProfileError(
            f"{path}: no [lab] table; add [lab] and [[lab.hosts]] (see profiles/lab-demo.toml)"
        )
    return lab


def format_lab(lab: Lab) -> str:
    blocks = " and ".join(b for b in (lab.state.subnet, lab.state.subnet6) if b)
    rows = [f"lab {lab.prefix} is up: {len(lab.hosts)} hosts in {blocks}"]
    width = max(len(h.name) for h in lab.hosts)
    width6 = max(len(h.address6) for h in lab.hosts)
    for h in lab.hosts:
        rows.append(
            f"  {h.name:<{width}}  {h.address:<15}  {h.address6:<{width6}}  {h.responder:<9}  "
            f"{h.impairments.describe()}"
        )
    rows.append(f"take it down with: loadgen lab down {lab.prefix}")
    return "\n".join(rows)


def format_status(infos: list[LabInfo]) -> str:
    if not infos:
        return "no labs are up"
    rows = []
    for i in infos:
        refl = (
            f"{i.reflectors_alive}/{i.reflectors} reflectors" if i.reflectors else "no reflectors"
        )
        where = i.subnet or "subnet unknown"
        rows.append(
            f"{i.prefix}  {i.status:<8}  {i.namespaces}/{i.hosts} namespaces  {refl}  {where}"
        )
    if any(i.status != "up" for i in infos):
        rows.append("remove broken or orphaned labs with: loadgen lab down PREFIX (or --all)")
    return "\n".join(rows)


def format_teardown(done: Teardown, what: str) -> str:
    if done.empty and not done.prefixes:
        return f"nothing to take down ({what})"
    labs = ", ".join(done.prefixes) or what
    return f"{labs}: {done.summary()}"


def cmd_up(path: str, *, out: TextIO | None = None) -> int:
    """Build the lab of `path`'s [lab] table and leave it up (reflectors run detached)."""
    spec = parse_lab_spec(load_lab_table(path), source=path)
    lab = lab_up(spec, detached=True, source=path)
    print(format_lab(lab), file=out or sys.stdout)
    return 0


def cmd_status(*, out: TextIO | None = None) -> int:
    print(format_status(lab_status()), file=out or sys.stdout)
    return 0


def cmd_down(prefix: str | None, all_labs: bool = False, *, out: TextIO | None = None) -> int:
    """Take down lab `prefix`, or every lab with `all_labs`. 1 if a named lab was not found."""
    reaped = rstguard.reap_stale()  # suppress_rst tables of killed runs: ours, by name
    if reaped:
        print(f"removed {len(reaped)} stale suppress_rst tables", file=out or sys.stdout)
    if all_labs:
        print(format_teardown(lab_down_all(), "no labs found"), file=out or sys.stdout)
        return 0
    if prefix is None:
        raise UsageError(
            "say which lab: loadgen lab down PREFIX (see `loadgen lab status`), or --all"
        )
    recorded = state_path(prefix).exists()
    done = lab_down(prefix)
    if done.empty and not recorded:
        raise LabError(f"no lab {prefix} found; see `loadgen lab status`")
    print(format_teardown(done, prefix), file=out or sys.stdout)
    return 0
