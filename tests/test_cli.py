"""The command line in-process: --version, and `check` showing the very plan `run` makes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadgen import __version__
from loadgen.cli import build_parser, main, profile_from_args
from loadgen.plan import describe
from loadgen.profile import load_profile
from loadgen.runner import plan_run

PROFILE = """
targets = ["127.0.0.1", "127.0.0.8/30", "127.0.0.20"]
rate = "3k"
count = 50
workers = 2
source = "127.0.0.1"
interface = "lo"
"""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"loadgen {__version__}\n"


def test_check_prints_the_plan_run_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PROFILE)
    assert main(["check", str(path)]) == 0
    shown = capsys.readouterr().out.rstrip("\n")
    run_id = int(re.search(r"run id: 0x([0-9a-f]{8})", shown)[1], 16)  # type: ignore[index]
    ident = int(re.search(r"  0  +\S+  0x([0-9a-f]{4})", shown)[1], 16)  # type: ignore[index]
    # The only random parts are the run id and the identifier base; given those, run's plan
    # is what check printed, line for line.
    plan, warnings = plan_run(load_profile(str(path)), run_id=run_id, ident_base=ident)
    assert warnings == []
    assert describe(plan) == shown
    assert "interface lo, from 127.0.0.1" in shown
    assert [len(w.targets) for w in plan.workers] == [2, 2]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-S", "fe80::1"], "a link-local address needs a scope"),
        (["-S", "::1"], "source ::1 is IPv6 but target 127.0.0.1 is IPv4"),
        (["-6"], 'an IPv4 address but family = "ipv6"'),
        (["-S", "not-an-address"], "not an IP address"),
        (["-S", "198.19.255.254"], "give an address of this host"),
        (["-I", "nosuchif0"], "no such interface on this host"),
        (["-I", "a/b"], "not a valid interface name"),
        (["-s", "65508"], "out of range 28..65507"),
    ],
)
def test_bad_interface_source_or_size_is_one_line_exit_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any socket opens: no root needed, nothing sent.
    assert main(["ping", "127.0.0.1", *args, "-c", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err, err


def test_ping_takes_targets_one_per_argument_as_fping_does_or_as_comma_lists() -> None:
    def targets(*argv: str) -> list[str]:
        profile = profile_from_args(build_parser().parse_args(["ping", *argv]))
        return list(profile.targets)

    assert targets("127.0.0.1", "::1", "-c", "3") == ["127.0.0.1", "::1"]
    assert targets("127.0.0.1,::1", "127.0.0.2") == ["127.0.0.1", "::1", "127.0.0.2"]
    assert targets("127.0.0.1,::1") == targets("127.0.0.1", "::1")
