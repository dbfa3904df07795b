"""Delivery from a process of its own (the courier), the relay that feeds it, and its faults.

The relay is tested alone with a fake publisher and explicit clock values.  The rest runs
pytest under ``pytester``: the same stream with the courier or the in-process fallback; a
courier that cannot start, that exits at once, that is killed mid-run; pytest killed while
its courier lives.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from brokerlib import BrokerInfo
from published import (
    REGRESSION,
    assert_clean,
    bare,
    finished,
    isolate_environment,
    normalised,
    recorded,
    types,
)
from test_faults import (
    Record,
    Runner,
    amqp_url,
    broker_records,
    closed_for_the_dead,
    courier_pid,
    deliver_queue,
    finished_jobs,
    journal_stream,
    load_record,
    match_stream,
    process_gone,
    run_finished,
)

from pytest_simscope.courier import INPROCESS_ENV, Relay
from pytest_simscope.journal import DIED_WHILE_RUNNING
from pytest_simscope.messages import Envelope
from pytest_simscope.publisher import Publisher, PublishStats
from pytest_simscope.transports.queue import read_outbox

# -- the relay -----------------------------------------------------------------------------

R = "relay/1"


class FakePublisher:
    """Collects what the relay hands on."""

    def __init__(self) -> None:
        self.stats = PublishStats()
        self.sent: list[tuple[Envelope, int | None]] = []

    def publish(self, envelope: Envelope, seq: int | None = None) -> None:
        self.sent.append((envelope, seq))

    def taken(self) -> list[tuple[str, Any]]:
        """What was handed on since the last call, as (type, uniqueid or body)."""
        out: list[tuple[str, Any]] = [(e.type, e.uniqueid or e.body) for e, _ in self.sent]
        self.sent.clear()
        return out


def relay(
    fake: FakePublisher, *, live_after: float = 0.0, heartbeat: float = 0.0, shard: str = ""
) -> Relay:
    return Relay(
        cast(Publisher, fake), live_after=live_after, heartbeat=heartbeat, shard=shard or None
    )


def start() -> Envelope:
    return Envelope("regr-start", R, {"name": R})


def live(uid: str) -> Envelope:
    return Envelope("job-live", R, {"uniqueid": uid, "result": "live"})


def finish(uid: str) -> Envelope:
    return Envelope("job-finish", R, {"uniqueid": uid, "result": "pass"})


def test_relay_without_a_hold_hands_everything_on_at_once_in_order() -> None:
    fake = FakePublisher()
    r = relay(fake)
    stream = [start(), live("a"), live("b"), finish("a"), finish("b")]
    for seq, envelope in enumerate(stream, start=1):
        r.push(seq, envelope, 0.0)
    assert r.held == 0
    assert fake.sent == [(e, seq) for seq, e in enumerate(stream, start=1)]
    assert fake.stats.superseded == 0


def test_relay_holds_each_message_live_after_seconds_in_order() -> None:
    fake = FakePublisher()
    r = relay(fake, live_after=1.0)
    r.push(1, start(), 0.0)
    r.push(2, live("a"), 0.25)
    r.push(3, finish("b"), 0.5)
    r.pump(0.99)
    assert fake.taken() == []
    r.pump(1.0)
    assert fake.taken() == [("regr-start", {"name": R})]
    r.pump(1.25)
    # Its finish has not come: the live job goes out once it is due.
    assert fake.taken() == [("job-live", "a")]
    r.pump(1.49)
    assert fake.taken() == []
    r.pump(1.5)
    assert fake.sent == [(finish("b"), 3)]
    assert r.held == 0


def test_relay_drops_a_held_live_job_whose_finish_or_next_live_arrived() -> None:
    fake = FakePublisher()
    r = relay(fake, live_after=0.1)
    r.push(1, live("a"), 0.0)
    r.push(2, live("b"), 0.01)
    r.push(3, finish("a"), 0.05)
    r.pump(1.0)
    assert fake.taken() == [("job-live", "b"), ("job-finish", "a")]
    assert fake.stats.superseded == 1
    # A live job already handed on stays: its finish just follows.
    r.push(4, finish("b"), 1.0)
    r.pump(2.0)
    assert fake.taken() == [("job-finish", "b")]
    assert fake.stats.superseded == 1
    # A later live job of the same job (a marker's fields) stands for the held one.
    r.push(5, live("c"), 2.0)
    r.push(6, Envelope("job-live", R, {"uniqueid": "c", "category": "marked"}), 2.01)
    r.pump(3.0)
    assert [e.body for e, _ in fake.sent] == [{"uniqueid": "c", "category": "marked"}]
    assert fake.stats.superseded == 2


def test_relay_pump_everything_releases_all_held() -> None:
    fake = FakePublisher()
    r = relay(fake, live_after=10.0)
    r.push(1, start(), 0.0)
    r.push(2, live("a"), 0.0)
    r.push(3, live("b"), 0.0)
    r.push(4, finish("b"), 0.0)
    r.pump(0.0, everything=True)
    assert fake.taken() == [("regr-start", {"name": R}), ("job-live", "a"), ("job-finish", "b")]
    assert r.held == 0
    assert fake.stats.superseded == 1


def test_heartbeat_resends_a_running_live_job_with_the_running_count() -> None:
    fake = FakePublisher()
    r = relay(fake, heartbeat=1.0)
    r.push(1, live("a"), 0.0)
    r.push(2, live("b"), 0.5)
    r.beat(0.0)
    r.beat(0.9)
    assert fake.taken() == [("job-live", "a"), ("job-live", "b")]
    r.beat(1.0)
    assert fake.taken() == [("job-live", "a"), ("regr-update", {"name": R, "running": 2})]
    r.beat(1.5)
    assert fake.taken() == [("job-live", "b"), ("regr-update", {"name": R, "running": 2})]
    # The same job, resent as it was.
    r.beat(2.0)
    assert fake.sent[0][0] == live("a")


def test_heartbeat_for_a_shard_sends_no_regression_update() -> None:
    fake = FakePublisher()
    r = relay(fake, heartbeat=1.0, shard="2/4")
    r.push(1, live("a"), 0.0)
    r.beat(0.0)
    r.beat(1.0)
    assert fake.taken() == [("job-live", "a"), ("job-live", "a")]


def test_heartbeat_stops_once_the_job_finished() -> None:
    fake = FakePublisher()
    r = relay(fake, heartbeat=1.0)
    r.push(1, live("a"), 0.0)
    r.beat(0.0)
    r.push(2, finish("a"), 0.5)
    r.beat(1.0)
    r.beat(5.0)
    assert fake.taken() == [("job-live", "a"), ("job-finish", "a")]


def test_heartbeat_counts_from_when_a_live_job_left_the_hold() -> None:
    fake = FakePublisher()
    r = relay(fake, live_after=0.5, heartbeat=1.0)
    r.push(1, live("a"), 0.0)
    r.beat(0.0)
    r.beat(1.0)  # due, but still held (not pumped): nothing to resend
    assert fake.taken() == []
    r.pump(1.0)
    r.beat(1.5)
    assert fake.taken() == [("job-live", "a")]
    r.beat(2.0)
    assert fake.taken() == [("job-live", "a"), ("regr-update", {"name": R, "running": 1})]


# -- the same stream either way ------------------------------------------------------------

SUITE = """
import time

