"""``--split I/N``: run the I-th of N equal parts of the suite (I from 1).

Which tests a shard runs is up to the pipeline; pytest-simscope only needs each shard's
``--simscope-shard`` name. This takes every N-th test of the collection sorted by node id,
so the N shards together run every test exactly once, and a run without ``--split`` (such
as ``pytest-simscope count``) sees the whole suite.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--split",
        dest="split",
        metavar="I/N",
        default=None,
        help="run only the I-th of N parts of the suite (1 <= I <= N)",
    )


def _split(value: str) -> tuple[int, int]:
    index, _, total = value.partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        raise pytest.UsageError(f"--split={value!r}: expected I/N, such as 2/4") from None
    if not 1 <= i <= n:
        raise pytest.UsageError(f"--split={value!r}: I must be between 1 and N")
    return i, n


@pytest.hookimpl
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    value = config.getoption("split")
    if not value:
        return
    index, total = _split(value)
    ordered = sorted(items, key=lambda item: item.nodeid)
    keep = {item.nodeid for n, item in enumerate(ordered) if n % total == index - 1}
    deselected = [item for item in items if item.nodeid not in keep]
    items[:] = [item for item in items if item.nodeid in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
