"""A failing test, and tests that add metadata to their job."""

from __future__ import annotations

import pytest


def test_parity_error() -> None:
    word = 0b1011
    assert bin(word).count("1") % 2 == 0, "odd parity on the bus"


@pytest.mark.slow
@pytest.mark.simscope(category="coverage", metadata={"tool": "verilator"})
def test_coverage(simscope_metadata: dict[str, object]) -> None:
    simscope_metadata["covered_bins"] = 118  # values become strings
    simscope_metadata["total_bins"] = 120
    assert 118 / 120 > 0.95
