"""Faults end to end: a real pytest run (pytester) publishing to the real local broker.

Each test breaks something (the broker, the network, the credentials, pytest itself) and
then proves the three promises:

* nothing is lost and the order is kept: what the broker got during the run, followed by
  the offline queue once it is delivered, is exactly the stream ``--simscope-record``
  wrote (a ``job-live`` may be missing when its own ``job-finish`` follows, and where the
  fault can cut a connection between a message and its confirm, a message may arrive twice);
* pytest's exit status is the one the same suite has without the plugin;
* the run stays bounded in time (small retry budgets, timeouts and flush deadlines).

Tests that act on the whole broker (closing every connection, stopping it) are marked
``serial``: they run without xdist.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from brokerlib import (
    BROKER,
    BrokerInfo,
    close_all_connections,
    delete_queue,
    get_messages,
    start_broker_app,
    stop_broker_app,
)

from pytest_simscope.courier import COURIER_ARG
from pytest_simscope.journal import DIED_WHILE_RUNNING, LineReader
from pytest_simscope.transports.queue import read_entry, read_outbox

Record = dict[str, Any]

SUITE = """
import time

import pytest

SLEEP = {sleep}


@pytest.mark.parametrize("i", range({passes}))
def test_pass(i):
    time.sleep(SLEEP)


def test_fail():
    time.sleep(SLEEP)
    assert 1 + 1 == 3


@pytest.mark.skip(reason="not today")
def test_skip():
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False


@pytest.mark.parametrize("i", range({more}))
def test_more(i):
    time.sleep(SLEEP)
"""

PASSING_SUITE = """
@pytest.mark.parametrize("i", range(5))
def test_ok(i):
    pass
