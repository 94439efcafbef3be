"""ICMP errors as a datagram socket's error queue gives them (the quoted probe from its ICMP
header on, its destination, type and code) decode to the same rows as the same errors read as
packets from a raw socket: whole quotes name target and sequence, short ones only the 16-bit
sequence (found by the destination), anything else is foreign or malformed."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from loadgen.wire.batch import ReplyDecoder
from loadgen.wire.family import IPV4, IPV6, Icmp6Type, IcmpType, WireFamily
from loadgen.wire.icmp import (
    DecodeStatus,
    QueuedError,
    build_echo_request,
    build_icmp_error,
    build_ipv4_packet,
    build_ipv6_packet,
    fill_patterns,
)

RUN_ID, SIZE, IDENT = 0xC0FFEE01, 64, 0x2222
DST = {4: "198.18.0.9", 6: "2001:2::9"}
OFFENDER = {4: "198.18.0.1", 6: "2001:2::1"}
ERROR = {4: (IcmpType.TIME_EXCEEDED, 0), 6: (Icmp6Type.TIME_EXCEEDED, 0)}


def _probe(family: WireFamily, seq: int, ident: int = IDENT, run_id: int = RUN_ID) -> bytes:
    fills = fill_patterns(run_id, SIZE - 28)
    return build_echo_request(
        ident=ident, run_id=run_id, target=3, seq=seq, tx_ns=5, size=SIZE, fills=fills,
        family=family,
    )  # fmt: skip


def _queued(family: WireFamily, echo: bytes) -> QueuedError:
    v = family.version
    return QueuedError(
        *ERROR[v],
        offender=ipaddress.ip_address(OFFENDER[v]).packed,
        destination=ipaddress.ip_address(DST[v]).packed,
        echo=echo,
    )


def _as_packet(family: WireFamily, echo: bytes, quote: int) -> bytes:
    """The same error as a raw socket reads it (IPv4 header first; ICMPv6 message alone)."""
    v = family.version
    src, dst = ipaddress.ip_address(OFFENDER[v]).packed, ipaddress.ip_address(DST[v]).packed
    if v == 4:
        inner = build_ipv4_packet(0x7F000001, int.from_bytes(dst, "big"), 1, echo)
        error = build_icmp_error(*ERROR[v], inner, quote_len=20 + quote, family=family)
        return build_ipv4_packet(int.from_bytes(src, "big"), 0x7F000001, 1, error)
    inner = build_ipv6_packet(bytes(15) + b"\1", dst, 58, echo)
    return build_icmp_error(*ERROR[v], inner, quote_len=40 + quote, family=family)


@pytest.mark.parametrize("quote", [SIZE + 8, 36, 8], ids=["whole", "header", "rfc792"])
@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_queued_errors_decode_as_the_same_error_read_as_a_packet(
    family: WireFamily, quote: int
) -> None:
    decoder = ReplyDecoder(IDENT, RUN_ID, SIZE, family)
    echo = _probe(family, seq=70_000)
    queued = decoder.decode_queued([_queued(family, echo[:quote])])
    packet = _as_packet(family, echo, quote)
    raw = decoder.decode(
        np.frombuffer(packet, np.uint8)[None, :].copy(), np.array([len(packet)]), 1
    )
    got, want = queued.row(0), raw.row(0)
    assert got.status is DecodeStatus.ICMP_ERROR
    assert (got.status, got.target, got.seq, got.seq16_only, got.quoted_dst) == (
        want.status, want.target, want.seq, want.seq16_only, want.quoted_dst,
    )  # fmt: skip
    assert got.quoted_dst == int.from_bytes(ipaddress.ip_address(DST[family.version]).packed, "big")
    if quote == 8:
        assert got.seq16_only and got.seq == 70_000 & 0xFFFF
    else:
        assert (got.target, got.seq, got.seq16_only) == (3, 70_000, False)


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_queued_errors_about_other_traffic_are_not_ours(family: WireFamily) -> None:
    decoder = ReplyDecoder(IDENT, RUN_ID, SIZE, family)
    rows = decoder.decode_queued(
        [
            _queued(family, _probe(family, 1, ident=IDENT + 1)),  # another socket's identifier
            _queued(family, _probe(family, 1, run_id=RUN_ID ^ 0xFFFF)),  # another run
            _queued(family, _probe(family, 1)[:5]),  # cut inside the echo header
        ]
    )
    assert rows.status.tolist() == [DecodeStatus.FOREIGN] * 2 + [DecodeStatus.MALFORMED]
