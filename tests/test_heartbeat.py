"""A long test's live job is sent again every --simscope-heartbeat seconds."""

from __future__ import annotations

import pytest
from published import bodies, isolate_environment, recorded


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


def test_heartbeat_resends_live_job_and_running_count(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_slow="""
        import time

        def test_slow():
            time.sleep(1.2)

        def test_fast():
            pass
        """
    )
    result, records = recorded(pytester, "--simscope-heartbeat=0.2")

    result.assert_outcomes(passed=2)
    lives = [b for b in bodies(records, "job-live") if b["uniqueid"] == "test_slow.py::test_slow"]
    assert len(lives) >= 3
    assert {b["start_time"] for b in lives} == {lives[0]["start_time"]}
    updates = [b for b in bodies(records, "regr-update") if "running" in b]
    assert updates and all(b["running"] == 1 for b in updates)
    # No live message for a job after its finish.
    finish_at = next(
        i for i, r in enumerate(records)
        if r["type"] == "job-finish" and r["body"]["uniqueid"] == "test_slow.py::test_slow"
    )
    assert not any(
        r["type"] == "job-live" and r["body"]["uniqueid"] == "test_slow.py::test_slow"
        for r in records[finish_at:]
    )


def test_heartbeat_is_off_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_slow="import time\ndef test_slow():\n    time.sleep(0.5)\n")
    _, records = recorded(pytester)
    assert len(bodies(records, "job-live")) == 1
    assert not [b for b in bodies(records, "regr-update") if "running" in b]
