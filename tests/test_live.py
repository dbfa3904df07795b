"""When a test's live job is published: at setup with live_after=0, else once it has run
live_after seconds (default 0.1), so a test that ends sooner costs one message only."""

from __future__ import annotations

import pytest
from published import XDIST_MODES, bodies, isolate_environment, recorded

from pytest_simscope.check import check_records


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


SUITE = """
import time

def test_slow():
    time.sleep(0.8)

def test_fast():
    pass

def test_fast_fail():
    assert 0
"""


def _types_of(records: list[dict[str, object]], uid: str) -> list[object]:
    return [
        r["type"] for r in records
        if isinstance(r["body"], dict) and r["body"].get("uniqueid") == uid
    ]


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_only_a_test_still_running_after_live_after_gets_a_live_job(
    pytester: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_mix=SUITE)
    result, records = recorded(pytester, *mode, "--simscope-live-after=0.2")

    result.assert_outcomes(passed=2, failed=1)
    assert _types_of(records, "test_mix.py::test_slow") == ["job-live", "job-finish"]
    assert _types_of(records, "test_mix.py::test_fast") == ["job-finish"]
    assert _types_of(records, "test_mix.py::test_fast_fail") == ["job-finish"]
    live = bodies(records, "job-live")[0]
    finish = next(b for b in bodies(records, "job-finish") if b["uniqueid"] == live["uniqueid"])
    # The late live job is the same job: same start time, same fields but the result.
    assert live["start_time"] == finish["start_time"]
    assert live["result"] == "live"
    assert check_records(records) == []


def test_the_default_is_a_tenth_of_a_second(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mix=SUITE)
    # recorded() pins live_after to 0 for the other tests; the last flag wins.
    result, records = recorded(pytester, "--simscope-live-after=0.1")
    result.assert_outcomes(passed=2, failed=1)
    assert [b["uniqueid"] for b in bodies(records, "job-live")] == ["test_mix.py::test_slow"]


def test_zero_publishes_a_live_job_for_every_test_at_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mix=SUITE)
    result, records = recorded(pytester, "--simscope-live-after=0")
    result.assert_outcomes(passed=2, failed=1)
    for name in ("test_slow", "test_fast", "test_fast_fail"):
        assert _types_of(records, f"test_mix.py::{name}") == ["job-live", "job-finish"]


SLOW_SETUP = """
import time

import pytest

@pytest.fixture
def slow_resource():
    time.sleep(0.5)

def test_uses_it(slow_resource):
    pass

def test_fast():
    pass
"""


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_a_test_shows_as_running_while_its_fixtures_are_set_up(
    pytester: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_setup=SLOW_SETUP)
    result, records = recorded(pytester, *mode, "--simscope-live-after=0.1")
    result.assert_outcomes(passed=2)
    assert _types_of(records, "test_setup.py::test_uses_it") == ["job-live", "job-finish"]
    assert _types_of(records, "test_setup.py::test_fast") == ["job-finish"]
    [finish] = [b for b in bodies(records, "job-finish") if b["uniqueid"].endswith("test_uses_it")]
    # Its job started before its fixture did.
    assert finish["runtime_ms"] >= 500
    assert check_records(records) == []


def test_a_marked_test_running_long_is_live_with_its_markers_fields(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_marked="""
        import time, pytest

        @pytest.mark.simscope(category="hardware", testgroup="rig")
        def test_on_the_rig():
            time.sleep(0.4)
        """
    )
    result, records = recorded(pytester, "--simscope-live-after=0.1")
    result.assert_outcomes(passed=1)
    # Its job opened as it started, before its marker was read: the live job held then
    # gave way to the one its setup report made.
    assert [(b["category"], b["testgroup"]) for b in bodies(records, "job-live")] == [
        ("hardware", "rig")
    ]
    [finish] = bodies(records, "job-finish")
    assert (finish["category"], finish["testgroup"]) == ("hardware", "rig")
    assert check_records(records) == []


SKIPS = """
import time, pytest

@pytest.fixture
def slow_skip():
    time.sleep(0.5)
    pytest.skip("no hardware")

def test_needs_hardware(slow_skip):
    pass

@pytest.mark.skip(reason="not today")
def test_marked():
    pass
"""


def test_a_test_skipped_at_setup_is_live_only_if_its_setup_ran_long(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_skip=SKIPS)
    result, records = recorded(pytester, "--simscope-live-after=0.05")
    result.assert_outcomes(skipped=2)
    # It was running while its fixture took half a second; a marker skips at once.
    assert [b["uniqueid"] for b in bodies(records, "job-live")] == [
        "test_skip.py::test_needs_hardware"
    ]
    assert [b["result"] for b in bodies(records, "job-finish")] == ["skip", "skip"]
    assert check_records(records) == []


def test_a_skip_that_is_omitted_never_gets_a_live_job(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_skip=SKIPS)
    result, records = recorded(pytester, "--simscope-live-after=0.05", "--simscope-skips=omit")
    result.assert_outcomes(skipped=2)
    assert bodies(records, "job-live") == []
    assert bodies(records, "job-finish") == []


RENAMES = """
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when in PHASES:
        outcome.get_result().nodeid += "@renamed"
"""


@pytest.mark.parametrize("live_after", ["0", "0.1"])
@pytest.mark.parametrize(
    "phases", [("setup", "call", "teardown"), ("call",), ("teardown",), ("call", "teardown")]
)
def test_a_plugin_that_renames_reports_still_gets_one_job_a_test(
    pytester: pytest.Pytester, live_after: str, phases: tuple[str, ...]
) -> None:
    pytester.makeconftest(RENAMES.replace("PHASES", repr(phases)))
    pytester.makepyfile(test_mix=SUITE.replace("0.8", "0.3"))
    result, records = recorded(pytester, f"--simscope-live-after={live_after}")
    result.assert_outcomes(passed=2, failed=1)
    finishes = bodies(records, "job-finish")
    # Named as the setup report names the test.
    suffix = "@renamed" if "setup" in phases else ""
    assert sorted((b["config"], b["result"]) for b in finishes) == [
        (f"test_mix.py::test_fast{suffix}", "pass"),
        (f"test_mix.py::test_fast_fail{suffix}", "fail"),
        (f"test_mix.py::test_slow{suffix}", "pass"),
    ]
    assert len({b["uniqueid"] for b in finishes}) == 3
    assert check_records(records) == []


def test_a_bad_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result, _ = recorded(pytester, "--simscope-live-after=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--simscope-live-after*"])