import pytest


def test_pass():
    pass


def test_fail():
    assert 1 + 1 == 3


@pytest.mark.skip(reason="not today")
def test_skip():
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False


def test_slow():
    time.sleep(0.3)
"""
TESTS = [f"test_suite.py::test_{name}" for name in ("pass", "fail", "skip", "xfail", "slow")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_environment(monkeypatch)


def queue_root(pytester: pytest.Pytester) -> Path:
    return pytester.path / ".simscope" / "queue"


def queued(pytester: pytest.Pytester) -> list[Record]:
    return read_outbox(queue_root(pytester))


def assert_whole_run(records: list[Record]) -> None:
    """One regr-start, one regr-finish, one job-finish per test of SUITE; no problem."""
    kinds = types(records)
    assert kinds.count("regr-start") == kinds.count("regr-finish") == 1
    finishes = sorted(r["body"]["uniqueid"] for r in records if r["type"] == "job-finish")
    assert finishes == sorted(TESTS)
    assert_clean(records)


def test_the_in_process_fallback_publishes_the_same_stream(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result, courier_records = recorded(pytester, subprocess=True)
    courier_queue = queued(pytester)
    shutil.rmtree(pytester.path / ".simscope")
    monkeypatch.setenv(INPROCESS_ENV, "1")
    local_result, local_records = recorded(pytester, subprocess=True)
    local_queue = queued(pytester)

    assert result.ret == local_result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1)
    assert_whole_run(courier_records)
    assert normalised(courier_records) == normalised(local_records)
    assert types(courier_queue) == types(local_queue) == types(courier_records)
    for output in (result.outlines, local_result.outlines):
        assert not [line for line in output if line.startswith("simscope: warning")]


# -- the courier does not do its job ---------------------------------------------------------


def test_a_courier_that_cannot_be_started_leaves_publishing_to_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    expected = bare(pytester).ret
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    result, records = recorded(pytester, subprocess=False)

    assert result.ret == expected == pytest.ExitCode.TESTS_FAILED
    assert_whole_run(records)
    assert types(queued(pytester)) == types(records)
    result.stdout.fnmatch_lines(
        ["simscope: warning: cannot start the delivery process (*); publishing from this one"]
    )
    assert not list((queue_root(pytester) / "journal").glob("*.jsonl"))


def test_a_courier_that_exits_at_once_leaves_the_whole_run_queued(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    expected = bare(pytester).ret
    script = tmp_path / "exits"
    script.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    result, _ = recorded(pytester, subprocess=False)

    assert result.ret == expected == pytest.ExitCode.TESTS_FAILED
    assert_whole_run(queued(pytester))
    # "(it exited with 1)", or a broken pipe when it was gone before its configuration
    # was written.
    result.stdout.fnmatch_lines(
        [
            "simscope: warning: the delivery process failed (*); "
            "queued the rest of this run offline (*)"
        ]
    )
    assert not list((queue_root(pytester) / "journal").glob("*.jsonl"))


KILLS_ITS_COURIER = """
import os
import signal
import time

