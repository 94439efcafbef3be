"""A STAMP worker's extra records, sans-IO: one-way samples of every good reply (forward T2-T1,
reverse T4-T3, residence T3-T2, as OWD_FWD / OWD_REV / RESIDENCE records) and the direction of
each LOST probe to a stateful reflector (RFC 8762 4.3), read off the reflector's own sequence.

Rule: between two replies a and b of one target (neighbours in send order), we sent
s_b - s_a - 1 probes and lost them all; the reflector saw r_b - r_a - 1 of them, so exactly that
many were lost on the way back and the rest on the way there. Each LOST probe of that gap gets
LOST_REVERSE while the gap's reverse count lasts, then LOST_FORWARD: per gap the split is exact,
within a mixed gap which probe went which way is not known. A probe with no later reply from its
target (the end of a run, an outage longer than linger) gets neither. A stateless reflector
(its sequence copies ours) splits nothing.

With the Class of Service TLV, the DSCP/ECN of good replies (at the reflector, back here) are
tallied per target and observation between takes: one COS record each (`cos`), not one per reply.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from loadgen import cos
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.records import MAX_PROBES, RECORD_DTYPE, RecordKind

_BEFORE_FIRST = (-1, -1)  # a session's virtual reply before probe 0: both counters at -1


@dataclass(slots=True)
class _Replies:
    """One target's good replies from a stateful reflector, in sequence (= send) order."""

    seq: list[int] = field(default_factory=list)  # sorted
    tx_ns: list[int] = field(default_factory=list)  # their send times, so sorted too
    reflector_seq: list[int] = field(default_factory=list)
    used: dict[int, list[int]] = field(default_factory=dict)  # gap (s_a) -> [reverse, forward]
    forgot: bool = False  # older replies were dropped: the gap before the first is unknown


