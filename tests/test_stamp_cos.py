"""DSCP/ECN per direction (RFC 8972 4.4 Class of Service): the packing of an observation, the
"remarked" verdicts, the worker's tally (one COS record per target and observation, not one per
reply), the aggregator's run totals per target, and what the summary and the JSONL say."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from loadgen import cos
from loadgen.cli import build_parser, profile_from_args
from loadgen.cos import NO_TOS, CosSeen
from loadgen.errors import ProfileError, UsageError
from loadgen.output.report import JsonlWriter
from loadgen.output.summary import oneway_lines
from loadgen.output.ui import Snapshot, render
from loadgen.plan import probe_settings
from loadgen.profile import Profile, parse_profile
from loadgen.stamp_figures import StampFigures
from loadgen.stats import Aggregator
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.records import MAX_PROBES, RECORD_DTYPE, RecordKind

T0 = 1_796_300_000_000_000_000
EF, CS1, AF11 = 46 << 2, 8 << 2, 10 << 2
tos_or_none = st.integers(-1, 255)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), tos_or_none, st.integers(0, 3), tos_or_none)
def test_an_observation_packs_and_unpacks(sent: int, fwd: int, rp: int, rev: int) -> None:
    value = cos.pack(sent, fwd, rp, rev)
    assert value >= 0
    assert CosSeen.unpack(value) == CosSeen(sent, fwd, rp, rev)
    column = cos.pack_columns(sent, np.array([fwd]), np.array([rp]), np.array([rev]))
    assert column.tolist() == [value]


def test_verdicts_per_direction() -> None:
    clean = CosSeen(EF, EF, 0, EF)
    assert (clean.fwd_remarked, clean.rev_remarked, clean.verdict()) == (False, False, "kept")
    there = CosSeen(EF, CS1 | 3, 0, EF)  # cs1 and CE on the way there
    assert (there.fwd_remarked, there.rev_remarked, there.verdict()) == (True, False, "remarked")
    back = CosSeen(EF, EF, 0, AF11)
    assert (back.fwd_remarked, back.rev_remarked) == (False, True)
    # The reply carries Not-ECT: an ECN codepoint set on the way back is a remark.
    assert CosSeen(EF | 2, EF | 2, 0, EF | 1).rev_remarked is True
    assert CosSeen(EF | 2, EF | 2, 0, EF).rev_remarked is False
    # RP = 1: the reflector used the DSCP it received (cs1), so cs1 back is no remark.
    refused = CosSeen(EF, CS1, 1, CS1)
    assert (refused.reflector_tos, refused.rev_remarked) == (CS1, False)
    unknown = CosSeen(EF, NO_TOS, 0, EF)  # a reflector that does not know the TLV
    assert (unknown.fwd_remarked, unknown.rev_remarked, unknown.verdict()) == (None, None, "?")


def test_text_names_the_codepoints_and_fits_80_columns() -> None:
    assert cos.tos_text(EF) == "ef/not-ect" and cos.tos_text(CS1 | 3) == "cs1/ce"
    assert cos.tos_text(NO_TOS) == "-" and cos.dscp_name(13) == "13"
    seen = CosSeen(EF | 2, AF11 | 3, 1, 34 << 2 | 1, replies=9, variants=3)
    lines = seen.lines()
    assert lines[0] == "DSCP/ECN sent ef/ect0, at reflector af11/ce (remarked)"
    assert "af41/ect1 (remarked)" in lines[1] and "refused our DSCP" in lines[1]
    assert "3 markings" in lines[2] and all(len(line) < 80 for line in lines)


def cos_replies(figs: StampFigures, target: list[int], fwd: list[int], rev: list[int]) -> None:
    n = len(target)
    tx = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    figs.on_replies(
        status=np.full(n, DecodeStatus.REPLY, np.uint8),
        target=np.array(target, np.uint32),
        seq=np.arange(n, dtype=np.uint64),
        tx_ns=tx,
        rx_ns=tx + 300_000,
        rx_flags=np.zeros(n, np.uint8),
        t2_ns=tx + 100_000,
        t3_ns=tx + 120_000,
        reflector_seq=np.arange(n, dtype=np.int64),
        stateful=np.zeros(n, bool),
        ttl=np.full(n, 61, np.int64),
        cos_fwd_tos=np.array(fwd, np.int64),
        cos_rp=np.zeros(n, np.int64),
        cos_rev_tos=np.array(rev, np.int64),
    )


def cos_records(records: np.ndarray) -> np.ndarray:
    out: np.ndarray = records[records["kind"] == RecordKind.COS]
    return out


def test_the_worker_ships_one_record_per_target_and_observation() -> None:
    figs = StampFigures(keep_ns=10**9, sent_tos=EF)
    cos_replies(figs, [0, 0, 1, 0, 1], [EF, EF, CS1, EF, CS1], [EF, EF, EF, AF11, EF])
    out = cos_records(figs.take(np.zeros(0, RECORD_DTYPE)))
    got = sorted(
        (int(r["target"]), CosSeen.unpack(int(r["rtt_ns"])).rev_tos, int(r["probes"])) for r in out
    )
    assert got == [(0, AF11, 1), (0, EF, 2), (1, EF, 2)]
    assert int(out["tx_ns"].min()) == T0  # the first reply's send time: an open second
    assert len(cos_records(figs.take(np.zeros(0, RECORD_DTYPE)))) == 0  # nothing twice


def test_without_the_tlv_nothing_is_tallied() -> None:
    figs = StampFigures(keep_ns=10**9)
    cos_replies(figs, [0], [EF], [EF])
    assert len(cos_records(figs.take(np.zeros(0, RECORD_DTYPE)))) == 0


def test_the_aggregator_keeps_the_run_tally_per_target() -> None:
    agg = Aggregator(3, T0, timeout_ns=10**9)
    rec = np.zeros(4, RECORD_DTYPE)
    rec["tx_ns"] = T0 + np.array([0, 10, 1_500_000_000, 20])
    rec["target"] = [0, 0, 0, 2]
    rec["kind"] = RecordKind.COS
    rec["rtt_ns"] = [
        cos.pack(EF, CS1, 0, EF),
        cos.pack(EF, EF, 0, EF),
        cos.pack(EF, CS1, 0, EF),
        cos.pack(EF, EF, 0, EF),
    ]
    rec["probes"] = [MAX_PROBES, 5, 7, 3]
    agg.add(rec)
    agg.close_all()
    run = agg.cumulative()
    first = run.per_target[0].cos
    assert first == CosSeen(EF, CS1, 0, EF, replies=MAX_PROBES + 7, variants=2)
    assert run.per_target[0].counts.cos_count == MAX_PROBES + 12
    assert run.per_target[1].cos is None and run.total.cos is None
    assert run.per_target[2].cos == CosSeen(EF, EF, 0, EF, replies=3)
    lines = oneway_lines(run.per_target[2])  # no one-way samples: no STAMP block at all
    assert lines == []


def test_summary_and_jsonl_show_the_directions(tmp_path: Path) -> None:
    agg = Aggregator(1, T0, timeout_ns=10**9)
    rec = np.zeros(6, RECORD_DTYPE)
    rec["tx_ns"] = T0 + 100
    rec["kind"] = [
        RecordKind.SENT,
        RecordKind.RECEIVED,
        RecordKind.OWD_FWD,
        RecordKind.OWD_REV,
        RecordKind.RESIDENCE,
        RecordKind.COS,
    ]
    rec["probes"] = [1, 0, 0, 0, 0, 1]
    rec["rtt_ns"] = [0, 500_000, 200_000, 250_000, 50_000, cos.pack(EF, CS1, 0, AF11)]
    agg.add(rec)
    agg.close_all()
    run = agg.cumulative()
    lines = oneway_lines(run.per_target[0])
    assert "DSCP/ECN sent ef/not-ect, at reflector cs1/not-ect (remarked)" in lines
    assert "DSCP/ECN back af11/not-ect (remarked)" in lines
    path = tmp_path / "run.jsonl"
    with JsonlWriter(str(path), families=[4]) as out:
        out.write_summary(run, ["far"])
    summary = json.loads(path.read_text().splitlines()[-1])
    row = summary["targets"][0]
    assert row["cos_sent"] == {"dscp": 46, "ecn": 0} and row["cos_fwd"] == {"dscp": 8, "ecn": 0}
    assert row["cos_rev"] == {"dscp": 10, "ecn": 0} and row["cos_rp"] == 0
    assert (row["cos_fwd_remarked"], row["cos_rev_remarked"]) == (True, True)
    assert row["cos_count"] == 1 and "cos_sent" not in summary["total"]


def test_the_key_and_the_flag_reach_the_workers() -> None:
    def args(*flags: str) -> Profile:
        return profile_from_args(build_parser().parse_args(["ping", "127.0.0.1", *flags]))

    assert args("--stamp").stamp_cos is True  # on by default
    off = args("--stamp", "--no-stamp-cos")
    assert off.stamp_cos is False and probe_settings(off).stamp_cos is False
    assert probe_settings(args("--stamp")).stamp_cos is True
    assert (
        parse_profile({"targets": ["198.18.0.1"], "stamp_cos": "no"}, source="k").stamp_cos is False
    )
    with pytest.raises((ProfileError, UsageError), match="stamp_cos"):
        parse_profile({"targets": ["198.18.0.1"], "stamp_cos": "maybe"}, source="k.toml")


def test_the_wide_live_table_shows_the_verdict_and_the_80_column_one_does_not() -> None:
    agg = Aggregator(2, T0, timeout_ns=10**9)
    rec = np.zeros(6, RECORD_DTYPE)
    rec["tx_ns"], rec["target"] = T0 + 10, [0, 0, 0, 1, 1, 1]
    rec["kind"] = [RecordKind.SENT, RecordKind.RECEIVED, RecordKind.COS] * 2
    rec["probes"] = [1, 0, 1] * 2
    rec["rtt_ns"] = [0, 1000, cos.pack(EF, EF, 0, EF), 0, 1000, cos.pack(EF, CS1, 0, EF)]
    agg.add(rec)
    (last,) = agg.close_through(T0 + 10**9)
    snap = Snapshot(
        last, agg.cumulative(), ("kept.test", "marked.test"), 10, 10**9, 2.0, 2.0, (), ""
    )

    def shown(width: int) -> list[str]:
        console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
        console.print(render(snap))
        return console.export_text().splitlines()

    wide = shown(160)
    assert any("dscp/ecn" in line for line in wide)
    assert any("kept.test" in line and line.rstrip(" │").endswith("kept") for line in wide)
    assert any("marked.test" in line and "remarked" in line for line in wide)
    narrow = shown(80)
    assert not any("dscp" in line or "remarked" in line for line in narrow)
    assert max(len(line) for line in narrow) <= 80


def test_a_second_shows_the_marking_only_when_it_changed() -> None:
    agg = Aggregator(1, T0, timeout_ns=10**9)
    s = 10**9
    kept, marked = cos.pack(EF, EF, 0, EF), cos.pack(EF, CS1, 0, EF)
    plan = [(0, kept, 5), (1, kept, 5), (2, marked, 4), (2, kept, 1), (3, marked, 5)]
    rec = np.zeros(len(plan), RECORD_DTYPE)
    rec["tx_ns"] = [T0 + sec * s + 7 for sec, _, _ in plan]
    rec["kind"], rec["rtt_ns"], rec["probes"] = RecordKind.COS, [v for _, v, _ in plan], 5
    rec["probes"] = [n for _, _, n in plan]
    agg.add(rec)
    seconds = agg.close_all()
    shown = [r.per_target[0].cos for r in seconds]
    assert shown == [CosSeen(EF, EF, 0, EF, 5), None, CosSeen(EF, CS1, 0, EF, 4, 2), None]
    assert agg.cumulative().per_target[0].cos == CosSeen(EF, EF, 0, EF, 11, 2)  # 11 vs 9
    # A record for a second already closed still counts in the run's tally.
    late = rec[:1].copy()
    late["rtt_ns"], late["probes"] = marked, 3
    agg.add(late)
    assert agg.cumulative().per_target[0].cos == CosSeen(EF, CS1, 0, EF, 12, 2)
