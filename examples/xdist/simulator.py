"""A stand-in for an expensive simulator model."""

from __future__ import annotations


class Simulator:
    """Costly to build, so the ``simulator`` fixture makes one per worker process."""

    def __init__(self) -> None:
        self.cycles = 0

    def run(self, cycles: int) -> int:
        self.cycles += cycles
        return cycles
