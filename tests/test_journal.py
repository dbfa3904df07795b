"""The publisher's journal: nothing produced is lost to a kill, nothing is recovered twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_simscope.journal import (
    DIED_WHILE_RUNNING,
    Journal,
    mark_closed,
    orphaned_messages,
    recover,
)
from pytest_simscope.models import Envelope
from pytest_simscope.transports.base import Transport
from pytest_simscope.transports.queue import OfflineQueue, read_outbox

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="journal locks are POSIX here")


def message(index: int) -> Envelope:
    # A finished job: recovery adds nothing for it (see test_recovery_closes_...).
    body = {"category": "pytest", "uniqueid": f"t::{index}", "result": "pass"}
    return Envelope(type="job-finish", regression="r/1", body=body)


class Sink(Transport):
    """Collects what recovery hands on."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self.lock = threading.Lock()

    def send(self, batch: Sequence[Envelope]) -> None:
        with self.lock:
            self.sent.extend(batch)


def uniqueids(envelopes: Sequence[Envelope]) -> list[str | None]:
    return [envelope.uniqueid for envelope in envelopes]


def test_clean_close_removes_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "run1")
    for seq in range(1, 6):
        journal.append(seq, message(seq))
    journal.ack(5)
    assert journal.path.is_file() and journal.ack_path.is_file()
    journal.close(remove=True)
    assert list(tmp_path.iterdir()) == []
    journal.close(remove=True)  # twice is harmless
    journal.append(6, message(6))  # after close: ignored, not an error
    journal.ack(6)
    assert list(tmp_path.iterdir()) == []


def test_acks_only_move_forward(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "run1")
    for seq in (3, 2, 3, 5, 4):
        journal.ack(seq)
    journal.close(remove=False)
    assert journal.ack_path.read_text().split() == ["3", "5"]


def test_a_run_that_left_its_journal(tmp_path: Path) -> None:
    """Only the unacknowledged messages come back, in order, and the journal is removed."""
    journal = Journal(tmp_path / "journal", "dead")
    for seq in range(1, 11):
        journal.append(seq, message(seq))
    journal.ack(3)
    journal.ack(6)
    journal.close(remove=False)
    queue = OfflineQueue(tmp_path / "queue")
    assert recover(tmp_path / "journal", queue) == 4
    assert [r["body"]["uniqueid"] for r in read_outbox(tmp_path / "queue")] == [
        "t::7", "t::8", "t::9", "t::10"
    ]
    assert list((tmp_path / "journal").iterdir()) == []
    assert recover(tmp_path / "journal", queue) == 0  # nothing twice


def test_fully_acknowledged_journal_is_just_removed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "done")
    journal.append(1, message(1))
    journal.ack(1)
    journal.close(remove=False)
    sink = Sink()
    assert recover(tmp_path, sink) == 0
    assert sink.sent == []
    assert list(tmp_path.iterdir()) == []


def test_a_live_journal_is_left_alone(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "alive")
    journal.append(1, message(1))
    sink = Sink()
    assert orphaned_messages(journal.path) is None
    assert recover(tmp_path, sink) == 0
    assert sink.sent == []
    assert journal.path.is_file()
    journal.append(2, message(2))  # still writing to the same file
    journal.close(remove=False)
    assert orphaned_messages(journal.path) == [(1, message(1)), (2, message(2))]


def test_exclude(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "mine")
    journal.append(1, message(1))
    journal.close(remove=False)
    assert recover(tmp_path, Sink(), exclude=journal.path) == 0
    assert journal.path.is_file()


def test_a_half_written_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "cut")
    journal.append(1, message(1))
    journal.append(2, message(2))
    journal.close(remove=False)
    with open(journal.path, "a", encoding="utf-8") as handle:
        handle.write('{"seq":3,"type":"job-live","regression":"r/1","body":{"categ')
    sink = Sink()
    assert recover(tmp_path, sink) == 2
    assert uniqueids(sink.sent) == ["t::1", "t::2"]


