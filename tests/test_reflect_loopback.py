"""`loadgen reflect`'s processes on loopback, bounded: replies to a sender of our STAMP probes
with kernel T2 stamps and the stateful sequence, every datagram counted once, sessions shipped
to the parent, the one-line errors for a taken or privileged port; then `loadgen ping --stamp`
against it and `--udp` against a UDP echo service, every probe accounted for on both ends."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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
SENT = 3000  # by `loadgen ping`


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


@pytest.mark.parametrize("version", [4, 6])
def test_replies_carry_dscp1_and_report_the_tos_that_arrived(version: int) -> None:
    """RFC 8972 4.4 on loopback: DSCP2/ECN are what our test packet carried, and the reply
    goes out with DSCP1 (per packet, IP_TOS / IPV6_TCLASS cmsg), Not-ECT."""
    host, family = ("127.0.0.1", socket.AF_INET) if version == 4 else ("::1", socket.AF_INET6)
    level, sent_opt, recv_opt = (
        (socket.IPPROTO_IP, socket.IP_TOS, 13)  # IP_RECVTOS
        if version == 4
        else (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, socket.IPV6_RECVTCLASS)
    )
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])  # free for the reflector once this one is closed
    run = ReflectorRun(ReflectOptions(host, 1, ReflectorConfig(port=port)))
    run.start()
    spec = stamp_probe.StampSpec(run_id=7, ssid=0x0C0C, size=100, cos_dscp=46)
    fills = icmp.fill_patterns(7, spec.fill_len)
    got = []
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(5.0)
            s.setsockopt(level, recv_opt, 1)
            for seq, tos in enumerate((0x00, 0x21, 0xB8, 0x03)):
                s.setsockopt(level, sent_opt, tos)
                packet = stamp_probe.build_test_packet(spec, fills, target=1, seq=seq, tx_ns=1)
                s.sendto(packet, (host, port))
                data, ancillary, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(4))
                back = [d[0] for lvl, kind, d in ancillary if (lvl, kind) == (level, sent_opt)]
                reply = stamp_probe.decode_reply(data, spec, fills)
                got.append((reply.dscp << 2 | reply.ecn, reply.rp, back))
    finally:
        run.stop()
    assert got == [(tos, 0, [46 << 2]) for tos in (0x00, 0x21, 0xB8, 0x03)]


def test_a_port_in_use_is_one_line(reflector: tuple[ReflectorRun, int]) -> None:
    _, port = reflector
    with pytest.raises(SocketProblem, match=f"UDP port {port} on 127.0.0.1 is taken"):
        check_port_free("127.0.0.1", port)


def test_privileged_port_says_what_to_do() -> None:
    problem = bind_error(OSError(errno.EACCES, "Permission denied"), "127.0.0.1", 862)
    assert isinstance(problem, PermissionProblem)
    assert "--port 1024 or above" in str(problem) and "cap_net_bind_service" in str(problem)


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def seconds_account(path: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    seconds = [r for r in rows if r["type"] == "second"]
    assert seconds
    for r in seconds:
        assert r["sent"] == r["received"] + r["late"] + r["lost"] + r["errored"], r
        assert r["unaccounted"] == 0, r
    return seconds


def test_stamp_probes_are_reflected_and_counted_on_both_ends(
    reflector: tuple[ReflectorRun, int], tmp_path: Path
) -> None:
    run, port = reflector
    out = tmp_path / "stamp.jsonl"
    res = loadgen(
        "ping",
        "127.0.0.1",
        "--stamp",
        str(port),
        "-r",
        "3000",
        "-c",
        str(SENT),
        "--jsonl",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert f"{SENT} transmitted, {SENT} received, 0% packet loss" in res.stdout
    assert sum(int(r["received"]) for r in seconds_account(out)) == SENT  # type: ignore[call-overload]
    run.stop()
    view = run.second(1, 1.0)
    assert view.totals["reflected"] == SENT and view.totals["malformed"] == 0
    assert len(view.sessions) == 1 and view.sessions[0].reflected == SENT


def test_udp_probes_to_an_echo_service(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(0.2)
        port = echo.getsockname()[1]
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
            out = tmp_path / "udp.jsonl"
            res = loadgen(
                "ping",
                "127.0.0.1",
                "--udp",
                str(port),
                "-r",
                "500",
                "-c",
                "500",
                "--jsonl",
                str(out),
            )
        finally:
            done.set()
            server.join(timeout=5)
    assert res.returncode == 0, res.stderr
    assert "500 transmitted, 500 received, 0% packet loss" in res.stdout
    seconds_account(out)


def test_nothing_listening_errors_probes_without_failing(tmp_path: Path) -> None:
    """Each probe the kernel answers with a port unreachable is errored, with its ICMP error;
    the machine's ICMP rate limit may leave some unanswered, and those are lost."""
    out = tmp_path / "closed.jsonl"
    res = loadgen(
        "ping", "127.0.0.1", "--stamp", str(free_port()), "-r", "200", "-c", "100",
        "--jsonl", str(out),
    )  # fmt: skip
    assert res.returncode == 1, res.stderr  # nothing came back
    assert "100 transmitted, 0 received" in res.stdout
    assert "error" not in res.stderr.lower()
    seconds = seconds_account(out)
    errored = sum(int(r["errored"]) for r in seconds)  # type: ignore[call-overload]
    lost = sum(int(r["lost"]) for r in seconds)  # type: ignore[call-overload]
    assert errored + lost == 100 and errored > 0
    assert sum(int(r["icmp_errors"]) for r in seconds) == errored  # type: ignore[call-overload]
