"""``pytest-simscope drain``: reading, ordering and archiving a queue, and delivering it to
the real broker (normal, broker down, killed in the middle, corrupt and incomplete entries,
three regressions interleaved, --watch, --dry-run, --json)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from brokerlib import BrokerInfo, ReceivedMessage, get_messages, queue_depth

from pytest_simscope.check import check_records
from pytest_simscope.cli import ProgressBar, main
from pytest_simscope.drain import (
    Drainer,
    DrainOptions,
    Entry,
    Skipped,
    archive_entry,
    is_temporary,
    plan,
    queue_lock,
    read_entry,
    scan,
    wire,
)
from pytest_simscope.errors import PermanentError, TransientError
from pytest_simscope.journal import Journal
from pytest_simscope.models import Envelope, Job, Regression, rfc3339
from pytest_simscope.transports.base import Transport
from pytest_simscope.transports.queue import OfflineQueue

Record = dict[str, Any]
T0 = dt.datetime(2025, 2, 1, 10, 0, tzinfo=dt.timezone.utc)
DOWN_URL = "amqp://guest:s3cret-pw@127.0.0.1:1/%2F"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SIMSCOPE_"):
            monkeypatch.delenv(name)


# --- building queues ----------------------------------------------------------------------


def regr_start(name: str) -> Envelope:
    body = Regression(name=name, starttime=rfc3339(T0), pending=True).body()
    return Envelope(type="regr-start", regression=name, body=body)


def regr_update(name: str, submitted: int) -> Envelope:
    return Envelope(type="regr-update", regression=name,
                    body=Regression(name=name, submitted=submitted).body())


def regr_finish(name: str, submitted: int) -> Envelope:
    return Envelope(type="regr-finish", regression=name,
                    body=Regression(name=name, pending=False, submitted=submitted).body())


def _start(name: str, index: int) -> str:
    # Unique per regression and job: the checker rejects two jobs with one start time.
    offset = sum(name.encode()) % 1000
    return rfc3339(T0 + dt.timedelta(seconds=offset, microseconds=index))


def job_live(name: str, index: int) -> Envelope:
    uid = f"t.py::test_{index}"
    body = Job(category="pytest", uniqueid=uid, result="live", start_time=_start(name, index),
               config=uid).body()
    return Envelope(type="job-live", regression=name, body=body)


def job_finish(name: str, index: int) -> Envelope:
    uid = f"t.py::test_{index}"
    start = _start(name, index)
    body = Job(category="pytest", uniqueid=uid, result="pass", start_time=start,
               finish_time=start, compute_ms=1, runtime_ms=1, config=uid,
               fail_message="").body()
    return Envelope(type="job-finish", regression=name, body=body)


def run_messages(name: str, jobs: int, *, live: bool = True) -> list[Envelope]:
    """What a plugin run of *jobs* tests publishes, in order (lives interleaved)."""
    out = [regr_start(name), regr_update(name, jobs)]
    for index in range(jobs):
        if live:
            out.append(job_live(name, index))
        out.append(job_finish(name, index))
    out.append(regr_finish(name, jobs))
    return out


def write_queue(root: Path, runs: Sequence[tuple[str, int]], *, live: bool = True) -> None:
    """One OfflineQueue per run, their messages written interleaved (round robin)."""
    queues = [(OfflineQueue(root), run_messages(name, jobs, live=live)) for name, jobs in runs]
    position = 0
    while any(position < len(messages) for _, messages in queues):
        for queue, messages in queues:
            if position < len(messages):
                queue.send([messages[position]])
        position += 1


def outbox_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "outbox").iterdir()) if (root / "outbox").exists() \
        else []


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under *root* with a hash of its content (to prove nothing changed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
        else:
            out[str(path.relative_to(root))] = "dir"
    return out


def flatten(messages: Sequence[ReceivedMessage]) -> list[Record]:
    """Broker messages as records, each batch-job-finish opened into job-finish records."""
    records: list[Record] = []
    for message in messages:
        body = message.json()
        if message.type == "batch-job-finish":
            records.extend({"type": "job-finish", "regression": message.correlation_id,
                            "body": item} for item in body)
        else:
            records.append({"type": message.type, "regression": message.correlation_id,
                            "body": body})
    return records


def identity(record: Record) -> tuple[str, str, str]:
    body = record["body"] or {}
    return (record["type"], record["regression"], str(body.get("uniqueid", "")))


def expected_order(name: str, jobs: int, *, live: bool) -> list[tuple[str, str, str]]:
    """The order drain must keep for one regression."""
    order = [("regr-start", name, ""), ("regr-update", name, "")]
    for index in range(jobs):
        if live:
            order.append(("job-live", name, f"t.py::test_{index}"))
        order.append(("job-finish", name, f"t.py::test_{index}"))
    order.append(("regr-finish", name, ""))
    return order


def drain(*args: str) -> int:
    return main(["drain", *args])


def amqp_args(broker: BrokerInfo, queue: str) -> list[str]:
    return ["--url", broker.amqp_url, "--amqp-queue", queue]


class Recording(Transport):
    """A transport that keeps what it was sent and can fail after N envelopes."""

    def __init__(self, fail_after: int | None = None, error: type[Exception] = TransientError,
                 failures: int = 1) -> None:
        self.sent: list[Envelope] = []
        self.calls = 0
        self.fail_after = fail_after
        self.error = error
        self.failures = failures

    def send(self, batch: Sequence[Envelope]) -> None:
        self.calls += 1
        self.delivered = 0
        for envelope in batch:
            if self.fail_after is not None and len(self.sent) >= self.fail_after \
                    and self.failures > 0:
                self.failures -= 1
                raise self.error("broker gone")
            self.sent.append(envelope)
            self.delivered += 1


# --- reading entries (no broker) ----------------------------------------------------------


def test_temporary_names() -> None:
    for name in (".syncthing.job-1.tmp", "job-1.tmp", "~job-1", ".job-1", "job-1.part", "x~"):
        assert is_temporary(name), name
    for name in ("job-20250101-000000-x-abc-000001", "job-a.b"):
        assert not is_temporary(name), name


def test_scan_sorts_entries(tmp_path: Path) -> None:
    write_queue(tmp_path, [("r", 1)], live=False)
    outbox = tmp_path / "outbox"
    good = outbox_names(tmp_path)
    old = time.time() - 3600

    (outbox / "job-nojson").mkdir()
    (outbox / "job-nojson" / ".syncthing.job.json.tmp").write_text("{")
    (outbox / "job-half").mkdir()
    (outbox / "job-half" / "job.json").write_text('{"job_id": "job-half", "mess')
    (outbox / "job-broken").mkdir()
    (outbox / "job-broken" / "job.json").write_text('{"job_id": "job-broken", "mess')
    os.utime(outbox / "job-broken" / "job.json", (old, old))
    (outbox / "job-fields").mkdir()
    (outbox / "job-fields" / "job.json").write_text('{"run_id": "x", "run_started": "y"}')
    (outbox / "job-type").mkdir()
    (outbox / "job-type" / "job.json").write_text(json.dumps({
        "run_id": "x", "run_started": "y",
        "messages": [{"seq": 1, "type": "job-done", "regression": "r", "body": {}}]}))
    (outbox / "job-empty").mkdir()
    os.utime(outbox / "job-empty", (old, old))
    (outbox / "job-left").mkdir()
    (outbox / "job-left" / "notes.txt").write_text("no job.json")
    os.utime(outbox / "job-left" / "notes.txt", (old, old))
    os.utime(outbox / "job-left", (old, old))
    (outbox / ".syncthing.job-x.tmp").mkdir()
    (outbox / ".syncthing.job-old.tmp").mkdir()
    os.utime(outbox / ".syncthing.job-old.tmp", (old, old))
    (outbox / ".stfolder").mkdir()
    (outbox / "README.md").write_text("not an entry")

    found = scan(outbox)
    assert sorted(e.name for e in found.entries) == good
    assert {s.name: s.reason for s in found.incomplete} == {
        ".syncthing.job-x.tmp": "incomplete: a temporary name",
        "job-half": "incomplete: invalid JSON in job.json: Unterminated string starting at "
                    "(line 1, column 24) (still changing)",
        "job-nojson": "incomplete: no job.json yet",
    }
    assert {s.name: s.reason for s in found.corrupt} == {
        "job-broken": "corrupt: invalid JSON in job.json: Unterminated string starting at "
                      "(line 1, column 26)",
        "job-fields": "corrupt: job.json has no 'messages' list (or it is empty)",
        "job-type": "corrupt: messages[0]: unknown message type 'job-done'",
        # Nothing came into them for longer than the settle time: left behind.
        "job-empty": "corrupt: no job.json",
        "job-left": "corrupt: no job.json",
        ".syncthing.job-old.tmp": "corrupt: a temporary name, left",
    }


def test_read_entry_returns_messages_in_file_order(tmp_path: Path) -> None:
    write_queue(tmp_path, [("r", 1)])
    entries = [read_entry(p) for p in sorted((tmp_path / "outbox").iterdir())]
    assert all(isinstance(e, Entry) for e in entries)
    regression = entries[0]
    assert isinstance(regression, Entry)
    assert [(m.seq, m.envelope.type) for m in regression.messages] == [
        (1, "regr-start"), (2, "regr-update"), (5, "regr-finish")]


# --- ordering -----------------------------------------------------------------------------


def _entries(root: Path) -> list[Entry]:
    return scan(root / "outbox").entries


def test_plan_orders_each_regression(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 3), ("b", 2), ("c", 1)])
    order = plan(_entries(tmp_path), keep_live=True)
    got = [(m.envelope.type, m.envelope.regression, m.envelope.uniqueid or "")
           for m in order.send]
    for name, jobs in (("a", 3), ("b", 2), ("c", 1)):
        assert [g for g in got if g[1] == name] == expected_order(name, jobs, live=True)
    # One regression after the other, in the order they began.
    assert [g[1] for g in got] == ["a"] * 9 + ["b"] * 7 + ["c"] * 5


def test_plan_leaves_out_superseded_live_jobs(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 2)])
    order = plan(_entries(tmp_path))
    assert [m.envelope.type for m in order.send] == [
        "regr-start", "regr-update", "job-finish", "job-finish", "regr-finish"]
    assert [m.envelope.type for m in order.superseded] == ["job-live", "job-live"]
    assert all(m.superseded_by is not None for m in order.superseded)


def test_plan_keeps_a_live_job_without_finish(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([regr_start("a"), job_live("a", 0)])
    order = plan(_entries(tmp_path))
    assert [m.envelope.type for m in order.send] == ["regr-start", "job-live"]


def test_plan_holds_back_regr_finish(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 1)])
    order = plan(_entries(tmp_path), hold_finish=True)
    assert [m.envelope.type for m in order.send] == ["regr-start", "regr-update", "job-finish"]
    assert [m.envelope.type for m in order.held_back] == ["regr-finish"]


def test_plan_later_runs_jobs_after_earlier_ones(tmp_path: Path) -> None:
    # Shards: regr-start from one run, jobs from two others, regr-finish from a fourth.
    first = OfflineQueue(tmp_path, run_started="2025-01-01T00:00:01+00:00")
    second = OfflineQueue(tmp_path, run_started="2025-01-01T00:00:02+00:00")
    third = OfflineQueue(tmp_path, run_started="2025-01-01T00:00:03+00:00")
    finish = OfflineQueue(tmp_path, run_started="2025-01-01T00:00:00+00:00")
    finish.send([regr_finish("s", 3)])
    third.send([job_finish("s", 2)])
    second.send([job_finish("s", 0), job_finish("s", 1)])
    first.send([regr_start("s")])
    got = [(m.envelope.type, m.envelope.uniqueid) for m in plan(_entries(tmp_path)).send]
    assert got == [("regr-start", None), ("job-finish", "t.py::test_0"),
                   ("job-finish", "t.py::test_1"), ("job-finish", "t.py::test_2"),
                   ("regr-finish", None)]


def test_wire_batches_consecutive_job_finish(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 5)], live=False)
    messages = plan(_entries(tmp_path)).send
    assert [(e.type, len(c)) for e, c in wire(messages, 2)] == [
        ("regr-start", 1), ("regr-update", 1), ("batch-job-finish", 2),
        ("batch-job-finish", 2), ("job-finish", 1), ("regr-finish", 1)]
    assert [e.type for e, _ in wire(messages, 1)] == [
        "regr-start", "regr-update"] + ["job-finish"] * 5 + ["regr-finish"]
    batch = wire(messages, 100)[2][0]
    assert batch.body == [m.envelope.body for m in messages[2:7]]


# --- a pass, with a transport that fails on demand ----------------------------------------


def test_pass_archives_only_confirmed_entries(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 6)], live=False)
    before = set(outbox_names(tmp_path))
    transport = Recording(fail_after=4, error=PermanentError)
    result = Drainer(tmp_path, transport, DrainOptions(batch_size=1)).run_pass()
    # regr-start, regr-update, jobs 0 and 1 went out; the regression entry (which still
    # holds its regr-finish) and jobs 2..5 stay.
    assert [e.type for e in transport.sent] == ["regr-start", "regr-update", "job-finish",
                                                "job-finish"]
    assert result.archived == 2
    assert result.errors == ["delivery failed (permanent): broker gone"]
    left = set(outbox_names(tmp_path))
    assert len(left) == 5 and left < before
    assert any("regression-a" in name for name in left)

    again = Recording()
    result = Drainer(tmp_path, again, DrainOptions(batch_size=1)).run_pass()
    assert result.complete and outbox_names(tmp_path) == []
    assert [e.type for e in again.sent] == ["regr-start", "regr-update"] + \
        ["job-finish"] * 4 + ["regr-finish"]
    assert len(list((tmp_path / "archive").iterdir())) == 7


def test_pass_retries_transient_failures(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 3)], live=False)
    transport = Recording(fail_after=2, error=TransientError, failures=2)
    result = Drainer(tmp_path, transport, DrainOptions(retry_delay=0.01)).run_pass()
    assert result.complete, result
    assert transport.calls == 3
    assert [e.type for e in transport.sent] == [
        "regr-start", "regr-update", "batch-job-finish", "regr-finish"]


def test_pass_gives_up_after_its_retries(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 1)], live=False)
    transport = Recording(fail_after=0, error=TransientError, failures=100)
    result = Drainer(tmp_path, transport, DrainOptions(retries=2, retry_delay=0.01)).run_pass()
    assert transport.calls == 3
    assert result.errors == ["delivery failed (transient): broker gone"]
    assert len(result.left) == 2 and result.archived == 0


def test_later_passes_do_not_resend_what_they_delivered(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 1)], live=False)
    (tmp_path / "outbox" / "job-syncing").mkdir()
    transport = Recording()
    drainer = Drainer(tmp_path, transport, DrainOptions())
    drainer.run_pass()
    # regr-finish waits for the incomplete entry, so the regression entry stays...
    assert sorted(outbox_names(tmp_path))[1:] == ["job-syncing"]
    shutil.rmtree(tmp_path / "outbox" / "job-syncing")
    result = drainer.run_pass()
    # ...and the next pass of the same drain sends only what it had not sent.
    assert result.complete
    assert [e.type for e in transport.sent] == ["regr-start", "regr-update", "job-finish",
                                                "regr-finish"]


def test_running_entries_are_delivered_and_the_rest_comes_in_new_ones(
    tmp_path: Path,
) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([regr_start("a"), job_live("a", 0)])
    transport = Recording()
    assert Drainer(tmp_path, transport, DrainOptions()).run_pass().complete
    assert outbox_names(tmp_path) == []
    # The plugin finds its entries gone and starts new ones.
    queue.send([job_finish("a", 0), regr_finish("a", 1)])
    assert len(outbox_names(tmp_path)) == 2
    assert Drainer(tmp_path, transport, DrainOptions()).run_pass().complete
    assert [e.type for e in transport.sent] == [
        "regr-start", "job-live", "job-finish", "regr-finish"]


def test_entry_changed_after_reading_is_not_archived(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([job_live("a", 0)])
    (entry,) = _entries(tmp_path)
    queue.send([job_finish("a", 0)])  # the plugin replaces job.json meanwhile
    assert archive_entry(tmp_path, entry) is None
    assert outbox_names(tmp_path) == [entry.name]
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").iterdir())


def test_entry_changed_while_being_archived_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([job_live("a", 0)])
    (entry,) = _entries(tmp_path)
    real_rename = os.rename

    def rename_then_update(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        if "archive" in str(dst):
            # The plugin wrote into the folder between our check and our rename.
            manifest = json.loads((Path(dst) / "job.json").read_text())
            manifest["messages"].append({"seq": 99, **job_finish("a", 0).as_record()})
            (Path(dst) / "job.new").write_text(json.dumps(manifest))
            os.replace(Path(dst) / "job.new", Path(dst) / "job.json")

    monkeypatch.setattr(os, "rename", rename_then_update)
    assert archive_entry(tmp_path, entry) is None
    assert outbox_names(tmp_path) == [entry.name]
    assert not any((tmp_path / "archive").iterdir())


def test_journal_of_a_dead_run_is_recovered_and_delivered(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", "deadrun")
    for seq, envelope in enumerate(run_messages("a", 2, live=False), start=1):
        journal.append(seq, envelope)
    journal.ack(2)  # regr-start and regr-update were delivered before the kill
    journal.close(remove=False)
    transport = Recording()
    result = Drainer(tmp_path, transport, DrainOptions()).run_pass()
    assert result.recovered == 3 and result.complete
    assert [e.type for e in transport.sent] == ["batch-job-finish", "regr-finish"]
    assert not list((tmp_path / "journal").glob("*.jsonl"))


def test_inbox_is_copied_never_changed(tmp_path: Path) -> None:
    write_queue(tmp_path / "remote", [("a", 2)], live=False)
    (tmp_path / "queue" / "inbox").mkdir(parents=True)
    for entry in (tmp_path / "remote" / "outbox").iterdir():
        shutil.copytree(entry, tmp_path / "queue" / "inbox" / entry.name)
    before = tree_digest(tmp_path / "queue" / "inbox")
    transport = Recording()
    drainer = Drainer(tmp_path / "queue", transport, DrainOptions())
    result = drainer.run_pass()
    assert result.imported == 3 and result.complete
    assert [e.type for e in transport.sent] == [
        "regr-start", "regr-update", "batch-job-finish", "regr-finish"]
    assert tree_digest(tmp_path / "queue" / "inbox") == before
    # Copied once: a second pass finds nothing new.
    result = drainer.run_pass()
    assert result.imported == 0 and result.delivered == 0
    assert tree_digest(tmp_path / "queue" / "inbox") == before


def test_incomplete_entry_holds_back_regr_finish(tmp_path: Path) -> None:
    write_queue(tmp_path, [("a", 2)], live=False)
    (tmp_path / "outbox" / "job-syncing").mkdir()
    transport = Recording()
    result = Drainer(tmp_path, transport, DrainOptions()).run_pass()
    assert [e.type for e in transport.sent] == ["regr-start", "regr-update", "batch-job-finish"]
    assert result.held_back == 1 and not result.complete
    shutil.rmtree(tmp_path / "outbox" / "job-syncing")
    result = Drainer(tmp_path, transport, DrainOptions()).run_pass()
    assert result.complete
    assert transport.sent[-1].type == "regr-finish"


def test_an_incomplete_entry_holds_back_only_its_own_runs_regr_finish(tmp_path: Path) -> None:
    first, second = OfflineQueue(tmp_path), OfflineQueue(tmp_path)
    first.send(run_messages("a", 1, live=False))
    second.send(run_messages("b", 1, live=False))
    # An entry of a's run still being synced in (its name carries the run's slug).
    (tmp_path / "outbox" / f"job-20250101-000000-test_x-{first.run_id[:8]}-000009").mkdir()
    transport = Recording()
    result = Drainer(tmp_path, transport, DrainOptions()).run_pass()
    assert [(e.type, e.regression) for e in transport.sent if e.type == "regr-finish"] == [
        ("regr-finish", "b")]
    assert result.held_back == 1


def test_a_folder_of_no_known_run_holds_back_every_regr_finish_until_it_settles(
    tmp_path: Path,
) -> None:
    write_queue(tmp_path, [("a", 1), ("b", 1)], live=False)
    stray = tmp_path / "outbox" / "job-stray"
    stray.mkdir()
    transport = Recording()
    result = Drainer(tmp_path, transport, DrainOptions()).run_pass()
    assert "regr-finish" not in [e.type for e in transport.sent]
    assert result.held_back == 2
    # Still empty after the settle time: reported, and nothing waits for it any more.
    old = time.time() - 3600
    os.utime(stray, (old, old))
    result = Drainer(tmp_path, transport, DrainOptions()).run_pass()
    assert [e.regression for e in transport.sent if e.type == "regr-finish"] == ["a", "b"]
    assert result.corrupt == [Skipped("outbox/job-stray", "corrupt: no job.json")]
    assert stray.is_dir()  # left where it is


def test_progress_bar_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(tty, None)
    bar(0, 10)  # too few entries for a bar
    assert tty.getvalue() == ""
    bar(100, 1000)
    bar(1000, 1000)
    bar.clear()
    assert "drain [###-" in tty.getvalue()
    assert "1000/1000 entries" in tty.getvalue()
    plain = io.StringIO()
    ProgressBar(plain, None)(500, 1000)
    assert plain.getvalue() == ""


def test_lock_keeps_a_second_drain_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    write_queue(tmp_path, [("a", 1)])
    with queue_lock(tmp_path):
        assert drain(str(tmp_path), "--url", "amqp://127.0.0.1:1/") == 1
    assert "another drain is delivering" in capsys.readouterr().err
    assert len(outbox_names(tmp_path)) == 2


# --- against the real broker --------------------------------------------------------------


def test_three_interleaved_regressions(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [("nightly/1", 5), ("nightly/2", 3), ("weekly ü/7", 4)]
    write_queue(tmp_path, runs)
    assert drain(str(tmp_path), *amqp_args(broker, broker_queue)) == 0
    out = capsys.readouterr().out
    assert "36 messages" not in out  # live jobs were left out
    assert "12 job-live left out" in out and "nothing left" in out
    records = flatten(get_messages(broker_queue))
    for name, jobs in runs:
        assert [identity(r) for r in records if r["regression"] == name] == \
            expected_order(name, jobs, live=False)
    assert check_records(records) == []
    assert outbox_names(tmp_path) == []
    archived = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert len(archived) == 15 and all("--archived-20" in name for name in archived)


def test_keep_live_and_no_batching(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str
) -> None:
    write_queue(tmp_path, [("a", 3)])
    assert drain(str(tmp_path), *amqp_args(broker, broker_queue), "--keep-live",
                 "--batch-size", "1") == 0
    messages = get_messages(broker_queue)
    assert [m.type for m in messages] == [t for t, _, _ in expected_order("a", 3, live=True)]
    assert {m.correlation_id for m in messages} == {"a"}
    assert all(m.content_type == "application/json" and m.delivery_mode == 2
               for m in messages)


def test_broker_down_leaves_every_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(tmp_path, [("a", 2)])
    before = tree_digest(tmp_path / "outbox")
    assert drain(str(tmp_path), "--url", DOWN_URL, "--retries", "1") == 1
    captured = capsys.readouterr()
    assert tree_digest(tmp_path / "outbox") == before
    assert "delivery failed" in captured.err and "cannot reach the broker" in captured.err
    assert "3 entries stay in outbox/" in captured.err
    assert "s3cret-pw" not in captured.out + captured.err
    assert "amqp://guest:***@127.0.0.1:1/%2F" in captured.out


def test_broker_down_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_queue(tmp_path, [("a", 1)])
    assert drain(str(tmp_path), "--url", DOWN_URL, "--retries", "0", "--json") == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["exit_status"] == 1 and summary["delivered"] == 0
    assert len(summary["left"]) == 2 and summary["errors"]
    assert "s3cret-pw" not in captured.out + captured.err


def test_corrupt_and_incomplete_entries(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(tmp_path, [("a", 3)], live=False)
    outbox = tmp_path / "outbox"
    (outbox / "job-corrupt").mkdir()
    (outbox / "job-corrupt" / "job.json").write_text("[1, 2")
    old = time.time() - 3600
    os.utime(outbox / "job-corrupt" / "job.json", (old, old))
    (outbox / "job-wrong-fields").mkdir()
    (outbox / "job-wrong-fields" / "job.json").write_text('{"messages": "none"}')
    (outbox / "job-arriving").mkdir()
    (outbox / "job-arriving" / ".syncthing.job.json.tmp").write_text("{")
    (outbox / "job-late.tmp").mkdir()

    assert drain(str(tmp_path), *amqp_args(broker, broker_queue)) == 1
    captured = capsys.readouterr()
    assert "corrupt entry outbox/job-corrupt: invalid JSON in job.json" in captured.err
    assert "corrupt entry outbox/job-wrong-fields: job.json has no 'run_id' string" \
        in captured.err
    assert "2 entries not complete yet (outbox/job-arriving, outbox/job-late.tmp)" \
        in captured.err
    assert "1 regr-finish held back" in captured.err
    assert [m.type for m in get_messages(broker_queue)] == [
        "regr-start", "regr-update", "batch-job-finish"]
    assert sorted(outbox_names(tmp_path)) == sorted(
        ["job-arriving", "job-corrupt", "job-late.tmp", "job-wrong-fields"]
        + [n for n in outbox_names(tmp_path) if "regression-a" in n])

    # The sync tool is done, the corrupt entries are taken away: the rest goes out.
    shutil.rmtree(outbox / "job-arriving")
    shutil.rmtree(outbox / "job-late.tmp")
    shutil.rmtree(outbox / "job-corrupt")
    shutil.rmtree(outbox / "job-wrong-fields")
    assert drain(str(tmp_path), *amqp_args(broker, broker_queue)) == 0
    assert [m.type for m in get_messages(broker_queue)] == [
        "regr-start", "regr-update", "regr-finish"]
    assert outbox_names(tmp_path) == []


def test_dry_run_changes_nothing(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(tmp_path, [("a", 2)])
    journal = Journal(tmp_path / "journal", "deadrun")
    journal.append(1, job_finish("b", 0))
    journal.close(remove=False)
    before = tree_digest(tmp_path)
    assert drain(str(tmp_path), *amqp_args(broker, broker_queue), "--dry-run") == 0
    out = capsys.readouterr().out
    assert tree_digest(tmp_path) == before
    assert queue_depth(broker_queue) == 0
    lines = out.splitlines()
    assert lines[0] == "would send job-finish b t.py::test_0  (journal/deadrun.jsonl)"
    assert lines[1].startswith("would send regr-start a  (job-")
    assert "would send batch-job-finish a 2 jobs  (2 entries)" in lines
    assert lines[-1].startswith("dry run: 5 messages would be sent from 3 entries (1 from")

    assert drain(str(tmp_path), "--dry-run", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [m["type"] for m in summary["would_send"]] == [
        "job-finish", "regr-start", "regr-update", "batch-job-finish", "regr-finish"]
    assert summary["destination"] is None and summary["dry_run"] is True
    assert tree_digest(tmp_path) == before


def test_json_summary(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(tmp_path, [("a", 2)])
    assert drain(str(tmp_path), *amqp_args(broker, broker_queue), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert {k: summary[k] for k in ("delivered", "sent", "archived", "superseded", "left",
                                    "corrupt", "incomplete", "errors", "exit_status")} == {
        "delivered": 5, "sent": 4, "archived": 3, "superseded": 2, "left": [],
        "corrupt": [], "incomplete": [], "errors": [], "exit_status": 0}
    assert summary["destination"] == "amqp://guest:***@127.0.0.1:5672/%2F"


def test_unroutable_queue_is_reported(
    tmp_path: Path, broker: BrokerInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(tmp_path, [("a", 1)])
    assert drain(str(tmp_path), *amqp_args(broker, "no-such-queue-for-drain")) == 1
    assert "delivery failed (permanent)" in capsys.readouterr().err
    assert len(outbox_names(tmp_path)) == 2


# --- kill -9 in the middle ----------------------------------------------------------------

KILL_RUNS = [("kill/a", 1500), ("kill/b", 1500), ("kill/c", 1000)]


@pytest.fixture(scope="module")
def big_queue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big") / "queue"
    write_queue(root, KILL_RUNS)
    return root


def _drain_command(broker: BrokerInfo, queue: str, root: Path, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest_simscope.cli", "drain", str(root),
            *amqp_args(broker, queue), *extra]


def _archived(root: Path) -> int:
    try:
        return len(os.listdir(root / "archive"))
    except FileNotFoundError:
        return 0


def _kill_when_archived(command: list[str], root: Path, at_least: int) -> int:
    """Start a drain, SIGKILL it once *at_least* entries are archived; its exit status."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if _archived(root) >= at_least:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(30)
    return proc.returncode


