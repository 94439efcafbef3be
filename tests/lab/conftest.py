"""Fixtures for lab tests: a unique prefix per test, a guaranteed teardown of it, and waiting
for a condition until a deadline (never a fixed sleep that a slow machine outlasts)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from loadgen.lab import lab_down


@pytest.fixture
def prefix() -> Iterator[str]:
    """A lab prefix no other test (or engineer) uses; whatever carries it is removed after."""
    p = "lgt" + secrets.token_hex(2)
    try:
        yield p
    finally:
        if os.geteuid() == 0:
            lab_down(p)


def wait_until(done: Callable[[], bool], timeout_s: float = 10.0, poll_s: float = 0.02) -> bool:
    """Poll `done` until it is true or `timeout_s` has passed; the caller asserts the result."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True
