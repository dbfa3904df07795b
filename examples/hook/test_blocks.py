"""Tests whose jobs the rootdir conftest.py changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def test_alu_add(record_property: Callable[[str, object], None]) -> None:
    record_property("cycles", 4_200)
    record_property("seed_file", "alu_add.seed")
    assert 2 + 3 == 5


@pytest.mark.dma
def test_dma_burst(record_property: Callable[[str, object], None]) -> None:
    record_property("cycles", 9_001)
    beats = [0, 1, 2]
    assert len(beats) == 4, "burst ended early"
