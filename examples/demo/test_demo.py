"""A small suite that shows every kind of job the plugin publishes."""

from __future__ import annotations

import pytest


def test_adds() -> None:
    assert 1 + 1 == 2


@pytest.mark.parametrize("width", [8, 16, 32])
def test_fifo_width(width: int, simscope_metadata: object) -> None:
    simscope_metadata["width"] = width  # type: ignore[index]
    assert width % 8 == 0


@pytest.mark.simscope(category="lint", metadata={"tool": "demo"})
def test_lint_category() -> None:
    assert "lint"


@pytest.mark.skip(reason="no hardware in the demo")
def test_on_hardware() -> None:
    raise AssertionError("never runs")


@pytest.mark.xfail(reason="known bug in the demo model")
def test_known_bug() -> None:
    assert 2 + 2 == 5
