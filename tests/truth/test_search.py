"""`loadgen search` against lab hosts of known capacity: an nft `limit rate` of 20k echo requests
a second (NDR at the limit; PDR at 10 % where the limiter passes 90 %: 20k / 0.9), a tbf-shaped
link converted to probes a second, and a maximum rate one worker cannot generate. The search runs
as the command (a subprocess, bounded in time); its JSON is the evidence. A trial the generator
could not keep up with is never taken as loss: on a busy machine the result may honestly be "at
least X (generator limit)", which these tests accept only as that, and only below the truth.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab import lab_down, remains

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]

LIMIT_PPS = 20_000
SIZE = 64
FRAME_BITS = (14 + 20 + 8 + SIZE) * 8  # what tbf meters on a veth: Ethernet, IP, ICMP, payload
LINK_PPS = 4_000
QUICK = ["--trial", "1s", "--sum", "1s", "--pause", "200ms", "-d", "500ms", "-w", "500ms"]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A lab prefix of this module's own ("lgs"); whatever carries it is gone afterwards."""
    name = "lgs" + secrets.token_hex(2)
    yield name
    lab_down(name)
    assert not remains(name), remains(name)


def search(tmp_path: Path, what: str, *flags: str, bound_s: float = 200) -> dict[str, Any]:
    out = tmp_path / "search.json"
    cmd = [sys.executable, "-m", "loadgen", "search", what, "--plain", "--output", str(out)]
    done = subprocess.run(
        [*cmd, *flags], capture_output=True, text=True, timeout=bound_s, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["v"] == 1 and doc["trials"], doc
    assert (tmp_path / "search.png").stat().st_size > 0  # the plot, beside the JSON
    for t in doc["trials"]:  # every probe of every trial is accounted for
        assert t["sent"] == t["received"] + t["late"] + t["lost"] + t["errored"], t
    return doc


def lab_profile(tmp_path: Path, prefix: str, host: str) -> str:
    path = tmp_path / "lab.toml"
    path.write_text(
        f'targets = ["lab:all"]\nworkers = 1\nsize = {SIZE}\n\n'
        f'[lab]\nprefix = "{prefix}"\nseed = 1\n\n[[lab.hosts]]\n{host}\n'
    )
    return str(path)


def result(doc: dict[str, Any], goal: str) -> dict[str, Any]:
    return next(r for r in doc["results"] if r["goal"] == goal)


def story(doc: dict[str, Any]) -> str:
    """The trials in one line each, for a failure message."""
    return "\n".join(
        f"{t['intended_pps']:.0f} pps {t['duration_s']} s: lost {t['lost']} of {t['sent']}"
        + ("" if t["valid"] else f" invalid ({t['generator']['limits'][0]})")
        for t in doc["trials"]
    )


def judge(doc: dict[str, Any], goal: str, truth_pps: float, within: float) -> None:
    """Within `within` of the truth; or, if the generator bounded it, honestly below it."""
    r = result(doc, goal)
    why = f"{r}\n{story(doc)}"
    assert r["lower_pps"] is not None, why
    if r["generator_limited"]:
        assert r["result"].startswith("at least") and "generator limit" in r["result"], why
        assert r["lower_pps"] <= truth_pps * (1 + within), why
        return
    assert r["converged"], why
    assert abs(r["rate_pps"] - truth_pps) <= within * truth_pps, why


def test_search_finds_ndr_and_pdr_of_an_echo_rate_limit(tmp_path: Path, prefix: str) -> None:
    profile = lab_profile(tmp_path, prefix, f'name = "limited"\necho_limit_pps = {LIMIT_PPS}')
    doc = search(
        tmp_path, profile, *QUICK, "--goal", "ndr", "--goal", "pdr:10%",
        "--max-rate", "30k", "--min-rate", "5k", "--width", "1%", "--max-time", "150s",
    )  # fmt: skip
    judge(doc, "ndr", LIMIT_PPS, 0.02)
    # Above the limit the limiter passes LIMIT of the load: 10 % is lost at LIMIT / 0.9.
    judge(doc, "pdr:10%", LIMIT_PPS / 0.9, 0.02)
    for t in doc["trials"]:
        if t["valid"] and t["intended_pps"] < LIMIT_PPS * 0.98:
            assert t["lost"] == 0, t  # below the limit nothing is lost


def test_search_finds_the_capacity_of_a_shaped_link(tmp_path: Path, prefix: str) -> None:
    rate_kbit = LINK_PPS * FRAME_BITS // 1000
    profile = lab_profile(tmp_path, prefix, f'name = "link"\nrate_limit = "{rate_kbit}kbit"')
    doc = search(
        tmp_path, profile, *QUICK, "--goal", "ndr", "--max-rate", "8k", "--min-rate", "1k",
        "--width", "1%", "--max-time", "100s",
    )  # fmt: skip
    # tbf queues up to 50 ms of its rate and a bucket besides: in a 1 s trial a load that much
    # above the link's rate still loses nothing (the truth: 3 % above it, give or take 5 %).
    judge(doc, "ndr", LINK_PPS * 1.03, 0.05)


def test_a_max_rate_one_worker_cannot_generate_gives_at_least(tmp_path: Path) -> None:
    doc = search(
        tmp_path, "127.0.0.1", "--workers", "1", *QUICK, "--goal", "ndr", "--max-rate", "3M",
        "--min-rate", "1k", "--max-trials", "8", "--max-time", "60s",
    )  # fmt: skip
    r = result(doc, "ndr")
    why = f"{r}\n{story(doc)}"
    first = doc["trials"][0]
    assert first["intended_pps"] == 3_000_000 and not first["valid"], why
    assert first["generator"]["limits"], why
    assert r["generator_limited"], why
    assert r["upper_pps"] is None, why  # no trial loadgen could not generate is an upper bound
    if r["lower_pps"] is not None:
        assert r["result"] == f"at least {r['lower_pps']:,.0f} pps (generator limit)"
