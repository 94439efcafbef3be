"""Raw ICMP sockets on loopback (127.0.0.1 only): options, BPF attach, batched send/receive,
timestamp sources, drop and partial-send reporting, kernel TX stamps (the pure cmsg walker:
test_cmsg.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from loadgen.errors import PermissionProblem, SocketProblem, UsageError
from loadgen.net import batchio, mmsg, sockets
from loadgen.net.batchio import BatchIO
from loadgen.net.sockets import TimestampMode, open_icmp
from loadgen.wire.records import RecordFlag

LOOPBACK = 0x7F000001
IDENT = (os.getpid() * 7919) & 0xFFFF  # our own identifier; other ICMP on lo is ignored


def echo_requests(ident: int, count: int, size: int = 56) -> NDArray[np.uint8]:
    """ICMP echo requests (RFC 792) with sequence 0..count-1 and a valid RFC 1071 checksum."""
    pkt = np.zeros((count, 8 + size), np.uint8)
    pkt[:, 0] = 8
    pkt[:, 4:6] = np.frombuffer(struct.pack("!H", ident), np.uint8)
    pkt[:, 6:8] = np.arange(count, dtype=">u2").view(np.uint8).reshape(count, 2)
    pkt[:, 8:] = np.arange(size, dtype=np.uint8)
    total = pkt.view(">u2").astype(np.uint32).sum(axis=1)
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    pkt[:, 2:4] = (~total & 0xFFFF).astype(">u2").view(np.uint8).reshape(count, 2)
    return pkt


def reply_filter(ident: int) -> bytes:
    """Classic BPF: accept ICMP echo replies (type 0) carrying `ident`, drop everything else."""
    program = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): X = IP header length
        (0x50, 0, 0, 0),  # ldb [x+0]: ICMP type
        (0x15, 0, 3, 0),  # jeq #0, else drop
        (0x48, 0, 0, 4),  # ldh [x+4]: identifier
        (0x15, 0, 1, ident),  # jeq #ident, else drop
        (0x06, 0, 0, 0x40000),  # ret: accept
        (0x06, 0, 0, 0),  # ret: drop
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


@pytest.fixture(scope="module", autouse=True)
def rx_stamping_live() -> Iterator[None]:
    """Hold the kernel's RX stamping switch on for the whole module. The first socket asking
    for stamps flips it through deferred work, so packets in the next moments go unstamped
    (honestly flagged, but these tests want every row stamped)."""
    if os.geteuid() != 0:
        yield
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as keeper:
        keeper.settimeout(0.5)
        keeper.bind(("127.0.0.1", 0))
        keeper.setsockopt(socket.SOL_SOCKET, sockets.SO_TIMESTAMPING, 0x18)  # RX_SOFTWARE|SOFTWARE
        for _ in range(200):
            keeper.sendto(b"?", keeper.getsockname())
            time.sleep(0.002)
            _, ancillary, _, _ = keeper.recvmsg(8, 256)
            if ancillary and ancillary[0][2][:16] != bytes(16):
                break
        yield


def open_lo(batch: int = 256, **options: Any) -> BatchIO:
    settings: dict[str, Any] = {"ttl": 64, "tos": 0, "timestamps": TimestampMode.AUTO}
    settings["bpf_program"] = None
    settings.update(options)
    return BatchIO(open_icmp(**settings), batch=batch)


def collect(io: BatchIO, want: int, timeout_s: float = 2.0) -> dict[str, NDArray[Any]]:
    """Receive until `want` of our echo replies arrived or the time is up; every row kept."""
    poller = select.poll()
    poller.register(io.fileno(), select.POLLIN)
    heads, stamps, flags, after = [], [], [], []
    replies, deadline = 0, time.monotonic() + timeout_s
    while replies < want and time.monotonic() < deadline:
        poller.poll(20)
        got = io.recv()
        assert got.truncated == 0
        heads.append(got.data[:, :28].copy())
        stamps.append(got.rx_ns.copy())
        flags.append(got.rx_flags.copy())
        after.append(np.full(got.n, time.time_ns(), np.int64))
        replies += int(np.count_nonzero(ours(heads[-1], 0)))
    return {
        "head": np.concatenate(heads) if heads else np.zeros((0, 28), np.uint8),
        "rx_ns": np.concatenate(stamps) if stamps else np.zeros(0, np.int64),
        "rx_flags": np.concatenate(flags) if flags else np.zeros(0, np.uint8),
        "after_ns": np.concatenate(after) if after else np.zeros(0, np.int64),
    }


def ours(head: NDArray[np.uint8], icmp_type: int) -> NDArray[np.bool_]:
    assert ((head[:, 0] & 0xF) == 5).all()  # loopback packets carry no IP options
    ident = head[:, 24].astype(np.int64) << 8 | head[:, 25]
    return np.asarray((head[:, 20] == icmp_type) & (ident == IDENT))


def seqs(head: NDArray[np.uint8]) -> NDArray[np.int64]:
    return head[:, 26].astype(np.int64) << 8 | head[:, 27]


def fail_option(monkeypatch: pytest.MonkeyPatch, failing: int, err: int) -> None:
    """Make one socket option fail with `err`, as a kernel lacking it or out of memory would."""
    real = sockets._set_option

    def set_option(sock: socket.socket, level: int, option: int, value: int | bytes) -> None:
        if option == failing:
            raise OSError(err, os.strerror(err))
        real(sock, level, option, value)

    monkeypatch.setattr(sockets, "_set_option", set_option)


def test_modes_are_the_profile_words() -> None:
    assert [m.value for m in TimestampMode] == ["auto", "hardware", "software", "user"]
    assert TimestampMode("hardware") is TimestampMode.HARDWARE


def test_no_raw_socket_permission_gives_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(socket, "socket", refuse)  # what loadgen.net.sockets calls
    with pytest.raises(PermissionProblem) as caught:
        open_icmp(ttl=64, tos=0, timestamps=TimestampMode.AUTO, bpf_program=None)
    message = str(caught.value)
    assert "CAP_NET_RAW" in message and "setcap cap_net_raw+ep" in message
    assert "\n" not in message


def test_out_of_range_ttl_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="ttl must be 1-255"):
        open_icmp(ttl=256, tos=0, timestamps=TimestampMode.AUTO, bpf_program=None)


@pytest.mark.root
def test_interface_and_source_bind_the_socket() -> None:
    sock = open_icmp(
        ttl=64,
        tos=0,
        timestamps=TimestampMode.AUTO,
        bpf_program=None,
        interface="lo",
        source="127.0.0.5",
    )
    with sock.sock:
        bound = sock.sock.getsockopt(socket.SOL_SOCKET, sockets.SO_BINDTODEVICE, 16)
        assert bound.rstrip(b"\0") == b"lo"
        assert sock.sock.getsockname()[0] == "127.0.0.5"


@pytest.mark.root
@pytest.mark.parametrize(
    ("where", "words"),
    [
        (("nosuchif0", None), "binding to interface 'nosuchif0': ENODEV"),
        ((None, "198.19.255.254"), "binding to source 198.19.255.254: EADDRNOTAVAIL"),
    ],
)
def test_an_interface_or_source_that_is_not_here_is_one_line(
    where: tuple[str | None, str | None], words: str
) -> None:
    interface, source = where
    with pytest.raises(SocketProblem) as caught:
        open_icmp(
            ttl=64,
            tos=0,
            timestamps=TimestampMode.AUTO,
            bpf_program=None,
            interface=interface,
            source=source,
        )
    assert words in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.root
def test_option_failure_names_the_option_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_option(monkeypatch, sockets.SO_RXQ_OVFL, errno.ENOMEM)
    with pytest.raises(SocketProblem, match=r"SO_RXQ_OVFL.*ENOMEM.*lower rcvbuf_bytes"):
        open_icmp(ttl=64, tos=0, timestamps=TimestampMode.AUTO, bpf_program=None)


@pytest.mark.root
def test_echo_replies_come_back_with_kernel_stamps() -> None:
    with open_lo() as io:
        assert io.socket.rx_source == "kernel-software"
        assert io.socket.rx_flags == RecordFlag.RX_KERNEL
        before_ns = time.time_ns()
        result = io.send(echo_requests(IDENT, 64), np.full(64, LOOPBACK, np.uint32))
        assert (result.sent, result.errno) == (64, 0)
        got = collect(io, 64)
    mine = ours(got["head"], 0)
    assert sorted(seqs(got["head"][mine]).tolist()) == list(range(64))
    assert (got["rx_flags"][mine] == RecordFlag.RX_KERNEL).all()
    stamps = got["rx_ns"][mine]
    assert (stamps >= before_ns).all() and (stamps <= got["after_ns"][mine]).all()


@pytest.mark.root
def test_bpf_program_keeps_only_our_replies() -> None:
    with open_lo(bpf_program=reply_filter(IDENT)) as io:
        io.send(echo_requests(IDENT, 64), np.full(64, LOOPBACK, np.uint32))
        got = collect(io, 64)
        # A second batch marks the end: on loopback its replies come after anything else the
        # first batch could still deliver (its requests came before its own replies).
        io.send(echo_requests(IDENT, 8), np.full(8, LOOPBACK, np.uint32))
        marker = collect(io, 8)
    assert ours(got["head"], 0).all()  # no requests (type 8) and no one else's replies
    assert ours(marker["head"], 0).all()
    assert len(got["head"]) == 64 and len(marker["head"]) == 8


@pytest.mark.root
def test_packets_queued_before_the_filter_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sockets._set_option

    def attach_late(sock: socket.socket, level: int, option: int, value: int | bytes) -> None:
        if option == sockets.SO_ATTACH_FILTER:  # traffic lands before the filter is on
            sock.sendto(bytes(echo_requests(IDENT ^ 0x5555, 1)), ("127.0.0.1", 0))
            poller = select.poll()  # wait until the request (and its reply) are queued
            poller.register(sock.fileno(), select.POLLIN)
            assert poller.poll(2000), "the request never reached the socket"
        real(sock, level, option, value)

    monkeypatch.setattr(sockets, "_set_option", attach_late)
    with open_lo(bpf_program=reply_filter(IDENT)) as io:
        assert io.recv().n == 0


@pytest.mark.root
def test_bpf_program_the_kernel_refuses_is_reported() -> None:
    with pytest.raises(ValueError, match="8-byte instructions"):
        open_lo(bpf_program=b"\x06\x00\x00")
    load_only = struct.pack("=HBBI", 0x30, 0, 0, 0)  # ldb [0] with no return: invalid
    with pytest.raises(SocketProblem, match=r"loadgen\.wire\.bpf"):
        open_lo(bpf_program=load_only)


@pytest.mark.root
def test_user_mode_stamps_each_batch_after_the_call() -> None:
    with open_lo(timestamps=TimestampMode.USER, bpf_program=reply_filter(IDENT)) as io:
        assert io.socket.rx_source == "user-space"
        io.send(echo_requests(IDENT, 16), np.full(16, LOOPBACK, np.uint32))
        poller = select.poll()
        poller.register(io.fileno(), select.POLLIN)
        n, deadline = 0, time.monotonic() + 2.0
        while n < 16 and time.monotonic() < deadline:
            poller.poll(20)
            before_ns = time.time_ns()
            got = io.recv()
            after_ns = time.time_ns()
            n += got.n
            assert not got.rx_flags.any()  # user space, and says so
            assert (got.rx_ns >= before_ns).all() and (got.rx_ns <= after_ns).all()
    assert n == 16


@pytest.mark.root
def test_timestampns_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_option(monkeypatch, sockets.SO_TIMESTAMPING, errno.ENOPROTOOPT)  # as on old kernels
    with open_lo(bpf_program=reply_filter(IDENT)) as io:
        assert io.socket.rx_source == "kernel (SO_TIMESTAMPNS)"
        assert len(io.socket.notes) == 1 and "SO_TIMESTAMPING" in io.socket.notes[0]
        before_ns = time.time_ns()
        io.send(echo_requests(IDENT, 16), np.full(16, LOOPBACK, np.uint32))
        got = collect(io, 16)
        with pytest.raises(SocketProblem, match="tx_timestamps = false"):
            io.enable_tx_timestamps()
    assert len(got["head"]) == 16 and (got["rx_flags"] == RecordFlag.RX_KERNEL).all()
    assert (got["rx_ns"] >= before_ns).all() and (got["rx_ns"] <= got["after_ns"]).all()


@pytest.mark.root
def test_hardware_on_loopback_falls_back_and_says_so() -> None:
    with open_lo(timestamps=TimestampMode.HARDWARE, interface="lo") as io:
        assert io.socket.rx_source == "kernel-software"
        assert io.socket.rx_flags == RecordFlag.RX_KERNEL
        (note,) = io.socket.notes
        assert "lo" in note and "software" in note


@pytest.mark.root
def test_drops_past_a_full_buffer_are_counted() -> None:
    with open_lo(rcvbuf_bytes=1, bpf_program=reply_filter(IDENT)) as io:
        io.send(echo_requests(IDENT, 200), np.full(200, LOOPBACK, np.uint32))
        kept = sum(io.recv().n for _ in range(3))
        assert 0 < kept < 200
        io.send(echo_requests(IDENT, 2), np.full(2, LOOPBACK, np.uint32))
        got = io.recv()  # these two find room, and carry the counter
        assert got.n == 2
        assert got.dropped_total >= 200 - kept
        assert io.kernel_drops() == got.dropped_total


@pytest.mark.root
def test_send_checks_its_arrays() -> None:
    with open_lo() as io:
        packets = echo_requests(IDENT, 4)
        with pytest.raises(ValueError, match="C-contiguous"):
            io.send(packets[:, ::2], np.full(4, LOOPBACK, np.uint32))
        with pytest.raises(ValueError, match="destinations"):
            io.send(packets, np.full(3, LOOPBACK, np.uint32))


def in_private_netns(script: str) -> str:
    """Run a Python script in a network namespace of its own (gone when it exits); its stdout."""
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return done.stdout


# A slow lo (tbf, ~120 packets of 1000 bytes a second) and a tiny send buffer: sends queue in
# the qdisc and hold the buffer, so the kernel refuses the next ones (EAGAIN or ENOBUFS).
SLOW_LO = """
import subprocess, time, numpy as np
from loadgen.net.batchio import BatchIO
from loadgen.net.sockets import TimestampMode, open_icmp, kernel_takes_tx_ids
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit",
                "burst", "2000", "limit", "1000000"], check=True)
