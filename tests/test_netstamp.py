"""The wait for the kernel's RX stamping: it sees stamps where a loopback is up, says it could
not tell where none is, and a socket opened while stamping lags says so in its notes."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from private_netns import in_private_netns

from loadgen.net import netstamp, sockets
from loadgen.net.sockets import TimestampMode, open_icmp

pytestmark = pytest.mark.root


def _timed() -> tuple[bool | None, float]:
    started = time.monotonic()
    return netstamp.wait_for_rx_stamps(limit_s=5.0), time.monotonic() - started


def test_a_loopback_that_is_up_shows_stamped_packets() -> None:
    seen, _ = in_private_netns(_timed)
    assert seen is True


def _without_loopback() -> tuple[bool | None, float]:
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True, timeout=10)
    return _timed()


def test_without_a_loopback_it_cannot_tell_and_does_not_wait() -> None:
    seen, took_s = in_private_netns(_without_loopback)
    assert seen is None
    assert took_s < 5.0  # never the whole limit: nothing could answer


def test_a_socket_opened_before_stamping_starts_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "wait_for_rx_stamps", lambda: False)
    sock = open_icmp(family=4, ttl=64, tos=0, timestamps=TimestampMode.SOFTWARE, bpf_program=None)
    sock.sock.close()
    assert any("user-space receive times" in note for note in sock.notes), sock.notes


def test_a_stamp_that_never_comes_ends_the_wait_at_its_limit() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:  # asks for no stamps
        plain.bind(("127.0.0.1", 0))
        started = time.monotonic()
        assert netstamp._stamped_within(plain, 0.2) is False
        assert 0.2 <= time.monotonic() - started < 5.0
