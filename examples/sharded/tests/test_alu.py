"""ALU operations, one test per operation and width."""

from __future__ import annotations

import operator

import pytest

OPERATIONS = {"add": operator.add, "sub": operator.sub, "and": operator.and_, "or": operator.or_}


@pytest.mark.parametrize("width", [8, 16, 32])
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operation_wraps(name: str, width: int) -> None:
    mask = (1 << width) - 1
    result = OPERATIONS[name](mask, 1) & mask
    assert 0 <= result <= mask
