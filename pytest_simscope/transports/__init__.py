"""Transports: where published messages go.  Every one implements :class:`Transport`."""

from __future__ import annotations

from pytest_simscope.transports.base import Transport

__all__ = ["Transport"]
