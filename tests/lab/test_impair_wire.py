"""The reflector's pure parts: seeded decisions and the vectorised wire codec. No root needed."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.lab.impair import FLIP_FROM, Action, Decider, ReflectorConfig
from loadgen.lab.wire import (
    ERROR_QUOTE_MAX,
    checksum,
    icmp_error,
    make_replies,
    ones_sums,
    parse_batch,
    parse_batch6,
)
from loadgen.wire.family import Icmp6Type, IcmpType

from .probe import echo_request, inet_checksum

CFG = ReflectorConfig(
    seed=5, drop=0.1, drop_every=7, duplicate=0.2, reorder=0.1, bitflip=0.1, corrupt=0.1,
    unreachable=0.05, time_exceeded=0.05, delay_ns=1_000_000, jitter_ns=300_000,
)  # fmt: skip


def test_decisions_do_not_depend_on_how_requests_were_batched() -> None:
    whole = Decider(CFG, 0).decide(1000, 0)
    split = Decider(CFG, 0)
    parts = [split.decide(n, 0) for n in (1, 299, 64, 636)]
    for field in ("action", "bitflip", "flip_unit", "corrupt", "duplicate", "reorder", "delay_ns"):
        joined = np.concatenate([getattr(p, field) for p in parts])
        assert np.array_equal(getattr(whole, field), joined), field


def test_decisions_follow_the_configured_shares_and_exclusions() -> None:
    d = Decider(CFG, 0).decide(20_000, 0)
    assert np.all(d.action[6::7] == Action.DROP)  # the 7th, 14th, ... request
    share = np.mean(d.action == Action.DROP)
    assert 0.2 < share < 0.26  # 1/7 + 0.1 * 6/7 = 0.2286
    replying = d.action == Action.REPLY
    for flags in (d.bitflip, d.corrupt, d.duplicate, d.reorder):
        assert not np.any(flags & ~replying)  # only replies get reply impairments
    assert not np.any(d.bitflip & d.corrupt)
    assert 0.04 < np.mean(d.action == Action.UNREACHABLE) / np.mean(d.action != Action.DROP) < 0.06
    assert d.delay_ns.min() >= 700_000 and d.delay_ns.max() <= 1_300_000


def test_other_seeds_give_other_fates() -> None:
    a = Decider(CFG, 0).decide(500, 0).action
    b = Decider(replace(CFG, seed=6), 0).decide(500, 0).action
    assert not np.array_equal(a, b)


def test_normal_jitter_has_the_asked_spread() -> None:
    cfg = ReflectorConfig(seed=1, delay_ns=10_000_000, jitter_ns=1_000_000, jitter_normal=True)
    delay = Decider(cfg, 0).decide(50_000, 0).delay_ns
    assert abs(delay.mean() - 10_000_000) < 30_000
    assert abs(delay.std() - 1_000_000) < 30_000


def test_rate_limit_is_a_token_bucket_in_passed_in_time() -> None:
    cfg = ReflectorConfig(ratelimit_pps=100, ratelimit_burst=10)
    dec = Decider(cfg, now_ns=0)
    first = dec.decide(50, now_ns=0).action
    assert np.count_nonzero(first == Action.REPLY) == 10  # the burst
    assert np.all(first[10:] == Action.RATE_LIMITED)
    later = dec.decide(50, now_ns=200_000_000).action  # 0.2 s at 100/s: 20 tokens, capped at 10
    assert np.count_nonzero(later == Action.REPLY) == 10
    assert np.count_nonzero(dec.decide(5, now_ns=250_000_000).action == Action.REPLY) == 5


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    assert ReflectorConfig.from_json(CFG.to_json()) == CFG
    with pytest.raises(ValueError, match="unknown reflector config keys"):
        ReflectorConfig.from_json('{"seed": 1, "colour": 2}')


def test_checksum_matches_rfc_1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is ~ddf2.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF  # an odd length is padded with a zero byte


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8))
def test_vectorised_sums_match_the_scalar_checksum(chunks: list[bytes]) -> None:
    buf = np.random.default_rng(0).integers(0, 256, (len(chunks), 400), dtype=np.uint8)  # junk
    start = np.full(len(chunks), 20, dtype=np.int64)
    for i, c in enumerate(chunks):
        buf[i, 20 : 20 + len(c)] = np.frombuffer(c, dtype=np.uint8)
    end = start + np.array([len(c) for c in chunks], dtype=np.int64)
    sums = ones_sums(buf, np.arange(len(chunks)), start, end)
    for c, s in zip(chunks, sums, strict=True):
        assert (~int(s) & 0xFFFF) == inet_checksum(c)


def ip_datagram(icmp: bytes, src: str = "198.18.0.0", ttl: int = 64) -> bytes:
    head = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(icmp),
        1,
        0,
        ttl,
        1,
        0,
        bytes(map(int, src.split("."))),
        bytes(4),
    )
    return head + icmp


def batch_of(datagrams: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.zeros((len(datagrams), 2048), dtype=np.uint8)
    for i, d in enumerate(datagrams):
        buf[i, : len(d)] = np.frombuffer(d, dtype=np.uint8)
    lengths = np.array([len(d) for d in datagrams], dtype=np.int64)
    return buf, lengths, np.zeros(len(datagrams), dtype=bool)


def summed(icmp: bytes) -> bytes:
    """`icmp` (checksum field zero) with its checksum filled in."""
    return icmp[:2] + inet_checksum(icmp).to_bytes(2, "big") + icmp[4:]


def test_parse_batch_keeps_only_well_formed_probes() -> None:
    good = echo_request(7, 1, 0, 64)
    bad_sum = good[:2] + bytes([good[2] ^ 1]) + good[3:]
    reply = bytes([0]) + good[1:]
    # Other programs' echo requests, checksums right: a payload without our magic, and one too
    # short to hold it.
    not_ours = summed(good[:2] + b"\0\0" + good[4:8] + b"PING" + good[12:])
    too_short = summed(good[:2] + b"\0\0" + good[4:8] + b"LG")
    datagrams = [
        ip_datagram(good),
        ip_datagram(bad_sum),
        ip_datagram(reply),
        ip_datagram(good)[:30],
        b"\x45" * 10,
        ip_datagram(good),
        ip_datagram(not_ours),
        ip_datagram(too_short),
    ]
    buf, lengths, trunc = batch_of(datagrams)
    trunc[5] = True  # the kernel said it did not fit
    batch = parse_batch(buf, lengths, trunc)
    assert batch.rows.tolist() == [0]
    assert batch.malformed == 5 and batch.foreign == 2
    assert batch.icmp_off.tolist() == [20] and batch.end.tolist() == [20 + len(good)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=16))
def test_garbage_never_crashes_the_parser(datagrams: list[bytes]) -> None:
    buf, lengths, trunc = batch_of(datagrams)
    batch = parse_batch(buf, lengths, trunc)
    assert batch.malformed + batch.foreign + len(batch.rows) == len(datagrams)


def test_replies_flip_one_fill_bit_or_break_the_checksum() -> None:
    reqs = [echo_request(9, 2, k, 100) for k in range(4)]
    buf, lengths, trunc = batch_of([ip_datagram(r) for r in reqs])
    batch = parse_batch(buf, lengths, trunc)
    sel = np.ones(4, dtype=bool)
    flip = np.array([False, True, False, True])
    corrupt = np.array([False, False, True, False])
    unit = np.array([0.0, 0.0, 0.0, 0.999])
    rows, skipped = make_replies(buf, batch, sel, flip, unit, corrupt)
    assert rows.tolist() == [0, 1, 2, 3] and skipped == 0
    for k, req in enumerate(reqs):
        got = buf[k, 20 : 20 + len(req)].tobytes()
        assert got[0] == IcmpType.ECHO_REPLY
        want = bytes([0]) + req[1:2] + req[4:]  # compared without the checksum field
        diff = [i for i, (a, b) in enumerate(zip(got[:2] + got[4:], want, strict=True)) if a != b]
        if flip[k]:
            assert len(diff) == 1 and diff[0] + 2 >= FLIP_FROM  # a byte of the fill
            assert bin(got[diff[0] + 2] ^ req[diff[0] + 2]).count("1") == 1
        else:
            assert diff == []
        assert (inet_checksum(got) == 0) != bool(corrupt[k])


def test_bitflip_is_skipped_when_there_is_no_fill() -> None:
    buf, lengths, trunc = batch_of([ip_datagram(echo_request(9, 2, 0, 28))])
    batch = parse_batch(buf, lengths, trunc)
    one = np.ones(1, dtype=bool)
    _, skipped = make_replies(buf, batch, one, one, np.zeros(1), ~one)
    assert skipped == 1 and inet_checksum(buf[0, 20 : lengths[0]].tobytes()) == 0


@pytest.mark.parametrize("size", [28, 64, 1400])
def test_icmp_errors_quote_like_linux(size: int) -> None:
    datagram = ip_datagram(echo_request(3, 4, 5, size))
    msg = icmp_error(IcmpType.DEST_UNREACH, 1, datagram)
    assert msg[:2] == b"\x03\x01" and inet_checksum(msg) == 0
    assert msg[8:] == datagram[:ERROR_QUOTE_MAX]
    assert len(msg) == 8 + min(len(datagram), 548)


def test_parse_batch6_keeps_only_our_echo_requests() -> None:
    good = echo_request(7, 1, 0, 64, version=6)
    reply = bytes([129]) + good[1:]
    not_ours = good[:8] + b"PING" + good[12:]
    datagrams = [good, reply, good[:6], not_ours, good[:10], good, bytes([128, 1]) + good[2:]]
    buf, lengths, trunc = batch_of(datagrams)
    trunc[5] = True
    batch = parse_batch6(buf, lengths, trunc)
    assert batch.rows.tolist() == [0]
    assert batch.malformed == 4 and batch.foreign == 2  # too short for the magic: foreign
    assert batch.icmp_off.tolist() == [0] and batch.end.tolist() == [len(good)]


def test_ipv6_replies_flip_a_fill_bit_and_leave_the_checksum_to_the_kernel() -> None:
    reqs = [echo_request(9, 2, k, 100, version=6) for k in range(2)]
    buf, lengths, trunc = batch_of(reqs)
    batch = parse_batch6(buf, lengths, trunc)
    sel = np.ones(2, dtype=bool)
    flip = np.array([False, True])
    rows, skipped = make_replies(buf, batch, sel, flip, np.zeros(2), ~sel, version=6)
    assert rows.tolist() == [0, 1] and skipped == 0
    for k, req in enumerate(reqs):
        got = buf[k, : len(req)].tobytes()
        assert got[0] == Icmp6Type.ECHO_REPLY and got[2:4] == b"\0\0"
        diff = [i for i, (a, b) in enumerate(zip(got[1:], req[1:], strict=True)) if a != b]
        assert diff == ([FLIP_FROM - 1] if flip[k] else [])


def test_drop_run_drops_the_last_r_of_every_n_requests_in_a_row() -> None:
    cfg = ReflectorConfig(drop_every=5, drop_run=2)
    d = Decider(cfg, 0)
    actions = np.concatenate([d.decide(n, 0).action for n in (3, 9, 8)])
    dropped = np.flatnonzero(actions == Action.DROP) + 1  # request ordinals
    assert dropped.tolist() == [4, 5, 9, 10, 14, 15, 19, 20]
    one = Decider(ReflectorConfig(drop_every=5), 0).decide(10, 0).action
    assert (np.flatnonzero(one == Action.DROP) + 1).tolist() == [5, 10]
