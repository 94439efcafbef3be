"""Probe kinds through the one pipeline: the `probe` and `port` keys, the flags that set them,
ports dealt over targets by the plan and carried to workers, and kinds this build cannot send
refused by the plan in one line, before any process starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen import kinds
from loadgen.cli import build_parser, main, profile_from_args
from loadgen.coordinator import _plan_message
from loadgen.errors import ProfileError
from loadgen.plan import describe, make_plan
from loadgen.profile import Profile, parse_profile
from loadgen.targets import Target
from loadgen.wire.messages import PlanMsg, decode, encode
from loadgen.wire.probekind import IMPLEMENTED, ProbeKind


def profile(**data: Any) -> Profile:
    return parse_profile({"targets": ["198.18.0.1"], **data}, source="k.toml")


def error_of(**data: Any) -> str:
    with pytest.raises(ProfileError) as err:
        profile(**data)
    return str(err.value)


def targets(n: int) -> tuple[Target, ...]:
    return tuple(Target(index=i, address=f"198.18.0.{i + 1}", family=4, name="") for i in range(n))


def test_the_kinds_are_exactly_these_names() -> None:
    assert [str(k) for k in ProbeKind] == ["icmp", "tcp-syn", "tcp-connect", "udp", "stamp"]


def test_every_implemented_kind_has_a_worker_setup_and_no_other_does() -> None:
    assert set(kinds.SETUPS) == set(IMPLEMENTED)


@pytest.mark.parametrize(
    ("port", "ports"),
    [
        (443, (443,)),
        ("443", (443,)),
        ("80,443", (80, 443)),
        ("80 443", (80, 443)),
        ([80, "443"], (80, 443)),
        ("8000-8003", (8000, 8001, 8002, 8003)),
        (["22", "8000-8001"], (22, 8000, 8001)),
        ("65535", (65535,)),
    ],
)
def test_port_spellings(port: Any, ports: tuple[int, ...]) -> None:
    got = profile(probe="tcp-syn", port=port)
    assert (got.probe, got.ports) == (ProbeKind.TCP_SYN, ports)


def test_defaults_icmp_without_ports_and_stamp_on_862() -> None:
    assert (profile().probe, profile().ports) == (ProbeKind.ICMP, ())
    assert profile(probe="stamp").ports == (862,)
    assert profile(probe="stamp", port=4000).ports == (4000,)


@pytest.mark.parametrize("kind", ["tcp-syn", "tcp-connect", "udp"])
def test_a_kind_with_ports_needs_one(kind: str) -> None:
    message = error_of(probe=kind)
    assert message == (
        f'k.toml: probe = "{kind}" needs a port; add port = 443 (a list "80,443" or a range '
        '"8000-8010" works too)'
    )


def test_port_with_icmp_is_one_line_that_says_what_to_do() -> None:
    message = error_of(port="80")
    assert "\n" not in message
    assert 'probe = "icmp" has no port; drop port, or set probe = "tcp-syn"' in message


@settings(max_examples=100, deadline=None)
@given(
    n_targets=st.integers(1, 40),
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=7, unique=True),
    workers=st.integers(1, 5),
)
def test_ports_are_dealt_round_robin_in_target_order_whatever_the_workers(
    n_targets: int, ports: list[int], workers: int
) -> None:
    prof = profile(probe="tcp-syn", port=ports, workers=workers)
    with pytest.MonkeyPatch.context() as mp:  # dealing ports does not depend on the build
        mp.setattr("loadgen.plan.IMPLEMENTED", frozenset(ProbeKind))
        run = make_plan(prof, targets(n_targets), cpus_available=(0, 1), run_id=1, ident_base=9)
    got = {t.index: p for w in run.workers for t, p in zip(w.targets, w.ports, strict=True)}
    assert got == {i: ports[i % len(ports)] for i in range(n_targets)}
    for worker in run.workers:
        msg = decode(encode(_plan_message(worker)))
        assert isinstance(msg, PlanMsg)
        assert msg.settings.kind is ProbeKind.TCP_SYN
        assert [t.port for t in msg.targets] == list(worker.ports)


def test_an_icmp_plan_carries_no_ports_and_its_message_says_icmp() -> None:
    run = make_plan(profile(), targets(3), cpus_available=(0,), run_id=1, ident_base=9)
    msg = decode(encode(_plan_message(run.workers[0])))
    assert isinstance(msg, PlanMsg)
    assert msg.settings.kind is ProbeKind.ICMP and {t.port for t in msg.targets} == {0}


@pytest.mark.parametrize("kind", sorted(set(ProbeKind) - IMPLEMENTED))
def test_a_kind_this_build_cannot_send_is_refused_by_the_plan(kind: ProbeKind) -> None:
    with pytest.raises(ProfileError) as err:
        make_plan(
            profile(probe=kind, port=80), targets(2), cpus_available=(0,), run_id=1, ident_base=9
        )
    assert str(err.value).startswith(f'k.toml: probe = "{kind}" is not implemented in this build;')


def test_check_says_so_before_any_process_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = sorted(set(ProbeKind) - IMPLEMENTED)
    if not missing:
        pytest.skip("every kind is implemented")
    path = tmp_path / "k.toml"
    path.write_text(f'targets = ["127.0.0.1"]\nprobe = "{missing[0]}"\nport = 7\n')
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    sendable = ", ".join(f'"{k}"' for k in sorted(IMPLEMENTED))
    assert err == (
        f'loadgen: error: {path}: probe = "{missing[0]}" is not implemented in this build; '
        f"use one of {sendable}\n"
    )


@pytest.mark.parametrize(
    ("flags", "kind", "ports"),
    [
        (["--tcp", "443"], ProbeKind.TCP_SYN, (443,)),
        (["--tcp", "80,443"], ProbeKind.TCP_SYN, (80, 443)),
        (["--tcp-connect", "8000-8001"], ProbeKind.TCP_CONNECT, (8000, 8001)),
        ([], ProbeKind.ICMP, ()),
    ],
)
def test_flags_pick_the_kind_and_its_ports(
    flags: list[str], kind: ProbeKind, ports: tuple[int, ...]
) -> None:
    got = profile_from_args(build_parser().parse_args(["ping", "127.0.0.1", *flags]))
    assert (got.probe, got.ports) == (kind, ports)


def test_tcp_and_tcp_connect_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "127.0.0.1", "--tcp", "80", "--tcp-connect", "80"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_describe_names_the_kind_and_ports() -> None:
    run = make_plan(profile(), targets(1), cpus_available=(0,), run_id=1, ident_base=9)
    assert "probes: icmp, 64-byte payload" in describe(run)


def test_describe_a_syn_plan_shows_ports_source_blocks_and_what_happens_to_rsts() -> None:
    prof = profile(probe="tcp-syn", port="80,443", workers=2, suppress_rst=True)
    run = make_plan(prof, targets(3), cpus_available=(0, 1), run_id=1, ident_base=0)
    text = describe(run)
    assert "probes: tcp-syn to ports 80, 443 (round-robin), ttl 64" in text
    assert "source ports: 61000-61511, 61512-62023 (worker by worker)" in text
    assert "RSTs: dropped by a temporary nftables table (suppress_rst)" in text
    many = profile(probe="tcp-syn", port=80, workers=41)
    with pytest.raises(ProfileError, match="set workers = 40 or fewer"):
        make_plan(many, targets(41), cpus_available=(0,), run_id=1, ident_base=0)


def test_the_link_path_is_for_icmp_only() -> None:
    prof = profile(probe="tcp-syn", port=80, tx_path="packet")
    with pytest.raises(ProfileError, match='tx_path = "packet" sends ICMP echo only'):
        make_plan(prof, targets(1), cpus_available=(0,), run_id=1, ident_base=0)
