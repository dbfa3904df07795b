"""The regression's life: start, submitted count, finish, and the ways a session can end."""

from __future__ import annotations

import os
import re
import socket

import pytest
from published import (
    HOST,
    REGRESSION,
    TIME,
    XDIST_MODES,
    assert_clean,
    bare,
    bodies,
    command,
    finished,
    isolate_environment,
    job,
    job_messages,
    normalise,
    plugin_args,
    record_path,
    recorded,
    run,
    types,
)

from pytest_simscope.timestamps import parse_rfc3339


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


THREE = """
import pytest

def test_one():
    pass

def test_two():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    pass
"""


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_regression_start_update_finish(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(test_three=THREE)
    result, records = recorded(pytester, *xdist)

    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.OK
    assert_clean(records)
    assert types(records)[:2] == ["regr-start", "regr-update"]
    assert types(records)[-1] == "regr-finish"
    assert sorted(types(records)[2:-1]) == ["job-finish"] * 4 + ["job-live"] * 4
    start, update, finish = records[0]["body"], records[1]["body"], records[-1]["body"]
    assert {r["regression"] for r in records} == {REGRESSION}
    assert normalise(start) == {
        "name": REGRESSION,
        "starttime": TIME,
        "pending": True,
        "host": HOST,
        "dir": str(pytester.path),
        "command": command(pytester, *xdist),
    }
    assert start["host"] == socket.gethostname()
    assert update == {"name": REGRESSION, "submitted": 4}
    assert finish == {"name": REGRESSION, "pending": False, "submitted": 4}

    # Every job went live, then finished, under one uniqueid.
    per_job = job_messages(records)
    assert sorted(per_job) == [
        "test_three.py::test_one",
        "test_three.py::test_param[1]",
        "test_three.py::test_param[2]",
        "test_three.py::test_two",
    ]
    began = parse_rfc3339(start["starttime"])
    assert began is not None
    for uid, messages in per_job.items():
        assert [t for t, _ in messages] == ["job-live", "job-finish"]
        live, done = messages[0][1], messages[1][1]
        assert live["uniqueid"] == done["uniqueid"] == uid == done["config"]
        assert live["start_time"] == done["start_time"]
        assert {k: v for k, v in live.items() if k != "result"} == {
            k: v
            for k, v in done.items()
            if k not in ("result", "finish_time", "compute_ms", "runtime_ms", "fail_message")
        }
        job_start, job_end = parse_rfc3339(done["start_time"]), parse_rfc3339(done["finish_time"])
        assert job_start is not None and job_end is not None
        assert began <= job_start <= job_end
        assert done["runtime_ms"] >= done["compute_ms"] >= 0
    start_times = [b["start_time"] for b in finished(records).values()]
    assert len(set(start_times)) == len(start_times)


def test_not_enabled_without_a_regression_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_three=THREE)
    record = record_path(pytester)

    plain = run(pytester, *plugin_args(pytester, regression=None))
    with_record = run(pytester, f"--simscope-record={record}", "-p", "no:randomly")

    for result in (plain, with_record):
        result.assert_outcomes(passed=4)
        assert not [line for line in result.outlines if line.startswith("simscope")]
    assert not (pytester.path / ".simscope").exists()
    assert not record.exists()


def test_header_and_summary_lines(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mixed="""
        import pytest

        def test_ok():
            pass

        def test_bad():
            assert 0

        def test_skipped():
            pytest.skip("later")
        """
    )
    result, records = recorded(pytester)

    result.assert_outcomes(passed=1, failed=1, skipped=1)
    header = [line for line in result.outlines if line.startswith("simscope: regression")]
    assert header == [f"simscope: regression {REGRESSION} -> offline queue .simscope/queue/outbox"]
    summary = [line for line in result.outlines if line.startswith("simscope:")][1:]
    assert len(summary) == 1
    match = re.fullmatch(
        rf"simscope: 3 jobs \(1 pass, 1 fail, 1 skip\) of {re.escape(REGRESSION)} queued in "
        r"\.simscope/queue/outbox \((\d+) messages\); deliver with: "
        r"pytest-simscope drain \.simscope/queue --url URL",
        summary[0],
    )
    assert match is not None, summary[0]
    # A job-live whose job-finish is already waiting is not queued: between the
    # messages without job-live and all of them.
    without_live = len([r for r in records if r["type"] != "job-live"])
    assert without_live <= int(match.group(1)) <= len(records)


