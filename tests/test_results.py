"""What each job carries: the result mapping, fail_message, metadata, hooks, logs and odd input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from published import (
    MS,
    TIME,
    XDIST_MODES,
    assert_clean,
    bodies,
    finish_body,
    finished,
    finished_by_nodeid,
    isolate_environment,
    job,
    job_messages,
    live_body,
    message_details,
    normalise,
    normalised,
    recorded,
    types,
)

from pytest_simscope.transports.queue import OUTBOX, read_outbox


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


MAPPING_SUITE = """
import pytest

def test_pass():
    pass

def test_fail():
    assert 1 == 2, "boom"

@pytest.fixture
def broken_setup():
    raise RuntimeError("no database")

def test_setup_error(broken_setup):
    pass

@pytest.fixture
def broken_teardown():
    yield
    raise ValueError("cannot clean up")

def test_teardown_error(broken_teardown):
    pass

@pytest.mark.skip(reason="not on this chip")
def test_skip_marker():
    pass

def test_skip_body():
    pytest.skip("no license")

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0

@pytest.mark.xfail(reason="fixed?")
def test_xpass():
    pass

@pytest.mark.xfail(reason="must fail", strict=True)
def test_xpass_strict():
    pass
"""

M = "test_mapping.py::"


def mapping_jobs() -> dict[str, list[tuple[str, dict[str, object]]]]:
    """Per test: the normalised job messages the mapping suite must publish."""
    live = ("job-live",)

    def pair(name: str, result: str, **fields: object) -> list[tuple[str, dict[str, object]]]:
        return [
            (live[0], live_body(M + name)),
            ("job-finish", finish_body(M + name, result, **fields)),
        ]

    return {
        M + "test_pass": pair("test_pass", "pass"),
        M + "test_fail": pair("test_fail", "fail", fail_message="AssertionError: boom"),
        M + "test_setup_error": pair(
            "test_setup_error", "fail", fail_message="setup error: RuntimeError: no database"
        ),
        M + "test_teardown_error": pair(
            "test_teardown_error",
            "fail",
            fail_message="teardown error: ValueError: cannot clean up",
        ),
        # Skipped in setup: the test never ran, so it never was live.
        M + "test_skip_marker": [
            (
                "job-finish",
                finish_body(
                    M + "test_skip_marker",
                    "skip",
                    metadata=[["skip_reason", "Skipped: not on this chip"]],
                ),
            )
        ],
        M + "test_skip_body": pair(
            "test_skip_body", "skip", metadata=[["skip_reason", "Skipped: no license"]]
        ),
        M + "test_xfail": pair("test_xfail", "pass", metadata=[["pytest_outcome", "xfailed"]]),
        M + "test_xpass": pair("test_xpass", "pass", metadata=[["pytest_outcome", "xpassed"]]),
        M + "test_xpass_strict": pair(
            "test_xpass_strict", "fail", fail_message="[XPASS(strict)] must fail"
        ),
    }


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_result_mapping_sequence_and_bodies(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_mapping=MAPPING_SUITE)
    result, records = recorded(pytester, *xdist)

    result.assert_outcomes(
        passed=2, failed=2, errors=2, skipped=2, xfailed=1, xpassed=1
    )
    assert_clean(records)
    expected_jobs = mapping_jobs()
    regression = [(t, b) for t, b in normalised(records) if t.startswith("regr-")]
    assert [t for t, _ in regression] == ["regr-start", "regr-update", "regr-finish"]
    assert regression[1][1] == {"name": "lifecycle/1", "submitted": 9}
    assert regression[2][1] == {"name": "lifecycle/1", "pending": False, "submitted": 9}
    assert types(records)[:2] == ["regr-start", "regr-update"]
    assert types(records)[-1] == "regr-finish"
    per_job = {
        uid: [(t, normalise(b)) for t, b in messages]
        for uid, messages in job_messages(records).items()
    }
    assert per_job == expected_jobs
    if xdist != ("-n", "2"):
        # One process runs the tests in file order: the whole stream is known.
        flat = [message for name in expected_jobs for message in expected_jobs[name]]
        assert normalised(records)[2:-1] == flat


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_fail_message_is_summary_then_full_text(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_mapping=MAPPING_SUITE)
    result, records = recorded(pytester, *xdist)

    result.assert_outcomes(passed=2, failed=2, errors=2, skipped=2, xfailed=1, xpassed=1)
    fail = message_details(job(records, M + "test_fail"))
    assert "E       AssertionError: boom" in fail or "E   AssertionError: boom" in fail
    assert fail.rstrip().endswith("test_mapping.py:7: AssertionError")
    setup = message_details(job(records, M + "test_setup_error"))
    assert 'raise RuntimeError("no database")' in setup
    assert setup.rstrip().endswith("test_mapping.py:11: RuntimeError")
    teardown = message_details(job(records, M + "test_teardown_error"))
    assert "E       ValueError: cannot clean up" in teardown
    assert teardown.rstrip().endswith("test_mapping.py:19: ValueError")
    for body in finished(records).values():
        if body["result"] != "fail":
            assert body["fail_message"] == ""


def test_bare_assert_summary_names_the_exception(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bare="""
        def test_compare():
            value = 2
            assert value == 3
        """
    )
    result, records = recorded(pytester)

    result.assert_outcomes(failed=1)
    message = job(records, "test_bare.py::test_compare")["fail_message"]
    assert message.partition("\n")[0] == "AssertionError: assert 2 == 3"


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_skips_omit_leaves_out_skipped_by_marker(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        test_skips="""
        import pytest

        def test_runs():
            pass

        @pytest.mark.skip(reason="off")
        def test_marker():
            pass

        @pytest.mark.skipif(True, reason="never here")
        def test_skipif():
            pass

        def test_body():
            pytest.skip("decided while running")
        """
    )
    result, records = recorded(pytester, "--simscope-skips=omit", *xdist)

    result.assert_outcomes(passed=1, skipped=3)
    assert_clean(records)
    jobs = finished(records)
    # A test skipped while it ran was already live: it stays, as a skip.
    assert {uid: body["result"] for uid, body in jobs.items()} == {
        "test_skips.py::test_runs": "pass",
        "test_skips.py::test_body": "skip",
    }
    assert "test_skips.py::test_marker" not in job_messages(records)
    updates = [b["submitted"] for b in bodies(records, "regr-update")]
    assert updates[0] == 4
    assert updates[-1] == 2
    assert bodies(records, "regr-finish") == [
        {"name": "lifecycle/1", "pending": False, "submitted": 2}
    ]


RERUN_SUITE = """
import pathlib

