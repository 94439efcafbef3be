"""The lab's STAMP delay relay as a process: it answers on its control socket, and when it dies
(even by SIGKILL) the `loadgen reflect` it started goes with it, so the lab leaves nothing."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal

import psutil
import pytest

from loadgen.lab import lab_down, lab_up, parse_lab_spec, remains

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.timeout(180)]

GONE_WITHIN_S = 30.0  # the reflector's orderly stop on a busy machine


def test_a_killed_relay_takes_its_reflector_with_it() -> None:
    prefix = "lgowd" + secrets.token_hex(2)[:3]
    spec = parse_lab_spec(
        {"prefix": prefix, "hosts": [{"name": "far", "stamp_port": 8621, "delay_fwd_ms": 1}]},
        source="test",
    )
    family: list[psutil.Process] = []
    try:
        lab = lab_up(spec)
        host = lab.hosts[0]
        truth = lab.relay_truth(host)
        assert truth["pid"] == host.relay_pid and truth["delay_fwd_ns"] == 1_000_000
        assert truth["hold_fwd"]["count"] == truth["refused"] == 0
        family = psutil.Process(truth["pid"]).children(recursive=True)
        assert any("reflect" in p.cmdline() for p in family), [p.cmdline() for p in family]
        os.kill(truth["pid"], signal.SIGKILL)
        _, alive = psutil.wait_procs(family, timeout=GONE_WITHIN_S)
        assert not alive, [p.cmdline() for p in alive]
        lab.close()
    finally:
        for p in family:  # only if the test failed: what it started goes all the same
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        lab_down(prefix)
        left = remains(prefix)
        assert not left, f"lab {prefix} left behind: {left}"