def test_a_cut_line_that_happens_to_parse_is_still_skipped(tmp_path: Path) -> None:
    """A line without its newline was never finished, even if the part written parses."""
    journal = Journal(tmp_path, "cut")
    journal.append(1, message(1))
    journal.close(remove=False)
    with open(journal.path, "a", encoding="utf-8") as handle:
        handle.write('{"seq":2,"type":"job-live","regression":"r/1","body":null}')
    sink = Sink()
    assert recover(tmp_path, sink) == 1


def test_odd_text_survives_the_journal(tmp_path: Path) -> None:
    body = {"category": "pytest", "uniqueid": "t\udcff::日本\n\u2028", "result": "pass"}
    envelope = Envelope(type="job-finish", regression="r/1", body=body)
    journal = Journal(tmp_path, "odd")
    journal.append(1, envelope)
    journal.close(remove=False)
    sink = Sink()
    assert recover(tmp_path, sink) == 1
    assert sink.sent == [envelope]


def test_recovery_closes_what_a_dead_run_left_open(tmp_path: Path) -> None:
    """Its running jobs fail, saying why, and the regression it started is finished."""
    start = "2025-01-01T00:00:00.000000+00:00"
    live = {"category": "pytest", "result": "live", "start_time": start, "host": "h"}
    stream = [
        Envelope("regr-start", "r/1", {"name": "r/1", "pending": True}),
        Envelope("job-live", "r/1", {**live, "uniqueid": "a"}),
        Envelope("job-finish", "r/1", {"category": "pytest", "uniqueid": "b", "result": "pass"}),
        Envelope("job-live", "r/1", {**live, "uniqueid": "c"}),
        Envelope("job-finish", "r/1", {"category": "pytest", "uniqueid": "c", "result": "pass"}),
    ]
    journal = Journal(tmp_path, "dead")
    for seq, envelope in enumerate(stream, 1):
        journal.append(seq, envelope)
    journal.ack(4)
    journal.close(remove=False)
    sink = Sink()
    assert recover(tmp_path, sink) == 3
    unsent, failed, finished = sink.sent
    assert unsent == stream[-1]
    assert failed.type == "job-finish" and isinstance(failed.body, dict)
    assert {k: failed.body[k] for k in ("uniqueid", "result", "start_time", "host")} == {
        "uniqueid": "a", "result": "fail", "start_time": start, "host": "h"}
    assert failed.body["fail_message"] == DIED_WHILE_RUNNING
    assert failed.body["finish_time"] > start
    assert finished == Envelope("regr-finish", "r/1", {"name": "r/1", "pending": False,
                                                        "submitted": 3})


def test_recovery_does_not_close_again_what_the_courier_closed(tmp_path: Path) -> None:
    """The courier closed the run of a pytest that died, but could not settle everything:
    the journal stays, marked, and its recovery adds no second closing."""
    journal = Journal(tmp_path, "dead")
    journal.append(1, Envelope("regr-start", "r/1", {"name": "r/1", "pending": True}))
    journal.append(2, Envelope("job-live", "r/1", {"category": "p", "uniqueid": "a",
                                                    "result": "live"}))
    journal.close(remove=False)
    mark_closed(journal.path)
    sink = Sink()
    assert recover(tmp_path, sink) == 2
    assert [e.type for e in sink.sent] == ["regr-start", "job-live"]


def test_recovery_of_a_closed_run_or_a_shard_adds_nothing(tmp_path: Path) -> None:
    closed = [
        Envelope("regr-start", "r/1", {"name": "r/1", "pending": True}),
        Envelope("regr-finish", "r/1", {"name": "r/1", "pending": False, "submitted": 0}),
    ]
    shard = [Envelope("job-finish", "r/2", {"category": "p", "uniqueid": "x", "result": "pass"})]
    for name, stream in (("closed", closed), ("shard", shard)):
        journal = Journal(tmp_path, name)
        for seq, envelope in enumerate(stream, 1):
            journal.append(seq, envelope)
        journal.close(remove=False)
    sink = Sink()
    assert recover(tmp_path, sink) == 3
    assert sorted(e.type for e in sink.sent) == ["job-finish", "regr-finish", "regr-start"]


