"""Parametrised tests, fixtures, skips and expected failures."""

from __future__ import annotations

import sys
from collections import deque

import pytest
from simulator import Simulator


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_fill(fifo: deque[int], depth: int) -> None:
    fifo.extend(range(depth))
    assert len(fifo) == depth


@pytest.mark.parametrize(("pushed", "popped"), [(1, 1), (3, 2), (4, 4)])
def test_push_pop(fifo: deque[int], pushed: int, popped: int) -> None:
    fifo.extend(range(pushed))
    for _ in range(popped):
        fifo.popleft()
    assert len(fifo) == pushed - popped


def test_simulate(simulator: Simulator) -> None:
    assert simulator.run(1000) == 1000


@pytest.mark.skip(reason="waiting for the new testbench")
def test_overflow_interrupt() -> None:
    raise AssertionError("never runs")


@pytest.mark.skipif(sys.platform != "win32", reason="Windows-only driver")
def test_windows_driver() -> None:
    pass


@pytest.mark.xfail(reason="known bug: FIFO drops the last word on wrap", strict=True)
def test_wrap_around(fifo: deque[int]) -> None:
    fifo.extend(range(5))
    assert list(fifo) == [0, 1, 2, 3, 4]


@pytest.mark.xfail(reason="flaky on slow simulators")
def test_timing_margin() -> None:
    assert True  # xpassed: published as a pass with pytest_outcome=xpassed