def test_summary_of_a_queue_folder_with_a_space_and_of_one_that_cannot_be_written(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_ok():\n    pass\n")
    result, _ = recorded(pytester, "--simscope-queue-dir=my queue")
    assert result.ret == 0
    # The printed command can be pasted as it is.
    assert any(
        line.endswith("deliver with: pytest-simscope drain 'my queue' --url URL")
        for line in result.outlines
    ), result.outlines
    pytester.makefile(".txt", blocker="a file where the queue's parent folder should be")
    result, _ = recorded(pytester, "--simscope-queue-dir=blocker.txt/queue")
    assert result.ret == 0
    summary = [line for line in result.outlines if line.startswith("simscope: 1 job ")]
    assert len(summary) == 1
    assert re.fullmatch(
        rf"simscope: 1 job \(1 pass, 0 fail, 0 skip\) of {re.escape(REGRESSION)} NOT queued: "
        r"\d messages could not be written to the offline queue blocker\.txt/queue",
        summary[0],
    ), summary
    assert "deliver with" not in result.stdout.str()


@pytest.mark.parametrize(
    "option",
    ["--collect-only", "--setup-plan", "--setup-only", "--fixtures", "--fixtures-per-test"],
)
def test_a_run_that_runs_no_test_publishes_nothing(
    pytester: pytest.Pytester, option: str
) -> None:
    pytester.makepyfile(test_three=THREE)
    result, records = recorded(pytester, option)

    assert result.ret == pytest.ExitCode.OK
    assert records == []
    assert (
        f"simscope: regression {REGRESSION} -> offline queue .simscope/queue/outbox "
        "(not publishing: no test runs)"
    ) in result.outlines


BROKEN = """
import module_that_does_not_exist

def test_never():
    pass
"""


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_collection_error_is_a_fail_job(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(test_broken=BROKEN, test_three=THREE)
    result, records = recorded(pytester, *xdist)

    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    assert_clean(records)
    assert types(records)[0] == "regr-start"
    assert types(records)[-1] == "regr-finish"
    broken = job(records, "test_broken.py")
    assert normalise(broken) == {
        "category": "pytest",
        "uniqueid": "test_broken.py",
        "result": "fail",
        "start_time": TIME,
        "finish_time": TIME,
        "compute_ms": "<ms>",
        "runtime_ms": "<ms>",
        "config": "test_broken.py",
        "host": HOST,
        "testgroup": "test_broken.py",
        "fail_message": (
            "collection error: ImportError while importing test module "
            f"'{pytester.path / 'test_broken.py'}'."
        ),
    }
    assert "No module named 'module_that_does_not_exist'" in broken["fail_message"]
    # The regression finishes and counts what was published, so it is not ABORTED.
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": len(finished(records))}
    ]


def test_collection_error_with_continue(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN, test_three=THREE)
    result, records = recorded(pytester, "--continue-on-collection-errors")

    result.assert_outcomes(passed=4, errors=1)
    assert_clean(records)
    assert {uid: b["result"] for uid, b in finished(records).items()} == {
        "test_broken.py": "fail",
        "test_three.py::test_one": "pass",
        "test_three.py::test_two": "pass",
        "test_three.py::test_param[1]": "pass",
        "test_three.py::test_param[2]": "pass",
    }
    assert bodies(records, "regr-update")[-1]["submitted"] == 5
    assert bodies(records, "regr-finish")[0]["submitted"] == 5


STOPS = """
def test_first():
    pass

def test_fails():
    assert 0, "stop here"

def test_after_1():
    pass

def test_after_2():
    pass
"""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("-x", "-p", "no:xdist"), id="x-no-xdist"),
        pytest.param(("--maxfail=1", "-n", "0"), id="maxfail-n0"),
        pytest.param(("--maxfail=1", "-n", "2"), id="maxfail-n2"),
    ],
)
def test_exitfirst_and_maxfail_still_finish(
    pytester: pytest.Pytester, args: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_stops=STOPS)
    result, records = recorded(pytester, *args)
    without = bare(pytester, *args)

    assert result.ret == without.ret != pytest.ExitCode.OK
    assert_clean(records)
    assert types(records)[-1] == "regr-finish"
    jobs = finished(records)
    assert jobs["test_stops.py::test_fails"]["result"] == "fail"
    assert jobs["test_stops.py::test_fails"]["fail_message"].startswith(
        "AssertionError: stop here\n"
    )
    assert bodies(records, "regr-update")[0]["submitted"] == 4
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": len(jobs)}
    ]
    if "-n" not in args or "0" in args:
        assert sorted(jobs) == ["test_stops.py::test_fails", "test_stops.py::test_first"]


