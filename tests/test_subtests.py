"""Subtests (pytest's ``subtests`` fixture) belong to their test's one job."""

from __future__ import annotations

import pytest
from published import XDIST_MODES, isolate_environment, job, recorded

pytestmark = pytest.mark.skipif(
    int(pytest.__version__.split(".")[0]) < 9, reason="the subtests fixture came in pytest 9"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_subtests_are_counted_and_a_failing_one_fails_the_job(
    pytester: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        test_sub="""
        import pytest

        def test_mixed(subtests):
            for i in range(3):
                with subtests.test(msg="case", i=i):
                    if i == 1:
                        pytest.skip("skip one")
                    assert i != 2

        def test_all_good(subtests):
            with subtests.test(msg="a"):
                pass
            with subtests.test(msg="b"):
                pytest.skip("not here")
        """
    )
    _, records = recorded(pytester, *mode)

    mixed = job(records, "test_sub.py::test_mixed")
    assert mixed["result"] == "fail"
    assert mixed["fail_message"].splitlines()[0] == "AssertionError: assert 2 != 2"
    assert mixed["metadata"] == [
        ["subtests_failed", "1"], ["subtests_passed", "1"], ["subtests_skipped", "1"]
    ]
    good = job(records, "test_sub.py::test_all_good")
    assert good["result"] == "pass"
    assert good["metadata"] == [["subtests_passed", "1"], ["subtests_skipped", "1"]]
    assert len([r for r in records if r["type"] == "job-finish"]) == 2
