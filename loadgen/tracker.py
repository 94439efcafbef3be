"""Probe tracking for one worker: every probe sent gets exactly one outcome record.

Owns the outstanding-probe table (a ring of slots per target), the expiry queue, duplicate and
reordering detection and the record stream. Pure and vectorised: it takes arrays and times in,
returns records; it never reads a clock or touches a socket. Times are CLOCK_REALTIME ns (kernel
RX stamps live there); the caller passes them in.

Probe k of the worker goes to local target `k % n_targets` with sequence `k // n_targets`, so
sequences are dense per target and need no per-target counters.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from loadgen.icmp import UNKNOWN_TARGET, DecodeStatus
from loadgen.records import RECORD_DTYPE, RecordFlag, RecordKind

_SEQ_BITS = 40  # reordering keys pack (target, seq) into one int64


class SlotState(IntEnum):
    EMPTY = 0  # free, or its probe was resolved by expiry
    OUTSTANDING = 1  # sent, nothing back yet
    ANSWERED = 2  # a good reply came back (its outcome is already emitted)
    DAMAGED = 3  # only ICMP errors or damaged replies came back so far


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, int(n - 1).bit_length())


class Tracker:
    def __init__(
        self,
        *,
        targets: NDArray[np.uint32],
        addresses: NDArray[np.uint32],
        rate_pps: float,
        timeout_ns: int,
        linger_ns: int,
        tx_flags: int = 0,
    ) -> None:
        self.n = len(targets)
        if self.n == 0:
            raise ValueError("a tracker needs at least one target")
        self.targets = np.asarray(targets, dtype=np.uint32)
        self.timeout_ns = timeout_ns
        self.linger_ns = linger_ns
        self.tx_flags = tx_flags
        # Global target index -> local index (-1: not ours).
        self._local = np.full(int(self.targets.max()) + 1, -1, dtype=np.int64)
        self._local[self.targets] = np.arange(self.n)
        # Address -> local index, for ICMP errors that quote only 8 bytes of our probe.
        self._addr_order = np.argsort(addresses, kind="stable")
        self._addr_sorted = np.asarray(addresses, dtype=np.uint32)[self._addr_order]
        # Each target needs room for every probe it can have outstanding during linger, twice over.
        per_target_pps = rate_pps / self.n
        self.window = _pow2_at_least(int(per_target_pps * (linger_ns / 1e9) * 2) + 64)
        size = self.n * self.window
        self._slot_seq = np.zeros(size, dtype=np.uint64)
        self._slot_tx = np.zeros(size, dtype=np.int64)
        self._state = np.zeros(size, dtype=np.uint8)
        # Expiry queue in send order; it can never hold more than the table.
        self._fifo_slot = np.zeros(size, dtype=np.int64)
        self._fifo_seq = np.zeros(size, dtype=np.uint64)
        self._fifo_tx = np.zeros(size, dtype=np.int64)
        self._head = 0  # next entry to expire
        self._tail = 0  # next free entry
        self._unresolved = 0  # entries before this are answered or expired
        self._max_seq = np.full(self.n, -1, dtype=np.int64)
        self.sent = 0  # probes sent by this worker (k of the next probe)
        self._pending: list[NDArray[np.void]] = []
        self.foreign = 0
        self.unattributed = 0
        self.evicted = 0

    # -- sending ---------------------------------------------------------------------------

    def plan_batch(self, count: int) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
        """Local target indexes and sequences of the next `count` probes (not yet sent)."""
        ks = np.arange(self.sent, self.sent + count, dtype=np.int64)
        return ks % self.n, (ks // self.n).astype(np.uint64)

    def on_sent(self, count: int, tx_ns: int) -> None:
        """The first `count` probes of the last plan_batch went out at `tx_ns`."""
        if count <= 0:
            return
        local, seq = self.plan_batch(count)
        slots = local * self.window + (seq & np.uint64(self.window - 1)).astype(np.int64)
        busy = self._state[slots] != SlotState.EMPTY
        if busy.any():
            # Only a pacing burst far beyond the table's margin gets here: resolve the old probes
            # now rather than overwrite them, so none goes unaccounted.
            self.evicted += int(busy.sum())
            self._resolve(slots[busy], self._slot_tx[slots[busy]])
        self._slot_seq[slots] = seq
        self._slot_tx[slots] = tx_ns
        self._state[slots] = SlotState.OUTSTANDING
        capacity = len(self._fifo_slot)
        pos = np.arange(self._tail, self._tail + count) % capacity
        self._fifo_slot[pos] = slots
        self._fifo_seq[pos] = seq
        last = self._fifo_tx[(self._tail - 1) % capacity] if self._tail else tx_ns
        self._fifo_tx[pos] = max(tx_ns, int(last))  # a stepped-back clock must not unsort it
        self._tail += count
        if self._tail - self._head > capacity:
            raise AssertionError("expiry queue overflow: the table is smaller than its margin")
        self.sent += count
        self._emit(RecordKind.SENT, np.full(count, tx_ns), 0, self.targets[local], self.tx_flags)

    # -- receiving -------------------------------------------------------------------------

    def on_replies(
        self,
        *,
        status: NDArray[np.uint8],
        target: NDArray[np.uint32],
        seq: NDArray[np.uint64],
        seq16_only: NDArray[np.bool_],
        quoted_dst: NDArray[np.uint32],
        payload_tx_ns: NDArray[np.int64],
        rx_ns: NDArray[np.int64],
        rx_flags: NDArray[np.uint8] | int,
    ) -> None:
        """Account for a batch of decoded packets, in arrival order."""
        flags = np.broadcast_to(np.asarray(rx_flags, dtype=np.uint8), status.shape) | np.uint8(
            self.tx_flags
        )
        self.foreign += int(np.count_nonzero(status >= DecodeStatus.FOREIGN))
        damaged = (status == DecodeStatus.BITFLIP) | (status == DecodeStatus.CORRUPTED)
        errors = status == DecodeStatus.ICMP_ERROR
        if damaged.any() or errors.any():
            self._on_damaged(status, target, seq, seq16_only, quoted_dst, damaged | errors, flags)
        good = np.flatnonzero(status == DecodeStatus.REPLY)
        if len(good):
            self._on_good(target[good], seq[good], payload_tx_ns[good], rx_ns[good], flags[good])

    def _locate(
        self, target: NDArray[np.uint32], seq: NDArray[np.uint64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """Local index, slot and whether the slot still tracks exactly that probe."""
        tgt = target.astype(np.int64)
        known = tgt < len(self._local)
        local = np.where(known, self._local[np.where(known, tgt, 0)], -1)
        slots = np.where(local >= 0, local, 0) * self.window + (
            seq & np.uint64(self.window - 1)
        ).astype(np.int64)
        live = (
            (local >= 0) & (self._slot_seq[slots] == seq) & (self._state[slots] != SlotState.EMPTY)
        )
        return local, slots, live

    def _on_good(
        self,
        target: NDArray[np.uint32],
        seq: NDArray[np.uint64],
        payload_tx_ns: NDArray[np.int64],
        rx_ns: NDArray[np.int64],
        flags: NDArray[np.uint8],
    ) -> None:
        local, slots, live = self._locate(target, seq)
        # Replies to probes we did send but have already given up on are stale, not foreign.
        sent_per_target = (self.sent - local + self.n - 1) // self.n
        stale = ~live & (local >= 0) & (seq.astype(np.int64) < sent_per_target)
        self.foreign += int(np.count_nonzero(~live & ~stale))
        if stale.any():
            tx = payload_tx_ns[stale]
            self._emit(RecordKind.STALE, tx, rx_ns[stale] - tx, target[stale], flags[stale])
        rows = np.flatnonzero(live)
        if not len(rows):
            return
        # The first reply per slot in this batch may be the answer; every other one is a copy.
        _, first_idx = np.unique(slots[rows], return_index=True)
        first = np.zeros(len(rows), dtype=bool)
        first[first_idx] = True
        rslots = slots[rows]
        answer = first & (self._state[rslots] != SlotState.ANSWERED)
        tx = self._slot_tx[rslots]
        rtt = rx_ns[rows] - tx
        dup = ~answer
        if dup.any():
            self._emit(RecordKind.DUPLICATE, tx[dup], rtt[dup], target[rows][dup], flags[rows][dup])
        if answer.any():
            arows = rows[answer]
            reordered = self._reordered(local[arows], seq[arows])
            aflags = flags[arows] | np.where(reordered, RecordFlag.REORDERED, 0).astype(np.uint8)
            artt = rtt[answer]
            kinds = np.where(artt <= self.timeout_ns, RecordKind.RECEIVED, RecordKind.LATE)
            self._emit(kinds, tx[answer], artt, target[arows], aflags)
            self._state[rslots[answer]] = SlotState.ANSWERED

    def _reordered(self, local: NDArray[np.int64], seq: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """True where a reply arrives after a reply to a later probe of the same target."""
        order = np.lexsort((np.arange(len(local)), local))
        loc_s = local[order]
        seq_s = seq[order].astype(np.int64)
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
        quoted_dst: NDArray[np.uint32],
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
            low = sq[short].astype(np.int64) & 0xFFFF
            full = newest - ((newest - low) & 0xFFFF)
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
        self._emit(kinds, self._slot_tx[slots], 0, tgt[live], flags[rows])
        outstanding = slots[self._state[slots] == SlotState.OUTSTANDING]
        self._state[outstanding] = SlotState.DAMAGED

    # -- expiry and output -----------------------------------------------------------------

    def expire(self, now_ns: int) -> None:
        """Give up on every probe sent more than linger ago: LOST, or ERRORED if damaged."""
        if self._head == self._tail:
            return
        capacity = len(self._fifo_slot)
        pos = np.arange(self._head, self._tail) % capacity
        count = int(np.searchsorted(self._fifo_tx[pos], now_ns - self.linger_ns, side="right"))
        if count == 0:
            return
        pos = pos[:count]
        slots = self._fifo_slot[pos]
        current = self._slot_seq[slots] == self._fifo_seq[pos]
        self._resolve(slots[current], self._slot_tx[slots[current]])
        self._head += count
        self._unresolved = max(self._unresolved, self._head)

    def _resolve(self, slots: NDArray[np.int64], tx: NDArray[np.int64]) -> None:
        state = self._state[slots]
        targets = self.targets[slots // self.window]
        for st, kind in (
            (SlotState.OUTSTANDING, RecordKind.LOST),
            (SlotState.DAMAGED, RecordKind.ERRORED),
        ):
            sel = state == st
            if sel.any():
                self._emit(kind, tx[sel], 0, targets[sel], self.tx_flags)
        self._state[slots] = SlotState.EMPTY

    def unresolved(self) -> int:
        """Probes still waiting for an outcome."""
        self._advance_unresolved()
        return self._tail - self._unresolved

    def _advance_unresolved(self) -> None:
        capacity = len(self._fifo_slot)
        while self._unresolved < self._tail:
            end = min(self._tail, self._unresolved + 4096)
            pos = np.arange(self._unresolved, end) % capacity
            slots = self._fifo_slot[pos]
            done = (self._slot_seq[slots] != self._fifo_seq[pos]) | (
                (self._state[slots] != SlotState.OUTSTANDING)
                & (self._state[slots] != SlotState.DAMAGED)
            )
            if done.all():
                self._unresolved = end
                continue
            self._unresolved += int(np.argmin(done))
            return

    def resolved_before(self, now_ns: int) -> int:
        """Every probe sent before this time has its outcome emitted. Seconds close on it;
        it also trails `now - timeout`, so a duplicate still lands in its probe's second."""
        self._advance_unresolved()
        mark = now_ns - self.timeout_ns
        if self._unresolved < self._tail:
            mark = min(mark, int(self._fifo_tx[self._unresolved % len(self._fifo_tx)]))
        return mark

    def finish(self) -> None:
        """End of run: give up on everything still outstanding."""
        self.expire(np.iinfo(np.int64).max // 2 + self.linger_ns)

    def take_records(self) -> NDArray[np.void]:
        if not self._pending:
            return np.zeros(0, dtype=RECORD_DTYPE)
        out = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        return out

    def _emit(
        self,
        kind: NDArray[np.integer] | int,
        tx_ns: NDArray[np.int64],
        rtt_ns: NDArray[np.int64] | int,
        target: NDArray[np.uint32],
        flags: NDArray[np.uint8] | int,
    ) -> None:
        rec = np.zeros(len(tx_ns), dtype=RECORD_DTYPE)
        rec["tx_ns"] = tx_ns
        rec["rtt_ns"] = rtt_ns
        rec["target"] = target
        rec["kind"] = kind
        rec["flags"] = flags
        self._pending.append(rec)
