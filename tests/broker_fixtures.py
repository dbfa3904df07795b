"""pytest fixtures for tests that need the real RabbitMQ broker.

Loaded from ``tests/conftest.py`` with ``pytest_plugins = ["broker_fixtures"]``. Tests that
use the ``broker`` fixture (directly or through ``broker_queue``) get the ``broker`` marker,
so ``-m "not broker"`` leaves them out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from brokerlib import BrokerInfo, declare_queue, delete_queue, ensure_broker

_MARKER = "broker: needs a running RabbitMQ broker"


@pytest.hookimpl
def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml declares the marker; this covers runs with another config file
    # (pytester, -c) so --strict-markers still accepts it.
    if not any(str(line).startswith("broker:") for line in config.getini("markers")):
        config.addinivalue_line("markers", _MARKER)


@pytest.hookimpl
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker() -> BrokerInfo:
    """The local broker, started if needed; skips (fails under CI=true) if it can't be had."""
    try:
        return ensure_broker()
    except RuntimeError as exc:
        reason = f"RabbitMQ broker unavailable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def broker_queue(broker: BrokerInfo) -> Iterator[str]:
    """A fresh durable queue on vhost "/", deleted after the test."""
    name = f"simscope-test-{uuid.uuid4().hex[:8]}"
    declare_queue(name, durable=True)
    yield name
    delete_queue(name)
