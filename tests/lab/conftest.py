"""Fixtures for lab tests: a unique prefix per test, and a guaranteed teardown of it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

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
