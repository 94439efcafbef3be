"""DSCP/ECN of STAMP probes per direction (RFC 8972 4.4 Class of Service): what a probe was sent
with, what the reflector received (forward), what its reply came back with (reverse). Owns the
packing of one observation into a COS record, the run's tally per target, the "remarked"
verdicts and their text. Pure: no clock, no I/O.

What the reflector sends is known from the RFC: DSCP1 (the DSCP we send with), or the DSCP it
received when its policy refused DSCP1 (RP = 1). RFC 8972 asks for no ECN codepoint on the
reply, so we expect Not-ECT back: what `loadgen reflect` sends and any reflector that writes the
DSCP alone does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.stamp_tlv import NO_TOS, Ecn, ReversePath

__all__ = ["NO_TOS", "CosSeen", "CosTally", "dscp_name", "pack", "pack_columns", "tos_text"]

# A COS record's rtt_ns: one observation as bit fields (TOS bytes plus one: 0 = not carried),
# so that a tally is a count per value.
_FWD_AT, _REV_AT, _RP_AT, _SENT_AT = 0, 9, 18, 20


def pack(sent_tos: int, fwd_tos: int, rp: int, rev_tos: int) -> int:
    """One observation as a COS record's value (TOS bytes 0..255 or NO_TOS, rp 0..3)."""
    return (fwd_tos + 1) << _FWD_AT | (rev_tos + 1) << _REV_AT | rp << _RP_AT | sent_tos << _SENT_AT


def pack_columns(
    sent_tos: int, fwd_tos: NDArray[np.int64], rp: NDArray[np.int64], rev_tos: NDArray[np.int64]
) -> NDArray[np.int64]:
    """`pack` for columns (the sent TOS is the run's)."""
    out: NDArray[np.int64] = (
        (fwd_tos + 1) << _FWD_AT | (rev_tos + 1) << _REV_AT | (rp & 3) << _RP_AT
    ) | sent_tos << _SENT_AT
    return out


@dataclass(frozen=True, slots=True)
class CosSeen:
    """One target's observation: the most frequent over the run, and how many there were."""

    sent_tos: int
    fwd_tos: int  # as the reflector received it (DSCP2, ECN); NO_TOS: not reported back
    rp: int  # the reflector's Reverse Path verdict
    rev_tos: int  # as the reply arrived here; NO_TOS: not read
    replies: int = 0  # replies that saw exactly this
    variants: int = 1  # distinct observations over the run: more than 1, marking changed

    @classmethod
    def unpack(cls, value: int, replies: int = 0, variants: int = 1) -> CosSeen:
        fwd = (value >> _FWD_AT & 0x1FF) - 1
        rev = (value >> _REV_AT & 0x1FF) - 1
        return cls(value >> _SENT_AT & 0xFF, fwd, value >> _RP_AT & 3, rev, replies, variants)

    @property
    def reflector_tos(self) -> int:
        """What the reflector sent its reply with (RFC 8972 4.4); NO_TOS when unknown."""
        if self.fwd_tos == NO_TOS:
            return NO_TOS
        refused = self.rp == ReversePath.DSCP1_REFUSED
        dscp = self.fwd_tos >> 2 if refused else self.sent_tos >> 2
        return dscp << 2 | Ecn.NOT_ECT

    @property
    def fwd_remarked(self) -> bool | None:
        return None if self.fwd_tos == NO_TOS else self.fwd_tos != self.sent_tos

    @property
    def rev_remarked(self) -> bool | None:
        expected = self.reflector_tos
        return None if NO_TOS in (expected, self.rev_tos) else self.rev_tos != expected

    def verdict(self) -> str:
        """One word for a table cell: remarked (either way), kept, or "?" (not reported)."""
        fwd, rev = self.fwd_remarked, self.rev_remarked
        if fwd or rev:
            return "remarked"
        return "kept" if fwd is False and rev is False else "?"

    def lines(self) -> list[str]:
        """The summary's lines (under 80 columns): sent, at the reflector, back, with a
        verdict per direction."""
        out = [
            f"DSCP/ECN sent {tos_text(self.sent_tos)}, at reflector "
            f"{tos_text(self.fwd_tos)}{_mark(self.fwd_remarked)}",
            f"DSCP/ECN back {tos_text(self.rev_tos)}{_mark(self.rev_remarked)}"
            + (", the reflector refused our DSCP" if self.rp == ReversePath.DSCP1_REFUSED else ""),
        ]
        if self.variants > 1:
            out.append(f"DSCP/ECN: {self.variants} markings seen, the most frequent shown")
        return out

    def jsonl(self) -> dict[str, object]:
        """The summary's `cos_*` keys of one target (README, JSONL)."""
        return {
            "cos_sent": tos_dict(self.sent_tos),
            "cos_fwd": tos_dict(self.fwd_tos),
            "cos_rev": tos_dict(self.rev_tos),
            "cos_rp": self.rp,
            "cos_fwd_remarked": self.fwd_remarked,
            "cos_rev_remarked": self.rev_remarked,
            "cos_replies": self.replies,
            "cos_variants": self.variants,
        }


