"""TCP SYN probes without sockets: the keyed ISN permutation and its inverse, sequence-number
wraparound, the vectorised SYN builder against the field-by-field one and the checksum over
both pseudo-headers, the reply decoder on SYN-ACKs, RSTs and strangers, the tracker's
matching by ack (never by arrival order), ICMP errors quoting a SYN, and both BPF filters."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from loadgen.tracker import Tracker
from loadgen.wire import bpf
from loadgen.wire.batch import DecodedBatch
from loadgen.wire.family import IPV4, IPV6, WireFamily
from loadgen.wire.icmp import DecodeStatus
from loadgen.wire.records import RecordKind
from loadgen.wire.tcp import (
    PORT_BLOCK,
    PORT_BLOCKS,
    SYN_LEN,
    TCP_HEADER,
    ErrorDecoder,
    IsnCipher,
    SegmentDecoder,
    SynBuilder,
    SynPlan,
    TcpFlag,
    port_base,
    pseudo_sums,
    syn_segment,
    widen,
)

WORDS = st.integers(0, 2**32 - 1)
SRC4, DST4 = ipaddress.ip_address("198.18.0.1").packed, ipaddress.ip_address("198.18.0.9").packed
SRC6, DST6 = ipaddress.ip_address("2001:2::1").packed, ipaddress.ip_address("2001:2::9").packed


def syn_plan(family: WireFamily, ports: tuple[int, ...] = (80, 443, 22), ident: int = 7) -> SynPlan:
    src, dst = (SRC4, DST4) if family is IPV4 else (SRC6, DST6)
    n = len(ports)
    return SynPlan(
        dports=np.array(ports, np.uint16),
        pseudo=pseudo_sums([src] * n, [dst] * n, family),
        base=port_base(ident),
        cipher=IsnCipher(0xC0FFEE, ident),
    )


@settings(max_examples=300, deadline=None)
@given(run_id=WORDS, ident=st.integers(0, 0xFFFF), words=st.lists(WORDS, min_size=1, max_size=50))
def test_the_isn_permutation_inverts_exactly(run_id: int, ident: int, words: list[int]) -> None:
    cipher = IsnCipher(run_id, ident)
    sent = np.array(words, np.uint64)
    isn = cipher.encrypt(sent)
    assert (isn < 2**32).all()
    assert (cipher.decrypt(isn) == sent).all()
    assert len(set(isn.tolist())) == len(set(words))  # a permutation: no two probes share one


def test_the_isn_depends_on_the_run_and_the_worker() -> None:
    k = np.arange(1000, dtype=np.uint64)
    a, b, c = IsnCipher(1, 7).encrypt(k), IsnCipher(2, 7).encrypt(k), IsnCipher(1, 8).encrypt(k)
    assert np.count_nonzero(a == b) < 5 and np.count_nonzero(a == c) < 5
    # Consecutive probes land all over the sequence space, not next to each other.
    assert np.abs(np.diff(a.astype(np.int64))).min() > 16


@settings(max_examples=300, deadline=None)
@given(newest=st.integers(0, 2**40), back=st.integers(0, 2**31 - 1))
def test_widen_recovers_any_recent_counter_across_the_32_bit_wrap(newest: int, back: int) -> None:
    k = newest - back  # negative: before the first probe, and widen says so
    assert widen(np.array([k & 0xFFFFFFFF]), newest, 32)[0] == k


def test_widen_at_the_wrap_itself() -> None:
    newest = 2**32 + 5  # probe numbers have just wrapped past 2**32
    lows = np.array([2**32 - 3, 0, 5], np.uint64)  # k = 2**32 - 3, 2**32, 2**32 + 5
    assert widen(lows, newest, 32).tolist() == [2**32 - 3, 2**32, 2**32 + 5]
    assert widen(np.array([6]), 5, 32)[0] < 0  # a probe not sent yet has no number


def test_source_port_blocks_avoid_the_default_ephemeral_range_and_do_not_overlap() -> None:
    ends = sorted((b, b + PORT_BLOCK - 1) for b in PORT_BLOCKS)
    assert all(hi < 32768 or lo > 60999 for lo, hi in ends)  # Linux: 32768-60999
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ends))
    assert ends[0][0] >= 1024 and ends[-1][1] <= 65535
    assert len({port_base(ident) for ident in range(100, 100 + len(PORT_BLOCKS))}) == len(
        PORT_BLOCKS
    )


def _segment_sum_ok(segment: bytes, src: bytes, dst: bytes, family: WireFamily) -> bool:
    pseudo = pseudo_sums([src], [dst], family)[0]
    total = int(np.frombuffer(segment, ">u2").sum(dtype=np.uint64) + pseudo)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@pytest.mark.parametrize("family", [IPV4, IPV6])
@settings(max_examples=60, deadline=None)
@given(seqs=st.lists(st.integers(0, 2**40), min_size=1, max_size=40), data=st.data())
def test_builder_matches_the_field_by_field_syn_and_checksums_verify(
    family: WireFamily, seqs: list[int], data: st.DataObject
) -> None:
    plan = syn_plan(family)
    local = data.draw(st.lists(st.integers(0, 2), min_size=len(seqs), max_size=len(seqs)))
    rows = SynBuilder(plan).build(np.array(local, np.int64), np.array(seqs, np.uint64), 0)
    src, dst = (SRC4, DST4) if family is IPV4 else (SRC6, DST6)
    for row, t, s in zip(rows, local, seqs, strict=True):
        want = syn_segment(plan, t, s)
        assert bytes(row) == want
        sport, dport, _, ack, offset, flags, window, _, urgent = TCP_HEADER.unpack(want[:20])
        assert (dport, ack, offset, flags, urgent) == (plan.dports[t], 0, 0x60, TcpFlag.SYN, 0)
        assert plan.base <= sport < plan.base + PORT_BLOCK and window > 0
        assert want[20:] == bytes([2, 4, 0x05, 0xB4])  # MSS 1460
        assert _segment_sum_ok(want, src, dst, family)


def answer(syn: bytes, flags: int, family: WireFamily, *, ack_delta: int = 1) -> bytes:
    """What the target sends back for `syn`: ports swapped, ack = ISN + 1."""
    sport, dport, isn = struct.unpack_from("!HHI", syn)
    segment = TCP_HEADER.pack(
        dport, sport, 12345, (isn + ack_delta) & 0xFFFFFFFF, 0x50, flags, 0, 0, 0
    )
    if family is IPV6:
        return segment
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0, 64, 6, 0, DST4, SRC4)
    return header + segment


def decode(plan: SynPlan, family: WireFamily, packets: list[bytes]) -> DecodedBatch:
    buf = np.zeros((len(packets), 128), np.uint8)
    for i, p in enumerate(packets):
        buf[i, : len(p)] = np.frombuffer(p, np.uint8)
    return SegmentDecoder(plan, family).decode(
        buf, np.array([len(p) for p in packets]), len(packets)
    )


@pytest.mark.parametrize("family", [IPV4, IPV6])
def test_decoder_synack_rst_and_strangers(family: WireFamily) -> None:
    plan = syn_plan(family)
    syns = [syn_segment(plan, t, s) for t, s in ((0, 0), (1, 0), (2, 5), (0, 2**32 + 1))]
    synack, rst = TcpFlag.SYN | TcpFlag.ACK, TcpFlag.RST | TcpFlag.ACK
    packets = [
        answer(syns[0], synack, family),
        answer(syns[1], rst, family),
        answer(syns[2], synack, family, ack_delta=2),  # acknowledges something else
        answer(syns[3], synack, family),
        answer(syns[0], TcpFlag.RST, family),  # a RST without ACK acknowledges nothing
        answer(syns[0], synack, family)[: 20 if family is IPV4 else 10],  # cut short
    ]
    got = decode(plan, family, packets)
    assert got.status.tolist() == [
        DecodeStatus.REPLY,
        DecodeStatus.REPLY,
        DecodeStatus.FOREIGN,
        DecodeStatus.REPLY,
        DecodeStatus.FOREIGN,
        DecodeStatus.MALFORMED,
    ]
    assert got.probe_k32 is not None and got.refused is not None
    n = 3
    assert got.probe_k32[:2].tolist() == [0, 1] and got.probe_k32[3] == (2**32 + 1) * n & 0xFFFFFFFF
    assert got.refused.tolist() == [False, True, False, False, False, False]


def test_decoder_refuses_a_reply_to_another_workers_port() -> None:
    plan, other = syn_plan(IPV4, ident=7), syn_plan(IPV4, ident=8)
    got = decode(plan, IPV4, [answer(syn_segment(other, 0, 0), TcpFlag.SYN | TcpFlag.ACK, IPV4)])
    assert got.status.tolist() == [DecodeStatus.FOREIGN]


def test_tracker_matches_by_ack_not_arrival_order_and_counts_refused_apart() -> None:
    plan = syn_plan(IPV4)
    tracker, syns = sent_syns(plan, [10, 11, 12], 6)
    order = [5, 0, 3, 1]  # replies out of order; probes 2 and 4 never answered
    flags = [TcpFlag.RST | TcpFlag.ACK if k % 3 == 1 else TcpFlag.SYN | TcpFlag.ACK for k in order]
    got = decode(
        plan, IPV4, [answer(bytes(syns[k]), f, IPV4) for k, f in zip(order, flags, strict=True)]
    )
    feed(tracker, got, rx_ns=5_000)
    tracker.expire(10**10)
    records = tracker.take_records()
    by_kind = {k: sorted(records["target"][records["kind"] == k].tolist()) for k in RecordKind}
    assert by_kind[RecordKind.RECEIVED] == [10, 10, 11, 12]
    assert by_kind[RecordKind.REFUSED] == [11]
    assert by_kind[RecordKind.LOST] == [11, 12]
    assert (records["rtt_ns"][records["kind"] == RecordKind.RECEIVED] == 4_000).all()


@pytest.mark.parametrize("family", [IPV4, IPV6])
def test_bpf_passes_only_acks_to_the_workers_ports(family: WireFamily) -> None:
    plan = syn_plan(family)
    prog = bpf.tcp_filter(family, plan.base, PORT_BLOCK)
    bpf.validate(prog)
    syn = syn_segment(plan, 1, 3)
    synack, rst = TcpFlag.SYN | TcpFlag.ACK, TcpFlag.RST | TcpFlag.ACK
    passes = [answer(syn, synack, family), answer(syn, rst, family)]
    assert all(bpf.run(prog, p) for p in passes)
    own_syn = syn if family is IPV6 else passes[0][:20] + syn  # our SYN, seen on loopback
    other = bytearray(passes[0])
    at = 2 if family is IPV6 else 22
    for port in (plan.base - 1, plan.base + PORT_BLOCK):  # just outside the block
        other[at : at + 2] = struct.pack("!H", port)
        assert bpf.run(prog, bytes(other)) == 0
    assert bpf.run(prog, own_syn) == 0
    assert bpf.run(prog, answer(syn, TcpFlag.RST, family)) == 0
    if family is IPV4:
        fragment = bytearray(passes[0])
        fragment[6:8] = struct.pack("!H", 0x0001)  # a later fragment: no ports in it
        assert bpf.run(prog, bytes(fragment)) == 0
        udp = bytearray(passes[0])
        udp[9] = 17
        assert bpf.run(prog, bytes(udp)) == 0
        with_options = (
            passes[0][:1].replace(b"\x45", b"\x46") + passes[0][1:20] + bytes(4) + passes[0][20:]
        )
        assert bpf.run(prog, with_options)  # IHL 6: the ports move, the filter follows


def test_bpf_filter_refuses_impossible_blocks() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        bpf.tcp_filter(IPV4, 65500, 512)
    assert SYN_LEN == 24


def icmp_error(syn: bytes, family: WireFamily, *, icmp_type: int = 3, code: int = 1) -> bytes:
    """An error as the worker's ICMP socket delivers it, quoting the IP header and the SYN."""
    if family is IPV4:
        inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(syn), 0, 0, 64, 6, 0, SRC4, DST4)
        body = struct.pack("!BBHI", icmp_type, code, 0, 0) + inner + syn[:8]
        outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 1, 0, DST4, SRC4)
        return outer + body
    inner = struct.pack("!IHBB16s16s", 0x60000000, len(syn), 6, 64, SRC6, DST6)
    return struct.pack("!BBHI", icmp_type, code, 0, 0) + inner + syn


