"""The plan across hosts: placements parsed, targets split by placement, numbers made the run's;
and the one-box path never loads ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_layout import imported_modules

from loadgen.clusterplan import ClusterPlan, place
from loadgen.errors import ProfileError, UsageError
from loadgen.placement import parse_placements
from loadgen.profile import COMMAND_LINE, parse_profile
from loadgen.targets import resolve_targets

TARGETS = ["198.18.9.2", "198.18.9.3", "198.18.9.4"]  # lab addresses: never probed here


def _place(tables: list[dict[str, object]]) -> ClusterPlan:
    profile = parse_profile(
        {"targets": TARGETS, "rate": "3k", "count": 10, "placement": tables}, source=COMMAND_LINE
    )
    targets = resolve_targets(profile.targets, max_targets=100, family="auto").targets
    placed = [(p, p.targets) for p in profile.placements]
    return place(profile, targets, placed, run_id=7, ident_base=0xFFFE)


def test_placements_split_targets_rates_and_workers_and_number_them_for_the_run() -> None:
    hosts = _place(
        [
            {"node": "198.18.7.2", "targets": ["198.18.9.4", "198.18.9.2"], "workers": 2},
            {"node": "198.18.8.2", "targets": "198.18.9.3", "rate": "500"},
        ]
    )
    plan = hosts.plan
    assert hosts.nodes == ("198.18.7.2", "198.18.7.2", "198.18.8.2")
    assert [w.index for w in plan.workers] == [0, 1, 2]
    assert [[t.index for t in w.targets] for w in plan.workers] == [[2], [0], [1]]
    assert [w.rate_pps for w in plan.workers] == [1000.0, 1000.0, 500.0]  # 2 of 3 targets: 2k
    assert [w.ident for w in plan.workers] == [0xFFFE, 0xFFFF, 0x0000]
    assert plan.rate_pps == 2500.0 and all(w.run_id == 7 for w in plan.workers)
    text = hosts.describe()
    assert "198.18.7.2: workers [0, 1], 2 targets" in text
    assert "198.18.8.2: workers [2], 1 targets, 500 pps" in text


@pytest.mark.parametrize(
    ("tables", "needle"),
    [
        ([{"node": "n1", "targets": TARGETS[:2]}], "198.18.9.4 is in no [[placement]]"),
        (
            [{"node": "n1", "targets": TARGETS}, {"node": "n2", "targets": TARGETS[:1]}],
            "198.18.9.2 is in placements 0 and 1",
        ),
        ([{"node": "n1", "targets": [*TARGETS, "198.18.9.9"]}], "198.18.9.9, not one of"),
    ],
)
def test_a_target_in_no_or_two_placements_is_one_line(
    tables: list[dict[str, object]], needle: str
) -> None:
    with pytest.raises(ProfileError, match="placement") as err:
        _place(tables)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"node": "n1"}, "array of tables"),
        ([{"targets": ["x"]}], "node is missing"),
        ([{"node": "n1", "targets": []}], "placement[0].targets"),
        ([{"node": "n1", "targets": ["x"], "cpu": 1}], "unknown key 'cpu'"),
        ([{"node": "n1", "targets": ["x"], "rate": "fast"}], "placement[0].rate"),
    ],
)
def test_bad_placements_are_one_line(value: object, needle: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_placements(value, "placement")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_only_the_cluster_module_imports_ray() -> None:
    package = Path(__file__).resolve().parent.parent / "loadgen"
    importers = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if any(m == "ray" or m.startswith("ray.") for m in imported_modules(path))
    ]
    assert importers == ["cluster.py"]


def test_the_one_box_path_never_imports_ray() -> None:
    code = (
        "import sys; from loadgen.cli import main; "
        "rc = main(['check', 'profiles/default.toml']); "
        "from loadgen import coordinator, runner, worker; "
        "sys.exit(3 if 'ray' in sys.modules else rc)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr


def test_cluster_without_the_extra_is_one_line_saying_how_to_install(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(
        'targets = ["127.0.0.1"]\ncount = 1\n[[placement]]\nnode = "127.0.0.2"\n'
        'targets = ["127.0.0.1"]\n'
    )
    code = (
        "import sys; sys.modules['ray'] = None; from loadgen.cli import main; "
        f"sys.exit(main(['run', {str(profile)!r}, '--cluster', 'auto']))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip() == "loadgen: error: --cluster needs Ray: pip install 'loadgen[cluster]'"
    )