def test_concurrent_recoveries_take_each_message_once(tmp_path: Path) -> None:
    for run in range(20):
        journal = Journal(tmp_path, f"run{run}")
        for seq in range(1, 6):
            journal.append(seq, message(run * 100 + seq))
        journal.close(remove=False)
    sink = Sink()
    threads = [threading.Thread(target=recover, args=(tmp_path, sink)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = uniqueids(sink.sent)
    assert sorted(got, key=str) == sorted((f"t::{r * 100 + s}" for r in range(20)
                                           for s in range(1, 6)), key=str)
    assert list(tmp_path.iterdir()) == []


# --- real processes ------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from pytest_simscope.journal import Journal
    from pytest_simscope.models import Envelope

    directory, mode = Path(sys.argv[1]), sys.argv[4]
    count, acked = int(sys.argv[2]), int(sys.argv[3])
    pad = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    journal = Journal(directory, "killed")
    for seq in range(1, count + 1):
        body = {"category": "pytest", "uniqueid": f"t::{seq}", "result": "pass"}
        if pad:
            body["config"] = "é" * (pad + seq % 97)
        journal.append(seq, Envelope(type="job-finish", regression="r/1", body=body))
        if seq == acked:
            journal.ack(seq)
    if mode == "wait":
        print("ready", flush=True)
        sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def start_writer(
    directory: Path, count: int, acked: int, mode: str, pad: int = 0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(count), str(acked), mode, str(pad)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_killed_process(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    writer = start_writer(journal_dir, 50, 20, "kill")
    writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    assert (journal_dir / "killed.jsonl").is_file()
    queue_root = tmp_path / "queue"
    assert recover(journal_dir, OfflineQueue(queue_root)) == 30
    assert [r["body"]["uniqueid"] for r in read_outbox(queue_root)] == [
        f"t::{seq}" for seq in range(21, 51)
    ]
    assert list(journal_dir.iterdir()) == []


def test_killed_process_with_a_journal_many_windows_long(tmp_path: Path) -> None:
    """Lines written through several successive memory-map windows (and across the
    boundaries between them) all survive the kill."""
    journal_dir = tmp_path / "journal"
    writer = start_writer(journal_dir, 9000, 1000, "kill", pad=400)
    writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL
    assert (journal_dir / "killed.jsonl").stat().st_size > 6_000_000
    sink = Sink()
    assert recover(journal_dir, sink) == 8000
    assert uniqueids(sink.sent) == [f"t::{seq}" for seq in range(1001, 9001)]
    assert all(
        isinstance(e.body, dict) and e.body["config"] == "é" * (400 + int(seq) % 97)
        for e, seq in zip(sink.sent, range(1001, 9001), strict=True)
    )


def test_journal_of_a_running_process_is_left_alone(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    writer = start_writer(journal_dir, 10, 4, "wait")
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        sink = Sink()
        assert recover(journal_dir, sink) == 0
        assert sink.sent == []
        assert (journal_dir / "killed.jsonl").is_file()
    finally:
        writer.communicate("go\n", timeout=60)  # now it kills itself
    assert writer.returncode == -signal.SIGKILL
    sink = Sink()
    assert recover(journal_dir, sink) == 6
    assert uniqueids(sink.sent) == [f"t::{seq}" for seq in range(5, 11)]


def test_new_journal_is_never_seen_unlocked(tmp_path: Path) -> None:
    """Recovery running while journals are being opened never takes a live one."""
    stop = threading.Event()
    taken: list[Envelope] = []

    class Grab(Transport):
        def send(self, batch: Sequence[Envelope]) -> None:
            taken.extend(batch)

    def keep_recovering() -> None:
        while not stop.is_set():
            recover(tmp_path, Grab())

    thread = threading.Thread(target=keep_recovering)
    thread.start()
    journals = []
    try:
        for run in range(200):
            journal = Journal(tmp_path, f"run{run}")
            journal.append(1, message(run))
            journals.append(journal)
    finally:
        stop.set()
        thread.join()
    assert taken == []
    for journal in journals:
        assert journal.path.is_file()
        journal.close(remove=True)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".jsonl", ".acks")]
    assert os.listdir(tmp_path) == []