import pytest


@pytest.mark.parametrize("i", range(10))
def test_before(i):
    pass


def test_kill_the_courier():
    deadline = time.monotonic() + 30
    outbox = os.path.join(".simscope", "queue", "outbox")
    while time.monotonic() < deadline:  # until the courier queued part of the run
        if os.path.isdir(outbox) and len(os.listdir(outbox)) >= 5:
            break
        time.sleep(0.01)
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\\0")
        except OSError:
            continue
        if b"pytest_simscope.courier" in argv and str(os.getpid()).encode() in argv:
            os.kill(int(pid), signal.SIGKILL)


@pytest.mark.parametrize("i", range(10))
def test_after(i):
    pass
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the courier in /proc")
def test_the_summary_after_the_courier_died_counts_what_it_had_queued(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_kills=KILLS_ITS_COURIER)
    result, _ = recorded(pytester, "--simscope-live-after=0", subprocess=True)
    assert result.ret == 0
    [line] = [line for line in result.outlines if line.startswith("simscope: 21 jobs")]
    match = re.search(
        r"queued in \S+ \((\d+) messages, besides the (\d+) the delivery process took care "
        r"of\); deliver with",
        line,
    )
    assert match is not None, line
    records = queued(pytester)
    # With no live job held back, the two figures count what the queue holds (a message
    # the courier queued without having confirmed it yet is queued again: at least once).
    assert int(match.group(1)) < int(match.group(1)) + int(match.group(2)) <= len(records)
    kinds = types(records)
    assert kinds.count("regr-start") == kinds.count("regr-finish") == 1
    assert len({r["body"]["uniqueid"] for r in records if r["type"] == "job-finish"}) == 21


