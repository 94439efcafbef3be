"""Messages round-trip exactly, and anything of another version or shape is refused loudly."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.wire.messages import (
    VERSION,
    Done,
    Failed,
    Frame,
    Hello,
    PlanMsg,
    ProbeSettings,
    ProtocolError,
    Start,
    Stop,
    TargetSpec,
    WorkerStats,
    decode,
    encode,
)
from loadgen.wire.records import BURST_DTYPE, RECORD_DTYPE, RecordKind

SETTINGS = ProbeSettings(
    size=64,
    ttl=64,
    tos=0,
    timeout_ns=1_000_000_000,
    linger_ns=2_000_000_000,
    timestamps="auto",
    tx_timestamps=False,
    tx_path="packet",
    interface="lo",
    source="127.0.0.5",
)


def test_frame_round_trip_keeps_every_record() -> None:
    recs = np.zeros(3, dtype=RECORD_DTYPE)
    recs["tx_ns"] = [1, 2, 3]
    recs["rtt_ns"] = [10, 20, 30]
    recs["target"] = [0, 1, 70000]
    recs["kind"] = [RecordKind.SENT, RecordKind.RECEIVED, RecordKind.LOST]
    bursts = np.zeros(2, dtype=BURST_DTYPE)
    bursts["target"], bursts["probes"], bursts["start_ns"], bursts["end_ns"] = 70000, [3, 9], 1, 2
    stats = WorkerStats(sent=3, rx_dropped=2, cpu_ns=5)
    frame = Frame(1, 7, 123, 100, recs, stats, bursts)
    got = decode(encode(frame))
    assert isinstance(got, Frame)
    assert (got.worker, got.seq, got.now_ns, got.resolved_before_ns) == (1, 7, 123, 100)
    assert got.stats == frame.stats
    assert got.records.tobytes() == recs.tobytes()
    assert got.bursts.tobytes() == bursts.tobytes()
    no_bursts = decode(encode(Frame(1, 8, 124, 100, recs, stats)))
    assert isinstance(no_bursts, Frame) and len(no_bursts.bursts) == 0


@pytest.mark.parametrize(
    "msg",
    [
        Hello(0, 1234, 1, "kernel-software", "user-space"),
        Done(2, "count reached"),
        Failed(3, "raw ICMP sockets need root"),
        Stop("interrupted"),
        Start(1_700_000_000_000_000_000),
        PlanMsg(
            worker=1,
            cpu=-1,
            ident=0x1234,
            run_id=99,
            targets=(TargetSpec(0, "127.0.0.1", 4), TargetSpec(5, "198.18.0.1", 4)),
            rate_pps=1000.0,
            probes=5000,
            duration_ns=5_000_000_000,
            settings=SETTINGS,
        ),
        PlanMsg(1, 0, 7, 99, (TargetSpec(0, "127.0.0.1", 4),), 0.5, None, None, SETTINGS),
        Hello(1, 99, 0, "user-space", "user-space (per batch)", ("no real-time priority",)),
    ],
)
def test_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


def test_other_version_is_refused() -> None:
    data = msgpack.packb([VERSION + 1, 3, 0, "x"])
    with pytest.raises(ProtocolError, match="version"):
        decode(data)


def test_ragged_record_bytes_are_refused() -> None:
    data = msgpack.packb([VERSION, 2, 0, 0, 0, 0, b"x" * 25, list(WorkerStats().__slots__)])
    with pytest.raises(ProtocolError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


def test_hello_notes_travel_as_lines_not_inside_a_source_string() -> None:
    hello = Hello(0, 1, 2, "kernel", "user-space (per batch)", ("a; b", "c [d]"))
    got = decode(encode(hello))
    assert isinstance(got, Hello)
    assert got.notes == ("a; b", "c [d]") and got.tx_source == "user-space (per batch)"
    # A hello whose notes are not a list is refused, not read as characters.
    bad = msgpack.packb([VERSION, 1, 0, 1, 2, "kernel", "user", "one note"])
    with pytest.raises(ProtocolError, match="notes"):
        decode(bad)


def test_a_version_2_plan_is_refused_with_what_to_do() -> None:
    old = msgpack.packb([2, 6, 0, -1, 1, 1, [], 1.0, 0, 0, 64, 64, 0, 1, 1, "auto", False])
    with pytest.raises(ProtocolError, match="run one build of loadgen throughout"):
        decode(old)
