"""Probe tracking for one worker: every probe sent gets exactly one outcome record.

Owns the outstanding-probe tables, kernel TX stamps matched to their probes, duplicate and
reordering detection and the record stream. Pure and vectorised: arrays and times in, records
out; it never reads a clock or touches a socket. Times are CLOCK_REALTIME ns (kernel RX stamps
live there); the caller passes them in.

Probe k goes to local target `k % n_targets` with sequence `k // n_targets` (dense per target)
and lives in slot `k % size` of every table, which in send order is also the expiry queue: a
batch is a slice, and in-order replies touch memory in order. Probes head..sent-1 are the ones
in the tables, so a slot needs no tag: its probe is the one of that range that maps to it. A
batch gives one SENT record per target (with its probe count), each probe one outcome record.
A record's tx_ns is always the user-space send time (its second is the probe's bucket, the same
for SENT and outcome records); rtt_ns uses the kernel TX stamp when one in the RX stamp's clock
domain arrived before the reply was decided, and the record's TX flag says so.

Memory: SLOT_BYTES (9: send time, state) per slot, 18 once kernel TX stamps are on; the tables
hold rate x (linger x 1.25 + 0.1 s) + 64 slots per target, so 11.7 bytes per probe in flight
(rate x linger, at 2 s of linger; 23.4 with TX stamps): 23 MiB for 1M pps. Nothing is allocated
per probe.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.outages import BurstFinder
from loadgen.wire.icmp import UNKNOWN_TARGET, DecodeStatus
from loadgen.wire.records import MAX_PROBES, RECORD_DTYPE, RecordFlag, RecordKind
from loadgen.wire.tcp import widen

_SEQ_BITS = 40  # reordering keys pack (target, seq) into one int64
SLOT_BYTES = 9  # int64 send time + uint8 state; TX stamps add an int64 and a uint8
TX_STAMP_SLOT_BYTES = 9
# Probes stay in the tables from their send until the first expire() after linger: room for
# linger and a quarter more (expiry runs every frame, but a stalled turn delays it), plus a
# tenth of a second and 64 probes per target for short lingers and the pacer's catch-up bursts.
LINGER_MARGIN = 1.25
SLACK_NS = 100_000_000


class SlotState(IntEnum):
    EMPTY = 0  # free, or its probe was resolved by expiry
    OUTSTANDING = 1  # sent, nothing back yet
    ANSWERED = 2  # a good reply came back (its outcome is already emitted)
    DAMAGED = 3  # only ICMP errors or damaged replies came back so far


# Plain ints on the hot path: looking up an IntEnum member costs about a microsecond.
_EMPTY, _OUTSTANDING, _ANSWERED, _DAMAGED = (int(state) for state in SlotState)
_REPLY, _FOREIGN = int(DecodeStatus.REPLY), int(DecodeStatus.FOREIGN)
_SENT, _RECEIVED = int(RecordKind.SENT), int(RecordKind.RECEIVED)
_DUPLICATE, _REFUSED = int(RecordKind.DUPLICATE), int(RecordKind.REFUSED)
_REORDERED = np.uint8(RecordFlag.REORDERED)
_TX_HW = int(RecordFlag.TX_HARDWARE)
_FIELDS = ("tx_ns", "rtt_ns", "target", "kind", "flags", "probes")
_SCAN = 4096  # expiry looks at the oldest probes this many at a time
_FRAME_ROOM_S = 0.05  # a frame every ~20 ms: records of two and a half of them fit up front
_RX_BITS = np.uint8(RecordFlag.RX_KERNEL | RecordFlag.RX_HARDWARE)
# The kernel TX stamp that pairs with each kind of RX stamp: same clock, same layer.
_TX_FOR_RX = np.zeros(256, dtype=np.uint8)
_TX_FOR_RX[RecordFlag.RX_KERNEL] = RecordFlag.TX_KERNEL
_TX_FOR_RX[RecordFlag.RX_HARDWARE] = RecordFlag.TX_HARDWARE


def probes_of_tx_ids(ids: NDArray[np.uint32], first_k: int, sent: int) -> NDArray[np.int64]:
    """Probe numbers k of kernel TX stamp ids (OPT_ID): id i is the i-th packet sent since
    TX stamps were enabled, when the worker had sent `first_k` probes. Ids are 32 bits and
    wrap, so each is read as the newest probe sent so far (k < sent) that carries it."""
    newest = sent - 1 - first_k
    i = newest - ((newest - ids.astype(np.int64)) & 0xFFFFFFFF)
    k: NDArray[np.int64] = i + first_k
    return k


class Tracker:
    def __init__(
        self,
        *,
        targets: NDArray[np.uint32],
        addresses: NDArray[Any],
        rate_pps: float,
        timeout_ns: int,
        linger_ns: int,
    ) -> None:
        self.n = n = len(targets)
        if n == 0:
            raise ValueError("a tracker needs at least one target")
        self.targets = np.asarray(targets, dtype=np.uint32)
        self.timeout_ns = timeout_ns
        self.linger_ns = linger_ns
        # Global target index -> local index; -1 (also the last entry): not ours.
        self._local = np.full(int(self.targets.max()) + 2, -1, dtype=np.int64)
        self._local[self.targets] = np.arange(n)
        # Address -> local index, for ICMP errors that quote only 8 bytes of our probe. The
        # column is the decoder's quoted_dst form: u32 (IPv4) or V16 (IPv6, sorts bytewise).
        self._addr_order = np.argsort(addresses, kind="stable")
        self._addr_sorted = np.asarray(addresses)[self._addr_order]
        held_ns = linger_ns * LINGER_MARGIN + SLACK_NS
        self.window = math.ceil(rate_pps / n * held_ns / 1e9) + 64
        self._size = size = n * self.window
        self._slot_tx = np.zeros(size, dtype=np.int64)  # user-space send time
        self._state = np.zeros(size, dtype=np.uint8)
        # Kernel TX stamps (valid where kflag is TX_KERNEL or TX_HARDWARE): allocated with
        # the first stamp, so runs without them do not carry the columns.
        self._slot_ktx = np.zeros(0, dtype=np.int64)
        self._slot_kflag = np.zeros(0, dtype=np.uint8)
        self._cycle = np.arange(2 * n + 1024, dtype=np.int64)  # 0, 1, 2, ...: batch offsets
        self._head = 0  # next probe to expire
        self._unresolved = 0  # probes before this are answered or expired
        self._max_seq = np.full(n, -1, dtype=np.int64)
        self.sent = 0  # probes sent by this worker (k of the next probe)
        # Room for a frame's records at the planned rate (a SENT and an outcome per probe).
        self._records = _RecordColumns(int(rate_pps * _FRAME_ROOM_S))
        self.foreign = 0
        self.unattributed = 0
        self.evicted = 0
        self.bursts = BurstFinder(self.targets)  # fed every probe's outcome as it resolves

    # -- sending ---------------------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        """The most probes one plan_batch/on_sent may cover (half the table)."""
        return self._size // 2

    def plan_batch(self, count: int) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
        """Local target indexes and sequences of the next `count` probes (not yet sent)."""
        return self._plan(count)

    def _plan(self, count: int) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
        if not 0 <= count <= self.max_batch:
            raise ValueError(f"batches are 0..{self.max_batch} probes, not {count}")
        offset = self.sent % self.n
        if len(self._cycle) < offset + count:  # grows to the largest batch, once
            self._cycle = np.arange(self.n + 2 * count, dtype=np.int64)
        at = self._cycle[offset : offset + count]
        local = at % self.n
        seq = at // self.n + self.sent // self.n
        return local, seq.view(np.uint64)

    def _segments(self, first_k: int, count: int) -> list[tuple[slice, slice]]:
        """Probes first_k.. first_k + count - 1 as (slots, rows of the batch): one slice, or
        two where the batch crosses the end of the tables."""
        start = first_k % self._size
        head = min(count, self._size - start)
        out = [(slice(start, start + head), slice(0, head))]
        if head < count:
            out.append((slice(0, count - head), slice(head, count)))
        return out

    def on_sent(self, count: int, tx_ns: int) -> None:
        """The first `count` probes of the last plan_batch went out at `tx_ns`."""
        if count <= 0:
            return
        if not 0 <= count <= self.max_batch:
            raise ValueError(f"batches are 0..{self.max_batch} probes, not {count}")
        if len(self._cycle) < self.n + count:
            self._cycle = np.arange(self.n + 2 * count, dtype=np.int64)
        if self.sent + count - self._head > self._size:
            self.expire(tx_ns)  # the caller's last expire() may be a while ago: catch up
        overflow = self.sent + count - self._head - self._size
        if overflow > 0:
            # Probe k shares its slot with probe k - size. Only a pacing burst far beyond the
            # table's margin gets here: resolve the old probes now rather than overwrite them.
            self.evicted += self._expire_oldest(overflow)
        for slots, _ in self._segments(self.sent, count):
            self._slot_tx[slots] = tx_ns
            self._state[slots] = _OUTSTANDING
            if len(self._slot_kflag):
                self._slot_kflag[slots] = 0
        self._add_sent(count, tx_ns)
        self.sent += count

    def _add_sent(self, count: int, tx_ns: int) -> None:
        """One SENT record per target of the batch: round robin gives each count // n probes
        and the first count % n of them, from the batch's first target on, one more."""
        offset, n = self.sent % self.n, min(count, self.n)
        local = self._cycle[offset : offset + n] % self.n
        per_target = count // self.n + (np.arange(n) < count % self.n)
        while True:  # several records where one target got more than a record holds
            part = np.minimum(per_target, MAX_PROBES)
            self._records.add(_SENT, tx_ns, 0, self.targets[local], 0, part)
            per_target = per_target - part
            if not per_target.any():
                return

    def on_tx_stamps(
        self, k: NDArray[np.int64], tx_ns: NDArray[np.int64], flags: NDArray[np.uint8]
    ) -> None:
        """Kernel TX stamps of probes k, in any order, any subset, at most one per kind and
        probe: flags[i] is TX_KERNEL or TX_HARDWARE. A hardware stamp wins over a software one.
        Stamps of probes already resolved (or never sent) are ignored; a probe
        whose reply was decided before its stamp arrived keeps its user-space send time."""
        if not len(k):
            return
        if not len(self._slot_kflag):
            self._slot_ktx = np.zeros(self._size, dtype=np.int64)
            self._slot_kflag = np.zeros(self._size, dtype=np.uint8)
        k = np.asarray(k, dtype=np.int64)
        slots = k % self._size
        live = (k >= self._head) & (k < self.sent)
        hardware = flags == _TX_HW
        # Software stamps first, where no hardware one is held; then hardware ones over them.
        for take in (live & ~hardware & (self._slot_kflag[slots] != _TX_HW), live & hardware):
            if take.any():
                self._slot_ktx[slots[take]] = tx_ns[take]
                self._slot_kflag[slots[take]] = flags[take]

    # -- receiving -------------------------------------------------------------------------

    def on_replies(
        self,
        *,
        status: NDArray[np.uint8],
        target: NDArray[np.uint32],
        seq: NDArray[np.uint64],
        seq16_only: NDArray[np.bool_],
        quoted_dst: NDArray[Any],
        payload_tx_ns: NDArray[np.int64],
        rx_ns: NDArray[np.int64],
        rx_flags: NDArray[np.uint8] | int,
        probe_k32: NDArray[np.uint64] | None = None,
        refused: NDArray[np.bool_] | None = None,
    ) -> None:
        """Account for a batch of decoded packets, in arrival order. With `probe_k32` the
        packets name their probe by its number mod 2**32 (target and seq are then ignored);
        `refused` marks answers that refuse (a TCP RST): each also gets a REFUSED record."""
        if isinstance(rx_flags, int):
            flags = np.full(len(status), rx_flags, dtype=np.uint8)
        else:
            flags = np.asarray(rx_flags, dtype=np.uint8)
        if probe_k32 is not None:
            target, seq = self._probes_of_k32(probe_k32)
        seq = np.asarray(seq, dtype=np.uint64)
        good_mask = status == _REPLY
        if good_mask.all():  # the usual batch: nothing but good replies
            self._on_good(target, seq, payload_tx_ns, rx_ns, flags, refused)
            return
        self.foreign += int(np.count_nonzero(status >= _FOREIGN))
        damaged = (status == DecodeStatus.BITFLIP) | (status == DecodeStatus.CORRUPTED)
        damaged |= status == DecodeStatus.ICMP_ERROR
        if damaged.any():
            self._on_damaged(status, target, seq, seq16_only, quoted_dst, damaged, flags)
        good = np.flatnonzero(good_mask)
        if len(good):
            no = None if refused is None else refused[good]
            self._on_good(
                target[good], seq[good], payload_tx_ns[good], rx_ns[good], flags[good], no
            )

    def _probes_of_k32(
        self, k32: NDArray[np.uint64]
    ) -> tuple[NDArray[np.uint32], NDArray[np.uint64]]:
        """Target and seq of the newest probe sent whose number is k32 mod 2**32 (UNKNOWN_TARGET
        where none was sent yet)."""
        k = widen(k32, self.sent - 1, 32)
        known = k >= 0
        k = np.maximum(k, 0)
        target = np.where(known, self.targets[k % self.n], UNKNOWN_TARGET).astype(np.uint32)
        return target, (k // self.n).astype(np.uint64)

    def _locate(
        self, target: NDArray[np.uint32], seq: NDArray[np.uint64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """Local index, slot and whether the slot still tracks exactly that probe: probe
        k = seq * n + local is in the tables while head <= k < sent."""
        local = self._local[np.minimum(target, len(self._local) - 1)]
        # A target not ours (-1) or a sequence beyond any sent (garbage, which could
        # overflow k) gives some slot too, and `live` false.
        sane = (local >= 0) & (seq <= np.uint64(self.sent // self.n + 1))
        k = seq.view(np.int64) * self.n + local  # garbage where not sane, and masked
        live = sane & ((k - self._head).view(np.uint64) < np.uint64(self.sent - self._head))
        return local, k % self._size, live

    def _on_good(
        self,
        target: NDArray[np.uint32],
        seq: NDArray[np.uint64],
        payload_tx_ns: NDArray[np.int64],
        rx_ns: NDArray[np.int64],
        flags: NDArray[np.uint8],
        refused: NDArray[np.bool_] | None = None,
    ) -> None:
        local, slots, live = self._locate(target, seq)
        if not live.all():
            # Replies to probes we did send but have already given up on are stale, not foreign.
            sent_per_target = (self.sent - local + self.n - 1) // self.n
            iseq = seq.view(np.int64)
            stale = ~live & (local >= 0) & (iseq >= 0) & (iseq < sent_per_target)
            self.foreign += int(np.count_nonzero(~live & ~stale))
            if stale.any():
                tx = payload_tx_ns[stale]
                rtt = rx_ns[stale] - tx
                self._records.add(RecordKind.STALE, tx, rtt, target[stale], flags[stale])
            rows = np.flatnonzero(live)
            if not len(rows):
                return
            local, slots, seq = local[rows], slots[rows], seq[rows]
            target, rx_ns, flags = target[rows], rx_ns[rows], flags[rows]
            refused = None if refused is None else refused[rows]
        iseq = seq.view(np.int64)
        k = iseq * self.n + local
        in_order = len(k) < 2 or bool((k[1:] > k[:-1]).all())
        # The first reply per slot in this batch may be the answer; every other one is a copy.
        answer = self._state[slots] != _ANSWERED
        if not in_order:
            _, first_idx = np.unique(slots, return_index=True)
            first = np.zeros(len(slots), dtype=bool)
            first[first_idx] = True
            answer &= first
        tx = send_tx = self._slot_tx[slots]
        if len(self._slot_kflag):
            send_tx, tx_flags = self._kernel_send_times(slots, tx, flags)
            flags = flags | tx_flags
        rtt = rx_ns - send_tx
        if not answer.all():
            dup = ~answer
            self._records.add(_DUPLICATE, tx[dup], rtt[dup], target[dup], flags[dup])
            local, slots, iseq, target = local[answer], slots[answer], iseq[answer], target[answer]
            tx, rtt, flags, in_order = tx[answer], rtt[answer], flags[answer], False
            refused = None if refused is None else refused[answer]
            if not len(slots):
                return
        reordered = self._reordered(local, iseq, in_order)
        if reordered.any():
            flags = flags | np.where(reordered, _REORDERED, np.uint8(0))
        kinds = (rtt > self.timeout_ns).view(np.uint8) + np.uint8(_RECEIVED)  # else LATE
        self._records.add(kinds, tx, rtt, target, flags)
        if refused is not None and refused.any():
            self._records.add(_REFUSED, tx[refused], rtt[refused], target[refused], flags[refused])
        self._state[slots] = _ANSWERED

    def _kernel_send_times(
        self, slots: NDArray[np.int64], tx: NDArray[np.int64], flags: NDArray[np.uint8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        """The send times to subtract from these replies' RX stamps, and their TX flags: the
        kernel TX stamp where it pairs with the reply's RX stamp, else user space (flag 0)."""
        kflag = self._slot_kflag[slots]
        paired = (kflag != 0) & (kflag == _TX_FOR_RX[flags & _RX_BITS])
        send: NDArray[np.int64] = np.where(paired, self._slot_ktx[slots], tx)
        return send, np.where(paired, kflag, np.uint8(0))

    def _reordered(
        self, local: NDArray[np.int64], seq: NDArray[np.int64], in_order: bool
    ) -> NDArray[np.bool_]:
        """True where a reply arrives after a reply to a later probe of the same target.
        `in_order`: the batch is in increasing probe order, so only earlier batches count."""
        if in_order:
            out: NDArray[np.bool_] = seq < self._max_seq[local]
            np.maximum.at(self._max_seq, local, seq)
            return out
        order = np.argsort(local, kind="stable")
        loc_s = local[order]
        seq_s = seq[order]
        running = np.maximum.accumulate((loc_s << _SEQ_BITS) | seq_s)
        prev = np.empty_like(running)
        prev[0] = -1
        prev[1:] = running[:-1]
        new_group = np.ones(len(loc_s), dtype=bool)
        new_group[1:] = loc_s[1:] != loc_s[:-1]
        prior_in_batch = np.where(new_group, -1, prev & ((1 << _SEQ_BITS) - 1))
        prior = np.maximum(prior_in_batch, self._max_seq[loc_s])
        out = np.empty(len(local), dtype=bool)
        out[order] = seq_s < prior
        np.maximum.at(self._max_seq, loc_s, seq_s)
        return out

    def _on_damaged(
        self,
        status: NDArray[np.uint8],
        target: NDArray[np.uint32],
        seq: NDArray[np.uint64],
        seq16_only: NDArray[np.bool_],
        quoted_dst: NDArray[Any],
        mask: NDArray[np.bool_],
        flags: NDArray[np.uint8],
    ) -> None:
        rows = np.flatnonzero(mask)
        tgt = target[rows].copy()
        sq = seq[rows].copy()
        short = seq16_only[rows]
        if short.any():
            # Only the 16-bit ICMP sequence was quoted: find the target by the quoted address
            # and the newest probe whose low 16 bits match.
            pos = np.searchsorted(self._addr_sorted, quoted_dst[rows][short])
            pos = np.minimum(pos, len(self._addr_sorted) - 1)
            hit = self._addr_sorted[pos] == quoted_dst[rows][short]
            local = np.where(hit, self._addr_order[pos], 0)
            sent_here = (self.sent - local + self.n - 1) // self.n
            newest = np.maximum(sent_here - 1, 0)
            full = widen(sq[short], newest, 16)
            tgt[short] = np.where(hit & (full >= 0), self.targets[local], UNKNOWN_TARGET)
            sq[short] = np.maximum(full, 0).astype(np.uint64)
        _, slots, live = self._locate(tgt, sq)
        self.unattributed += int(np.count_nonzero(~live))
        if not live.any():
            return
        rows, slots = rows[live], slots[live]
        st = status[rows]
        kinds = np.select(
            [st == DecodeStatus.BITFLIP, st == DecodeStatus.CORRUPTED],
            [RecordKind.BITFLIP, RecordKind.CORRUPTED],
            RecordKind.ICMP_ERROR,
        )
        self._records.add(kinds, self._slot_tx[slots], 0, tgt[live], flags[rows])
        outstanding = slots[self._state[slots] == _OUTSTANDING]
        self._state[outstanding] = _DAMAGED

    # -- expiry and output -----------------------------------------------------------------

    def expire(self, now_ns: int) -> None:
        """Give up on every probe sent more than linger ago: LOST, or ERRORED if damaged."""
        if self._head == self.sent:
            return
        count = self._count_sent_by(now_ns - self.linger_ns)
        if count:
            self._expire_oldest(count)

    def _count_sent_by(self, cutoff_ns: int) -> int:
        """How many unexpired probes, oldest first, were sent at or before cutoff_ns, up to the
        first one sent after it (after a clock step back the probes behind it wait for it)."""
        count, end = 0, self.sent - self._head
        while count < end:
            start = (self._head + count) % self._size
            chunk = self._slot_tx[start : start + min(end - count, _SCAN)]
            after = chunk > cutoff_ns
            if after.any():
                return count + int(np.argmax(after))
            count += len(chunk)
        return count

    def _expire_oldest(self, count: int) -> int:
        """Resolve the `count` oldest unexpired probes; returns how many had no outcome yet."""
        resolved = sum(
            self._resolve(slots, self._head + rows.start)
            for slots, rows in self._segments(self._head, count)
        )
        self._head += count
        self._unresolved = max(self._unresolved, self._head)
        return resolved

    def _resolve(self, slots: slice, first_k: int) -> int:
        """LOST or ERRORED for the unanswered probes in `slots` (the first is probe first_k),
        which become free. A LOST record has no RTT: its rtt_ns holds the probe's sequence."""
        state = self._state[slots]
        lost = state == _OUTSTANDING
        if self.bursts.open or lost.any():  # slot % n is the probe's local target
            local = np.arange(slots.start, slots.stop) % self.n
            self.bursts.feed(local, lost, self._slot_tx[slots])
        resolved = 0
        for st, kind in ((_OUTSTANDING, RecordKind.LOST), (_DAMAGED, RecordKind.ERRORED)):
            sel = state == st
            if sel.any():
                rows = np.flatnonzero(sel)
                targets = self.targets[(rows + slots.start) % self.n]
                seq = (rows + first_k) // self.n if kind == RecordKind.LOST else 0
                self._records.add(kind, self._slot_tx[slots][sel], seq, targets, 0)
                resolved += len(targets)
        self._state[slots] = _EMPTY
        return resolved

    def unresolved(self) -> int:
        """Probes still waiting for an outcome."""
        self._advance_unresolved()
        return self.sent - self._unresolved

    def _advance_unresolved(self) -> None:
        size = self._size
        while self._unresolved < self.sent:
            start = self._unresolved % size
            end = min(size, start + self.sent - self._unresolved, start + 4096)
            state = self._state[start:end]
            done = (state != _OUTSTANDING) & (state != _DAMAGED)
            if done.all():
                self._unresolved += end - start
                continue
            self._unresolved += int(np.argmin(done))
            return

    def resolved_before(self, now_ns: int) -> int:
        """Every probe sent before this time has its outcome emitted. Seconds close on it;
        it also trails `now - timeout`, so a duplicate still lands in its probe's second."""
        self._advance_unresolved()
        mark = now_ns - self.timeout_ns
        if self._unresolved < self.sent:
            mark = min(mark, int(self._slot_tx[self._unresolved % self._size]))
        return mark

    def finish(self) -> None:
        """End of run: give up on everything still outstanding."""
        self.expire(np.iinfo(np.int64).max // 2 + self.linger_ns)
        self.bursts.flush()

    def take_records(self) -> NDArray[np.void]:
        """Every record emitted since the last call, in emission order."""
        return self._records.take()

    def take_bursts(self) -> NDArray[np.void]:
        """Every loss burst (`records.BURST_DTYPE`) that ended since the last call."""
        return self.bursts.take()


class _RecordColumns:
    """Records gathered column by column in buffers kept between frames: one structured array
    is assembled per frame rather than one per batch."""

    _DTYPES = (np.int64, np.int64, np.uint32, np.uint8, np.uint8, np.uint16)  # as _FIELDS

    def __init__(self, capacity: int) -> None:
        self.n = 0
        room = max(4096, capacity)
        self.cols: tuple[NDArray[np.generic], ...] = tuple(np.zeros(room, t) for t in self._DTYPES)

    def add(
        self,
        kind: NDArray[np.integer] | int,
        tx_ns: NDArray[np.int64] | int,
        rtt_ns: NDArray[np.int64] | int,
        target: NDArray[np.uint32],
        flags: NDArray[np.uint8] | int,
        probes: NDArray[np.integer] | int = 0,
    ) -> None:
        end = self.n + len(target)
        if end > len(self.cols[0]):
            grown = max(end, 2 * len(self.cols[0]))
            self.cols = tuple(
                np.concatenate([c[: self.n], np.zeros(grown - self.n, c.dtype)]) for c in self.cols
            )
        at = slice(self.n, end)
        tx, rtt, tgt, knd, flg, prb = self.cols
        tx[at] = tx_ns
        rtt[at] = rtt_ns
        tgt[at] = target
        knd[at] = kind
        flg[at] = flags
        prb[at] = probes
        self.n = end

    def take(self) -> NDArray[np.void]:
        n, self.n = self.n, 0
        out = np.zeros(n, dtype=RECORD_DTYPE)
        if n:
            for name, col in zip(_FIELDS, self.cols, strict=True):
                out[name] = col[:n]
        return out