ENDS_THE_PROCESS = """
import os
import signal
import time

import pytest

@pytest.fixture
def ends_pytest():
    os._exit(0)

@pytest.fixture
def kills_the_controller():
    time.sleep(1)  # the controller has taken the test's start
    os.kill(os.getppid(), signal.SIGKILL)  # an xdist worker's parent
    time.sleep(30)

def test_before():
    pass

def test_ends_pytest(WHERE):
    os._exit(0)

def test_never_runs():
    pass
"""


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(("", "0", ()), id="in-the-test"),
        # Its setup report never comes: the job opened when the test started.
        pytest.param(("ends_pytest", "0.1", ()), id="in-a-fixture"),
        # The xdist controller killed while a worker sets a test up.
        pytest.param(("kills_the_controller", "0.1", ("-n", "1")), id="controller-killed"),
    ],
)
def test_a_test_that_ends_pytest_gets_a_fail_job_and_the_regression_is_finished(
    pytester: pytest.Pytester, where: tuple[str, str, tuple[str, ...]]
) -> None:
    """pytest-timeout's thread method, a test's os._exit, or pytest killed: the courier
    closes the run."""
    fixture, live_after, more = where
    pytester.makepyfile(test_ends=ENDS_THE_PROCESS.replace("WHERE", fixture))
    result, _ = recorded(
        pytester, f"--simscope-live-after={live_after}", *more, subprocess=True
    )
    # os._exit(0): pytest's own status, plugin or not
    assert result.ret == (-signal.SIGKILL if more else 0)
    deadline = time.monotonic() + 30
    while list((queue_root(pytester) / "journal").glob("*.jsonl")):
        assert time.monotonic() < deadline, "the courier did not finish"
        time.sleep(0.05)
    records = queued(pytester)
    assert_clean(records)
    jobs = finished(records)
    assert {uid: body["result"] for uid, body in jobs.items()} == {
        "test_ends.py::test_before": "pass",
        "test_ends.py::test_ends_pytest": "fail",
    }
    assert jobs["test_ends.py::test_ends_pytest"]["fail_message"] == DIED_WHILE_RUNNING
    assert records[-1]["type"] == "regr-finish"
    assert records[-1]["body"] == {"name": REGRESSION, "pending": False, "submitted": 2}


BREAKS_OS_WRITE = """
import os

def test_before():
    pass

def test_breaks_os_write():
    def broken(*args):
        raise OSError("broken by a test")
    os.write = broken  # left so for the rest of the run

def test_after():
    pass
"""


def test_a_test_that_breaks_os_write_leaves_the_run_to_its_courier(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_breaks=BREAKS_OS_WRITE)
    result, _ = recorded(pytester, subprocess=True)
    assert result.ret == 0
    assert "delivery process failed" not in result.stdout.str()
    records = queued(pytester)
    assert_clean(records)
    assert sorted(finished(records)) == [
        "test_breaks.py::test_after", "test_breaks.py::test_before",
        "test_breaks.py::test_breaks_os_write",
    ]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the courier in /proc")
def test_a_dead_courier_and_sigpipe_at_its_default_do_not_end_pytest(
    pytester: pytest.Pytester,
) -> None:
    """Writing "close" to a courier that is gone raises SIGPIPE: ignored meanwhile."""
    pytester.makepyfile(
        test_kills=KILLS_ITS_COURIER.replace(
            "def test_kill_the_courier():",
            "def test_kill_the_courier():\n    signal.signal(signal.SIGPIPE, signal.SIG_DFL)",
        )
    )
    result, _ = recorded(pytester, subprocess=True)
    assert result.ret == 0, result.stdout.str()
    assert any(line.startswith("simscope: 21 jobs") for line in result.outlines)
    records = queued(pytester)
    assert len({r["body"]["uniqueid"] for r in records if r["type"] == "job-finish"}) == 21
    assert types(records)[-1] == "regr-finish"