def test_flaky():
    counter = pathlib.Path(__file__).with_name("attempts.txt")
    attempt = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(attempt + 1))
    assert attempt >= 2, f"attempt {attempt}"

def test_always_fails():
    assert 0, "still broken"

def test_fine():
    pass
"""


@pytest.mark.parametrize("live_after", ["0", "0.1"])
@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_reruns_are_one_job_per_test(
    pytester: pytest.Pytester, xdist: tuple[str, ...], live_after: str
) -> None:
    """(With live_after 0.1, each test's job opens when it starts, and every attempt
    starts it again.)"""
    pytester.makepyfile(test_rerun=RERUN_SUITE)
    result, records = recorded(
        pytester, "--reruns", "2", *xdist, f"--simscope-live-after={live_after}"
    )

    assert result.parseoutcomes() == {"passed": 2, "failed": 1, "rerun": 4}
    assert_clean(records)
    per_job = job_messages(records)
    assert sorted(per_job) == [
        "test_rerun.py::test_always_fails",
        "test_rerun.py::test_fine",
        "test_rerun.py::test_flaky",
    ]
    for messages in per_job.values():
        kinds = [t for t, _ in messages]
        # (A live job held live_after seconds is dropped if its test ended sooner.)
        assert kinds in (["job-live", "job-finish"], ["job-finish"])
        assert kinds[0] == "job-live" or live_after != "0"
    assert normalise(job(records, "test_rerun.py::test_flaky")) == finish_body(
        "test_rerun.py::test_flaky", "pass", metadata=[["reruns", "2"]]
    )
    assert normalise(job(records, "test_rerun.py::test_always_fails")) == finish_body(
        "test_rerun.py::test_always_fails",
        "fail",
        fail_message="AssertionError: still broken",
        metadata=[["reruns", "2"]],
    )
    assert normalise(job(records, "test_rerun.py::test_fine")) == finish_body(
        "test_rerun.py::test_fine", "pass"
    )
    assert bodies(records, "regr-finish")[0]["submitted"] == 3


# What flaky (a retry plugin) does: an attempt that failed and is run again hands on only
# its setup and teardown reports.
RETRIES = """
import pytest
from _pytest.runner import runtestprotocol

