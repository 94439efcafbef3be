"""`loadgen lab up | status | down`, the runner's profile lab, and the demo profile's lab with
every host's losses explained exactly by its ground truth."""

from __future__ import annotations

import io
import re
import tomllib
from pathlib import Path

import pytest

from loadgen.errors import LabError, ProfileError, TargetError, UsageError
from loadgen.lab import lab_status, lab_up, parse_lab_spec
from loadgen.lab.commands import cmd_down, cmd_status, cmd_up, load_lab_table
from loadgen.lab.reap import is_reflector
from loadgen.lab.run import profile_lab
from loadgen.lab.state import state_path
from loadgen.profile import parse_profile

from .probe import probe

DEMO = Path(__file__).resolve().parents[2] / "profiles" / "lab-demo.toml"


def test_load_lab_table_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read .*: No such file"):
        load_lab_table(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[lab\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_lab_table(str(bad))
    bad.write_text('rate = "1k"\n')
    with pytest.raises(ProfileError, match=r"no \[lab\] table; add \[lab\]"):
        load_lab_table(str(bad))
    with pytest.raises(UsageError, match="say which lab"):
        cmd_down(None)


@pytest.mark.timeout(60)
@pytest.mark.lab
@pytest.mark.root
@pytest.mark.root
def test_up_status_down_leave_a_detached_lab_and_remove_it(prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    hosts = '[[lab.hosts]]\nname = "a"\n[[lab.hosts]]\nname = "d"\nduplicate = 0.5\n'
    path.write_text(f'[lab]\nprefix = "{prefix}"\n{hosts}')
    out = io.StringIO()
    assert cmd_up(str(path), out=out) == 0
    text = out.getvalue()
    assert re.search(rf"lab {prefix} is up: 2 hosts in 198\.1[89]\.\S+ and 2001:2:\S+", text)
    assert re.search(r"d\s+198\.1[89]\.\d+\.\d+\s+2001:2:\S+\s+reflector\s+duplicate=0.5", text)
    info = [i for i in lab_status() if i.prefix == prefix]
    # A reflector host runs one reflector per IP version.
    assert len(info) == 1 and info[0].detached and info[0].reflectors_alive == 2
    out = io.StringIO()
    assert cmd_status(out=out) == 0
    assert re.search(rf"{prefix}\s+up\s+2/2 namespaces\s+2/2 reflectors", out.getvalue())
    out = io.StringIO()
    assert cmd_down(prefix, out=out) == 0
    assert (
        out.getvalue().strip()
        == f"{prefix}: removed 2 namespaces, 2 links, 1 nft tables, stopped 2 reflectors"
    )
    assert not state_path(prefix).exists()
    with pytest.raises(LabError, match=f"no lab {prefix} found"):
        cmd_down(prefix)


@pytest.mark.timeout(60)
@pytest.mark.lab
@pytest.mark.root
@pytest.mark.root
def test_profile_lab_selects_targets_and_always_tears_down(prefix: str) -> None:
    lab = {
        "prefix": prefix,
        "hosts": [{"name": "clean", "count": 3}, {"name": "dup", "duplicate": 0.1}],
    }
    profile = parse_profile({"targets": ["lab:dup", "lab:clean-1"], "lab": lab}, source="p.toml")
    with profile_lab(profile) as pl:
        assert [(t.index, t.name) for t in pl.targets] == [(0, "dup"), (1, "clean-1")]
        assert [t.address for t in pl.targets] == [
            pl.lab.host("dup").address,
            pl.lab.host("clean-1").address,
        ]
        pids = [h.reflector_pid for h in pl.lab.hosts if h.reflector_pid]
        assert len(pids) == 1 and is_reflector(pids[0])
    assert not state_path(prefix).exists() and not is_reflector(pids[0])
    outsider = parse_profile({"targets": ["127.0.0.1"], "lab": lab}, source="p.toml")
    with (
        pytest.raises(TargetError, match=r"127\.0\.0\.1 is not a host of this lab"),
        profile_lab(outsider),
    ):
        pass
    assert not state_path(prefix).exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.lab
@pytest.mark.root
@pytest.mark.root
def test_demo_lab_losses_are_exactly_what_the_truth_says(prefix: str) -> None:
    table = dict(tomllib.loads(DEMO.read_text())["lab"])
    table["prefix"] = prefix
    with lab_up(parse_lab_spec(table, source=str(DEMO))) as lab:
        assert len(lab.hosts) == 28
        # A slow tbf link holds up to a bucket of replies back: wait those out too.
        observed = {
            h.address: probe(
                h.address, 150, 1500, linger_s=1.0 if h.impairments.rate_limit_bps else 0.25
            )
            for h in lab.hosts
        }
        lab.wait_idle()
        truth = lab.truth()
    for h in lab.hosts:
        obs, t = observed[h.address], truth[h.address]
        r = t.reflector
        explained = t.lost_towards_host + t.lost_on_the_way_back + t.nft_dropped
        if r is not None:
            explained += r.dropped + r.rate_limited + r.bitflipped + r.corrupted + r.unsent_at_exit
            assert obs.duplicates == r.duplicated and obs.reordered == r.out_of_order, h.name
            assert len(obs.unreachable) == r.unreachable_sent, h.name
            assert len(obs.time_exceeded) == r.time_exceeded_sent, h.name
        assert len(obs.lost()) == explained, (h.name, t)
        if h.group == "clean":
            assert len(obs.replied) == 150, h.name
        elif h.impairments.delay_ms:
            assert min(obs.rtt_ns) >= 5_000_000, h.name
        else:  # every impaired host showed its impairment at least once
            shown = explained + obs.duplicates + obs.reordered
            assert shown + len(obs.unreachable | obs.time_exceeded) > 0, h.name