@pytest.mark.parametrize("family", [IPV4, IPV6])
def test_icmp_errors_quoting_a_syn_name_its_probe(family: WireFamily) -> None:
    plan = syn_plan(family)
    syn = syn_segment(plan, 2, 7)
    other = syn_segment(syn_plan(family, ident=8), 2, 7)  # another worker's SYN
    unreachable, time_exceeded = (3, 11) if family is IPV4 else (1, 3)
    packets = [
        icmp_error(syn, family, icmp_type=unreachable),
        icmp_error(syn, family, icmp_type=time_exceeded, code=0),
        icmp_error(other, family, icmp_type=unreachable),
        icmp_error(syn, family, icmp_type=unreachable)[:30],
    ]
    got = ErrorDecoder(plan, family).decode(*_rows(packets), len(packets))
    assert got.status.tolist() == [
        DecodeStatus.ICMP_ERROR,
        DecodeStatus.ICMP_ERROR,
        DecodeStatus.FOREIGN,
        DecodeStatus.MALFORMED,
    ]
    assert got.probe_k32 is not None and got.probe_k32[0] == 7 * 3 + 2
    assert got.icmp_type[:2].tolist() == [unreachable, time_exceeded]
    dst = DST4 if family is IPV4 else DST6
    want = int.from_bytes(dst, "big") if family is IPV4 else np.void(dst)
    assert got.quoted_dst[0] == want
    prog = bpf.tcp_error_filter(family, plan.base, PORT_BLOCK)
    bpf.validate(prog)
    assert [bool(bpf.run(prog, p)) for p in packets[:3]] == [True, True, False]
    assert bpf.run(prog, answer(syn, TcpFlag.SYN | TcpFlag.ACK, family)) == 0  # not an error


