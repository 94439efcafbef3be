"""`loadgen reflect`'s processes on loopback, bounded: replies to a sender of our STAMP probes
with kernel T2 stamps and the stateful sequence, every datagram counted once, sessions shipped
to the parent, and the one-line errors for a taken or privileged port."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator

import pytest

from loadgen.errors import PermissionProblem, SocketProblem
from loadgen.net.udp import bind_error, check_port_free
from loadgen.reflect import ReflectOptions, ReflectorRun
from loadgen.reflect_core import ReflectorConfig
from loadgen.wire import icmp, stamp_probe
from loadgen.wire.stamp_probe import StampStatus

SPEC = stamp_probe.StampSpec(run_id=7, ssid=0x0B0B, size=100)
FILLS = icmp.fill_patterns(7, SPEC.fill_len)
PROBES = 50


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def reflector() -> Iterator[tuple[ReflectorRun, int]]:
    port = free_port()
    run = ReflectorRun(ReflectOptions("127.0.0.1", 1, ReflectorConfig(port=port, stateful=True)))
    run.start()  # returns once the worker's socket is bound
    try:
        yield run, port
    finally:
        run.stop()


def test_reflects_and_counts_every_probe(reflector: tuple[ReflectorRun, int]) -> None:
    run, port = reflector
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5.0)
        replies = []
        for seq in range(PROBES):
            if seq % 5 == 4:
                continue  # "lost on the way there": the reflector never sees these
            sent_ns = time.time_ns()
            packet = stamp_probe.build_test_packet(SPEC, FILLS, target=2, seq=seq, tx_ns=sent_ns)
            s.sendto(packet, ("127.0.0.1", port))
            replies.append(stamp_probe.decode_reply(s.recv(4096), SPEC, FILLS))
            s.sendto(b"\x00" * 10, ("127.0.0.1", port))  # truncated: counted, never answered
    assert all(r.status is StampStatus.REPLY and r.target == 2 for r in replies)
    # Stateful: the reflector's own sequence counts what it saw, so gaps in ours that it
    # does not share were lost before reaching it.
    assert [r.reflector_seq for r in replies] == list(range(len(replies)))
    assert [r.seq for r in replies] == [q for q in range(PROBES) if q % 5 != 4]
    # T1 <= T2 <= T3 on one clock; T2 is the kernel's receive stamp.
    assert all(r.t1_ns <= r.t2_ns <= r.t3_ns for r in replies)
    run.stop()
    view = run.second(1, 1.0)
    assert view.totals["reflected"] == len(replies) == 40
    assert view.totals["malformed"] == 40
    ours = [line for line in view.sessions if line.ssid == SPEC.ssid]
    assert len(ours) == 1 and ours[0].reflected == 40 and ours[0].sender == "127.0.0.1"


def test_a_port_in_use_is_one_line(reflector: tuple[ReflectorRun, int]) -> None:
    _, port = reflector
    with pytest.raises(SocketProblem, match=f"UDP port {port} on 127.0.0.1 is taken"):
        check_port_free("127.0.0.1", port)


def test_privileged_port_says_what_to_do() -> None:
    problem = bind_error(OSError(errno.EACCES, "Permission denied"), "127.0.0.1", 862)
    assert isinstance(problem, PermissionProblem)
    assert "--port 1024 or above" in str(problem) and "cap_net_bind_service" in str(problem)
