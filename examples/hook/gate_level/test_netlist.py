"""A gate-level test: the hook publishes it in its own category."""

from __future__ import annotations


def test_netlist_reset() -> None:
    assert not any([0, 0, 0])