"""


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 where nothing listens, reserved while the block runs.

    The socket is bound but never listens: a connection is refused at once, and no other
    process (another test's server, a benchmark's proxy) can take the port meanwhile.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# -- streams -------------------------------------------------------------------------------


def expand(records: Sequence[Record]) -> list[Record]:
    """Each batch-job-finish back into the job-finish messages it carries."""
    out: list[Record] = []
    for record in records:
        if record["type"] == "batch-job-finish":
            out.extend(
                {"type": "job-finish", "regression": record["regression"], "body": body}
                for body in record["body"]
            )
        else:
            out.append(record)
    return out


def broker_records(queue: str, wait: float = 0.5) -> list[Record]:
    """Take every message off *queue*, as records, batches expanded."""
    return expand(
        [
            {"type": m.type, "regression": m.correlation_id, "body": m.json()}
            for m in get_messages(queue, wait=wait)
        ]
    )


def load_record(path: Path) -> list[Record]:
    """The ``--simscope-record`` file; a last line cut short by a kill is left out."""
    records: list[Record] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def deliver_queue(queue_dir: Path, broker_queue: str, regression: str) -> list[Record]:
    """Run ``pytest-simscope drain`` on the queue; the regression's records it held.

    drain also recovers the journals of dead runs first, so what it delivers may be more
    than ``outbox/`` held before; the records returned are read after it, from
    ``archive/``'s point of view: everything of *regression* that left the queue.
    """
    before = [r for r in read_outbox(queue_dir) if r["regression"] == regression]
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest_simscope.cli", "drain", str(queue_dir),
            "--url", BROKER.amqp_url, "--amqp-queue", broker_queue,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"drain exited {proc.returncode}:\n{proc.stdout}"
    left = [r for r in read_outbox(queue_dir) if r["regression"] == regression]
    assert left == [], f"drain left {len(left)} messages in the outbox:\n{proc.stdout}"
    return before


@dataclass
class Match:
    duplicates: int
    superseded: int


def match_stream(recorded: Sequence[Record], got: Sequence[Record]) -> Match:
    """Check that *got* is *recorded*, in order, nothing missing.

    A ``job-live`` of *recorded* may be absent when its ``job-finish`` comes later (the
    publisher dropped it unsent).  A message of *got* equal to one already matched is a
    resend, counted in ``duplicates``.
    """
    position = 0
    duplicates = superseded = 0
    matched: list[Record] = []
    for index, message in enumerate(got):
        while position < len(recorded) and recorded[position] != message:
            skipped = recorded[position]
            if skipped["type"] != "job-live" or not _finish_follows(recorded, position):
                break
            superseded += 1
            position += 1
        if position < len(recorded) and recorded[position] == message:
            matched.append(message)
            position += 1
            continue
        if message in matched:
            duplicates += 1
            continue
        expected = recorded[position] if position < len(recorded) else "nothing more"
        raise AssertionError(
            f"message {index} out of order or unexpected:\n  got      {message}\n"
            f"  expected {expected}"
        )
    missing = [
        r
        for i, r in enumerate(recorded[position:], start=position)
        if not (r["type"] == "job-live" and _finish_follows(recorded, i))
    ]
    assert not missing, f"{len(missing)} messages never arrived, first: {missing[0]}"
    return Match(duplicates=duplicates, superseded=superseded)


def open_lives(recorded: Sequence[Record]) -> list[str]:
    """The uniqueids of the jobs *recorded* left running (in the order they started)."""
    finished = {r["body"]["uniqueid"] for r in recorded if r["type"] == "job-finish"}
    lives = [r["body"]["uniqueid"] for r in recorded if r["type"] == "job-live"]
    return [uid for uid in dict.fromkeys(lives) if uid not in finished]


def closed_for_the_dead(recorded: Sequence[Record], got: Sequence[Record]) -> list[Record]:
    """*recorded*, the stream of a pytest that died, then what its courier or a recovery
    sent to close the run (found in *got*, and checked): a fail for each job left running,
    saying why, and the regression's regr-finish."""
    closing: list[Record] = []
    for message in got:
        body = message["body"] if isinstance(message["body"], dict) else {}
        died = message["type"] == "job-finish" and body.get("fail_message") == DIED_WHILE_RUNNING
        if (died or message["type"] == "regr-finish") and message not in closing:
            closing.append(message)
    failed = [m["body"]["uniqueid"] for m in closing if m["type"] == "job-finish"]
    assert failed == open_lives(recorded)
    finished = {r["body"]["uniqueid"] for r in recorded if r["type"] == "job-finish"}
    assert [m["body"] for m in closing if m["type"] == "regr-finish"] == [
        {"name": recorded[0]["regression"], "pending": False,
         "submitted": len(finished) + len(failed)}
    ]
    return [*recorded, *closing]


def _finish_follows(records: Sequence[Record], index: int) -> bool:
    uid = records[index]["body"].get("uniqueid")
    return any(
        r["type"] == "job-finish" and r["body"].get("uniqueid") == uid
        for r in records[index + 1 :]
    )


# -- the delivery process (courier) ----------------------------------------------------------


