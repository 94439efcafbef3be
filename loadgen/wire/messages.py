"""Everything that crosses a process boundary, and the only module that uses msgpack.

Messages are frozen dataclasses encoded as msgpack arrays `[VERSION, MsgType, *fields]`; record
batches travel as the raw bytes of one `records.RECORD_DTYPE` array, never one message per probe.
A message of another version or of an unknown type raises `ProtocolError`, so a coordinator and
a worker from different builds fail loudly instead of misreading each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from loadgen.errors import LoadgenError
from loadgen.wire.probekind import ProbeKind
from loadgen.wire.records import BURST_DTYPE, RECORD_DTYPE

VERSION = 5  # 3: PlanMsg carries ProbeSettings and its probe total; Hello has notes; a SENT
# record stands for `probes` probes. 4: a Frame carries the loss bursts that ended;
# ProbeSettings has the probe kind and the ICMP socket kind, TargetSpec a port. 5:
# ProbeSettings has stamp_cos, records may be COS (their `probes` counts replies); Beat and
# Echo, the heartbeat of a worker on a TCP stream (its lease and its clock offset)


class ProtocolError(LoadgenError):
    """A message that is not of this build's protocol version or shape."""


class MsgType(IntEnum):
    HELLO = 1
    FRAME = 2
    DONE = 3
    FAILED = 4
    STOP = 5
    PLAN = 6
    START = 7
    BEAT = 8
    ECHO = 9


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One target as a worker sees it: global index, address, family and the port its probes
    go to (0 for a kind without ports)."""

    index: int
    address: str
    family: int
    port: int = 0


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How every probe of a run is built, sent and judged: copied from the profile once
    (`plan.probe_settings`) and carried whole to each worker."""

    size: int
    ttl: int
    tos: int
    timeout_ns: int
    linger_ns: int
    timestamps: str  # auto | software | hardware | user
    tx_timestamps: bool
    tx_path: str  # "ip" | "packet"
    interface: str | None  # bind every socket to this device
    source: str | None  # bind the probes' source address
    icmp_socket: str = "raw"  # the plan's decision: "raw" | "datagram" (never "auto")
    kind: ProbeKind = ProbeKind.ICMP  # what a probe is: picks the worker's `kinds` setup
    stamp_cos: bool = False  # stamp: send the Class of Service TLV, read the TOS of replies


@dataclass(frozen=True, slots=True)
class PlanMsg:
    """Everything a worker needs to run, sent once when it starts."""

    worker: int
    cpu: int  # -1: not pinned
    ident: int
    run_id: int
    targets: tuple[TargetSpec, ...]
    rate_pps: float
    probes: int | None  # what it sends in all, as the plan counted it; None: until stopped
    duration_ns: int | None  # its deadline, which only cuts a generator behind its timetable
    settings: ProbeSettings


@dataclass(frozen=True, slots=True)
class Hello:
    worker: int
    pid: int
    cpu: int
    rx_source: str
    tx_source: str
    notes: tuple[str, ...] = ()  # fallbacks the worker took setting up, one line each


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Cumulative counters of one worker since it started (not deltas)."""

    sent: int = 0
    send_errors: int = 0  # probes the kernel refused (ENOBUFS/EAGAIN): never sent, not counted
    last_send_errno: int = 0
    rx_packets: int = 0
    rx_dropped: int = 0  # SO_RXQ_OVFL: packets the kernel dropped at our socket
    rx_truncated: int = 0
    foreign: int = 0  # well-formed packets that are not ours
    malformed: int = 0
    unattributed: int = 0  # damaged replies or errors we could not tie to a probe
    evicted: int = 0  # probes resolved early because their tracking slot was needed
    cpu_ns: int = 0
    max_lag_ns: int = 0  # worst pacing lag behind the absolute schedule since the last frame
    skipped_ns: int = 0  # schedule time given up after falling too far behind


@dataclass(frozen=True, slots=True)
class Frame:
    worker: int
    seq: int
    now_ns: int
    resolved_before_ns: int  # every probe sent before this has its outcome in this frame or earlier
    records: NDArray[np.void]
    stats: WorkerStats
    # Loss bursts (records.BURST_DTYPE) that ended since the last frame: `outages`.
    bursts: NDArray[np.void] = field(default_factory=lambda: np.zeros(0, dtype=BURST_DTYPE))


@dataclass(frozen=True, slots=True)
class Done:
    worker: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    worker: int
    message: str


@dataclass(frozen=True, slots=True)
class Stop:
    reason: str


@dataclass(frozen=True, slots=True)
class Start:
    """Begin sending at this CLOCK_REALTIME instant, the run's common origin."""

    start_ns: int


