"""The ICMP path decision: a pure function of user, groups, the namespace's ping_group_range
and CAP_NET_RAW, made exactly as the kernel decides (ping_init_sock), and the lines it says."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from test_ui import snapshot, text

from loadgen.errors import PermissionProblem, UsageError
from loadgen.icmppath import (
    CLOSED_RANGE,
    LABELS,
    IcmpPath,
    Privileges,
    check_tx_path,
    choose,
    no_path_line,
    settle,
)
from loadgen.net.privilege import has_net_raw, ping_group_range
from loadgen.output.ui import render
from loadgen.plan import describe, make_plan
from loadgen.profile import parse_profile
from loadgen.targets import resolve_targets

NOBODY = Privileges(uid=65534, egid=65534, groups=(), ping_range=CLOSED_RANGE, net_raw=False)
ROOT = Privileges(uid=0, egid=0, groups=(0,), ping_range=CLOSED_RANGE, net_raw=True)


def with_range(p: Privileges, low: int, high: int, **kw: object) -> Privileges:
    return Privileges(
        **{**{f: getattr(p, f) for f in p.__slots__}, "ping_range": (low, high), **kw}
    )


def test_root_gets_the_raw_socket_even_where_the_range_admits_it() -> None:
    assert choose("auto", ROOT) is IcmpPath.RAW
    assert choose("auto", with_range(ROOT, 0, 2147483647)) is IcmpPath.RAW


def test_an_ordinary_user_admitted_by_the_range_gets_the_datagram_socket() -> None:
    assert choose("auto", with_range(NOBODY, 0, 2147483647)) is IcmpPath.DATAGRAM
    assert choose("datagram", with_range(NOBODY, 65534, 65534)) is IcmpPath.DATAGRAM


def test_a_supplementary_group_admits_as_the_kernel_lets_it() -> None:
    user = Privileges(uid=1000, egid=1000, groups=(27, 1000), ping_range=(27, 27), net_raw=False)
    assert user.admitted_gid() == 27
    assert choose("auto", user) is IcmpPath.DATAGRAM
    assert with_range(user, 28, 999).admitted_gid() is None


def test_range_bounds_are_inclusive_and_an_inverted_range_admits_nobody() -> None:
    assert with_range(NOBODY, 65534, 65535).admitted_gid() == 65534
    assert with_range(NOBODY, 0, 65533).admitted_gid() is None
    assert with_range(NOBODY, 65535, 65534).admitted_gid() is None  # low > high


def test_cap_net_raw_without_root_opens_raw_sockets() -> None:
    setcap = Privileges(uid=1000, egid=1000, groups=(), ping_range=CLOSED_RANGE, net_raw=True)
    assert choose("auto", setcap) is IcmpPath.RAW
    assert choose("raw", setcap) is IcmpPath.RAW


def test_root_with_cap_net_raw_dropped_falls_to_the_datagram_path_or_the_one_line() -> None:
    dropped = with_range(ROOT, 0, 0, net_raw=False)
    assert choose("auto", dropped) is IcmpPath.DATAGRAM
    with pytest.raises(PermissionProblem):
        choose("auto", with_range(ROOT, 1, 0, net_raw=False))


def test_neither_path_is_one_line_naming_both_fixes() -> None:
    with pytest.raises(PermissionProblem) as err:
        choose("auto", NOBODY)
    line = str(err.value)
    assert line == no_path_line(NOBODY) and "\n" not in line
    assert "setcap cap_net_raw+ep" in line and "run as root" in line
    assert 'net.ipv4.ping_group_range="0 2147483647"' in line
    assert "(1 0) admits no group" in line and "uid 65534" in line


def test_forcing_a_shut_path_says_which_and_how_to_open_it() -> None:
    with pytest.raises(PermissionProblem, match=r"icmp_socket = \"raw\" needs root"):
        choose("raw", with_range(NOBODY, 0, 2147483647))
    with pytest.raises(PermissionProblem, match=r"admits groups 1-1000, not .*groups 65534"):
        choose("datagram", with_range(NOBODY, 1, 1000))
    with pytest.raises(ValueError):
        choose("sideways", ROOT)


def test_the_packet_tx_path_needs_the_raw_path() -> None:
    check_tx_path(IcmpPath.RAW, "packet")
    check_tx_path(IcmpPath.DATAGRAM, "ip")
    with pytest.raises(UsageError, match='tx_path = "packet" needs root or CAP_NET_RAW'):
        check_tx_path(IcmpPath.DATAGRAM, "packet")


def test_the_plan_carries_and_describes_the_path() -> None:
    profile = parse_profile({"targets": "127.0.0.1,::1", "count": 3}, source="test")
    targets = resolve_targets(profile.targets, max_targets=10, family="auto").targets
    plan = make_plan(
        profile, targets, cpus_available=[0], run_id=1, ident_base=7, icmp_path=IcmpPath.DATAGRAM
    )
    assert {w.settings.icmp_socket for w in plan.workers} == {"datagram"}
    text = describe(plan)
    assert LABELS[IcmpPath.DATAGRAM] in text and "identifiers picked by the kernel" in text
    raw = make_plan(profile, targets, cpus_available=[0], run_id=1, ident_base=7)
    assert LABELS[IcmpPath.RAW] in describe(raw)
    packet = parse_profile({"targets": "127.0.0.1", "tx_path": "packet"}, source="test")
    with pytest.raises(UsageError):
        make_plan(
            packet, targets[:1], cpus_available=[0], run_id=1, ident_base=7,
            icmp_path=IcmpPath.DATAGRAM,
        )  # fmt: skip


def test_the_profile_key_takes_three_words() -> None:
    assert parse_profile({"targets": "127.0.0.1"}, source="t").icmp_socket == "auto"
    assert parse_profile({"targets": "127.0.0.1", "icmp_socket": "datagram"}, source="t")
    with pytest.raises(UsageError, match="icmp_socket"):
        parse_profile({"targets": "127.0.0.1", "icmp_socket": "dgram"}, source="t")


def test_the_facts_are_read_from_proc(tmp_path: Path) -> None:
    sysctl = tmp_path / "range"
    sysctl.write_text("100\t200\n")
    assert ping_group_range(str(sysctl)) == (100, 200)
    assert ping_group_range(str(tmp_path / "missing")) == CLOSED_RANGE
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000002000\n")  # bit 13 alone
    assert has_net_raw(str(status))
    status.write_text("Name:\tx\nCapEff:\t000001ffffffdfff\n")  # everything but bit 13
    assert not has_net_raw(str(status))


def test_the_live_table_header_names_the_path() -> None:
    snap, _ = snapshot([0], [20_000], path=LABELS[IcmpPath.DATAGRAM])
    for width in (80, 200):
        shown = text(render(snap), width)
        assert "ICMP via datagram socket (ping_group_range)" in shown
        assert max(len(line) for line in shown.splitlines()) <= width
    assert "ICMP via" not in text(render(snapshot([0], [20_000])[0]))


def refusing(*paths: IcmpPath, err: int = errno.EPERM) -> Callable[[IcmpPath], int]:
    """A kernel that refuses sockets of `paths` with `err` and opens the rest; records asks."""

    def refusal(path: IcmpPath) -> int:
        asked.append(path)
        return err if path in paths else 0

    asked: list[IcmpPath] = []
    refusal.asked = asked  # type: ignore[attr-defined]
    return refusal


def test_the_kernel_confirms_the_decision_with_one_socket() -> None:
    kernel = refusing()
    assert settle("auto", ROOT, kernel) is IcmpPath.RAW
    assert kernel.asked == [IcmpPath.RAW]  # type: ignore[attr-defined]


def test_auto_gives_way_to_the_other_path_the_kernel_opens() -> None:
    open_range = with_range(ROOT, 0, 0)
    assert settle("auto", open_range, refusing(IcmpPath.RAW)) is IcmpPath.DATAGRAM
    nobody = with_range(NOBODY, 0, 2147483647)
    assert settle("auto", nobody, refusing(IcmpPath.DATAGRAM, err=errno.EACCES)) is IcmpPath.RAW


def test_a_refused_forced_or_last_path_is_one_line_with_the_errno() -> None:
    with pytest.raises(PermissionProblem) as err:
        settle("datagram", with_range(NOBODY, 0, 2147483647), refusing(IcmpPath.DATAGRAM, err=13))
    line = str(err.value)
    assert "refused a datagram ICMP socket (EACCES)" in line and "\n" not in line
    assert "setcap cap_net_raw+ep" in line and "ping_group_range" in line
    with pytest.raises(PermissionProblem, match=r"refused a raw ICMP socket \(EPERM\)"):
        settle("auto", ROOT, refusing(IcmpPath.RAW, IcmpPath.DATAGRAM))