# -- processes killed (the real broker) --------------------------------------------------------

# Copies the journal when the session closes its courier: the whole run as pytest produced
# it, for a run whose record stops with a killed courier.
SNAPSHOT_CONFTEST = """
import shutil

from pytest_simscope import courier

_close = courier.CourierFront.close


def close(self, timeout):
    shutil.copyfile(self.journal.path, {snapshot!r})
    return _close(self, timeout)


courier.CourierFront.close = close
"""


@pytest.fixture
def runner(pytester: pytest.Pytester) -> Runner:
    return Runner(pytester)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start pytest processes with ``started.append``; killed if a test leaves them."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def popen_run(runner: Runner, broker_queue: str, output: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "pytest",
        *runner.args(f"--simscope-url={amqp_url()}", f"--simscope-amqp-queue={broker_queue}"),
    ]
    with output.open("w", encoding="utf-8") as sink:
        proc: subprocess.Popen[bytes] = runner.pytester.popen(
            args, stdout=sink, stderr=subprocess.STDOUT
        )
    return proc


def wait_for_jobs(runner: Runner, proc: subprocess.Popen[bytes], jobs: int) -> None:
    deadline = time.monotonic() + 60
    while finished_jobs(runner.record) < jobs:
        assert proc.poll() is None, "pytest ended before it could be killed"
        assert time.monotonic() < deadline, f"the record never reached {jobs} jobs"
        time.sleep(0.01)


