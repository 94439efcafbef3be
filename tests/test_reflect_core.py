"""The reflector's decisions without sockets: every datagram in exactly one counter, the
stateful sequence per session, --allow, the per-sender cap, sources never answered, expiry,
the bound on sessions, and the DSCP a reply carries (--permit-dscp)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.errors import UsageError
from loadgen.reflect_cli import parse_dscps
from loadgen.reflect_core import (
    NO_SSID,
    Reflector,
    ReflectorConfig,
    parse_allow,
    row_address,
)
from loadgen.wire import stamp, stamp_tlv

LOOP = ipaddress.ip_address("127.0.0.2").packed
LAB = ipaddress.ip_address("198.18.0.9").packed
NOW = 10**12
SEC = 10**9


def stamp_packet(seq: int, ssid: int = 7, size: int = 44) -> bytes:
    head = struct.pack(">IQHH28x", seq, (3_000_000_000 << 32) | 5, 1, ssid)
    return head + bytes(size - 44)


def handle(
    r: Reflector, data: bytes, addr: bytes = LOOP, port: int = 5000, now: int = NOW
) -> bytes | None:
    out = r.handle(data, addr, port, rx_ns=NOW, tx_ns=NOW + 10, ttl=64, tos=0, now_ns=now)
    return None if out is None else out.reply


def counted(r: Reflector) -> int:
    rows = r.snapshot()
    return int(rows["reflected"].sum() + rows["malformed"].sum() + rows["refused"].sum())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=130), st.integers(1, 3)), max_size=60))
def test_every_datagram_lands_in_one_counter(datagrams: list[tuple[bytes, int]]) -> None:
    r = Reflector(ReflectorConfig(max_rate_pps=1e9))
    answered = 0
    for i, (data, port) in enumerate(datagrams):
        answered += handle(r, data, port=port, now=NOW + i) is not None
    assert counted(r) == len(datagrams)
    assert answered == r.totals["reflected"] == int(r.snapshot()["reflected"].sum())


def test_stateless_copies_the_sequence_and_stateful_counts_its_own() -> None:
    stateless = Reflector(ReflectorConfig())
    stateful = Reflector(ReflectorConfig(stateful=True))
    for seq in (10, 11, 13):  # 12 lost on the way there
        a, b = handle(stateless, stamp_packet(seq)), handle(stateful, stamp_packet(seq))
        assert a is not None and b is not None
        assert struct.unpack_from(">I", a)[0] == seq
        assert struct.unpack_from(">I", b, 24)[0] == seq  # the sender's, copied
    # The stateful reflector numbered what it saw: 0, 1, 2 — the gap 11 -> 13 against 1 -> 2
    # says the probe 12 never reached it (forward loss), RFC 8762 4.3.
    assert b is not None and struct.unpack_from(">I", b)[0] == 2


def test_sessions_are_per_sender_port_and_ssid() -> None:
    r = Reflector(ReflectorConfig(stateful=True))
    for port, ssid in ((1, 7), (1, 8), (2, 7), (1, 7)):
        handle(r, stamp_packet(0, ssid), port=port)
    rows = r.snapshot()
    assert r.sessions == 3 and sorted(rows["reflected"]) == [1, 1, 2]
    assert {row_address(row) for row in rows} == {"127.0.0.2"}


def test_allow_refuses_others_and_counts_them() -> None:
    r = Reflector(ReflectorConfig(allow=parse_allow("198.18.0.0/15")))
    assert handle(r, stamp_packet(1), addr=LAB) is not None
    assert handle(r, stamp_packet(1), addr=LOOP) is None
    assert r.totals["refused"] == 1 and r.totals["reflected"] == 1
    with pytest.raises(ValueError, match="comma list of CIDRs"):
        parse_allow("198.18.0.0/15,nonsense")


def test_rate_cap_per_sender_refills_with_time() -> None:
    r = Reflector(ReflectorConfig(max_rate_pps=1000))  # burst: 100 (a tenth of a second)
    answered = sum(handle(r, stamp_packet(i)) is not None for i in range(150))
    assert answered == 100 and r.totals["refused"] == 50
    # 50 ms later the bucket holds 50 more; another sender has its own bucket.
    later = sum(handle(r, stamp_packet(i), now=NOW + SEC // 20) is not None for i in range(80))
    assert later == 50
    assert handle(r, stamp_packet(0), addr=LAB) is not None


@pytest.mark.parametrize(
    ("addr", "port"),
    [
        ("224.0.0.1", 5000),  # not a target: sources refused
        ("255.255.255.255", 5000),
        ("0.0.0.0", 5000),
        ("127.0.0.2", 0),
        ("ff02::1", 9),  # not a target
    ],
)
def test_never_answers_sources_a_reply_could_not_safely_go_to(addr: str, port: int) -> None:
    r = Reflector(ReflectorConfig())
    assert handle(r, stamp_packet(1), addr=ipaddress.ip_address(addr).packed, port=port) is None
    assert r.totals["bad_source"] == 1 and r.sessions == 0


def test_malformed_and_authenticated_are_counted_and_dropped() -> None:
    r = Reflector(ReflectorConfig())
    authenticated = struct.pack(">I12sQHH", 1, bytes(12), 1 << 40, 1, 2) + bytes(84)
    for data in (b"", b"\x00" * 43, authenticated):
        assert handle(r, data) is None
    r.malformed(LOOP, 5000, NOW)  # oversized: the socket layer saw it cut
    assert r.totals["malformed"] == 4 and r.totals["reflected"] == 0
    assert NO_SSID in set(r.snapshot()["ssid"])


def test_replies_are_never_larger_than_requests() -> None:
    r = Reflector(ReflectorConfig())
    for size in (44, 45, 100, 1400):
        reply = handle(r, stamp_packet(1, size=size))
        assert reply is not None and len(reply) == size


def test_idle_sessions_expire_and_the_table_is_bounded() -> None:
    r = Reflector(ReflectorConfig(idle_ns=5 * SEC, max_sessions=4, max_rate_pps=1e9))
    for port in range(1, 7):
        handle(r, stamp_packet(0), port=port, now=NOW + port)
    assert r.sessions == 4 and r.totals["expired"] == 2
    assert r.expire(NOW + 6 * SEC) == 4 and r.sessions == 0
    handle(r, stamp_packet(0), port=9, now=NOW + 7 * SEC)
    assert r.snapshot()["port"].tolist() == [9]


def test_reflected_reply_decodes_as_rfc_reply() -> None:
    reply = handle(Reflector(ReflectorConfig()), stamp_packet(5, ssid=0x1234, size=60))
    _, packet = stamp.parse_reflector(reply or b"")
    assert packet is not None and (packet.ssid, packet.sender_seq, packet.sender_ttl) == (
        0x1234,
        5,
        64,
    )
    assert packet.tail == bytes(16)


def test_permit_dscp_names_and_numbers() -> None:
    assert parse_dscps(None) is None
    assert parse_dscps("0, ef,cs1 ,AF41,13") == frozenset({0, 46, 8, 34, 13})
    with pytest.raises(UsageError, match="'gold' is no DSCP"):
        parse_dscps("ef,gold")
    with pytest.raises(UsageError, match="'64' is no DSCP"):
        parse_dscps("64")


def test_the_reply_tos_follows_the_dscp_policy() -> None:
    asked = stamp_tlv.ClassOfService(dscp1=46).tlv().pack()
    packet = stamp_packet(1, size=44) + asked
    for permitted, tos, rp in ((None, 46 << 2, 0), (frozenset({0}), 8 << 2, 1)):
        r = Reflector(ReflectorConfig(permitted_dscp=permitted))
        out = r.handle(packet, LOOP, 5000, rx_ns=NOW, tx_ns=NOW, ttl=64, tos=0x21, now_ns=NOW)
        assert out is not None and out.tos == tos
        back = stamp_tlv.ClassOfService.from_value(out.reply[48:52])
        assert back == stamp_tlv.ClassOfService(46, 8, 1, rp)