def courier_pid(parent: int, timeout: float = 30) -> int:
    """The pid of the courier that the pytest process *parent* started (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text(encoding="utf-8", errors="replace")
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            # Its arguments name pytest; it is not pytest's child (the one that is, with
            # the same arguments, is its starter, which exits at once).
            args = cmdline.split(b"\0")
            if COURIER_ARG.encode() not in args:
                continue
            named = args[args.index(COURIER_ARG.encode()) + 1 :][:1]
            ppid = re.search(r"^PPid:\s*(\d+)", status, re.MULTILINE)
            if (
                named == [str(parent).encode()]
                and ppid
                and int(ppid.group(1)) != parent
                and not _zombie(status)
            ):
                return int(entry.name)
        assert time.monotonic() < deadline, f"pytest {parent} started no courier"
        time.sleep(0.02)


def _zombie(status: str) -> bool:
    return re.search(r"^State:\s*Z", status, re.MULTILINE) is not None


def process_gone(pid: int) -> bool:
    """Whether *pid* ended (a zombie nobody reaps counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last.
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def journal_messages(path: Path) -> list[tuple[int, Record]]:
    """The messages of one journal file as (seq, record), in sequence order.

    The file is grown with zero bytes ahead of its lines; a last line cut short is left out.
    """
    data = path.read_bytes().split(b"\0", 1)[0]
    numbered = []
    reader = LineReader()  # records, and the short lines of the usual job
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            item = reader(line)
            if item is not None:
                numbered.append((item[0], item[1].as_record()))
    numbered.sort(key=lambda item: item[0])
    return numbered


def journal_stream(path: Path) -> list[Record]:
    """The messages of one journal file, in sequence order, as records."""
    return [record for _, record in journal_messages(path)]


def journal_acked(path: Path) -> int:
    """The highest sequence number the ``.acks`` file beside journal *path* holds."""
    try:
        lines = path.with_suffix(".acks").read_text(encoding="utf-8").split()
    except OSError:
        return 0
    return max((int(line) for line in lines if line.isdigit()), default=0)


# -- running pytest ------------------------------------------------------------------------


@dataclass
class Outcome:
    ret: int
    lines: list[str]
    output: str
    record: list[Record]
    regression: str
    queue_dir: Path
    took: float

    def simscope_lines(self) -> list[str]:
        return [line for line in self.lines if line.startswith("simscope:")]

    def summary(self) -> str:
        lines = [line for line in self.simscope_lines() if " jobs (" in line]
        assert len(lines) == 1, self.simscope_lines()
        return lines[0]

    def warnings(self) -> list[str]:
        return [line for line in self.simscope_lines() if line.startswith("simscope: warning:")]


class Runner:
    """Runs the fault suite with and without the plugin in a pytester folder."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.regression = f"fault-{uuid.uuid4().hex[:8]}"
        self.queue_dir = pytester.path / "simscope-queue"
        self.record = pytester.path / "record.jsonl"

    def suite(self, *, passes: int = 6, more: int = 4, sleep: float = 0.0) -> None:
        self.pytester.makepyfile(test_suite=SUITE.format(passes=passes, more=more, sleep=sleep))

    def passing_suite(self) -> None:
        self.pytester.makepyfile(test_suite="import pytest\n" + PASSING_SUITE)

    def args(self, *extra: str) -> list[str]:
        return [
            "-p", "no:randomly",
            "-p", "no:cacheprovider",
            f"--simscope-regression={self.regression}",
            f"--simscope-queue-dir={self.queue_dir}",
            f"--simscope-record={self.record}",
            *extra,
        ]

    def bare(self) -> int:
        result = self.pytester.runpytest_subprocess(
            "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:simscope", timeout=120
        )
        return int(result.ret)

    def run(self, *extra: str, env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
        began = time.monotonic()
        with _environ(env or {}):
            result = self.pytester.runpytest_subprocess(*self.args(*extra), timeout=timeout)
        took = time.monotonic() - began
        output = "\n".join(result.outlines + result.errlines)
        return Outcome(
            ret=int(result.ret),
            lines=result.outlines,
            output=output,
            record=load_record(self.record) if self.record.exists() else [],
            regression=self.regression,
            queue_dir=self.queue_dir,
            took=took,
        )

    def queued(self) -> list[Record]:
        return [r for r in read_outbox(self.queue_dir) if r["regression"] == self.regression]


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def runner(pytester: pytest.Pytester) -> Runner:
    return Runner(pytester)


def amqp_url(port: int = 5672, password: str = "guest") -> str:
    return f"amqp://guest:{password}@127.0.0.1:{port}/%2F"


def assert_no_traceback(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.output
    assert "INTERNALERROR" not in outcome.output


def assert_everything_arrives(
    outcome: Outcome, broker_queue: str, *, during: list[Record] | None = None
) -> Match:
    """Deliver the queue after what the broker got during the run; match the record."""
    assert outcome.record, "the run recorded nothing"
    assert outcome.record[0]["type"] == "regr-start"
    assert outcome.record[-1]["type"] == "regr-finish"
    got = broker_records(broker_queue) if during is None else during
    queued = deliver_queue(outcome.queue_dir, broker_queue, outcome.regression)
    after = broker_records(broker_queue)
    # drain delivered what the queue held, in order (it too may leave out a live message
    # whose finish follows) ...
    assert match_stream(queued, after).duplicates == 0
    # ... and together with what the broker got during the run, that is the whole run.
    return match_stream(outcome.record, got + after)


class Watcher:
    """Runs *action* in a thread once the record holds *jobs* finished jobs."""

    def __init__(self, record: Path, jobs: int, action: Callable[[], None]) -> None:
        self.record = record
        self.jobs = jobs
        self.action = action
        self.error: BaseException | None = None
        self.fired = threading.Event()
        self.mid_run = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if finished_jobs(self.record) >= self.jobs:
                    break
                time.sleep(0.01)
            self.fired.set()
            self.mid_run = not run_finished(self.record)
            self.action()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the broker action did not finish"
        if self.error is not None:
            raise self.error
        assert self.mid_run, "the run was over before the broker action"


def run_finished(record: Path) -> bool:
    try:
        return '"type":"regr-finish"' in record.read_text(encoding="utf-8")
    except OSError:
        return False


def finished_jobs(record: Path) -> int:
    try:
        text = record.read_text(encoding="utf-8")
    except OSError:
        return 0
    return text.count('"type":"job-finish"')


# -- local HTTP servers that misbehave -------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.requests += 1
        status, payload = self.server.answer(self, body)
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests = 0

    def __init__(self, answer: Callable[[_Handler, bytes], tuple[int, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer


@contextlib.contextmanager
def http_server(answer: Callable[[_Handler, bytes], tuple[int, bytes]]) -> Iterator[_Server]:
    server = _Server(answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def answer_500(handler: _Handler, body: bytes) -> tuple[int, bytes]:
    return 500, b'{"error":"internal","reason":"the server broke"}'


def answer_late(handler: _Handler, body: bytes) -> tuple[int, bytes]:
    time.sleep(2.0)  # past the run's --simscope-timeout=0.5
    return 200, b'{"routed":true}'


def slow_proxy(delay: float) -> Callable[[_Handler, bytes], tuple[int, bytes]]:
    """Forward each publish to the real management API, *delay* seconds late."""

    def answer(handler: _Handler, body: bytes) -> tuple[int, bytes]:
        time.sleep(delay)
        response = httpx.post(
            f"{BROKER.api_url}{handler.path}",
            content=body,
            headers={"Content-Type": "application/json"},
            auth=(BROKER.user, BROKER.password),
            timeout=10,
        )
        return response.status_code, response.content

    return answer


# -- the broker is not there -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["amqp", "http"])
def test_broker_down_before_the_run(
    runner: Runner, broker: BrokerInfo, broker_queue: str, scheme: str
) -> None:
    runner.suite()
    with closed_port() as port:
        url = amqp_url(port) if scheme == "amqp" else f"http://guest:guest@127.0.0.1:{port}"
        outcome = runner.run(
            f"--simscope-url={url}",
            f"--simscope-amqp-queue={broker_queue}",
            "--simscope-timeout=1",
            "--simscope-retry-budget=0.5",
            "--simscope-flush-timeout=5",
        )

    assert outcome.ret == runner.bare() == pytest.ExitCode.TESTS_FAILED
    assert_no_traceback(outcome)
    assert outcome.took < 60
    summary = outcome.summary()
    assert "0 messages delivered" in summary
    assert f"queued in {runner.queue_dir.name}/outbox" in summary
    assert "pytest-simscope drain" in summary
    [warning] = outcome.warnings()
    assert "Connection refused" in warning, warning
    assert warning.endswith("queueing the rest of this run offline")

    match = assert_everything_arrives(outcome, broker_queue, during=[])
    assert match.duplicates == 0


def test_strict_turns_undelivered_messages_into_a_failed_run(
    runner: Runner, broker: BrokerInfo
) -> None:
    runner.passing_suite()
    with closed_port() as port:
        down = (
            f"--simscope-url={amqp_url(port)}",
            "--simscope-timeout=1",
            "--simscope-retry-budget=0.2",
            "--simscope-flush-timeout=5",
        )
        assert runner.bare() == pytest.ExitCode.OK
        assert runner.run(*down).ret == pytest.ExitCode.OK
        strict = runner.run(*down, "--simscope-strict")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    assert_no_traceback(strict)
    assert "0 messages delivered" in strict.summary()


def test_strict_with_everything_delivered_keeps_exit_status(
    runner: Runner, broker: BrokerInfo, broker_queue: str
) -> None:
    runner.passing_suite()
    outcome = runner.run(
        f"--simscope-url={amqp_url()}",
        f"--simscope-amqp-queue={broker_queue}",
        "--simscope-strict",
    )
    assert outcome.ret == pytest.ExitCode.OK
    assert "published" in outcome.summary()
    assert runner.queued() == []
    match = match_stream(outcome.record, broker_records(broker_queue))
    assert match.duplicates == 0


# -- the broker refuses ----------------------------------------------------------------------


def test_a_queue_that_does_not_exist(
    runner: Runner, broker: BrokerInfo, broker_queue: str
) -> None:
    runner.suite()
    missing = f"simscope-missing-{uuid.uuid4().hex[:8]}"
    outcome = runner.run(
        f"--simscope-url={amqp_url()}",
        f"--simscope-amqp-queue={missing}",
        "--simscope-retry-budget=1",
        "--simscope-flush-timeout=10",
    )
    assert outcome.ret == runner.bare()
    assert_no_traceback(outcome)
    [warning] = outcome.warnings()
    assert f"queue '{missing}' does not exist" in warning
    assert "unroutable" in warning
    assert "0 messages delivered" in outcome.summary()
    # Nothing was created at the broker on the way.
    delete_queue(missing)
    match = assert_everything_arrives(outcome, broker_queue, during=[])
    assert match.duplicates == 0


SECRET = "Wr0ng-s3cret-pw"


def assert_secret_kept(runner: Runner, outcome: Outcome, secret: str) -> None:
    """*secret* is nowhere in pytest's output nor in any file the run wrote."""
    assert secret not in outcome.output
    for path in runner.pytester.path.rglob("*"):
        if path.is_file() and path.name != "test_suite.py":
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("scheme", "credentials"),
    [("amqp", "url"), ("amqp", "env"), ("http", "url")],
    ids=["amqp-url", "amqp-user-password", "http-url"],
)
def test_wrong_credentials(
    runner: Runner, broker: BrokerInfo, broker_queue: str, scheme: str, credentials: str
) -> None:
    runner.suite()
    # Secrets come from the environment: the URL in SIMSCOPE_URL, or the user and password
    # in SIMSCOPE_USERNAME / SIMSCOPE_PASSWORD beside a URL without them.
    if scheme == "http":
        env = {"SIMSCOPE_URL": f"http://guest:{SECRET}@127.0.0.1:15672"}
    elif credentials == "url":
        env = {"SIMSCOPE_URL": amqp_url(password=SECRET)}
    else:
        env = {
            "SIMSCOPE_URL": "amqp://127.0.0.1:5672/%2F",
            "SIMSCOPE_USERNAME": "guest",
            "SIMSCOPE_PASSWORD": SECRET,
        }
    outcome = runner.run(
        f"--simscope-amqp-queue={broker_queue}",
        "--simscope-retry-budget=1",
        "--simscope-flush-timeout=10",
        "-v",  # the header then lists every setting: still masked
        env=env,
    )
    assert outcome.ret == runner.bare()
    assert_no_traceback(outcome)
    [warning] = outcome.warnings()
    assert "refused the login of user 'guest'" in warning
    assert warning.endswith("queueing the rest of this run offline")
    assert "0 messages delivered" in outcome.summary()
    assert_secret_kept(runner, outcome, SECRET)
    match = assert_everything_arrives(outcome, broker_queue, during=[])
    assert match.duplicates == 0


