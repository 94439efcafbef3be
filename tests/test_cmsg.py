"""The pure control-message readers (loadgen.net.cmsg) on hand-built recvmmsg control buffers:
the walk, the stamp copy, and the same-layout fast paths, which must agree with the walk."""

from __future__ import annotations

import socket
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.net import cmsg
from loadgen.wire.records import RecordFlag

SO_TIMESTAMPING, SO_RXQ_OVFL = 37, 40
STAMP_KEY = cmsg.cmsg_key(socket.SOL_SOCKET, SO_TIMESTAMPING)
DROPS_KEY = cmsg.cmsg_key(socket.SOL_SOCKET, SO_RXQ_OVFL)
WIDTH = 128


def put_cmsg(ctrl: NDArray[np.uint8], row: int, at: int, kind: int, data: bytes) -> None:
    header = struct.pack("=Qii", 16 + len(data), socket.SOL_SOCKET, kind)
    ctrl[row, at : at + 16 + len(data)] = np.frombuffer(header + data, np.uint8)


def test_cmsg_walker_finds_each_kind_per_row_and_survives_garbage() -> None:
    ctrl = np.zeros((6, 128), np.uint8)
    put_cmsg(ctrl, 0, 0, SO_TIMESTAMPING, bytes(48))  # timestamping, then the drop counter
    put_cmsg(ctrl, 0, 64, 40, bytes(4))
    put_cmsg(ctrl, 1, 0, 40, bytes(4))  # the drop counter alone
    put_cmsg(ctrl, 3, 0, 37, b"")
    ctrl[3, 0:8] = 3  # a length shorter than a header: stop there, find nothing
    put_cmsg(ctrl, 4, 0, 40, bytes(4))  # 20 bytes, padded to 24, then timestamping
    put_cmsg(ctrl, 4, 24, 37, bytes(48))
    put_cmsg(ctrl, 5, 0, 40, bytes(4))  # three deep, padding each time; the later one wins
    put_cmsg(ctrl, 5, 24, 40, bytes(4))
    put_cmsg(ctrl, 5, 48, 37, bytes(48))
    used = np.array([88, 20, 0, 128, 88, 112], np.uint64)
    wanted = (cmsg.cmsg_key(socket.SOL_SOCKET, 37), cmsg.cmsg_key(socket.SOL_SOCKET, 40))
    stamps, drops = cmsg.cmsg_offsets(ctrl, used, wanted)
    assert stamps.tolist() == [16, -1, -1, -1, 40, 64]
    assert drops.tolist() == [80, 16, -1, -1, 16, 40]
    ctrl[0, 0:8] = np.frombuffer(struct.pack("=Q", 200), np.uint8)  # runs past the end
    stamps, drops = cmsg.cmsg_offsets(ctrl, used, wanted)
    ctrl[4, 24:32] = np.frombuffer(struct.pack("=Q", 72), np.uint8)  # and the second one
    stamps, drops = cmsg.cmsg_offsets(ctrl, used, wanted)
    assert stamps[0] == -1 and drops[0] == -1
    assert stamps[4] == -1 and drops[4] == 16


def test_stamps_prefer_hardware_then_software_then_user_time() -> None:
    ctrl = np.zeros((3, 128), np.uint8)
    put_cmsg(
        ctrl, 0, 0, SO_TIMESTAMPING, struct.pack("=6q", 5, 6, 0, 0, 7, 8)
    )  # software and hardware
    put_cmsg(ctrl, 1, 0, 37, struct.pack("=6q", 5, 6, 0, 0, 0, 0))  # software only
    put_cmsg(ctrl, 2, 0, 37, bytes(48))  # nothing stamped: the user-space time stays
    at = np.array([16, 16, 16], np.int64)
    out_ns, out_flags = np.full(3, 99, np.int64), np.zeros(3, np.uint8)
    soft, hard = RecordFlag.RX_KERNEL, RecordFlag.RX_HARDWARE
    cmsg.read_stamps(ctrl, at, out_ns, out_flags, soft, hard)
    assert out_ns.tolist() == [7_000_000_008, 5_000_000_006, 99]
    assert out_flags.tolist() == [hard, soft, 0]
    out_ns[:], out_flags[:] = 99, 0  # hardware not asked for: ts[2] is not looked at
    cmsg.read_stamps(ctrl, at, out_ns, out_flags, soft, None)
    assert out_ns.tolist() == [5_000_000_006, 5_000_000_006, 99]
    assert out_flags.tolist() == [soft, soft, 0]
    ctrl[2] = 0  # rows whose stamps sit at different places, or nowhere
    put_cmsg(ctrl, 2, 0, 40, bytes(4))
    put_cmsg(ctrl, 2, 24, 37, struct.pack("=6q", 1, 2, 0, 0, 3, 4))
    out_ns[:], out_flags[:] = 99, 0
    cmsg.read_stamps(ctrl, np.array([16, -1, 40]), out_ns, out_flags, soft, hard)
    assert out_ns.tolist() == [7_000_000_008, 99, 3_000_000_004]
    assert out_flags.tolist() == [hard, 0, hard]


def stamp_then_drops(
    rows: int, stamps_ns: list[int]
) -> tuple[NDArray[np.uint8], NDArray[np.uint64]]:
    """The receive path's usual layout: SCM_TIMESTAMPING (64 bytes) then SO_RXQ_OVFL (20)."""
    ctrl = np.zeros((rows, WIDTH), np.uint8)
    for row, ns in enumerate(stamps_ns):
        put_cmsg(ctrl, row, 0, SO_TIMESTAMPING, struct.pack("=6q", *divmod(ns, 10**9), 0, 0, 0, 0))
        put_cmsg(ctrl, row, 64, SO_RXQ_OVFL, struct.pack("=I", row))
    return ctrl, np.full(rows, 84, np.uint64)