sock = open_icmp(ttl=64, tos=0, sndbuf_bytes=1, timestamps=TimestampMode.AUTO,
                    bpf_program=None)
packets = np.zeros((300, 1000), np.uint8)
packets[:, 0], packets[:, 2], packets[:, 3] = 8, 0xF7, 0xFF  # echo request, checksum
"""

PARTIAL_SEND = (
    SLOW_LO
    + """
with BatchIO(sock, batch=64) as io:
    result = io.send(packets, np.full(300, 0x7F000001, np.uint32))
    replies, deadline = 0, time.monotonic() + 5
    while replies < result.sent and time.monotonic() < deadline:  # tbf lets ~120/s through
        time.sleep(0.02)
        got = io.recv()
        replies += int(np.count_nonzero(got.data[:, 20] == 0))
print(result.sent, result.errno, replies)
"""
)


@pytest.mark.root
@pytest.mark.skipif(
    not (shutil.which("unshare") and shutil.which("tc")), reason="needs unshare, tc"
)
def test_full_send_buffer_is_reported_not_raised() -> None:
    # A private network namespace whose lo is slowed by tbf: sent packets wait in the qdisc
    # and hold the tiny send buffer, so the kernel refuses the rest. Gone when the process ends.
    sent, err, replies = map(int, in_private_netns(PARTIAL_SEND).split())
    assert 0 < sent < 300
    assert err in (errno.ENOBUFS, errno.EAGAIN)
    assert replies == sent  # what was reported sent is exactly what went out


@pytest.mark.root
def test_tx_stamps_are_numbered_in_send_order() -> None:
    with open_lo(batch=32, bpf_program=reply_filter(IDENT)) as io:
        assert io.enable_tx_timestamps() == RecordFlag.TX_KERNEL
        before_ns = time.time_ns()
        packets = echo_requests(IDENT, 150)
        for start in (0, 50, 100):  # three calls of 50, each two sendmmsg batches of 32
            dst = np.full(50, LOOPBACK, np.uint32)
            assert io.send(packets[start : start + 50], dst, first_id=start).sent == 50
        ids: list[NDArray[np.uint32]] = []
        tx_ns: list[NDArray[np.int64]] = []
        deadline = time.monotonic() + 2.0
        while sum(len(chunk) for chunk in ids) < 150 and time.monotonic() < deadline:
            stamps = io.read_tx_timestamps()
            assert (stamps.tx_flags == RecordFlag.TX_KERNEL).all()
            ids.append(stamps.ids.copy())
            tx_ns.append(stamps.tx_ns.copy())
            if not stamps.more:
                time.sleep(0.01)
        got = collect(io, 150)
    order = np.concatenate(ids)
    sent_ns = np.concatenate(tx_ns)
    assert order.tolist() == list(range(150))
    assert (np.diff(sent_ns) >= 0).all() and (sent_ns >= before_ns).all()
    reply_seq = seqs(got["head"])
    assert sorted(reply_seq.tolist()) == list(range(150))
    assert (got["rx_ns"] > sent_ns[reply_seq]).all()  # kernel clock on both sides


def drain_stamps(io: BatchIO, want: int, timeout_s: float = 2.0) -> list[int]:
    ids: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(ids) < want and time.monotonic() < deadline:
        got = io.read_tx_timestamps()
        ids += got.ids.tolist()
        if not got.more:
            time.sleep(0.005)
    return ids


@pytest.mark.root
def test_counter_numbering_when_the_kernel_cannot_take_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batchio, "kernel_takes_tx_ids", lambda: False)
    with BatchIO(open_icmp(ttl=64, tos=0, timestamps=TimestampMode.AUTO, bpf_program=None)) as io:
        io.enable_tx_timestamps()
        assert any("SCM_TS_OPT_ID" in note for note in io.notes)
        for _ in range(3):  # no first_id: the kernel's counter numbers them
            assert io.send(echo_requests(IDENT, 20), np.full(20, LOOPBACK, np.uint32)).sent == 20
        assert sorted(drain_stamps(io, 60)) == list(range(60))
        # A refused send may or may not have used up a number: the stamps are given up.
        real = mmsg.sendmmsg

        def refuse(*args: Any) -> int:
            ctypes.set_errno(errno.EAGAIN)
            return -1

        monkeypatch.setattr(batchio, "sendmmsg", refuse)
        result = io.send(echo_requests(IDENT, 1), np.full(1, LOOPBACK, np.uint32))
        monkeypatch.setattr(batchio, "sendmmsg", real)
        assert (result.sent, result.errno) == (0, errno.EAGAIN)
        assert not io.tx_stamps_live
        assert any("given up" in note for note in io.notes)
        io.send(echo_requests(IDENT, 5), np.full(5, LOOPBACK, np.uint32))
        time.sleep(0.05)
        assert drain_stamps(io, 1, timeout_s=0.1) == []


REFUSED_SENDS = (
    SLOW_LO
    + """