class StampFigures:
    """Kept per worker; `keep_ns` bounds memory (replies older than that before the newest are
    dropped: a LOST probe is decided within linger of its send, so 2 x linger suffices)."""

    def __init__(self, keep_ns: int, sent_tos: int | None = None) -> None:
        self.keep_ns = keep_ns
        self.sent_tos = sent_tos  # None: no Class of Service TLV sent, nothing tallied
        self._targets: dict[int, _Replies] = {}
        self._records: list[NDArray[np.void]] = []
        self._cos: dict[tuple[int, int], list[int]] = {}  # (target, packed) -> [replies, tx_ns]

    def on_replies(
        self,
        *,
        status: NDArray[np.uint8],
        target: NDArray[np.uint32],
        seq: NDArray[np.uint64],
        tx_ns: NDArray[np.int64],
        rx_ns: NDArray[np.int64],
        rx_flags: NDArray[np.uint8],
        t2_ns: NDArray[np.int64],
        t3_ns: NDArray[np.int64],
        reflector_seq: NDArray[np.int64],
        stateful: NDArray[np.bool_],
        ttl: NDArray[np.int64],
        cos_fwd_tos: NDArray[np.int64] | None = None,
        cos_rp: NDArray[np.int64] | None = None,
        cos_rev_tos: NDArray[np.int64] | None = None,
    ) -> None:
        good = np.flatnonzero(status == DecodeStatus.REPLY)
        if not len(good):
            return
        t1, t2, t3, t4 = tx_ns[good], t2_ns[good], t3_ns[good], rx_ns[good]
        for kind, value in (
            (RecordKind.OWD_FWD, t2 - t1),
            (RecordKind.OWD_REV, t4 - t3),
            (RecordKind.RESIDENCE, t3 - t2),
            (RecordKind.REFLECTOR_TTL, ttl[good]),
        ):
            out = np.zeros(len(good), RECORD_DTYPE)
            out["tx_ns"], out["rtt_ns"], out["target"] = t1, value, target[good]
            out["kind"], out["flags"] = kind, rx_flags[good]
            self._records.append(out)
        for i in good[stateful[good]].tolist():
            self._remember(int(target[i]), int(tx_ns[i]), int(seq[i]), int(reflector_seq[i]))
        if self.sent_tos is not None and cos_fwd_tos is not None and cos_rp is not None:
            rev = cos_rev_tos[good] if cos_rev_tos is not None and len(cos_rev_tos) else None
            self._tally(target[good], t1, cos_fwd_tos[good], cos_rp[good], rev)

    def _tally(
        self,
        target: NDArray[np.uint32],
        tx_ns: NDArray[np.int64],
        fwd: NDArray[np.int64],
        rp: NDArray[np.int64],
        rev: NDArray[np.int64] | None,
    ) -> None:
        assert self.sent_tos is not None
        back = np.full(len(fwd), cos.NO_TOS, np.int64) if rev is None else rev
        packed = cos.pack_columns(self.sent_tos, fwd, rp, back)  # < 2**28
        # Usually one observation per target in a batch: loop over those, not over replies.
        keys, first, n = np.unique(
            target.astype(np.int64) << 32 | packed, return_index=True, return_counts=True
        )
        for key, at, count in zip(keys.tolist(), first.tolist(), n.tolist(), strict=True):
            seen = self._cos.get((key >> 32, key & 0xFFFF_FFFF))
            if seen is None:
                self._cos[(key >> 32, key & 0xFFFF_FFFF)] = [count, int(tx_ns[at])]
            else:
                seen[0] += count

    def _remember(self, target: int, tx_ns: int, seq: int, rseq: int) -> None:
        r = self._targets.setdefault(target, _Replies())
        at = bisect.bisect_right(r.seq, seq)
        r.seq.insert(at, seq)
        r.tx_ns.insert(at, tx_ns)
        r.reflector_seq.insert(at, rseq)
        old = bisect.bisect_left(r.tx_ns, r.tx_ns[-1] - self.keep_ns)
        if old > 0:
            del r.seq[:old], r.tx_ns[:old], r.reflector_seq[:old]
            r.forgot = True
            first = r.seq[0]
            r.used = {gap: n for gap, n in r.used.items() if gap >= first - 1}

    def take(self, tracker_records: NDArray[np.void]) -> NDArray[np.void]:
        """The records to ship: the tracker's, the one-way samples gathered since the last
        take, and a direction for each LOST probe that can be given one."""
        lost = tracker_records[tracker_records["kind"] == RecordKind.LOST]
        split = [
            self._direction(int(t), int(seq))
            for t, seq in zip(lost["target"], lost["rtt_ns"], strict=True)  # rtt_ns: its seq
        ]
        extra = np.zeros(sum(k is not None for k in split), RECORD_DTYPE)
        rows = [i for i, k in enumerate(split) if k is not None]
        extra["tx_ns"], extra["target"] = lost["tx_ns"][rows], lost["target"][rows]
        extra["kind"] = [split[i] for i in rows]
        out: NDArray[np.void] = np.concatenate(
            [tracker_records, *self._records, extra, self._cos_records()]
        )
        self._records = []
        return out

    def _cos_records(self) -> NDArray[np.void]:
        """One COS record per target and observation since the last take (its first reply's
        send time, so it lands in an open second), `probes` replies each (split at the
        field's limit)."""
        rows = [
            (tx, value, target, min(n - done, MAX_PROBES))
            for (target, value), (n, tx) in self._cos.items()
            for done in range(0, n, MAX_PROBES)
        ]
        self._cos = {}
        out = np.zeros(len(rows), RECORD_DTYPE)
        if rows:
            tx, value, target, probes = zip(*rows, strict=True)
            out["tx_ns"], out["rtt_ns"], out["target"], out["probes"] = tx, value, target, probes
            out["kind"] = RecordKind.COS
        return out

    def _direction(self, target: int, seq: int) -> RecordKind | None:
        """The way LOST probe `seq` went: its own gap (the replies a, b around it, s_a < seq <
        s_b) gives it reverse while that gap's reverse count lasts, then forward. None while
        no later reply says what the reflector saw (or its gap's replies were forgotten)."""
        r = self._targets.get(target)
        if r is None:
            return None
        seqs = r.seq
        b = bisect.bisect_right(seqs, seq)
        if b == len(seqs) or (b > 0 and seqs[b - 1] == seq):
            return None
        s_a, r_a = (seqs[b - 1], r.reflector_seq[b - 1]) if b > 0 else _BEFORE_FIRST
        if b == 0 and r.forgot:
            return None  # the reply before it was dropped from memory: its gap is not known
        gap = seqs[b] - s_a - 1
        used = r.used.setdefault(s_a, [0, 0])
        if used[0] + used[1] >= gap:
            return None  # cannot happen: a gap holds exactly its lost probes
        reverse = min(max(r.reflector_seq[b] - r_a - 1, 0), gap)
        which = 0 if used[0] < reverse else 1
        used[which] += 1
        return RecordKind.LOST_REVERSE if which == 0 else RecordKind.LOST_FORWARD
