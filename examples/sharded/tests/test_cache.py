"""Cache lookups."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("ways", [1, 2, 4, 8])
def test_lookup_hits_after_fill(ways: int) -> None:
    lines = {address: address * 2 for address in range(ways)}
    assert all(lines[address] == address * 2 for address in range(ways))


@pytest.mark.skip(reason="write-back model not written yet")
def test_write_back() -> None:
    raise AssertionError("never runs")