@dataclass(frozen=True, slots=True)
class Beat:
    """The coordinator's heartbeat to a worker on a stream: its lease, and the first of the
    four timestamps of a clock-offset sample (`clockoffset`)."""

    seq: int
    sent_ns: int  # coordinator's CLOCK_REALTIME when sent (t1)


@dataclass(frozen=True, slots=True)
class Echo:
    """A worker's answer to a Beat: t1 copied back, its own receive (t2) and send (t3) times."""

    worker: int
    seq: int
    beat_ns: int
    received_ns: int
    sent_ns: int


Message = PlanMsg | Hello | Frame | Done | Failed | Stop | Start | Beat | Echo

_TYPES: dict[type[Any], MsgType] = {
    PlanMsg: MsgType.PLAN,
    Hello: MsgType.HELLO,
    Frame: MsgType.FRAME,
    Done: MsgType.DONE,
    Failed: MsgType.FAILED,
    Stop: MsgType.STOP,
    Start: MsgType.START,
    Beat: MsgType.BEAT,
    Echo: MsgType.ECHO,
}


def _values(obj: Any) -> list[Any]:
    """A flat dataclass's field values in order. Not dataclasses.astuple: that deep-copies
    every value, and a worker encodes a frame every 20 ms."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    return [getattr(obj, name) for name in names]


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def encode(msg: Message) -> bytes:
    if isinstance(msg, Frame):
        body: list[Any] = [
            msg.worker,
            msg.seq,
            msg.now_ns,
            msg.resolved_before_ns,
            np.ascontiguousarray(msg.records, dtype=RECORD_DTYPE).tobytes(),
            _values(msg.stats),
            np.ascontiguousarray(msg.bursts, dtype=BURST_DTYPE).tobytes(),
        ]
    elif isinstance(msg, PlanMsg):
        body = _values(msg)
        body[4] = [_values(t) for t in msg.targets]
        body[8] = _values(msg.settings)
    else:
        body = _values(msg)
    out: bytes = msgpack.packb([VERSION, int(_TYPES[type(msg)]), *body], use_bin_type=True)
    return out


def decode(data: bytes) -> Message:
    try:
        items = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:
        raise ProtocolError(f"undecodable message ({exc}); coordinator and worker differ") from exc
    if not isinstance(items, list) or len(items) < 2:
        raise ProtocolError("message is not a [version, type, ...] array")
    version, kind, body = items[0], items[1], items[2:]
    if version != VERSION:
        raise ProtocolError(
            f"message version {version}, expected {VERSION}: run one build of loadgen throughout"
        )
    try:
        mtype = MsgType(kind)
        if mtype is MsgType.FRAME:
            raw, bursts = body[4], body[6]
            if len(raw) % RECORD_DTYPE.itemsize or len(bursts) % BURST_DTYPE.itemsize:
                raise ProtocolError("frame records are not a whole number of records")
            return Frame(
                worker=body[0],
                seq=body[1],
                now_ns=body[2],
                resolved_before_ns=body[3],
                records=np.frombuffer(raw, dtype=RECORD_DTYPE),
                stats=WorkerStats(*body[5]),
                bursts=np.frombuffer(bursts, dtype=BURST_DTYPE),
            )
        if mtype is MsgType.PLAN:
            plan = dict(zip([f.name for f in fields(PlanMsg)], body, strict=True))
            plan["targets"] = tuple(TargetSpec(*t) for t in plan["targets"])
            settings = ProbeSettings(*plan["settings"])
            plan["settings"] = replace(settings, kind=ProbeKind(settings.kind))
            return PlanMsg(**plan)
        if mtype is MsgType.HELLO:
            worker, pid, cpu, rx_source, tx_source, notes = body
            if not isinstance(notes, list):
                raise ProtocolError("hello notes are not a list of lines")
            return Hello(worker, pid, cpu, rx_source, tx_source, tuple(map(str, notes)))
        simple: dict[MsgType, type[Done | Failed | Stop | Start | Beat | Echo]] = {
            MsgType.DONE: Done,
            MsgType.FAILED: Failed,
            MsgType.STOP: Stop,
            MsgType.START: Start,
            MsgType.BEAT: Beat,
            MsgType.ECHO: Echo,
        }
        return simple[mtype](*body)
    except ProtocolError:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        raise ProtocolError(f"malformed message of type {kind}: {exc}") from exc
