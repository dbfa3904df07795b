"""The usual test's short journal lines: the same messages as in full, wherever read."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from published import normalised, recorded

from pytest_simscope.compact import LIVE_LINE, PASS_LINE, RunFields, is_short
from pytest_simscope.courier import INPROCESS_ENV
from pytest_simscope.journal import (
    DIED_WHILE_RUNNING,
    Journal,
    JournalTail,
    LineReader,
    recover,
)
from pytest_simscope.messages import Envelope, stamp
from pytest_simscope.transports.queue import OfflineQueue, read_outbox

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="journal locks are POSIX here")

START = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z, in microseconds
FINISH = START + 2_500_000


def fields(**changes: Any) -> RunFields:
    values: dict[str, Any] = {
        "regression": "r/1",
        "category": "pytest",
        "host": "h",
        "build": "b 1",
        "seed": None,
        "metadata": [("branch", 'ma"in'), ("100%", "\u00e9")],
        "testgroup": "file",
    }
    values.update(changes)
    return RunFields(**values)


def test_the_short_lines_make_the_messages_the_reporter_would() -> None:
    run = fields()
    reader = LineReader()
    assert reader(run.line()) is None
    nodeid = 'tests/test_a.py::test_x[a b-"q"-\\]'
    live = reader(LIVE_LINE % (7, START, nodeid.encode()))
    done = reader(PASS_LINE % (8, START, FINISH, 2400, 2500, nodeid.encode()))
    assert live is not None and done is not None
    assert live[0] == 7 and done[0] == 8
    common = {
        "category": "pytest",
        "uniqueid": nodeid,
        "start_time": stamp(START),
        "config": nodeid,
        "testgroup": "tests/test_a.py",
        "host": "h",
        "build": "b 1",
        "metadata": [["branch", 'ma"in'], ["100%", "\u00e9"]],
    }
    assert live[1].type == "job-live" and live[1].regression == "r/1"
    assert live[1].body == {**common, "result": "live"}
    assert done[1].type == "job-finish"
    assert done[1].body == {
        **common,
        "result": "pass",
        "compute_ms": 2400,
        "runtime_ms": 2500,
        "finish_time": stamp(FINISH),
        "fail_message": "",
    }
    # What goes on the wire is the body's JSON, as the reporter writes it.
    for _, envelope in (live, done):
        assert json.loads(envelope.body_bytes()) == envelope.body


@pytest.mark.parametrize("rule, testgroup", [("none", None), ("dir", "tests"),
                                             ("class", "tests/t.py::TestA")])
def test_the_template_carries_the_testgroup_rule(rule: str, testgroup: str | None) -> None:
    reader = LineReader()
    reader(fields(testgroup=rule, metadata=[], build=None, seed="5").line())
    item = reader(LIVE_LINE % (1, START, b"tests/t.py::TestA::test_b"))
    assert item is not None
    body = item[1].body
    assert isinstance(body, dict)
    assert body.get("testgroup") == testgroup
    assert body["seed"] == "5" and "build" not in body and "metadata" not in body


@pytest.mark.parametrize(
    "nodeid, short",
    [
        ("t.py::test_a[1 2]", True),
        ("t.py::test_\u00e9", False),  # not ASCII: written in full
        ("t.py::test_a[\n]", False),  # a line break would end the line
        ("t.py::test_a[\t]", False),
        ("", False),
    ],
)
def test_which_node_ids_go_in_short(nodeid: str, short: bool) -> None:
    assert is_short(nodeid) is short


@pytest.mark.parametrize(
    "line",
    [
        b"Lx 1 t.py::a",
        b"L1 -5 t.py::a",
        b"L1 5",
        b"P1 5 6 7 t.py::a",
        b"L1 5 t.py::\x01",
        b"L1 5 t.py::\xc3\xa9",
        b"Tnot json",
        b'T{"regression": 1}',
        b"X1 2 3",
    ],
)
def test_a_line_that_is_none_of_them_is_refused(line: bytes) -> None:
    reader = LineReader()
    reader(fields().line())
    with pytest.raises(ValueError):
        reader(line)


def test_a_short_line_before_its_template_is_refused() -> None:
    with pytest.raises(ValueError, match="template"):
        LineReader()(LIVE_LINE % (1, START, b"t.py::test_a"))


def write_run(directory: Path, run_id: str = "dead") -> Journal:
    """A journal as the reporter leaves it: the template, then two tests in short."""
    journal = Journal(directory, run_id)
    journal.append(1, Envelope("regr-start", "r/1", {"name": "r/1", "pending": True}))
    journal.write(fields().line())
    journal.write(LIVE_LINE % (2, START, b"t.py::test_a"))
    journal.write(PASS_LINE % (3, START, FINISH, 1, 2, b"t.py::test_a"))
    journal.write(LIVE_LINE % (4, FINISH, b"t.py::test_b"))
    return journal


def test_recovery_reads_the_short_lines_and_closes_their_open_job(tmp_path: Path) -> None:
    journal = write_run(tmp_path / "journal")
    journal.ack(2)
    journal.close(remove=False)
    queue = OfflineQueue(tmp_path / "queue")
    assert recover(tmp_path / "journal", queue) == 4
    records = read_outbox(tmp_path / "queue")
    assert [(r["type"], r["body"].get("uniqueid"), r["body"].get("result")) for r in records] == [
        ("job-finish", "t.py::test_a", "pass"),
        ("job-live", "t.py::test_b", "live"),
        ("job-finish", "t.py::test_b", "fail"),
        ("regr-finish", None, None),
    ]
    assert records[2]["body"]["fail_message"] == DIED_WHILE_RUNNING
    assert records[2]["body"]["start_time"] == stamp(FINISH)


def test_a_tail_reads_the_short_lines_and_counts_a_bad_one(tmp_path: Path) -> None:
    journal = write_run(tmp_path)
    journal.write(b"L5 not-a-time t.py::c\n")
    journal.write(LIVE_LINE % (6, START, b"t.py::c"))
    fd = os.open(journal.path, os.O_RDONLY)
    try:
        tail = JournalTail(journal.path, fd)
        found = tail.read()
        assert [seq for seq, _ in found] == [1, 2, 3, 4, 6]
        assert tail.bad_lines == 1
    finally:
        os.close(fd)
        journal.close(remove=True)


USUAL = '''
import pytest

IDS = ["a b", 'q"uote', "back\\\\slash", "100%", "at@x", "h#1", "\\u00e9t\\u00e9", "L" * 300, "::"]

@pytest.mark.parametrize("p", IDS, ids=IDS)
def test_usual(p):
    pass

class TestGroup:
    def test_in_class(self):
        pass

def test_fails():
    assert 0
'''


@pytest.mark.parametrize(
    "extra",
    [
        ("--simscope-metadata=team=\u00e9%x", "--simscope-build=b\u00e9\"1"),
        ("--simscope-testgroup=class", "--simscope-live-after=0", "--simscope-category=c%\u00e9"),
        (
            "--simscope-testgroup=none",
            "-o",
            "disable_test_id_escaping_and_forfeit_all_rights_to_community_support=true",
        ),
    ],
)
def test_short_lines_publish_what_the_process_that_runs_the_tests_would(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    """The courier reads the usual tests' short lines: what it publishes is what pytest's
    own process publishes when it delivers itself (in full, no short lines)."""
    pytester.makepyfile(test_usual=USUAL)
    result, courier_records = recorded(pytester, *extra, subprocess=True)
    shutil.rmtree(pytester.path / ".simscope")
    monkeypatch.setenv(INPROCESS_ENV, "1")
    local_result, local_records = recorded(pytester, *extra, subprocess=True)

    assert result.ret == local_result.ret == pytest.ExitCode.TESTS_FAILED
    finishes = [r for r in courier_records if r["type"] == "job-finish"]
    assert len(finishes) == 11
    assert normalised(courier_records) == normalised(local_records)


FAILING_JOURNAL = '''
import pytest_simscope.journal as journal

_write = journal.Journal.write
_calls = [0]


def write(self, data):
    _calls[0] += 1
    if _calls[0] > {limit}:
        raise OSError(28, "No space left on device")
    return _write(self, data)


journal.Journal.write = write
'''


@pytest.mark.parametrize("limit", [0, 1, 2, 9])
def test_a_journal_that_fails_mid_run_loses_no_short_line(
    pytester: pytest.Pytester, limit: int
) -> None:
    """Once the journal cannot be written, the rest of the run (the usual tests' messages
    too) is kept in memory and queued at the end: every test is there once, in order."""
    pytester.makeconftest(FAILING_JOURNAL.format(limit=limit))
    pytester.makepyfile(
        test_many="".join(f"def test_{i}():\n    pass\n\n" for i in range(12))
    )
    result, _ = recorded(pytester, "--simscope-live-after=0", subprocess=True)
    assert result.ret == pytest.ExitCode.OK
    assert "journal failed (" in result.stdout.str()
    records = read_outbox(pytester.path / ".simscope" / "queue")
    finished = [r["body"]["uniqueid"] for r in records if r["type"] == "job-finish"]
    assert finished == [f"test_many.py::test_{i}" for i in range(12)]
    assert records[0]["type"] == "regr-start" and records[-1]["type"] == "regr-finish"
    assert len([r for r in records if r["type"] == "job-live"]) == 12
