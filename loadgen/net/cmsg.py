"""Control messages (cmsg(3)) read as numpy columns: pure functions over received buffers.

Owns the walk that finds each wanted cmsg in every row of a recvmmsg control buffer, the copy of
timestamps out of SCM_TIMESTAMPNS / SCM_TIMESTAMPING (Documentation/networking/timestamping.rst),
and the fast paths used when every row of a batch has the same control layout. No sockets here:
tests feed it hand-built bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.records import RecordFlag

CMSG_HDR = 16  # struct cmsghdr on LP64: size_t len, int level, int type; data 8-aligned
Layout = tuple[int, ...]  # (controllen, data offset of each wanted cmsg) shared by a batch


def cmsg_key(level: int, kind: int) -> int:
    """The cmsghdr (level, type) pair read as one native 64-bit word, for cmsg_offsets."""
    return int(np.array((level, kind), np.int32).view(np.uint64)[0])


def cmsg_offsets(
    ctrl: NDArray[np.uint8], used: NDArray[Any], keys: tuple[int, ...]
) -> list[NDArray[np.int64]]:
    """Byte offset of the data of each wanted cmsg (cmsg_key) in each row, -1 if absent.
    Steps through cmsg positions (one to three), never through rows; a bad length ends a row."""
    rows, width = ctrl.shape
    words = ctrl.reshape(rows, width).view(np.uint64)
    end = used.astype(np.int64)
    found = [np.full(rows, -1, np.int64) for _ in keys]
    # The first cmsg of every row sits at offset 0: read it as columns, without gathers.
    length = words[:, 0].astype(np.int64)
    ok = (end >= CMSG_HDR) & (length >= CMSG_HDR) & (length <= end)
    for key, out in zip(keys, found, strict=True):
        np.copyto(out, CMSG_HDR, where=ok & (words[:, 1] == key))
    at = (length + 7) & ~7  # CMSG_ALIGN
    live = np.flatnonzero(ok & (at + CMSG_HDR <= end))
    at, end, flat = at[live], end[live], words.reshape(-1)
    while live.size:
        word = live * (width // 8) + at // 8
        length = flat[word].astype(np.int64)
        ok = (length >= CMSG_HDR) & (at + length <= end)
        level_type = flat[word + 1]
        for key, out in zip(keys, found, strict=True):
            hit = ok & (level_type == key)
            out[live[hit]] = at[hit] + CMSG_HDR
        at = at + ((length + 7) & ~7)
        keep = ok & (at + CMSG_HDR <= end)
        live, at, end = live[keep], at[keep], end[keep]
    return found


def read_stamps(
    ctrl: NDArray[np.uint8],
    at: NDArray[np.int64],
    out_ns: NDArray[np.int64],
    out_flags: NDArray[np.uint8],
    soft: RecordFlag,
    hard: RecordFlag | None,
) -> None:
    """Copy the stamp at `at` (-1: none) into out_ns/out_flags where it is nonzero. The first
    timespec is the software one (SCM_TIMESTAMPNS, SCM_TIMESTAMPING ts[0]); when `hard` is
    given, a nonzero SCM_TIMESTAMPING ts[2] (raw hardware) wins over it."""
    words, count = ctrl.view(np.int64), at.size
    span = 6 if hard is not None else 2  # seconds and nanoseconds of ts[0] (ts[1], ts[2])
    rows: NDArray[np.intp] | slice
    if count and at[0] >= 0 and (at == at[0]).all():  # one layout in every row: columns
        rows = slice(0, count)
        grid = words[:count, at[0] // 8 : at[0] // 8 + span]
    else:
        rows = np.flatnonzero(at >= 0)
        grid = words[rows[:, None], (at[rows] // 8)[:, None] + np.arange(span)]
    ns = grid[:, 0] * 1_000_000_000 + grid[:, 1]
    flags: NDArray[np.uint8] | int = int(soft)
    if hard is not None:
        hw_ns = grid[:, 4] * 1_000_000_000 + grid[:, 5]
        is_hw = hw_ns != 0
        ns = np.where(is_hw, hw_ns, ns)
        flags = np.where(is_hw, int(hard), int(soft)).astype(np.uint8)
    good = ns != 0
    if not good.all():  # a stamp of zero means the kernel had none: keep the user-space time
        rows, ns = np.arange(count)[rows][good], ns[good]
        flags = flags if isinstance(flags, int) else flags[good]
    out_ns[rows] = ns
    out_flags[rows] = flags


def uniform(column: NDArray[Any]) -> int | None:
    """The value every element of a non-empty column holds, or None."""
    first = int(column[0])
    return first if (column == first).all() else None


def lone_stamp(words: NDArray[np.int64], key: int, out_ns: NDArray[np.int64]) -> bool:
    """Fill out_ns from rows (as 64-bit words) whose control data starts with the stamp cmsg
    `key`, its first timespec the stamp; the caller checked that nothing follows it. False,
    and out_ns not to be used, unless every row has that cmsg and a nonzero stamp."""
    if not (words[:, 1] == key).all():
        return False
    np.multiply(words[:, 2], 1_000_000_000, out=out_ns)
    out_ns += words[:, 3]
    return bool(words[:, 2].all())


def layout_holds(
    layout: Layout, words: NDArray[np.int64], used: NDArray[Any], key_words: NDArray[np.int64]
) -> bool:
    """Whether every row has `layout`: that control length, and the cmsg header of key_words[i]
    just before offset layout[i + 1]. Then the offsets serve as columns, with no walk."""
    if not (used == layout[0]).all():
        return False
    for i in range(1, len(layout)):  # the word before each cmsg's data: its (level, type)
        if not (words[:, (layout[i] - 8) // 8] == key_words[i - 1]).all():
            return False
    return True


def layout_of(used: NDArray[Any], found: list[NDArray[np.int64]]) -> Layout | None:
    """The layout a walked batch (cmsg_offsets) shares in every row, or None if rows differ or
    a wanted cmsg is missing."""
    seen = [uniform(c) for c in (used, *found)]
    if all(v is not None and v > 0 for v in seen):
        return tuple(int(v or 0) for v in seen)
    return None
