"""UDP and STAMP probes to a port with nothing listening, on loopback in a network namespace of
the test's own: the ICMP rate limits are per namespace, so they are lifted there (never on the
machine) and every probe gets its port unreachable. Each such probe is errored, once, with one
ICMP error, IPv4 and IPv6; a target that answers in the same run is untouched."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from private_netns import in_private_netns

from loadgen.profile import parse_profile
from loadgen.reflect import ReflectOptions, ReflectorRun
from loadgen.reflect_core import ReflectorConfig
from loadgen.runner import execute
from loadgen.stats import Counts

pytestmark = pytest.mark.root

COUNT = 150
PORT = 18790  # in a fresh namespace: free on every address
# Answered on 127.0.0.1; 127.0.0.2 and ::1 have nothing on the port.
TARGETS = "127.0.0.1,127.0.0.2,::1"
NO_ICMP_LIMITS = {
    "/proc/sys/net/ipv4/icmp_ratelimit": "0",
    "/proc/sys/net/ipv4/icmp_msgs_per_sec": "1000000",
    "/proc/sys/net/ipv4/icmp_msgs_burst": "1000000",
    "/proc/sys/net/ipv6/icmp/ratelimit": "0",
}


def _lift_icmp_limits(machine_ns: str) -> None:
    """In this namespace only: checked first, so the machine's own are never written."""
    if os.readlink("/proc/self/ns/net") == machine_ns:
        raise AssertionError("not in a namespace of our own: refusing to change ICMP limits")
    for path, value in NO_ICMP_LIMITS.items():
        with open(path, "w", encoding="ascii") as file:
            file.write(value)


@contextmanager
def _stamp_reflector() -> Iterator[None]:
    run = ReflectorRun(ReflectOptions("127.0.0.1", 1, ReflectorConfig(port=PORT)))
    run.start()
    try:
        yield
    finally:
        run.stop()


@contextmanager
def _udp_echo() -> Iterator[None]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", PORT))
        echo.settimeout(0.1)
        done = threading.Event()

        def serve() -> None:
            while not done.is_set():
                try:
                    data, peer = echo.recvfrom(4096)
                except TimeoutError:
                    continue
                echo.sendto(data, peer)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            yield
        finally:
            done.set()
            server.join(timeout=5)


def _run(probe: str, machine_ns: str) -> list[Counts]:
    _lift_icmp_limits(machine_ns)
    server = _stamp_reflector if probe == "stamp" else _udp_echo
    profile = parse_profile(
        {"targets": TARGETS, "probe": probe, "port": PORT, "rate": 300, "count": COUNT,
         "timeout": "3s", "delay": "3s"},
        source="test",
    )  # fmt: skip
    with server():
        result = execute(profile)
    assert not result.outcome.failures
    return [ts.counts for ts in result.outcome.summary.per_target]


@pytest.mark.parametrize("probe", ["udp", "stamp"])
def test_a_closed_port_errors_every_probe_once(probe: str) -> None:
    here = os.readlink("/proc/self/ns/net")
    answered, closed_v4, closed_v6 = in_private_netns(lambda: _run(probe, here))
    assert (answered.sent, answered.received, answered.errored) == (COUNT, COUNT, 0)
    assert answered.icmp_errors == 0
    errored = Counts(sent=COUNT, errored=COUNT, icmp_errors=COUNT)
    assert closed_v4 == errored
    assert closed_v6 == errored