def test_a_password_on_the_command_line_stays_out_of_the_messages(
    runner: Runner, broker: BrokerInfo, broker_queue: str
) -> None:
    # regr-start's `command` is the command line: the password in it must be masked.
    runner.passing_suite()
    outcome = runner.run(
        f"--simscope-url={amqp_url(password=SECRET)}",
        f"--simscope-amqp-queue={broker_queue}",
        "--simscope-retry-budget=0.2",
    )
    assert_no_traceback(outcome)
    assert_secret_kept(runner, outcome, SECRET)


# -- an HTTP endpoint that misbehaves --------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(answer_500, "HTTP 500"), (answer_late, "no answer in time")],
    ids=["500", "hangs"],
)
def test_http_endpoint_that_fails(
    runner: Runner,
    broker: BrokerInfo,
    broker_queue: str,
    answer: Callable[[_Handler, bytes], tuple[int, bytes]],
    expected: str,
) -> None:
    # Long enough (about 1.5 s) for retries while the tests run: at session end a
    # destination that never took a message is not waited for.
    runner.suite(sleep=0.15)
    with http_server(answer) as server:
        outcome = runner.run(
            f"--simscope-url=http://user:{SECRET}@127.0.0.1:{server.server_port}",
            f"--simscope-amqp-queue={broker_queue}",
            "--simscope-timeout=0.5",
            "--simscope-retry-budget=1",
            "--simscope-flush-timeout=5",
        )
    assert outcome.ret == runner.bare()
    assert_no_traceback(outcome)
    assert outcome.took < 60
    assert server.requests >= 2  # retried before giving up
    [warning] = outcome.warnings()
    assert expected in warning
    assert SECRET not in outcome.output
    assert "0 messages delivered" in outcome.summary()
    match = assert_everything_arrives(outcome, broker_queue, during=[])
    assert match.duplicates == 0


