"""A worker's frame may reach the coordinator in pieces; the coordinator must still read it whole.

The truth suite's 100k pps runs failed now and then with "undecodable message (Unpack failed:
incomplete input)" or hung: uvloop's add_reader had made the pipe non-blocking, so a frame
still being written broke Connection.recv_bytes half-way. Here a stand-in worker (the real
protocol, no sockets) writes one large frame in two halves with a pause between, which a busy
worker's pipe does by chance; the run must account for every probe in it.
"""

from __future__ import annotations

import os
import struct
import time
from multiprocessing.connection import Connection

import numpy as np
import pytest

import loadgen.coordinator
from loadgen.coordinator import Coordinator
from loadgen.profile import parse_profile
from loadgen.runner import plan_run
from loadgen.wire.messages import Done, Frame, Hello, PlanMsg, Start, WorkerStats, decode, encode
from loadgen.wire.records import RECORD_DTYPE, RecordKind

pytestmark = pytest.mark.timeout(60)

PROBES = 2_000  # 4000 records of 24 bytes: a 96 kB frame, written in two parts
PAUSE_S = 0.3


def split_frame_worker(plan_bytes: bytes, data: Connection, control: Connection) -> None:
    """Says hello, waits for Start, sends one frame accounting for PROBES probes (half of it,
    a pause, the rest), then Done."""
    plan = decode(plan_bytes)
    assert isinstance(plan, PlanMsg)
    data.send_bytes(encode(Hello(plan.worker, os.getpid(), -1, "user space", "user space")))
    start = decode(control.recv_bytes())
    assert isinstance(start, Start)
    tx = start.start_ns + np.arange(PROBES, dtype=np.int64) * 100_000
    records = np.zeros(2 * PROBES, dtype=RECORD_DTYPE)
    records["tx_ns"] = np.repeat(tx, 2)
    records["kind"] = np.tile([RecordKind.SENT, RecordKind.RECEIVED], PROBES)
    records["probes"][::2] = 1
    records["rtt_ns"][1::2] = 50_000
    now = time.time_ns()
    frame = encode(Frame(plan.worker, 0, now, now, records, WorkerStats(sent=PROBES)))
    wire = struct.pack("!i", len(frame)) + frame  # multiprocessing.Connection framing
    os.write(data.fileno(), wire[: len(wire) // 2])
    time.sleep(PAUSE_S)
    os.write(data.fileno(), wire[len(wire) // 2 :])
    data.send_bytes(encode(Done(plan.worker, "count reached")))


def test_a_frame_written_in_two_parts_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen.coordinator, "worker_main", split_frame_worker)
    profile = parse_profile(
        {"targets": ["127.0.0.1"], "rate": 1000, "count": PROBES, "workers": 1}, source="test"
    )
    plan, _ = plan_run(profile)
    outcome = Coordinator(plan).run()
    assert outcome.failures == ()
    counts = outcome.summary.total.counts
    assert counts.sent == counts.received == PROBES