INTERRUPTED = """
def test_before():
    pass

def test_interrupted():
    raise KeyboardInterrupt

def test_never_runs():
    pass
"""


@pytest.mark.parametrize("xdist", XDIST_MODES)
def test_keyboard_interrupt(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(test_interrupt=INTERRUPTED)
    # In process, pytester would raise the inner run's KeyboardInterrupt in this one.
    result, records = recorded(pytester, *xdist, subprocess=True)
    without = bare(pytester, *xdist, subprocess=True)

    assert result.ret == without.ret
    assert_clean(records)
    assert types(records)[-1] == "regr-finish"
    interrupted = job(records, "test_interrupt.py::test_interrupted")
    summary = interrupted["fail_message"].partition("\n")[0]
    if xdist == ("-n", "2"):
        # The worker stops on the interrupt; the controller sees it go down.
        assert re.fullmatch(
            r"worker 'gw\d' crashed while running 'test_interrupt.py::test_interrupted'",
            summary,
        ), summary
    else:
        assert result.ret == pytest.ExitCode.INTERRUPTED
        assert summary == "interrupted: the test session was stopped before this test finished"
        assert sorted(finished(records)) == [
            "test_interrupt.py::test_before",
            "test_interrupt.py::test_interrupted",
        ]
    assert interrupted["result"] == "fail"
    assert finished(records)["test_interrupt.py::test_before"]["result"] == "pass"
    assert bodies(records, "regr-finish")[0]["submitted"] == len(finished(records))


TERMINATED = """
import os
import signal

def test_before():
    pass

def test_terminated():
    os.kill(os.getpid(), signal.SIGTERM)

def test_never_runs():
    pass
"""


def test_sigterm_finishes_the_regression_then_dies_of_sigterm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_term=TERMINATED)
    result, records = recorded(pytester, subprocess=True)
    without = bare(pytester, subprocess=True)

    assert without.ret == -15  # killed by SIGTERM, as pytest alone is
    assert result.ret == without.ret
    assert_clean(records)
    assert types(records)[-1] == "regr-finish"
    assert finished(records)["test_term.py::test_before"]["result"] == "pass"
    terminated = job(records, "test_term.py::test_terminated")
    assert terminated["result"] == "fail"
    assert terminated["fail_message"].startswith("interrupted")
    assert "test_term.py::test_never_runs" not in job_messages(records)
    assert bodies(records, "regr-finish") == [
        {"name": REGRESSION, "pending": False, "submitted": 2}
    ]


def test_sigterm_after_a_test_broke_os_kill_still_dies_of_sigterm(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_term="""
        import os
        import signal

        def test_terminated():
            os.kill = os.getpid = None  # left broken for the rest of the run
            signal.raise_signal(signal.SIGTERM)
        """
    )
    result, records = recorded(pytester, subprocess=True)
    assert result.ret == -15
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert types(records)[-1] == "regr-finish"


