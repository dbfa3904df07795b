"""Change every job before it is published, with the ``pytest_simscope_job`` hook.

The hook runs in the process that publishes: under ``pytest -n`` that is the xdist
controller, which sees test reports but never test items. So everything it uses comes from
the report: ``report.nodeid``, ``report.keywords`` (marker names) and
``report.user_properties`` (what a test recorded with pytest's ``record_property``), all of
which xdist carries from the workers. Keep this hook in the rootdir ``conftest.py``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


@pytest.hookimpl
def pytest_simscope_job(job: Any, report: pytest.TestReport | pytest.CollectReport) -> None:
    # One build configuration for the whole run, named by the CI job that ran it.
    job.build = os.environ.get("SIM_BUILD", "rtl-default")

    # Tests under gate_level/ are a category of their own in Simscope's dashboards.
    if report.nodeid.startswith("gate_level/"):
        job.category = "gate-level"

    if job.result == "live":
        return  # a running job carries no results yet

    properties = dict(getattr(report, "user_properties", ()))
    # Simulated clock cycles have a field of their own; the rest becomes metadata.
    cycles = properties.pop("cycles", None)
    if cycles is not None:
        job.cycles = int(cycles)
    if properties:
        job.metadata = [*(job.metadata or []), *properties.items()]

    # Route failures to the team that owns the block (a marker on the test).
    if job.result == "fail" and "dma" in report.keywords:
        job.bucket = "team-dma"
