"""The TCP transport: length-prefixed framing in any pieces, the lease, and the worker's end of
a stream held to it (on loopback)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.lease import BeatClock, Lease
from loadgen.net.stream import StreamLink
from loadgen.wire.messages import Beat, Echo, ProtocolError, decode, encode
from loadgen.wire.stream import HEADER, MAX_FRAME_BYTES, FrameReader, framed


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_frames_survive_any_split_of_the_stream(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(framed(p) for p in payloads)
    reader = FrameReader()
    got: list[bytes] = []
    last = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        got += reader.feed(stream[last:cut])
        last = cut
    assert got == payloads
    assert not reader.mid_frame


def test_a_cut_mid_frame_leaves_the_tail_pending() -> None:
    reader = FrameReader()
    data = framed(b"whole") + framed(b"cut short")
    assert reader.feed(data[:-3]) == [b"whole"]
    assert reader.mid_frame
    assert reader.feed(data[-3:]) == [b"cut short"]
    assert not reader.mid_frame


def test_an_absurd_length_is_refused_not_awaited() -> None:
    with pytest.raises(ProtocolError, match="not a loadgen worker"):
        FrameReader().feed(HEADER.pack(MAX_FRAME_BYTES + 1) + b"GET / HTTP/1.1")


def test_heartbeat_messages_round_trip() -> None:
    for msg in (Beat(3, 10**18), Echo(2, 3, 10**18, 10**18 + 5, 10**18 + 9)):
        assert decode(encode(msg)) == msg


def test_lease_lapses_after_its_limit_of_silence_and_stays_lapsed() -> None:
    lease = Lease(now_ns=0, limit_ns=2_000)
    lease.heard(1_500)
    assert not lease.expired(3_499)
    assert lease.silent_ns(3_499) == 1_999
    assert lease.expired(3_500)
    lease.heard(3_600)  # too late: what was let go stays let go
    assert lease.expired(3_600)


def test_lease_ignores_a_stale_hearing() -> None:
    lease = Lease(now_ns=1_000, limit_ns=100)
    lease.heard(500)
    assert lease.expired(1_100)


def test_beats_keep_their_grid_and_skip_what_a_late_tick_missed() -> None:
    beats = BeatClock(now_ns=0, interval_ns=250)
    assert beats.due(0) == 1
    assert beats.due(100) is None
    assert beats.wait_ns(100) == 150
    assert beats.due(250) == 2
    assert beats.due(1_300) == 3  # four intervals late: one beat, then back on the grid
    assert beats.wait_ns(1_300) == 200
    assert beats.due(1_499) is None
    assert beats.due(1_500) == 4


def test_a_stream_that_takes_nothing_ends_a_send_at_its_lease() -> None:
    """A coordinator that accepted and never reads: the worker's sends fill both socket
    buffers, then one waits out the lease (200 ms here) and raises instead of hanging."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        link = StreamLink(server.getsockname(), lease_ns=200_000_000)
        peer, _ = server.accept()
        try:
            with pytest.raises(TimeoutError):
                for _ in range(10_000):  # 640 MB at most; the buffers hold a few MB
                    link.send_bytes(bytes(65_536))
        finally:
            peer.close()
            link.close()


def test_what_a_stream_link_hears_renews_its_lease() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        link = StreamLink(server.getsockname(), lease_ns=10**12)
        peer, _ = server.accept()
        try:
            before = link.lease.last_heard_ns
            peer.sendall(framed(encode(Beat(1, 5))))
            assert decode(link.recv_bytes()) == Beat(1, 5)
            assert link.lease.last_heard_ns > before
        finally:
            peer.close()
            link.close()