def test_sigterm_handler_is_restored(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import signal

        def pytest_unconfigure(config):
            with open("handlers.txt", "a") as out:
                out.write(f"after {signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}\\n")
        """
    )
    pytester.makepyfile(
        test_handler="""
        import signal

        def test_handler_installed():
            with open("handlers.txt", "a") as out:
                out.write(f"during {signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}\\n")
        """
    )
    result, records = recorded(pytester, subprocess=True)

    result.assert_outcomes(passed=1)
    assert_clean(records)
    lines = (pytester.path / "handlers.txt").read_text().splitlines()
    assert lines == ["during False", "after True"]


@pytest.mark.parametrize("xdist", XDIST_MODES[:2])
def test_pytest_exit_inside_a_test(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(
        test_exit="""
        import pytest

        def test_before():
            pass

        def test_exits():
            pytest.exit("enough")

        def test_never_runs():
            pass
        """
    )
    result, records = recorded(pytester, *xdist)
    without = bare(pytester, *xdist)

    assert result.ret == without.ret == pytest.ExitCode.INTERRUPTED
    assert_clean(records)
    assert types(records)[-1] == "regr-finish"
    exits = job(records, "test_exit.py::test_exits")
    assert exits["result"] == "fail"
    assert exits["fail_message"].startswith("interrupted")
    assert bodies(records, "regr-finish")[0]["submitted"] == 2


def test_internal_error_still_finishes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_runtest_logreport(report):
            if report.when == "call" and report.nodeid.endswith("test_second"):
                raise RuntimeError("conftest is broken")
        """
    )
    pytester.makepyfile(
        test_internal="""
        def test_first():
            pass

        def test_second():
            pass

        def test_third():
            pass
        """
    )
    result, records = recorded(pytester, subprocess=True)
    without = bare(pytester, subprocess=True)

    assert result.ret == without.ret == pytest.ExitCode.INTERNAL_ERROR
    assert_clean(records)
    assert types(records)[-1] == "regr-finish"
    jobs = finished(records)
    assert jobs["test_internal.py::test_first"]["result"] == "pass"
    # The internal error stopped the test before it finished: a fail saying so.
    second = jobs["test_internal.py::test_second"]
    assert (second["result"], second["fail_message"]) == (
        "fail",
        "internal error: pytest failed before this test finished",
    )
    assert bodies(records, "regr-finish")[0]["submitted"] == len(jobs)


def test_exit_status_is_unchanged_for_a_green_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_three=THREE)
    result, _ = recorded(pytester)
    assert result.ret == bare(pytester).ret == pytest.ExitCode.OK
    assert os.listdir(pytester.path / ".simscope" / "queue" / "outbox")


NESTED_RUNS = '''
pytest_plugins = ["pytester"]

NOT_PUBLISHING = "(not publishing: the pytest run this one runs in publishes it)"


def test_before():
    pass


def test_nested_in_process(pytester):
    pytester.makepyfile(test_inner="def test_inner():\\n    assert 0\\n")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert any(line.endswith(NOT_PUBLISHING) for line in result.outlines)


def test_nested_in_a_subprocess(pytester):
    pytester.makepyfile(test_inner="def test_inner():\\n    assert 0\\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert any(line.endswith(NOT_PUBLISHING) for line in result.outlines)
'''


