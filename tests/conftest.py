"""Shared test setup: the real-broker fixtures and helpers for reading what was published."""

from __future__ import annotations

pytest_plugins = ["pytester", "broker_fixtures"]