def test_a_slow_broker_overflows_the_memory_queue(
    runner: Runner, broker: BrokerInfo, broker_queue: str
) -> None:
    """--simscope-max-pending: messages the broker cannot take in time go to the queue."""
    runner.suite(passes=150, more=0)
    with http_server(slow_proxy(0.05)) as server:
        outcome = runner.run(
            f"--simscope-url=http://guest:guest@127.0.0.1:{server.server_port}",
            f"--simscope-amqp-queue={broker_queue}",
            "--simscope-max-pending=10",
            "--simscope-batch-size=1",
            "--simscope-flush-timeout=10",
        )
    assert outcome.ret == runner.bare()
    assert_no_traceback(outcome)
    assert any("more than 10 messages waiting" in w for w in outcome.warnings())
    summary = outcome.summary()
    assert "queued in" in summary
    during = broker_records(broker_queue)
    assert 0 < len(during) < len(outcome.record)
    match = assert_everything_arrives(outcome, broker_queue, during=during)
    assert match.duplicates == 0


# -- the broker goes away in the middle --------------------------------------------------------


@pytest.mark.serial
def test_connections_closed_during_the_run(
    runner: Runner, broker: BrokerInfo, broker_queue: str
) -> None:
    runner.suite(passes=30, more=10, sleep=0.05)
    first = Watcher(runner.record, 8, close_all_connections)
    second = Watcher(runner.record, 25, close_all_connections)
    outcome = runner.run(
        f"--simscope-url={amqp_url()}",
        f"--simscope-amqp-queue={broker_queue}",
        "--simscope-retry-budget=20",
        "--simscope-flush-timeout=30",
    )
    first.join()
    second.join()
    assert outcome.ret == runner.bare()
    assert_no_traceback(outcome)
    # The publisher reconnects: everything reaches the broker, nothing is queued.
    assert runner.queued() == []
    assert "published" in outcome.summary()
    assert outcome.warnings() == []
    match = match_stream(outcome.record, broker_records(broker_queue))
    # A connection cut between a message and its confirm makes it arrive twice at most.
    assert match.duplicates <= 2 * 512