def test_a_courier_killed_mid_run_loses_nothing(
    runner: Runner,
    broker: BrokerInfo,
    broker_queue: str,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    runner.suite(passes=30, more=0, sleep=0.1)
    snapshot = tmp_path / "journal.jsonl"
    runner.pytester.makeconftest(SNAPSHOT_CONFTEST.format(snapshot=str(snapshot)))
    output = tmp_path / "output.txt"
    proc = popen_run(runner, broker_queue, output)
    started.append(proc)
    wait_for_jobs(runner, proc, 8)
    os.kill(courier_pid(proc.pid), signal.SIGKILL)
    mid_run = not run_finished(runner.record)
    proc.wait(120)
    text = output.read_text(encoding="utf-8", errors="replace")

    assert mid_run, "the run was over before the courier was killed"
    assert proc.returncode == runner.bare() == pytest.ExitCode.TESTS_FAILED
    assert "Traceback" not in text and "INTERNALERROR" not in text
    assert any(
        line.startswith(
            "simscope: warning: the delivery process failed (it ended without a result); "
            "queued the rest of this run offline ("
        )
        for line in text.splitlines()
    ), text
    assert not list((runner.queue_dir / "journal").glob("*.jsonl"))
    whole = journal_stream(snapshot)
    assert whole[0]["type"] == "regr-start"
    assert whole[-1]["type"] == "regr-finish"
    during = broker_records(broker_queue)
    queued_now = deliver_queue(runner.queue_dir, broker_queue, runner.regression)
    assert queued_now, "nothing was left to queue"
    after = broker_records(broker_queue)
    # What the courier delivered, then the queue, is everything pytest journaled, in
    # order (messages delivered but not acknowledged when the courier died arrive twice).
    match = match_stream(whole, during + after)
    assert match.duplicates <= 512


def test_pytest_killed_leaves_its_courier_to_deliver_everything(
    runner: Runner,
    broker: BrokerInfo,
    broker_queue: str,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    runner.suite(passes=40, more=0, sleep=0.1)
    proc = popen_run(runner, broker_queue, tmp_path / "output.txt")
    started.append(proc)
    wait_for_jobs(runner, proc, 10)
    courier = courier_pid(proc.pid)
    # The courier paused while pytest dies: the journal is then read whole before it
    # is delivered and removed.
    os.kill(courier, signal.SIGSTOP)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        [path] = (runner.queue_dir / "journal").glob("*.jsonl")
        whole = journal_stream(path)
    finally:
        os.kill(courier, signal.SIGCONT)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while not process_gone(courier):
        assert time.monotonic() < deadline, "the courier did not finish"
        time.sleep(0.05)

    assert list((runner.queue_dir / "journal").iterdir()) == []
    assert whole[0]["type"] == "regr-start"
    assert "regr-finish" not in types(whole)
    assert sum(r["type"] == "job-finish" for r in whole) >= 10
    record = load_record(runner.record)
    got = broker_records(broker_queue)
    assert runner.queued() == []
    # Everything journaled is at the broker, once, in order, and in the record; then what
    # the courier sent to close the run pytest left open.
    expected = closed_for_the_dead(whole, got)
    assert match_stream(expected, got).duplicates == 0
    assert match_stream(expected, record).duplicates == 0
    assert match_stream(record, got).duplicates == 0


STRANGE = '''
import pytest

@pytest.mark.simscope(
    category="sïm\\u2603", testgroup='grp "q" \\\\ \\t', metadata={"k\\x01": "v\\n"}
)
@pytest.mark.parametrize("p", ["a\\x00b", "\\u00e9\\u4e2d", 'q"uote', "back\\\\slash", "\\ud800"])
def test_odd(p, simscope_metadata):
    simscope_metadata["bytes"] = b"\\xff\\xfe"
    simscope_metadata["p"] = p
    assert p == "\\u00e9\\u4e2d", "mismatch \\x1b[31m\\u2603 " + p

class TestGroup:
    def test_skip(self):
        pytest.skip("reason \\u00e9 \\" \\x07")
'''


@pytest.mark.parametrize("extra", [(), ("--simscope-testgroup=class", "--simscope-skips=publish")])
def test_odd_content_is_published_alike_from_the_courier_and_in_process(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    """Odd content comes out alike from the courier (bodies as bytes) and in process (bodies
    parsed back into dicts and delivered from a thread)."""
    pytester.makepyfile(test_odd=STRANGE)
    args = (
        *extra,
        "--simscope-build=b\u00e9\"1",
        "--simscope-metadata=team=\u00e9\\x",
        "--simscope-live-after=0",
    )
    result, courier_records = recorded(pytester, *args, subprocess=True)
    shutil.rmtree(pytester.path / ".simscope")
    monkeypatch.setenv(INPROCESS_ENV, "1")
    local_result, local_records = recorded(pytester, *args, subprocess=True)

    assert result.ret == local_result.ret == pytest.ExitCode.TESTS_FAILED
    assert len([r for r in courier_records if r["type"] == "job-finish"]) == 6
    assert normalised(courier_records) == normalised(local_records)

    def messages(records: list[dict[str, Any]]) -> list[str]:
        # Whole failure texts, object addresses aside.
        return [
            re.sub(r"0x[0-9a-f]+", "0x?", str(r["body"].get("fail_message", "")))
            for r in records
        ]

    assert messages(courier_records) == messages(local_records)


FORKING = '''
import multiprocessing
import os
import signal
import threading
import time

def test_fork_and_go_on():
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
    # The child returns as well: it runs the rest of the session, a copy of this pytest.

def test_after():
    pass

def _nap():
    time.sleep(30)

def test_a_forked_child_holds_no_journal():
    pid = os.fork()
    if pid == 0:
        held = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        # Its lock would make a later recovery take a dead run for a live one.
        os._exit(1 if any("/journal/" in path for path in held) else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

def test_terminate_a_forked_process():
    process = multiprocessing.get_context("fork").Process(target=_nap)
    process.start()
    process.terminate()
    process.join(30)
    assert process.exitcode == -signal.SIGTERM

def test_terminate_a_process_forked_from_a_thread():
    codes = []

    def fork_and_terminate():
        process = multiprocessing.get_context("fork").Process(target=_nap)
        process.start()
        process.terminate()
        process.join(30)
        codes.append(process.exitcode)

    thread = threading.Thread(target=fork_and_terminate)
    thread.start()
    thread.join(60)
    assert codes == [-signal.SIGTERM]
'''


@pytest.mark.parametrize("in_process", [False, True], ids=["courier", "in-process"])
def test_a_forked_child_publishes_nothing_and_keeps_sigterm_as_it_was(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, in_process: bool
) -> None:
    """A test's forked child that goes on running pytest publishes nothing (it would write
    into the parent's journal and close its courier); a forked process that gets SIGTERM
    dies of it, as without the plugin."""
    pytester.makepyfile(test_forking=FORKING)
    if in_process:
        monkeypatch.setenv(INPROCESS_ENV, "1")
    result, records = recorded(pytester, "-s", subprocess=True)

    assert result.ret == pytest.ExitCode.OK
    assert_clean(records)
    assert types(records).count("regr-start") == types(records).count("regr-finish") == 1
    jobs = finished(records)
    assert sorted(jobs) == [
        "test_forking.py::test_a_forked_child_holds_no_journal",
        "test_forking.py::test_after",
        "test_forking.py::test_fork_and_go_on",
        "test_forking.py::test_terminate_a_forked_process",
        "test_forking.py::test_terminate_a_process_forked_from_a_thread",
    ]
    assert {job["result"] for job in jobs.values()} == {"pass"}
    assert "simscope: " in result.stdout.str()
    assert "delivery process failed" not in result.stdout.str()


CLOSES_DESCRIPTORS = '''
import os
import time

def test_before():
    pass

def test_close_every_descriptor():
    os.closerange(3, 65536)
    time.sleep(0.5)  # the courier sees its pipe closed while pytest lives on

def test_after():
    pass
'''


def test_a_test_that_closes_every_descriptor_loses_nothing(pytester: pytest.Pytester) -> None:
    """The pytest process loses its journal's descriptor and the courier's pipe: the
    courier delivers on while pytest lives, and pytest queues what it cannot confirm."""
    pytester.makepyfile(test_fds=CLOSES_DESCRIPTORS)
    # Without these plugins pytest itself survives losing its own descriptors.
    args = ("-s", "-p", "no:faulthandler", "-p", "no:logging", "-p", "no:randomly")
    expected = bare(pytester, *args, subprocess=True).ret
    result = pytester.runpytest_subprocess(*args, "--simscope-regression=fds/1")

    assert result.ret == expected == pytest.ExitCode.OK
    records = queued(pytester)
    kinds = types(records)
    assert kinds.count("regr-start") == kinds.count("regr-finish") == 1
    finishes = sorted(r["body"]["uniqueid"] for r in records if r["type"] == "job-finish")
    assert finishes == [
        "test_fds.py::test_after",
        "test_fds.py::test_before",
        "test_fds.py::test_close_every_descriptor",
    ]
    assert_clean(records)
    assert not list((queue_root(pytester) / "journal").glob("*.jsonl"))


WAITS_FOR_CHILDREN = '''
import os
import subprocess

def test_waits_for_its_own_child():
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    got, status = os.wait()
    assert (got, os.waitstatus_to_exitcode(status)) == (pid, 3)

def test_waits_for_every_child():
    subprocess.Popen(["true"])
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break

def test_after():
    pass
'''


def test_tests_that_wait_for_children_never_meet_the_courier(pytester: pytest.Pytester) -> None:
    """The courier is not a child of pytest: a test waiting for any child gets its own, and
    one that waits until no child is left does not wait for the session to end."""
    pytester.makepyfile(test_children=WAITS_FOR_CHILDREN)
    result, records = recorded(pytester, subprocess=True)

    assert result.ret == pytest.ExitCode.OK
    assert_clean(records)
    assert sorted(finished(records)) == [
        "test_children.py::test_after",
        "test_children.py::test_waits_for_every_child",
        "test_children.py::test_waits_for_its_own_child",
    ]
    assert "delivery process failed" not in result.stdout.str()


@pytest.mark.parametrize(
    ("in_process", "signum", "status"),
    [
        (False, signal.SIGINT, 0),
        (True, signal.SIGINT, 0),
        (False, signal.SIGTERM, -signal.SIGTERM),
    ],
    ids=["courier-ctrl-c", "in-process-ctrl-c", "courier-sigterm"],
)
def test_interrupted_while_delivering_at_the_end_queues_the_rest(
    pytester: pytest.Pytester, tmp_path: Path, in_process: bool, signum: int, status: int
) -> None:
    """Ctrl-C (or SIGTERM) while the end of the run waits for a slow destination stops the
    waiting: the rest is queued, the summary printed; Ctrl-C leaves the tests' exit status,
    SIGTERM still ends pytest by that signal."""
    pytester.makepyfile(test_quick="def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    slow = tmp_path / "slow-tunnel"
    slow.write_text("#!/bin/sh\nsleep 30\n", encoding="utf-8")
    slow.chmod(0o755)
    (tmp_path / "tunnel.conf").write_text("", encoding="utf-8")
    env = dict(os.environ)
    env.pop(INPROCESS_ENV, None)
    if in_process:
        env[INPROCESS_ENV] = "1"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
            "--simscope-regression=intr/1", "--simscope-flush-timeout=60",
            f"--simscope-url=tunnel:{tmp_path / 'tunnel.conf'}",
            f"--simscope-tunnel-command={slow} {{type}} {{file}}",
        ],
        cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        # Both tests are journaled by the time the session closes; wait until it does.
        while not list((queue_root(pytester) / "journal").glob("*.jsonl")):
            assert time.monotonic() < deadline, "no journal"
            time.sleep(0.05)
        time.sleep(3)
        os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode("utf-8", "replace")

    assert proc.returncode == status, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "2 passed" in text
    assert "delivery interrupted" in text, text
    records = queued(pytester)
    kinds = types(records)
    assert kinds.count("regr-start") == kinds.count("regr-finish") == 1
    finishes = sorted(r["body"]["uniqueid"] for r in records if r["type"] == "job-finish")
    assert finishes == ["test_quick.py::test_one", "test_quick.py::test_two"]
    assert_clean(records)


REMOVES_ITS_FOLDER = '''
import os
import shutil

def test_removes_the_folder_pytest_started_in():
    shutil.rmtree(os.getcwd())

def test_after():
    pass
'''


def test_the_default_queue_does_not_bring_back_a_removed_root_folder(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A test removes pytest's root folder, where the default queue lives: the queue is
    not written there again (that would recreate the folder and change how pytest ends)."""
    root = tmp_path / "project"

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        (root / "test_gone.py").write_text(REMOVES_ITS_FOLDER, encoding="utf-8")
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
            cwd=root, capture_output=True, timeout=120, check=False,
        )

    bare_run = run("-p", "no:simscope")
    published = run("--simscope-regression=gone/1")

    assert published.returncode == bare_run.returncode
    assert not root.exists()


BREAKS_THE_CLOCK = """
import time

def test_breaks_the_clock():
    time.monotonic = lambda: 1 / 0  # left so for the rest of the run

def test_after():
    time.sleep(0.2)
"""


def test_in_process_delivery_survives_a_test_that_breaks_time_monotonic(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INPROCESS_ENV, "1")
    pytester.makepyfile(test_clock=BREAKS_THE_CLOCK)
    result, _ = recorded(
        pytester, "-W", "error::pytest.PytestUnhandledThreadExceptionWarning", subprocess=True
    )
    assert result.ret == 0, result.stdout.str()
    assert "simscope-publisher" not in result.stdout.str()
    records = queued(pytester)
    assert_clean(records)
    assert sorted(finished(records)) == [
        "test_clock.py::test_after", "test_clock.py::test_breaks_the_clock"
    ]
