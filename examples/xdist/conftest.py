"""Fixtures of the xdist example: a simulator model per worker and a fresh FIFO per test."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import pytest
from simulator import Simulator


@pytest.fixture(scope="session")
def simulator() -> Simulator:
    return Simulator()


@pytest.fixture
def fifo() -> Iterator[deque[int]]:
    queue: deque[int] = deque(maxlen=4)
    yield queue
    queue.clear()