def _mark(remarked: bool | None) -> str:
    return {None: "", True: " (remarked)", False: " (not remarked)"}[remarked]


_NAMES = {0: "be", 46: "ef", 44: "va", **{8 * c: f"cs{c}" for c in range(1, 8)}}
_NAMES.update({8 * c + 2 * d: f"af{c}{d}" for c in range(1, 5) for d in range(1, 4)})


def dscp_name(dscp: int) -> str:
    """ "ef", "cs1", "af41", or the number for a DSCP without a common name."""
    return _NAMES.get(dscp, str(dscp))


def tos_text(tos: int) -> str:
    """A TOS byte as "dscp/ecn": "ef/not-ect", "cs1/ce"; "-" when not carried."""
    if tos == NO_TOS:
        return "-"
    return f"{dscp_name(tos >> 2)}/{Ecn(tos & 3).name.lower().replace('_', '-')}"


def tos_dict(tos: int) -> dict[str, int] | None:
    """A TOS byte for JSON: {"dscp": .., "ecn": ..}; None when not carried."""
    return None if tos == NO_TOS else {"dscp": tos >> 2, "ecn": tos & 3}


class CosTally:
    """Per target: how many replies saw each observation, over the whole run and in each open
    second; a closing second reports a target's marking only when it changed (its most
    frequent observation differs from the last one reported: the first is a change too)."""

    def __init__(self) -> None:
        self._seen: dict[int, Counter[int]] = {}
        self._open: dict[int, dict[int, Counter[int]]] = {}  # second -> target -> counts
        self._shown: dict[int, int] = {}  # target -> the observation last reported

    def add(
        self,
        second: NDArray[np.integer],
        target: NDArray[np.integer],
        value: NDArray[np.int64],
        n: NDArray[np.integer],
    ) -> None:
        """Tally COS records of `second`s (negative: closed already, run totals only)."""
        rows = zip(second.tolist(), target.tolist(), value.tolist(), n.tolist(), strict=True)
        for s, t, v, k in rows:
            self._seen.setdefault(t, Counter())[v] += k
            if s >= 0:
                self._open.setdefault(s, {}).setdefault(t, Counter())[v] += k

    def close(self, second: int, rows: list[int]) -> list[CosSeen | None]:
        """For a closing second, per row (target): its marking where it changed, else None."""
        tallies = self._open.pop(second, {})
        out: list[CosSeen | None] = []
        for t in rows:
            counts = tallies.get(t)
            if not counts:
                out.append(None)
                continue
            value, replies = counts.most_common(1)[0]
            if self._shown.get(t) == value:
                out.append(None)
                continue
            self._shown[t] = value
            out.append(CosSeen.unpack(value, replies, len(counts)))
        return out

    def seen(self, target: int) -> CosSeen | None:
        counts = self._seen.get(target)
        if not counts:
            return None
        value, replies = counts.most_common(1)[0]
        return CosSeen.unpack(value, replies, len(counts))