def pytest_configure(config):
    config.addinivalue_line("markers", "retry(runs): run a failing test again")

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    marker = item.get_closest_marker("retry")
    if marker is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in range(marker.args[0]):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        last = attempt == marker.args[0] - 1 or not any(r.failed for r in reports)
        for report in reports:
            if report.when != "call" or last:
                item.ihook.pytest_runtest_logreport(report=report)
        if last:
            break
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""

RETRIED_SUITE = """
import pathlib

import pytest

@pytest.mark.retry(3)
def test_flaky():
    counter = pathlib.Path(__file__).with_name("attempts.txt")
    attempt = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(attempt + 1))
    assert attempt >= 2, f"attempt {attempt}"

@pytest.mark.retry(2)
def test_always_fails():
    assert 0, "still broken"

def test_fine():
    pass
"""


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_retries_that_hand_on_no_call_report_are_one_job_per_test(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makeconftest(RETRIES)
    pytester.makepyfile(test_flaky=RETRIED_SUITE)
    result, records = recorded(pytester, *xdist)

    result.assert_outcomes(passed=2, failed=1)
    assert_clean(records)
    assert normalise(job(records, "test_flaky.py::test_flaky")) == finish_body(
        "test_flaky.py::test_flaky", "pass", metadata=[["reruns", "2"]]
    )
    failed = job(records, "test_flaky.py::test_always_fails")
    assert (failed["result"], failed["metadata"]) == ("fail", [["reruns", "1"]])
    assert sorted(finished(records)) == [
        "test_flaky.py::test_always_fails", "test_flaky.py::test_fine", "test_flaky.py::test_flaky"
    ]
    assert bodies(records, "regr-finish")[0]["submitted"] == 3


RERUN_DETAILS_SUITE = """
import pytest

RUNS = {}

def first_time(name):
    RUNS[name] = RUNS.get(name, 0) + 1
    return RUNS[name] == 1

@pytest.fixture
def breaks_once_in_teardown():
    yield
    if first_time("teardown"):
        raise RuntimeError("teardown, first time")

def test_metadata_once(simscope_metadata):
    simscope_metadata["k"] = "v"
    assert not first_time("metadata")

@pytest.fixture
def marks_itself(request):
    request.applymarker(pytest.mark.simscope(metadata={"fixture": "yes"}))

def test_marker_from_a_fixture_once(marks_itself):
    assert not first_time("fixture marker")

def test_call_and_teardown_fail_once(breaks_once_in_teardown):
    assert not first_time("call")

@pytest.mark.simscope(category="marked", testgroup="g")
def test_subtests_keep_their_marker(subtests):
    with subtests.test(msg="fine"):
        pass
    with subtests.test(msg="broken"):
        assert not first_time("subtest")
"""


@pytest.mark.parametrize("xdist", [XDIST_MODES[0], XDIST_MODES[2]])
def test_a_rerun_attempt_counts_once_and_keeps_the_last_attempts_details(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    """With pytest-rerunfailures: metadata and fixture markers of the last attempt only,
    one rerun per attempt (a call and a teardown failing in it), and a test whose subtests
    report before the attempt's setup keeps its marker and its subtests."""
    pytester.makepyfile(test_rerun_details=RERUN_DETAILS_SUITE)
    result, records = recorded(pytester, "--reruns", "1", *xdist)

    assert result.ret == pytest.ExitCode.OK
    assert_clean(records)
    jobs = {}
    for nodeid, found in finished_by_nodeid(records).items():
        [jobs[nodeid]] = found  # one job per test
    assert {n: b["result"] for n, b in jobs.items()} == {
        f"test_rerun_details.py::{name}": "pass"
        for name in (
            "test_call_and_teardown_fail_once",
            "test_marker_from_a_fixture_once",
            "test_metadata_once",
            "test_subtests_keep_their_marker",
        )
    }
    meta = {n.partition("::")[2]: b.get("metadata") for n, b in jobs.items()}
    assert meta["test_metadata_once"] == [["k", "v"], ["reruns", "1"]]
    assert meta["test_marker_from_a_fixture_once"] == [["fixture", "yes"], ["reruns", "1"]]
    assert meta["test_call_and_teardown_fail_once"] == [["reruns", "1"]]
    assert meta["test_subtests_keep_their_marker"] == [
        ["reruns", "1"], ["subtests_passed", "2"]
    ]
    marked = jobs["test_rerun_details.py::test_subtests_keep_their_marker"]
    assert (marked["category"], marked["testgroup"]) == ("marked", "g")


MARKER_SUITE = """
import pytest

@pytest.mark.simscope(category="lint", testgroup="g", metadata={"a": 1}, b="x")
def test_marked(simscope_metadata):
    simscope_metadata["k"] = "v"
    simscope_metadata.add("n", 3)

@pytest.mark.simscope(testgroup="cls")
class TestGroup:
    @pytest.mark.simscope(category="near", metadata=[("level", "method")])
    def test_method(self):
        pass

def test_plain(simscope_metadata):
    pass

@pytest.fixture
def marks_itself(request):
    request.applymarker(pytest.mark.simscope(category="late", metadata={"when": "setup"}))

def test_marked_in_setup(marks_itself):
    pass
"""


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_marker_and_fixture_fill_the_job(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(test_marker=MARKER_SUITE)
    result, records = recorded(pytester, "--simscope-metadata", "site=lab", *xdist)

    result.assert_outcomes(passed=4)
    assert_clean(records)
    marked = "test_marker.py::test_marked"
    method = "test_marker.py::TestGroup::test_method"
    plain = "test_marker.py::test_plain"
    site = ["site", "lab"]
    assert [(t, normalise(b)) for t, b in job_messages(records)[marked]] == [
        ("job-live", live_body(marked, category="lint", testgroup="g", metadata=[site])),
        (
            "job-finish",
            finish_body(
                marked,
                "pass",
                category="lint",
                testgroup="g",
                metadata=[site, ["a", "1"], ["b", "x"], ["k", "v"], ["n", "3"]],
            ),
        ),
    ]
    assert normalise(job(records, method)) == finish_body(
        method, "pass", category="near", testgroup="cls", metadata=[site, ["level", "method"]]
    )
    assert normalise(job(records, plain)) == finish_body(plain, "pass", metadata=[site])
    # A marker a fixture adds while the test sets up counts like one written on it.
    late = "test_marker.py::test_marked_in_setup"
    assert normalise(job(records, late)) == finish_body(
        late, "pass", category="late", metadata=[site, ["when", "setup"]]
    )


HOOK_SUITE = """
def test_one():
    pass

def test_two():
    assert 0, "two"
"""


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_job_hook_changes_the_job(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makeconftest(
        """
        def pytest_simscope_job(job, report):
            job.build = "x"
            if job.result != "live":
                job.metadata = list(job.metadata or []) + [("when", report.when)]
        """
    )
    pytester.makepyfile(test_hooked=HOOK_SUITE)
    result, records = recorded(pytester, *xdist)

    result.assert_outcomes(passed=1, failed=1)
    assert_clean(records)
    one = "test_hooked.py::test_one"
    assert [(t, normalise(b)) for t, b in job_messages(records)[one]] == [
        ("job-live", live_body(one, build="x")),
        ("job-finish", finish_body(one, "pass", build="x", metadata=[["when", "teardown"]])),
    ]
    two = job(records, "test_hooked.py::test_two")
    assert (two["build"], two["result"]) == ("x", "fail")


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_job_hook_that_raises_leaves_jobs_unchanged(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makeconftest(
        """
        def pytest_simscope_job(job, report):
            job.build = "half-changed"
            raise RuntimeError("hook is broken")
        """
    )
    pytester.makepyfile(test_hooked=HOOK_SUITE)
    result, records = recorded(pytester, *xdist)

    result.assert_outcomes(passed=1, failed=1)
    # As without the plugin: one test failed.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_clean(records)
    assert normalise(job(records, "test_hooked.py::test_one")) == finish_body(
        "test_hooked.py::test_one", "pass"
    )
    assert "build" not in job(records, "test_hooked.py::test_two")
    warnings = [line for line in result.outlines if line.startswith("simscope: warning:")]
    assert warnings == [
        "simscope: warning: pytest_simscope_job raised RuntimeError: hook is broken; "
        "jobs are published unchanged"
    ]


@pytest.mark.parametrize("xdist", [XDIST_MODES[0], XDIST_MODES[2]])
def test_jobdir_holds_the_log_of_each_test(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        test_logged="""
        def test_noisy():
            print("stdout of the " + "failing test")
            assert 0, "the failure"

        def test_quiet():
            print("stdout of the " + "passing test")
        """
    )
    root = pytester.path / "jobs"
    result, records = recorded(pytester, f"--simscope-jobdir-root={root}", *xdist)

    result.assert_outcomes(passed=1, failed=1)
    assert_clean(records)
    noisy = job(records, "test_logged.py::test_noisy")
    quiet = job(records, "test_logged.py::test_quiet")
    folders = {Path(noisy["jobdir"]), Path(quiet["jobdir"])}
    assert len(folders) == 2
    for folder in folders:
        assert folder.is_dir()
        assert folder.resolve().is_relative_to(root.resolve())
    log = (Path(noisy["jobdir"]) / "log.txt").read_text(encoding="utf-8")
    assert "test: test_logged.py::test_noisy" in log
    assert "== failure ==\n" + noisy["fail_message"] + "\n" in log
    assert log.count("stdout of the failing test") == 1
    quiet_log = (Path(quiet["jobdir"]) / "log.txt").read_text(encoding="utf-8")
    assert "== failure ==" not in quiet_log
    assert quiet_log.count("stdout of the passing test") == 1
    live = [b for b in bodies(records, "job-live") if b["config"] == quiet["config"]]
    assert "jobdir" not in live[0]


def test_a_relative_jobdir_root_is_where_pytest_started(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_moves="""
        import os

        def test_moves_away():
            os.makedirs("elsewhere", exist_ok=True)
            os.chdir("elsewhere")

        def test_after():
            pass
        """
    )
    result, records = recorded(pytester, "--simscope-jobdir-root=logs")

    result.assert_outcomes(passed=2)
    root = (pytester.path / "logs").resolve()
    for nodeid in ("test_moves.py::test_moves_away", "test_moves.py::test_after"):
        assert Path(job(records, nodeid)["jobdir"]).resolve().is_relative_to(root)


def test_jobdir_names_are_the_same_from_run_to_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_named="def test_one():\n    pass\n")
    root = pytester.path / "jobs"

    _, first = recorded(pytester, f"--simscope-jobdir-root={root}", subprocess=True)
    _, second = recorded(pytester, f"--simscope-jobdir-root={root}", subprocess=True)

    assert job(first, "test_named.py::test_one")["jobdir"] == job(
        second, "test_named.py::test_one"
    )["jobdir"]


def test_huge_failure_message_keeps_head_and_tail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_huge="""
        def test_default_limit():
            assert 0, "HEAD" + "x" * 1_000_000 + "TAIL"
        """
    )
    result, records = recorded(pytester)
    _, limited = recorded(pytester, "--simscope-fail-message-limit=3000")

    result.assert_outcomes(failed=1)
    assert_clean(records)
    assert_clean(limited)
    for stream, limit in ((records, 20000), (limited, 3000)):
        message = job(stream, "test_huge.py::test_default_limit")["fail_message"]
        assert len(message) <= limit
        assert message.startswith("AssertionError: HEADxxx")
        assert len(message.partition("\n")[0]) <= 300
        assert re.search(r"\[\.\.\. \d+ characters cut by pytest-simscope \.\.\.\]", message)
        assert message.rstrip().endswith("test_huge.py:2: AssertionError")
        cut = int(re.findall(r"(\d+) characters cut", message)[0])
        assert cut > 1_000_000 - limit


def test_binary_output_and_odd_test_ids_publish_safely(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_odd="""
        import sys
        import pytest

        IDS = [
            "a/b", "x::y", "[..]", "\\u00fcn\\u00efc\\u00f6de", "..", "CON", "nul\\x00", "L" * 300
        ]

        def test_binary_stdout():
            sys.stdout.buffer.write(b"\\xff\\xfe\\x00raw\\x80\\n")
            sys.stdout.flush()
            print("lone surrogate \\udcff here")
            assert 0, b"\\xff\\xfe".decode("latin-1")

        @pytest.mark.parametrize("name", IDS, ids=IDS)
        def test_ids(name):
            assert name != "CON", "reserved"
        """
    )
    root = pytester.path / "jobs"
    result, records = recorded(pytester, f"--simscope-jobdir-root={root}")

    result.assert_outcomes(passed=7, failed=2)
    assert_clean(records)
    collected = [line.split(" ")[0] for line in pytester.runpytest_inprocess(
        "--collect-only", "-q", "-p", "no:randomly"
    ).outlines if "::" in line]
    assert sorted(finished_by_nodeid(records)) == sorted(collected)
    assert len(collected) == 9
    # The offline queue holds the same stream (less the job-live messages the publisher
    # dropped because their job-finish was already waiting), in safely named folders.
    queue = pytester.path / ".simscope" / "queue"
    queued = read_outbox(queue)
    assert [r for r in queued if r["type"] != "job-live"] == [
        r for r in records if r["type"] != "job-live"
    ]
    assert all(r in records for r in queued)
    outbox = (queue / OUTBOX).resolve()
    for folder in outbox.iterdir():
        assert re.fullmatch(r"job-\d{8}-\d{6}-[A-Za-z0-9._-]+", folder.name), folder.name
        assert folder.resolve().parent == outbox
        assert len(folder.name) < 120
        assert folder.name.split("-")[3].upper() not in {"CON", "NUL"}
    for body in finished(records).values():
        folder = Path(body["jobdir"]).resolve()
        assert folder.parent.parent == root.resolve()
        assert (folder / "log.txt").is_file()
    binary = job(records, "test_odd.py::test_binary_stdout")
    assert binary["fail_message"].partition("\n")[0] == "AssertionError: \u00ff\u00fe"
    log = (Path(binary["jobdir"]) / "log.txt").read_text(encoding="utf-8")
    assert "raw" in log
    assert "lone surrogate" in log


@pytest.mark.parametrize("xdist", [XDIST_MODES[0], XDIST_MODES[2]])
def test_randomly_seed_is_on_every_job(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(
        test_seeded="""
        def test_one():
            pass

        def test_two():
            pass
        """
    )
    result, records = recorded(
        pytester, "-p", "randomly", "--randomly-seed=123", *xdist, randomly=True
    )

    result.assert_outcomes(passed=2)
    assert_clean(records)
    jobs = bodies(records, "job-live") + bodies(records, "job-finish")
    assert len(jobs) == 4
    assert {b.get("seed") for b in jobs} == {"123"}


def test_no_seed_without_randomly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unseeded="def test_one():\n    pass\n")
    _, records = recorded(pytester)

    assert [b.get("seed") for b in bodies(records, "job-finish")] == [None]
    assert normalise(job(records, "test_unseeded.py::test_one"))["finish_time"] == TIME
    assert normalise(job(records, "test_unseeded.py::test_one"))["compute_ms"] == MS


def test_fail_message_within_a_small_limit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_small="""
        def test_long_summary():
            assert 0, "S" * 150 + "\\n" + "detail " * 2000
        """
    )
    result, records = recorded(pytester, "--simscope-fail-message-limit=200")

    result.assert_outcomes(failed=1)
    message = job(records, "test_small.py::test_long_summary")["fail_message"]
    assert message.startswith("AssertionError: SSS")
    assert len(message) <= 200


def test_a_test_run_twice_in_one_session_is_two_jobs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_twice="def test_a():\n    pass\n\ndef test_b():\n    assert 0\n")
    result, records = recorded(pytester, "--keep-duplicates", "test_twice.py", "test_twice.py")
    result.assert_outcomes(passed=2, failed=2)
    finishes = [(b["uniqueid"], b["result"]) for b in bodies(records, "job-finish")]
    assert finishes == [
        ("test_twice.py::test_a", "pass"),
        ("test_twice.py::test_b", "fail"),
        ("test_twice.py::test_a#2", "pass"),
        ("test_twice.py::test_b#2", "fail"),
    ]


# What pytest-forked does when a test's forked process died: one report, its phase "???".
FORKED_CRASH = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    xfail = item.get_closest_marker("xfail") is not None
    report = pytest.TestReport(
        item.nodeid, item.location, {}, "skipped" if xfail else "failed",
        (str(item.path), 1, "crashed: EXITED with status 3") if xfail else "EXITED 3", "???",
    )
    if xfail:
        report.wasxfail = "crash expected"
    ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""


def test_a_crash_report_ends_the_job_with_its_own_outcome(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FORKED_CRASH)
    pytester.makepyfile(
        test_forked="""
        import pytest

        def test_crashes():
            pass

        @pytest.mark.xfail(reason="crash expected")
        def test_expected_crash():
            pass
        """
    )
    result, records = recorded(pytester)

    result.assert_outcomes(failed=1, xfailed=1)
    assert_clean(records)
    jobs = finished(records)
    assert jobs["test_forked.py::test_crashes"]["result"] == "fail"
    assert jobs["test_forked.py::test_crashes"]["fail_message"].startswith("EXITED 3")
    xfailed = jobs["test_forked.py::test_expected_crash"]
    assert xfailed["result"] == "pass"
    assert ["pytest_outcome", "xfailed"] in xfailed["metadata"]


FROZEN_CLOCK = """
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    report.start = report.stop = 946684800.0  # a frozen clock (freezegun, time-machine)
    return report
"""


def test_a_frozen_clock_gives_unique_starts_and_no_finish_before_its_start(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(FROZEN_CLOCK)
    pytester.makepyfile(test_frozen="def test_a():\n    pass\n\ndef test_b():\n    assert 0\n")
    result, records = recorded(pytester)

    result.assert_outcomes(passed=1, failed=1)
    assert_clean(records)  # the protocol check: finish_time never before start_time
    starts = [body["start_time"] for body in finished(records).values()]
    assert len(set(starts)) == 2


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["no-xdist", "n2"])
def test_a_failed_doctest_is_summed_up_by_its_example(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    """Not by the first line pytest shows for it, a line number of the docstring."""
    pytester.makepyfile(
        mod='''
        def boom():
            """
            >>> x = 1
            >>> 1/0
            """

        def wrong():
            """
            >>> "a"
            'b'
            """
        '''
    )
    result, records = recorded(pytester, "--doctest-modules", *xdist)

    result.assert_outcomes(failed=2)
    assert_clean(records)
    summaries = {
        uid: body["fail_message"].partition("\n")[0] for uid, body in finished(records).items()
    }
    assert summaries == {
        "mod.py::mod.boom": (
            "UnexpectedException: mod.py:4: >>> 1/0 raised ZeroDivisionError('division by zero')"
        ),
        "mod.py::mod.wrong": 'DocTestFailure: mod.py:9: >>> "a"',
    }


ODD_REPORTS_CONFTEST = """
import math
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    name = item.name
    if name == "test_text_duration":
        report.duration = "slow"
    elif name == "test_nan_times":
        report.duration = math.nan
        report.stop = math.nan
    elif name == "test_no_stop":
        report.stop = None
    elif name == "test_infinite_start" and call.when == "setup":
        report.start = math.inf
    elif name == "test_huge_duration" and call.when == "call":
        report.duration = 1e300
    elif name == "test_keyword_list":
        report.keywords = ["test_keyword_list"]
    elif name == "test_no_keywords":
        del report.keywords
"""


def test_odd_report_values_and_percent_signs_publish_usual_jobs(
    pytester: pytest.Pytester,
) -> None:
    """Reports a plugin changed (text, NaN, infinite or missing times, keywords that are
    not a dict) and '%' in the run's fields: every test still gets its live and pass job,
    with times a server takes."""
    pytester.makeconftest(ODD_REPORTS_CONFTEST)
    names = [
        "text_duration", "nan_times", "no_stop", "infinite_start", "huge_duration",
        "keyword_list", "no_keywords", "plain",
    ]
    percent = "test_odd.py::test_percent[%s_%d_%%]"
    pytester.makepyfile(
        test_odd="import pytest\n\n"
        + "\n".join(f"def test_{name}():\n    pass\n" for name in names)
        + '\n@pytest.mark.parametrize("x", [1], ids=["%s_%d_%%"])\n'
        + "def test_percent(x):\n    pass\n"
    )
    result, records = recorded(
        pytester,
        "--simscope-build=50%d%%s",
        "--simscope-category=cat%b",
        "-o",
        "simscope_metadata=owner=%(x)s 100%",
    )

    result.assert_outcomes(passed=len(names) + 1)
    assert_clean(records)
    jobs = {body["config"]: body for body in finished(records).values()}
    assert sorted(jobs) == sorted([*(f"test_odd.py::test_{name}" for name in names), percent])
    lives = {body["config"]: body for body in bodies(records, "job-live")}
    assert sorted(lives) == sorted(jobs)
    assert jobs[percent]["uniqueid"] != percent  # escaped
    for nodeid, body in jobs.items():
        assert body["result"] == "pass"
        assert body["build"] == "50%d%%s"
        assert body["category"] == "cat%b"
        assert body["uniqueid"] == lives[nodeid]["uniqueid"]
        assert ["owner", "%(x)s 100%"] in body["metadata"]
        assert lives[nodeid]["build"] == "50%d%%s"
        assert 0 <= body["compute_ms"] <= body["runtime_ms"]
        assert body["finish_time"] >= body["start_time"]
    assert jobs["test_odd.py::test_huge_duration"]["compute_ms"] == 24 * 24 * 3600 * 1000 - 1
    assert jobs["test_odd.py::test_nan_times"]["compute_ms"] == 0


FROZEN_CLOCK_CONFTEST = """
import sys
import time

import pytest


@pytest.fixture(autouse=True, scope="session")
def frozen_clock():
    # As freezegun does: every module attribute that is the real time.time is replaced
    # (pytest's own runner still gets the real time: freezegun ignores calls from it).
    real = time.time
    fake = lambda: 1_000_000_000.0  # 2001
    replaced = [(time, "time")]
    time.time = fake
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("_pytest."):
            continue
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is real:
                setattr(module, name, fake)
                replaced.append((module, name))
    yield
    for module, name in replaced:
        setattr(module, name, real)
"""


@pytest.mark.parametrize("live_after", ["0", "0.1"])
def test_a_clock_frozen_for_the_whole_session_leaves_job_times_true(
    pytester: pytest.Pytester, live_after: str
) -> None:
    """A test suite that replaces time.time for the whole session: its jobs still start
    and finish when they did, as pytest's own report times do."""
    pytester.makeconftest(FROZEN_CLOCK_CONFTEST)
    pytester.makepyfile(
        test_frozen="import time\n\n"
        + "".join(f"def test_{i}():\n    time.sleep(0.01)\n\n" for i in range(3))
    )
    result, records = recorded(pytester, f"--simscope-live-after={live_after}")
    result.assert_outcomes(passed=3)
    assert_clean(records)
    jobs = finished(records)
    assert len(jobs) == 3
    year = records[0]["body"]["starttime"][:4]
    for body in jobs.values():
        assert body["start_time"][:4] == body["finish_time"][:4] == year != "2001"
        assert 10 <= body["runtime_ms"] < 10_000


BROKEN_REPORTER_CONFTEST = """
import types

import pytest
from pytest_simscope.plugin import plugin_key


@pytest.hookimpl(trylast=True)  # after the plugin made its reporter
def pytest_sessionstart(session):
    reporter = session.config.stash[plugin_key].reporter
    usual_finish, usual_open = reporter._finish_pass, reporter._open_job

    def finish_pass(self, key, job):
        if job.nodeid.endswith("test_b"):
            raise RuntimeError("planted in the usual finish")
        usual_finish(key, job)

    def open_job(self, report, key, data):
        if key[1].endswith("test_c") and report is None:
            raise RuntimeError("planted in the start")
        return usual_open(report, key, data)

    reporter._finish_pass = types.MethodType(finish_pass, reporter)
    reporter._open_job = types.MethodType(open_job, reporter)
"""


@pytest.mark.parametrize("failing", [False, True], ids=["passing", "failing"])
@pytest.mark.parametrize("live_after", ["0", "0.1"])
def test_an_error_inside_the_reporters_own_hooks_changes_no_exit_status(
    pytester: pytest.Pytester, failing: bool, live_after: str
) -> None:
    """The reporter's per-test methods are pytest's hooks themselves, with no layer around
    them: an error raised in one is caught there, named in the summary, and changes
    neither the exit status nor the other tests' jobs.  The test whose start failed gets
    its job at its setup report; the one whose finish failed is closed at the end."""
    pytester.makeconftest(BROKEN_REPORTER_CONFTEST)
    last = "assert False" if failing else "pass"
    pytester.makepyfile(
        test_broken=f"def test_a():\n    pass\n\ndef test_b():\n    pass\n\n"
        f"def test_c():\n    pass\n\ndef test_d():\n    {last}\n"
    )
    result, records = recorded(pytester, f"--simscope-live-after={live_after}")

    assert result.ret == (pytest.ExitCode.TESTS_FAILED if failing else pytest.ExitCode.OK)
    out = result.stdout.str()
    assert "internal error in test report: RuntimeError: planted in the usual finish" in out
    # (Jobs open at the test's start only with a live_after: see README.)
    started = "internal error in test start: RuntimeError: planted in the start" in out
    assert started == (live_after != "0")
    assert_clean(records)
    assert job(records, "test_broken.py::test_a")["result"] == "pass"
    assert job(records, "test_broken.py::test_c")["result"] == "pass"
    assert job(records, "test_broken.py::test_d")["result"] == ("fail" if failing else "pass")
    closed = job(records, "test_broken.py::test_b")
    assert closed["result"] == "fail"
    assert "ended before this test finished" in closed["fail_message"]