@pytest.mark.serial
@pytest.mark.parametrize("budget", ["60", "0.5"], ids=["retried-through", "gave-up"])
def test_broker_stopped_and_started_during_the_run(
    runner: Runner, broker: BrokerInfo, broker_queue: str, budget: str
) -> None:
    runner.suite(passes=30, more=10, sleep=0.1)

    def outage() -> None:
        stop_broker_app()
        try:
            time.sleep(1.0)
        finally:
            start_broker_app()

    watcher = Watcher(runner.record, 8, outage)
    try:
        outcome = runner.run(
            f"--simscope-url={amqp_url()}",
            f"--simscope-amqp-queue={broker_queue}",
            "--simscope-timeout=2",
            f"--simscope-retry-budget={budget}",
            "--simscope-flush-timeout=90",
            timeout=180,
        )
    finally:
        watcher.join(180)  # the broker is back before anything else runs
    assert outcome.ret == runner.bare()
    assert_no_traceback(outcome)
    if budget == "60":
        assert runner.queued() == []
        assert "published" in outcome.summary()
    else:
        assert runner.queued() != []
        [warning] = outcome.warnings()
        assert warning.endswith("queueing the rest of this run offline")
    match = assert_everything_arrives(outcome, broker_queue)
    assert match.duplicates <= 512


