"""Hooks pytest-simscope offers to conftest files and plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_simscope.models import Job


@pytest.hookspec
def pytest_simscope_job(job: Job, report: pytest.TestReport | pytest.CollectReport) -> None:
    """Change a job before it is published.

    Called for every ``job-live`` (``job.result == "live"``) and every finished job, in the
    process that publishes (the xdist controller under ``-n``, so implement it in the
    rootdir ``conftest.py`` or a plugin), on the tests' thread.  A live job is made at
    the test's setup report, whether or not it goes out: it is only published once the
    test has run ``--simscope-live-after`` seconds.  *job* is a
    :class:`pytest_simscope.models.Job`;
    assign to its fields (they are validated).  *report* is the report the job was made
    from.  An exception in an implementation is reported once and the job is published
    unchanged.
    """
