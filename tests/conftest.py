"""The one rule for tests that need root (raw sockets, network namespaces, real-time priority).

Mark them `@pytest.mark.root` (or put the marker in `pytestmark`); without root they are
skipped here, before any fixture of theirs runs, with one reason that says what to do.
"""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (raw sockets, namespaces): run the tests as root")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)
