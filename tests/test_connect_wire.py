"""The connect kind's pure parts: errno outcomes, request and completion rows, the decoder's
columns, and the socket budget a run is checked against."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from loadgen.connlimits import HostLimits, check_connect_capacity, sockets_held
from loadgen.errors import ProfileError
from loadgen.wire.connect import (
    COMPLETION_DTYPE,
    ConnectDecoder,
    ConnectOutcome,
    ConnectRows,
    outcome_of,
    request_seqs,
)
from loadgen.wire.icmp import DecodeStatus


def test_errnos_map_to_outcomes_and_local_shortages_to_not_sent() -> None:
    assert outcome_of(0) is ConnectOutcome.ESTABLISHED
    assert outcome_of(errno.ECONNREFUSED) is ConnectOutcome.REFUSED
    for err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EACCES):
        assert outcome_of(err) is ConnectOutcome.ERRORED
    for err in (errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENOBUFS, errno.EINPROGRESS):
        assert outcome_of(err) is None


def test_request_rows_carry_each_probes_sequence() -> None:
    seqs = np.array([0, 1, 2**40 + 5], np.uint64)
    rows = ConnectRows().build(np.array([2, 0, 1], np.int64), seqs, 123)
    assert rows.dtype == np.uint8 and rows.shape == (3, 8)
    assert request_seqs(rows).tolist() == seqs.tolist()
    assert request_seqs(rows[1:]).tolist() == seqs[1:].tolist()  # a slice, as a partial send


def test_decoder_gives_the_trackers_columns() -> None:
    rows = np.zeros(4, COMPLETION_DTYPE)
    rows[:3] = [(0, 7, 5, 0, 0), (1, 8, 6, 1, errno.ECONNREFUSED), (1, 9, 7, 2, errno.EHOSTUNREACH)]
    buf = rows.view(np.uint8).reshape(4, COMPLETION_DTYPE.itemsize)
    dec = ConnectDecoder(np.array([10, 20], np.uint32), np.uint32)
    out = dec.decode(buf, np.full(4, COMPLETION_DTYPE.itemsize, np.uint32), 3)
    assert out.n == 3
    assert out.status.tolist() == [DecodeStatus.REPLY, DecodeStatus.REPLY, DecodeStatus.ICMP_ERROR]
    assert out.target.tolist() == [10, 20, 20] and out.seq.tolist() == [7, 8, 9]
    assert out.tx_ns.tolist() == [5, 6, 7]
    assert not out.seq16_only.any() and out.quoted_dst.dtype == np.uint32
    assert out.refused is not None and out.refused.tolist() == [False, True, False]


LIMITS = HostLimits(fd_limit=20_000, ephemeral_ports=28_232)


def test_budget_allows_what_fits_and_refuses_more_in_one_line() -> None:
    assert sockets_held(10_000, 1_000_000_000) == 12_000
    check_connect_capacity(
        worker_rate_pps=10_000, target_rate_pps=10_000, timeout_ns=10**9, limits=LIMITS
    )
    with pytest.raises(ProfileError, match="open-file limit 20000: raise it") as fds:
        check_connect_capacity(
            worker_rate_pps=20_000, target_rate_pps=100, timeout_ns=10**9, limits=LIMITS
        )
    assert "\n" not in str(fds.value) and "16.61k pps per worker" in str(fds.value)
    big = HostLimits(fd_limit=1 << 20, ephemeral_ports=28_232)
    with pytest.raises(ProfileError, match="ephemeral ports per target") as ports:
        check_connect_capacity(
            worker_rate_pps=50_000, target_rate_pps=50_000, timeout_ns=10**9, limits=big
        )
    assert "ip_local_port_range" in str(ports.value)
    # a shorter timeout holds fewer sockets: the same rate fits
    check_connect_capacity(
        worker_rate_pps=50_000, target_rate_pps=50_000, timeout_ns=200_000_000, limits=big
    )