def test_pytest_runs_inside_a_publishing_run_do_not_publish_into_its_regression(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suite that runs pytest itself (pytester, pytest.main) in CI, where the regression
    comes from SIMSCOPE_REGRESSION: the nested runs inherit it and must not publish."""
    monkeypatch.setenv("SIMSCOPE_REGRESSION", REGRESSION)
    pytester.makepyfile(test_outer=NESTED_RUNS)
    result, records = recorded(pytester, subprocess=True)

    result.assert_outcomes(passed=3)
    assert_clean(records)
    assert sorted(finished(records)) == [
        "test_outer.py::test_before",
        "test_outer.py::test_nested_in_a_subprocess",
        "test_outer.py::test_nested_in_process",
    ]
    assert types(records).count("regr-start") == 1


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("raise KeyboardInterrupt", id="ctrl-c"),
        pytest.param("pytest.exit('enough', returncode=7)", id="exit"),
    ],
)
def test_a_test_interrupted_in_its_setup_is_a_fail_job(
    pytester: pytest.Pytester, stop: str
) -> None:
    """No report says it started (pytest makes none for an interrupted setup): it ran."""
    pytester.makepyfile(
        test_setup=f"""
        import pytest

        def test_before():
            pass

        @pytest.fixture
        def slow_resource():
            {stop}

        def test_interrupted_in_setup(slow_resource):
            pass

        def test_never_runs():
            pass
        """
    )
    # (In a subprocess: pytester hands an inner run's Ctrl-C on to the outer one.)
    result, records = recorded(pytester, subprocess=True)
    assert result.ret == bare(pytester, subprocess=True).ret
    assert_clean(records)
    jobs = finished(records)
    assert sorted(jobs) == [
        "test_setup.py::test_before", "test_setup.py::test_interrupted_in_setup"
    ]
    assert jobs["test_setup.py::test_interrupted_in_setup"]["result"] == "fail"
    assert bodies(records, "regr-finish")[0]["submitted"] == 2
    # The summary says where the jobs went once, also where pytest itself prints none
    # (its own summary is left out for an exit status such as 7).
    assert result.stdout.str().count("simscope: 2 jobs (1 pass, 1 fail, 0 skip)") == 1


def test_an_interrupt_outside_any_test_makes_no_job(pytester: pytest.Pytester) -> None:
    """A hook that loops over the items has an "item" too: not a test that ran."""
    pytester.makeconftest(
        """
        def pytest_collection_modifyitems(items):
            for item in items:
                raise KeyboardInterrupt
        """
    )
    pytester.makepyfile(test_never="def test_one():\n    pass\n")
    result, records = recorded(pytester, subprocess=True)
    assert result.ret == bare(pytester, subprocess=True).ret
    assert_clean(records)
    assert finished(records) == {}


LOADERS = """
import os
import sys

import pytest


@pytest.mark.parametrize("n", range(2))
def test_loaders(n):
    lines = [f"PACKAGE {type(sys.modules['pytest_simscope'].__loader__).__name__}"]
    for name, module in sorted(sys.modules.items()):
        if name.startswith("pytest_simscope."):
            lines.append(f"MODULE {name} {type(module.__loader__).__name__}")
    with open(f"loaders-{os.getpid()}.txt", "w") as handle:
        handle.write("\\n".join(lines) + "\\n")
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "1")])
def test_the_plugin_is_not_imported_through_assertion_rewriting(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: tuple[str, ...]
) -> None:
    """pytest marks an installed plugin's package for assertion rewriting; this one takes
    itself off (its modules have no assertion helpers), so its code loads as usual and
    no run rewrites it where the rewritten code cannot be cached."""
    import pytest_simscope

    # On sys.path, as an installed wheel is, pytest marks the package (an editable install
    # is found by its own finder, which pytest does not mark).
    root = os.path.dirname(os.path.dirname(pytest_simscope.__file__))
    monkeypatch.setenv("PYTHONPATH", root)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    pytester.makepyfile(test_loaders=LOADERS)
    result = run(pytester, *plugin_args(pytester, *xdist), subprocess=True)
    assert result.ret == pytest.ExitCode.OK
    [written] = pytester.path.glob("loaders-*.txt")  # in the one process that ran tests
    out = written.read_text()
    # The package itself was imported before it could take itself off: proof pytest had
    # marked it (else this test proves nothing).
    assert "PACKAGE AssertionRewritingHook" in out, out
    modules = re.findall(r"^MODULE (\S+) (\S+)$", out, re.MULTILINE)
    # (An xdist worker does not publish: it loads the plugin and its settings only.)
    expected = {"pytest_simscope.plugin"} if xdist else {"pytest_simscope.reporter"}
    assert expected <= {m for m, _ in modules}
    assert [m for m, loader in modules if loader == "AssertionRewritingHook"] == []