@pytest.mark.parametrize(
    "extra", [pytest.param((), id="defaults"),
              pytest.param(("--keep-live", "--batch-size", "1"), id="every-message")]
)
def test_killed_in_the_middle_then_run_again(
    tmp_path: Path, big_queue: Path, broker: BrokerInfo, broker_queue: str,
    extra: tuple[str, ...],
) -> None:
    root = tmp_path / "queue"
    shutil.copytree(big_queue, root)
    entries = len(outbox_names(root))
    command = _drain_command(broker, broker_queue, root, extra)
    kills = 0
    for at_least in (1, entries // 3, 2 * entries // 3):
        if _kill_when_archived(command, root, at_least) == -signal.SIGKILL:
            kills += 1
    assert kills >= 1, "the drain finished before it could be killed"
    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert outbox_names(root) == [] and _archived(root) == entries

    records = flatten(get_messages(broker_queue))
    keep_live = "--keep-live" in extra
    delivered = [identity(r) for r in records]
    for name, jobs in KILL_RUNS:
        expected = [e for e in expected_order(name, jobs, live=True)
                    if keep_live or e[0] != "job-live"]
        firsts = list(dict.fromkeys(d for d in delivered if d[1] == name))
        # Every message at least once, and the first time each came, in order.
        assert firsts == expected
    assert len(delivered) >= sum(
        jobs * (2 if keep_live else 1) + 3 for _, jobs in KILL_RUNS)


# --- --watch ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_watch_delivers_new_entries_and_stops_on_a_signal(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str, sig: signal.Signals
) -> None:
    root = tmp_path / "queue"
    write_queue(root, [("w", 1)], live=False)
    proc = subprocess.Popen(
        _drain_command(broker, broker_queue, root, ("--watch", "--interval", "0.1")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: outbox_names(root) == [])
        later = OfflineQueue(root)
        later.send([regr_start("w2"), job_finish("w2", 0), regr_finish("w2", 1)])
        _wait_for(lambda: outbox_names(root) == [])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "watching" in err
    assert "drain: stopped watching after" in out.splitlines()[-1]
    assert out.splitlines()[-1].endswith(f"0 left in {root}")
    types = [(m.correlation_id, m.type) for m in get_messages(broker_queue)]
    assert types == [("w", "regr-start"), ("w", "regr-update"), ("w", "job-finish"),
                     ("w", "regr-finish"), ("w2", "regr-start"), ("w2", "job-finish"),
                     ("w2", "regr-finish")]


def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)