with BatchIO(sock, batch=16) as io:
    io.enable_tx_timestamps()
    sent, refusals, ids = 0, 0, []
    deadline = time.monotonic() + 10
    while (sent < 40 or len(ids) < 40) and time.monotonic() < deadline:
        if sent < 40:
            result = io.send(packets[sent:40], np.full(40 - sent, 0x7F000001, np.uint32), sent)
            sent += result.sent
            refusals += result.errno != 0
        time.sleep(0.01)
        ids += io.read_tx_timestamps().ids.tolist()
print(int(kernel_takes_tx_ids()), refusals, sent, " ".join(map(str, ids)))
"""
)


@pytest.mark.root
@pytest.mark.skipif(
    not (shutil.which("unshare") and shutil.which("tc")), reason="needs unshare, tc"
)
def test_refused_sends_do_not_shift_the_numbering() -> None:
    # A private network namespace whose lo is slowed by tbf, and a tiny send buffer: most sends
    # are refused and retried. Every packet that went out still has the id it was sent with.
    exact, refusals, sent, *ids = map(int, in_private_netns(REFUSED_SENDS).split())
    if not exact:
        pytest.skip("this kernel cannot number sends (SCM_TS_OPT_ID, Linux 6.13+)")
    assert refusals > 0 and sent == 40
    assert ids == list(range(40))


@pytest.mark.root
def test_a_partial_sends_pending_error_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sendmmsg leaves the error of a partly sent batch for the socket's next call: receive
    counts it and receives again."""
    real = mmsg.recvmmsg
    calls: list[int] = []

    def pending_then_real(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            ctypes.set_errno(errno.ENOBUFS)
            return -1
        result: int = real(*args)
        return result

    with open_lo(bpf_program=reply_filter(IDENT)) as io:
        io.send(echo_requests(IDENT, 3), np.full(3, LOOPBACK, np.uint32))
        time.sleep(0.05)
        monkeypatch.setattr(mmsg, "recvmmsg", pending_then_real)
        got = io.recv()
    assert io.pending_send_errors == 1 and len(calls) == 2
    assert int(np.count_nonzero(ours(got.data[: got.n, :28], 0))) == 3