# -- pytest itself dies ------------------------------------------------------------------------


@pytest.mark.parametrize("recovery", ["next-run", "drain"])
def test_sigkill_in_the_middle_loses_nothing(
    runner: Runner, broker: BrokerInfo, broker_queue: str, recovery: str
) -> None:
    # The courier first, then pytest: nobody is left to deliver, so the journal stays for
    # the next run or drain to recover.  (pytest alone killed: test_courier.py.)
    runner.suite(passes=40, more=0, sleep=0.1)
    args = [
        sys.executable,
        "-m",
        "pytest",
        *runner.args(f"--simscope-url={amqp_url()}", f"--simscope-amqp-queue={broker_queue}"),
    ]
    proc = runner.pytester.popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while finished_jobs(runner.record) < 10 and time.monotonic() < deadline:
            assert proc.poll() is None, "pytest ended before it could be killed"
            time.sleep(0.01)
        # Right after a job finished: its message is most likely not confirmed yet.
        os.kill(courier_pid(proc.pid), signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert 10 <= finished_jobs(runner.record) < 41
    assert not run_finished(runner.record)
    journal = runner.queue_dir / "journal"
    [path] = journal.glob("*.jsonl")
    # The record stopped with the courier; the journal holds everything pytest produced.
    numbered = journal_messages(path)
    recorded = [record for _, record in numbered]
    assert recorded[0]["type"] == "regr-start"
    assert "regr-finish" not in [r["type"] for r in recorded]
    assert sum(r["type"] == "job-finish" for r in recorded) >= finished_jobs(runner.record)
    acked = journal_acked(path)
    unconfirmed = sum(1 for seq, _ in numbered if seq > acked)
    dead = runner.regression
    during = [r for r in broker_records(broker_queue) if r["regression"] == dead]

    if recovery == "next-run":
        # The next run (offline, another regression) recovers the dead run's journal.
        runner.regression = f"fault-{uuid.uuid4().hex[:8]}"
        runner.passing_suite()
        after = runner.run()
        assert after.ret == pytest.ExitCode.OK
        recovered = [line for line in after.simscope_lines() if "recovered" in line]
        # What was not confirmed, then what closes the run (a fail for each test left
        # running, the regr-finish).
        closing = len(open_lives(recorded)) + 1
        assert f"recovered {unconfirmed + closing} unsent messages" in recovered[0]
        # Queued as a run of their own: a (run id, number) pair names one message.
        runs: dict[str, set[str]] = {}
        for folder in (runner.queue_dir / "outbox").iterdir():
            manifest = read_entry(folder)
            runs.setdefault(manifest["project"], set()).add(manifest["run_id"])
        assert runs[dead] and runs[runner.regression]
        assert not runs[dead] & runs[runner.regression]
        assert not list(journal.glob("*.jsonl"))
    # drain recovers the journal itself (when the next run did not) and delivers it all.
    deliver_queue(runner.queue_dir, broker_queue, dead)
    assert not list(journal.glob("*.jsonl"))
    final = during + [r for r in broker_records(broker_queue) if r["regression"] == dead]
    # Everything the dead run produced is at the broker, in order, once, then what
    # closes the run it left open.
    match = match_stream(closed_for_the_dead(recorded, final), final)
    assert match.duplicates <= 512
