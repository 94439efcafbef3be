"""ICMP errors about UDP and STAMP probes as a UDP socket's error queue gives them (the probe's
payload after its UDP header, its destination, the error's type, code and sender) decode to
ICMP_ERROR rows naming target and sequence; a STAMP quote too short for loadgen's header still
names the 16-bit sequence; other runs' probes are foreign, and no entry, however malformed,
raises: each is one row. Packets are built here with the scalar builders, not the batch ones."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest

from loadgen.tracker import Tracker
from loadgen.wire.family import IPV4, IPV6, Icmp6Type, IcmpType, WireFamily
from loadgen.wire.icmp import (
    MAGIC,
    PAYLOAD_HEADER,
    UNKNOWN_TARGET,
    DecodeStatus,
    QueuedError,
    fill_patterns,
)
from loadgen.wire.records import RecordKind
from loadgen.wire.stamp_batch import PayloadDecoder, StampDecoder, UdpEchoDecoder, stamp_spec
from loadgen.wire.stamp_probe import build_test_packet

RUN_ID, SIZE, SSID = 0x5EED0001, 64, 7
DST = {4: "198.18.0.9", 6: "2001:2::9"}
OFFENDER = {4: "198.18.0.1", 6: "2001:2::1"}
UNREACHABLE = {4: (IcmpType.DEST_UNREACH, 3), 6: (Icmp6Type.DEST_UNREACH, 4)}
FAMILIES = pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
KINDS = pytest.mark.parametrize("kind", ["udp", "stamp", "stamp-cos"])


def _decoder(kind: str, family: WireFamily) -> PayloadDecoder:
    if kind == "udp":
        return UdpEchoDecoder(RUN_ID, SIZE, family)
    return StampDecoder(stamp_spec(RUN_ID, SSID, SIZE, 46 if kind == "stamp-cos" else -1), family)


def _probe(kind: str, target: int, seq: int, run_id: int = RUN_ID) -> bytes:
    """The UDP payload of probe `seq` to `target`, as the worker sends it."""
    if kind == "udp":
        fills = fill_patterns(run_id, SIZE - PAYLOAD_HEADER.size)
        return PAYLOAD_HEADER.pack(MAGIC, run_id, target, seq, 5) + fills[seq % 4]
    spec = stamp_spec(run_id, SSID, SIZE, 46 if kind == "stamp-cos" else -1)
    return build_test_packet(
        spec, fill_patterns(run_id, spec.fill_len), target=target, seq=seq, tx_ns=5
    )


def _queued(family: WireFamily, quote: bytes, dst: str | None = None) -> QueuedError:
    v = family.version
    return QueuedError(
        *UNREACHABLE[v],
        offender=ipaddress.ip_address(OFFENDER[v]).packed,
        destination=ipaddress.ip_address(dst or DST[v]).packed,
        echo=quote,
    )


def _address(family: WireFamily, text: str) -> object:
    return family.address_column([ipaddress.ip_address(text).packed])[0]


@FAMILIES
@KINDS
def test_a_whole_quote_names_target_and_sequence(kind: str, family: WireFamily) -> None:
    probes = [_probe(kind, 3, seq) for seq in (0, 1, 70_000)]
    dec = _decoder(kind, family).decode_queued([_queued(family, p) for p in probes])
    v = family.version
    assert dec.n == 3
    assert dec.status.tolist() == [DecodeStatus.ICMP_ERROR] * 3
    assert dec.target.tolist() == [3] * 3 and dec.seq.tolist() == [0, 1, 70_000]
    assert not dec.seq16_only.any()
    assert dec.icmp_type.tolist() == [UNREACHABLE[v][0]] * 3
    assert dec.icmp_code.tolist() == [UNREACHABLE[v][1]] * 3
    assert (dec.src == _address(family, OFFENDER[v])).all()
    assert (dec.quoted_dst == _address(family, DST[v])).all()


@FAMILIES
@pytest.mark.parametrize("kind", ["stamp", "stamp-cos"])
def test_a_stamp_quote_short_of_our_header_names_the_16_bit_sequence(
    kind: str, family: WireFamily
) -> None:
    quote = _probe(kind, 3, 0x1_2345)[:16]  # STAMP's own sequence number is in the first 4
    dec = _decoder(kind, family).decode_queued([_queued(family, quote)])
    assert dec.status.tolist() == [DecodeStatus.ICMP_ERROR]
    assert dec.seq16_only.tolist() == [True] and dec.seq.tolist() == [0x2345]
    assert dec.target.tolist() == [UNKNOWN_TARGET]  # the tracker finds it by the destination


@FAMILIES
@KINDS
def test_quotes_that_name_no_probe_are_malformed_or_foreign(kind: str, family: WireFamily) -> None:
    too_short = b"" if kind != "udp" else _probe(kind, 3, 9)[:19]
    other_run = _probe(kind, 3, 9, run_id=RUN_ID + 1)
    dec = _decoder(kind, family).decode_queued(
        [_queued(family, too_short), _queued(family, b"\1\2"[: 0 if kind != "udp" else 2]),
         _queued(family, other_run)]
    )  # fmt: skip
    assert dec.status.tolist() == [
        DecodeStatus.MALFORMED,
        DecodeStatus.MALFORMED,
        DecodeStatus.FOREIGN,
    ]
    assert dec.target.tolist() == [UNKNOWN_TARGET] * 3


@FAMILIES
@KINDS
def test_garbage_never_raises_and_gives_one_row_per_entry(kind: str, family: WireFamily) -> None:
    rng = random.Random(11)
    errors = [
        QueuedError(
            rng.randrange(1 << 10),
            rng.randrange(1 << 10),
            offender=rng.randbytes(rng.randrange(20)),
            destination=rng.randbytes(rng.randrange(20)),
            echo=rng.randbytes(rng.randrange(200)),
        )
        for _ in range(300)
    ]
    dec = _decoder(kind, family).decode_queued(errors)
    assert dec.n == 300 and len(dec.status) == len(dec.src) == len(dec.quoted_dst) == 300
    assert set(dec.status.tolist()) <= {
        DecodeStatus.ICMP_ERROR,
        DecodeStatus.FOREIGN,
        DecodeStatus.MALFORMED,
    }
    assert _decoder(kind, family).decode_queued([]).n == 0


@KINDS
def test_each_errored_probe_is_accounted_once(kind: str) -> None:
    """Through the tracker: the probes an error names end ERRORED with one ICMP_ERROR record
    each, whether the quote named the probe whole or (STAMP) by its 16-bit sequence."""
    tracker = Tracker(
        targets=np.array([0, 3], np.uint32),
        addresses=IPV4.address_column(
            [ipaddress.ip_address(a).packed for a in ("198.18.0.8", DST[4])]
        ),
        rate_pps=100.0,
        timeout_ns=1_000_000_000,
        linger_ns=1_000_000_000,
    )
    _, seqs = tracker.plan_batch(8)  # probes 0..7: targets 0, 3, 0, 3, ... seqs 0..3
    tracker.on_sent(8, 1_000)
    quotes = [_probe(kind, 3, 1), _probe(kind, 3, 2)]
    if kind != "udp":
        quotes[1] = quotes[1][:8]  # short: found by destination and the low 16 bits
    dec = _decoder(kind, IPV4).decode_queued([_queued(IPV4, q) for q in quotes])
    tracker.on_replies(
        status=dec.status, target=dec.target, seq=dec.seq, seq16_only=dec.seq16_only,
        quoted_dst=dec.quoted_dst, payload_tx_ns=dec.tx_ns,
        rx_ns=np.full(dec.n, 2_000, np.int64), rx_flags=0,
    )  # fmt: skip
    tracker.expire(10_000_000_000)
    records = tracker.take_records()
    assert len(seqs) == 8
    errored = records[records["kind"] == RecordKind.ERRORED]
    assert sorted(records["kind"][records["kind"] != RecordKind.SENT].tolist()) == sorted(
        [RecordKind.ICMP_ERROR] * 2 + [RecordKind.ERRORED] * 2 + [RecordKind.LOST] * 6
    )
    assert errored["target"].tolist() == [3, 3]
    icmp = records[records["kind"] == RecordKind.ICMP_ERROR]
    assert icmp["target"].tolist() == [3, 3]
