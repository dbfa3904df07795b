"""Under pytest-xdist the controller publishes: same jobs, every --dist mode, crashing workers."""

from __future__ import annotations

import re

import pytest
from published import (
    REGRESSION,
    assert_clean,
    bodies,
    finished,
    isolate_environment,
    job,
    job_messages,
    normalise,
    recorded,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


SUITE_A = """
import pytest

def test_pass():
    pass

def test_fail():
    assert 0, "a failed"

@pytest.mark.skip(reason="off")
def test_skip():
    pass

@pytest.mark.parametrize("n", range(3))
def test_param(n):
    pass
"""

SUITE_B = """
import pytest

class TestGrouped:
    def test_one(self):
        pass

    def test_two(self, simscope_metadata):
        simscope_metadata["worker_side"] = "yes"

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert 0
"""

NODEIDS = [
    "test_a.py::test_fail",
    "test_a.py::test_param[0]",
    "test_a.py::test_param[1]",
    "test_a.py::test_param[2]",
    "test_a.py::test_pass",
    "test_a.py::test_skip",
    "test_b.py::TestGrouped::test_one",
    "test_b.py::TestGrouped::test_two",
    "test_b.py::test_xfail",
]


def comparable(records: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {uid: normalise(body) for uid, body in finished(records).items()}


def test_two_workers_publish_the_same_jobs_as_one_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SUITE_A, test_b=SUITE_B)

    single, one_process = recorded(pytester, "-p", "no:xdist")
    double, two_workers = recorded(pytester, "-n", "2")

    for result in (single, double):
        result.assert_outcomes(passed=6, failed=1, skipped=1, xfailed=1)
    assert_clean(one_process)
    assert_clean(two_workers)
    assert sorted(finished(two_workers)) == NODEIDS
    assert comparable(two_workers) == comparable(one_process)
    assert job(two_workers, "test_b.py::TestGrouped::test_two")["metadata"] == [
        ["worker_side", "yes"]
    ]
    assert bodies(two_workers, "regr-update")[0]["submitted"] == 9
    assert bodies(two_workers, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": 9}
    ]


def test_dist_each_publishes_every_test_once_per_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SUITE_A, test_b=SUITE_B)
    result, records = recorded(pytester, "-n", "2", "--dist", "each")

    result.assert_outcomes(passed=12, failed=2, skipped=2, xfailed=2)
    assert_clean(records)
    jobs = finished(records)
    assert sorted(jobs) == sorted(f"{nodeid}@{w}" for nodeid in NODEIDS for w in ("gw0", "gw1"))
    for uid, body in jobs.items():
        assert uid.startswith(body["config"] + "@gw")
    for uid, messages in job_messages(records).items():
        assert {body["uniqueid"] for _, body in messages} == {uid}
    start_times = [body["start_time"] for body in jobs.values()]
    assert len(set(start_times)) == len(start_times)
    assert bodies(records, "regr-update")[-1]["submitted"] == 18
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": 18}
    ]


@pytest.mark.parametrize("dist", ["load", "loadscope", "loadfile", "worksteal"])
def test_dist_modes(pytester: pytest.Pytester, dist: str) -> None:
    pytester.makepyfile(test_a=SUITE_A, test_b=SUITE_B)
    result, records = recorded(pytester, "-n", "2", "--dist", dist)

    result.assert_outcomes(passed=6, failed=1, skipped=1, xfailed=1)
    assert_clean(records)
    assert sorted(finished(records)) == NODEIDS
    assert {uid: b["result"] for uid, b in finished(records).items()} == {
        "test_a.py::test_fail": "fail",
        "test_a.py::test_param[0]": "pass",
        "test_a.py::test_param[1]": "pass",
        "test_a.py::test_param[2]": "pass",
        "test_a.py::test_pass": "pass",
        "test_a.py::test_skip": "skip",
        "test_b.py::TestGrouped::test_one": "pass",
        "test_b.py::TestGrouped::test_two": "pass",
        "test_b.py::test_xfail": "pass",
    }


CRASHING = """
import os

def test_before():
    pass

def test_crashes():
    os._exit(1)

def test_other_1():
    pass

def test_other_2():
    pass

def test_other_3():
    pass
"""