def test_an_error_makes_its_probe_errored_not_lost() -> None:
    plan = syn_plan(IPV4, ports=(80,))
    tracker, syns = sent_syns(plan, [5], 2)
    got = ErrorDecoder(plan, IPV4).decode(*_rows([icmp_error(bytes(syns[1]), IPV4)]), 1)
    feed(tracker, got, rx_ns=5_000)
    tracker.expire(10**10)
    kinds = sorted(RecordKind(k).name for k in tracker.take_records()["kind"])
    assert kinds == ["ERRORED", "ICMP_ERROR", "LOST", "SENT"]


def sent_syns(plan: SynPlan, targets: list[int], count: int) -> tuple[Tracker, NDArray[np.uint8]]:
    """A tracker of these global targets that sent `count` SYNs at 1 us; the SYNs."""
    tracker = Tracker(
        targets=np.array(targets, np.uint32),
        addresses=np.arange(1, len(targets) + 1, dtype=np.uint32),
        rate_pps=1000,
        timeout_ns=10**9,
        linger_ns=2 * 10**9,
    )
    local, seq = tracker.plan_batch(count)
    syns = SynBuilder(plan).build(local, seq, 0).copy()
    tracker.on_sent(count, 1_000)
    return tracker, syns


def feed(tracker: Tracker, got: DecodedBatch, rx_ns: int) -> None:
    """Hand a decoded batch to the tracker as the worker does, all received at rx_ns."""
    tracker.on_replies(
        status=got.status,
        target=got.target,
        seq=got.seq,
        seq16_only=got.seq16_only,
        quoted_dst=got.quoted_dst,
        payload_tx_ns=got.tx_ns,
        rx_ns=np.full(got.n, rx_ns, np.int64),
        rx_flags=0,
        probe_k32=got.probe_k32,
        refused=got.refused,
    )


def _rows(packets: list[bytes]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    buf = np.zeros((len(packets), 256), np.uint8)
    for i, p in enumerate(packets):
        buf[i, : len(p)] = np.frombuffer(p, np.uint8)
    return buf, np.array([len(p) for p in packets], np.int64)