def test_a_shared_layout_is_found_once_and_then_checked_without_a_walk() -> None:
    ctrl, used = stamp_then_drops(4, [1, 2, 3, 4])
    found = cmsg.cmsg_offsets(ctrl, used, (STAMP_KEY, DROPS_KEY))
    layout = cmsg.layout_of(used, found)
    assert layout == (84, 16, 80)
    words = ctrl.view(np.int64)
    keys = np.array([STAMP_KEY, DROPS_KEY], np.uint64).view(np.int64)
    assert cmsg.layout_holds(layout, words, used, keys)
    swapped = ctrl.copy()  # the same length, but the drop counter first: not the layout
    for row in range(4):
        swapped[row] = 0
        put_cmsg(swapped, row, 0, SO_RXQ_OVFL, bytes(4))
        put_cmsg(swapped, row, 24, SO_TIMESTAMPING, bytes(48))
    assert not cmsg.layout_holds(layout, swapped.view(np.int64), used, keys)
    shorter = used.copy()
    shorter[2] = 64  # one row without the drop counter
    assert not cmsg.layout_holds(layout, words, shorter, keys)


def test_no_layout_when_rows_differ_or_a_cmsg_is_missing() -> None:
    ctrl, used = stamp_then_drops(3, [1, 2, 3])
    ctrl[1] = 0
    put_cmsg(ctrl, 1, 0, SO_TIMESTAMPING, bytes(48))  # stamp only
    used[1] = 64
    found = cmsg.cmsg_offsets(ctrl, used, (STAMP_KEY, DROPS_KEY))
    assert cmsg.layout_of(used, found) is None
    ctrl, used = stamp_then_drops(3, [1, 2, 3])
    found = cmsg.cmsg_offsets(ctrl, used, (STAMP_KEY, cmsg.cmsg_key(socket.SOL_IP, 11)))
    assert cmsg.layout_of(used, found) is None  # IP_RECVERR is in no row
    assert cmsg.uniform(np.array([7, 7, 7])) == 7 and cmsg.uniform(np.array([7, 8])) is None


def test_a_lone_stamp_is_read_as_columns() -> None:
    ctrl = np.zeros((3, 64), np.uint8)
    for row, ns in enumerate([5_000_000_006, 1_700_000_000_123_456_789, 2_000_000_000]):
        put_cmsg(ctrl, row, 0, SO_TIMESTAMPING, struct.pack("=6q", *divmod(ns, 10**9), 0, 0, 0, 0))
    out = np.zeros(3, np.int64)
    assert cmsg.lone_stamp(ctrl.view(np.int64), STAMP_KEY, out)
    assert out.tolist() == [5_000_000_006, 1_700_000_000_123_456_789, 2_000_000_000]
    put_cmsg(ctrl, 1, 0, SO_TIMESTAMPING, bytes(48))  # a row the kernel did not stamp
    assert not cmsg.lone_stamp(ctrl.view(np.int64), STAMP_KEY, out)
    put_cmsg(ctrl, 1, 0, SO_RXQ_OVFL, bytes(48))  # a row with another cmsg first
    assert not cmsg.lone_stamp(ctrl.view(np.int64), STAMP_KEY, out)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 2**62), min_size=1, max_size=40),
    st.lists(
        st.sampled_from(["both", "stamp", "drops", "none", "garbage"]), min_size=40, max_size=40
    ),
)
def test_the_fast_paths_agree_with_the_walk(stamps_ns: list[int], shapes: list[str]) -> None:
    """Whatever the rows hold, a layout found and checked gives the offsets the walk gives,
    and the stamps read through it equal those read through the walk."""
    rows = len(stamps_ns)
    ctrl, used = stamp_then_drops(rows, stamps_ns)
    for row in range(rows):
        shape = shapes[row]
        if shape == "stamp":
            ctrl[row, 64:] = 0
            used[row] = 64
        elif shape == "drops":
            ctrl[row] = 0
            put_cmsg(ctrl, row, 0, SO_RXQ_OVFL, bytes(4))
            used[row] = 20
        elif shape == "none":
            used[row] = 0
        elif shape == "garbage":
            ctrl[row, 0:8] = 255  # a length past the end
    found = cmsg.cmsg_offsets(ctrl, used, (STAMP_KEY, DROPS_KEY))
    layout = cmsg.layout_of(used, found)
    keys = np.array([STAMP_KEY, DROPS_KEY], np.uint64).view(np.int64)
    holds = layout is not None and cmsg.layout_holds(layout, ctrl.view(np.int64), used, keys)
    all_both = all(shapes[r] == "both" for r in range(rows))
    assert holds == all_both
    if holds:
        assert layout is not None
        assert (found[0] == layout[1]).all() and (found[1] == layout[2]).all()
    walked_ns, walked_flags = np.zeros(rows, np.int64), np.zeros(rows, np.uint8)
    cmsg.read_stamps(ctrl, found[0], walked_ns, walked_flags, RecordFlag.RX_KERNEL, None)
    expected = [ns if shapes[r] in ("both", "stamp") else 0 for r, ns in enumerate(stamps_ns)]
    assert walked_ns.tolist() == expected