CRASH_SUMMARY = re.compile(r"worker 'gw\d+' crashed while running 'test_crash.py::test_crashes'")


def test_crashing_worker_fails_its_test_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_crash=CRASHING)
    result, records = recorded(pytester, "-n", "2")

    result.assert_outcomes(passed=4, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_clean(records)
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": 5}
    ]
    crashed = job(records, "test_crash.py::test_crashes")
    assert crashed["result"] == "fail"
    assert CRASH_SUMMARY.fullmatch(crashed["fail_message"].partition("\n")[0])
    assert [t for t, _ in job_messages(records)["test_crash.py::test_crashes"]] == [
        "job-live",
        "job-finish",
    ]
    assert {uid: b["result"] for uid, b in finished(records).items()} == {
        "test_crash.py::test_before": "pass",
        "test_crash.py::test_crashes": "fail",
        "test_crash.py::test_other_1": "pass",
        "test_crash.py::test_other_2": "pass",
        "test_crash.py::test_other_3": "pass",
    }


def test_crashing_worker_without_restart_still_finishes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_crash=CRASHING)
    result, records = recorded(pytester, "-n", "2", "--max-worker-restart=0")

    assert result.ret != pytest.ExitCode.OK
    assert_clean(records)
    crashed = job(records, "test_crash.py::test_crashes")
    assert CRASH_SUMMARY.fullmatch(crashed["fail_message"].partition("\n")[0])
    # Tests that never ran are not counted, so the regression is not shown ABORTED.
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": len(finished(records))}
    ]


def test_dist_each_counts_a_crashed_workers_replacement_once(pytester: pytest.Pytester) -> None:
    """Under --dist each, the worker started in place of a crashed one runs what that one
    had left: the regression's count of tests does not grow by its collection."""
    pytester.makepyfile(test_crash=CRASHING)
    result, records = recorded(pytester, "-n", "2", "--dist", "each")

    # (How many tests run after the crashes is up to xdist; both workers crash once.)
    assert result.ret != pytest.ExitCode.OK
    assert_clean(records)
    updates = [body["submitted"] for body in bodies(records, "regr-update")]
    assert updates and max(updates) == 10, updates
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": len(finished(records))}
    ]


DIES_AFTER_ITS_TEARDOWN = """
import os

WORKER = []

def pytest_configure(config):
    WORKER.append(hasattr(config, "workerinput"))

def pytest_runtest_logfinish(nodeid, location):
    # The worker dies after the test's teardown report went to the controller.
    if nodeid.endswith("test_dies_after") and WORKER[0]:
        os._exit(1)
"""


def test_a_worker_that_dies_after_a_tests_teardown_leaves_its_job_as_it_was(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(DIES_AFTER_ITS_TEARDOWN)
    pytester.makepyfile(
        test_late="def test_dies_after():\n    pass\n\ndef test_other():\n    pass\n"
    )
    result, records = recorded(pytester, "-n", "2")

    assert result.ret == pytest.ExitCode.TESTS_FAILED  # xdist counts the crash
    assert_clean(records)
    # One job per test, no second one for xdist's crash report after the first had ended.
    assert {uid: b["result"] for uid, b in finished(records).items()} == {
        "test_late.py::test_dies_after": "pass",
        "test_late.py::test_other": "pass",
    }
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": 2}
    ]
    result.stdout.fnmatch_lines(
        ["simscope: warning: worker 'gw*' crashed after 'test_late.py::test_dies_after' had ended*"]
    )


RENAMES_THE_CALL_PHASE = """
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        report.when = "verify"  # a plugin's own phase name
    return report
"""


@pytest.mark.parametrize("workers", [pytest.param([], id="no-xdist"), ["-n", "2"]])
def test_a_report_of_a_phase_pytest_does_not_know_is_part_of_its_test(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    pytester.makeconftest(RENAMES_THE_CALL_PHASE)
    pytester.makepyfile(test_phase="def test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n")
    result, records = recorded(pytester, *workers)

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_clean(records)
    results = {uid: b["result"] for uid, b in finished(records).items()}
    assert results == {"test_phase.py::test_ok": "pass", "test_phase.py::test_bad": "fail"}
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": 2}
    ]
