"""The ``pytest-simscope`` command: help, exit statuses, usage errors, regr-start and
regr-finish (offline and to the real broker), count and check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from brokerlib import BrokerInfo, get_messages

from pytest_simscope import cli
from pytest_simscope.check import check_records
from pytest_simscope.cli import main
from pytest_simscope.transports.queue import read_outbox

QUIET = ("-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:anyio",
         "-p", "no:randomly", "-p", "no:cacheprovider")
CI_VARS = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "JENKINS_HOME")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SIMSCOPE_") or name in CI_VARS:
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- help and usage errors ----------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("drain", "regr-start", "regr-finish", "count", "check"):
        assert command in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("drain", ["QUEUE", "--url", "--amqp-queue", "--amqp-exchange", "--amqp-routing-key",
                   "--http-vhost", "--tls-verify, --no-tls-verify", "--ca-bundle",
                   "--client-cert", "--client-key", "--timeout", "--tunnel-command",
                   "--batch-size", "--watch", "--interval", "--dry-run", "--json",
                   "[env: SIMSCOPE_URL]", "[env: SIMSCOPE_AMQP_QUEUE]",
                   "exit status: 0 all delivered, 1 something is left"]),
        ("regr-start", ["REGRESSION", "--submitted", "--project", "--component",
                        "--model-version", "--model-branch", "--queue", "--tag", "--group",
                        "--regression-metadata", "--url", "--queue-dir",
                        "[env: SIMSCOPE_PROJECT]", "exit status:"]),
        ("regr-finish", ["REGRESSION", "--submitted", "--url", "--queue-dir", "exit status:"]),
        ("count", ["PYTEST_ARGS", "collect", "exit status:"]),
        ("check", ["FILE_OR_QUEUE", "--shard", "exit status: 0 no problem, 1 problems found"]),
    ],
)
def test_command_help(capsys: pytest.CaptureFixture[str], command: str,
                      expected: list[str]) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: pytest-simscope {command}")
    flat = " ".join(out.split())
    for text in expected:
        assert text in flat, text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("pytest-simscope ")


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_simscope.cli", "drain"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "the following arguments are required: QUEUE" in proc.stderr


def test_ctrl_c_before_delivery_starts_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: object) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C came while the transport was being made

    monkeypatch.setattr(cli.Destination, "transport", interrupted)
    (tmp_path / "queue").mkdir()
    code, _, err = run(capsys, "drain", str(tmp_path / "queue"), "--url", "amqp://h/")
    assert code == 1
    assert err.strip() == "pytest-simscope drain: interrupted"


def test_entry_names_that_are_not_utf8_are_shown_escaped(tmp_path: Path) -> None:
    outbox = tmp_path / "queue" / "outbox"
    outbox.mkdir(parents=True)
    folder = os.path.join(os.fsencode(outbox), b"job-x\xfe")
    os.mkdir(folder)
    with open(os.path.join(folder, b"job.json"), "wb") as handle:
        handle.write(b"{")
    old = time.time() - 3600
    os.utime(os.path.join(folder, b"job.json"), (old, old))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict, as in many CI jobs
    for extra in (["--json"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest_simscope.cli", "drain", str(tmp_path / "queue"),
             "--dry-run", *extra],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        if extra:
            json.loads(proc.stdout)
        assert "job-x\\udcfe" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "the following arguments are required: COMMAND"),
        (("launch",), {}, "invalid choice: 'launch'"),
        (("drain", "{queue}"), {}, "no destination: give --url URL (or set SIMSCOPE_URL)"),
        (("drain", "{missing}", "--url", "amqp://h/"), {}, "does not exist"),
        (("drain", "{queue}", "--url", "amqp://h/", "--timeout", "soon"), {},
         "bad value for --timeout on the command line: 'soon' is not a number"),
        (("drain", "{queue}", "--url", "amqp://h/"), {"SIMSCOPE_TIMEOUT": "0"},
         "bad value for environment variable SIMSCOPE_TIMEOUT: 0 is below the minimum of 0.1"),
        (("drain", "{queue}", "--url", "amqp://h/", "--batch-size", "0"), {},
         "bad value for --batch-size on the command line: 0 is below the minimum of 1"),
        (("drain", "{queue}"), {"SIMSCOPE_URL": "ftp://user:hunter2@h/"},
         "bad value for environment variable SIMSCOPE_URL: 'ftp://user:***@h/' must start "
         "with amqp://"),
        (("drain", "{queue}", "--url", "amqp://h/", "--interval", "0", "--watch"), {},
         "--interval must be a positive number of seconds"),
        (("drain", "{queue}", "--url", "amqp://h/", "--interval", "x"), {},
         "argument --interval: invalid float value: 'x'"),
        (("drain", "{queue}", "--url", "amqp://h/", "--tls-verify", "maybe"), {},
         "unrecognized arguments: maybe"),
        (("regr-start",), {}, "no REGRESSION given (and SIMSCOPE_REGRESSION is not set)"),
        (("regr-start", "r", "--submitted", "-1"), {}, "argument --submitted: -1 is negative"),
        (("regr-finish", "r", "--submitted", "many"), {},
         "argument --submitted: 'many' is not a whole number"),
        (("regr-start", "r", "--model-timestamp", "yesterday"), {},
         "bad value for --model-timestamp on the command line: 'yesterday' is not an RFC "
         "3339 timestamp"),
        (("regr-start", "r", "--integrate", "perhaps"), {},
         "bad value for --integrate on the command line: 'perhaps' is not a boolean"),
        (("regr-start", "r", "--regression-metadata", "novalue"), {},
         "bad value for --regression-metadata on the command line: 'novalue' is not "
         "KEY=VALUE"),
        (("check", "{missing}"), {}, "does not exist"),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...], env: dict[str, str], message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q" / "outbox").mkdir(parents=True)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [a.format(queue=str(tmp_path / "q"), missing=str(tmp_path / "nope")) for a in args]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "usage: pytest-simscope" in err
    assert message in " ".join(err.split())
    assert "hunter2" not in err


def test_drain_names_the_queue_folder_it_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".simscope" / "queue" / "outbox").mkdir(parents=True)
    (tmp_path / ".simscope" / ".gitignore").write_text("*\n")
    code, _, err = run(capsys, "drain", str(tmp_path / ".simscope"), "--url", "amqp://h/")
    assert code == 2
    assert "is not an offline queue (no outbox/, inbox/ or journal/ in it); did you mean" in err
    assert str(tmp_path / ".simscope" / "queue") in err


def test_drain_of_an_empty_queue_is_a_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "drain", str(tmp_path), "--url", "amqp://127.0.0.1:1/")
    assert code == 0
    assert "0 messages" in out and "nothing left" in out
    assert (tmp_path / "outbox").is_dir() and (tmp_path / "archive").is_dir()


# --- regr-start / regr-finish -------------------------------------------------------------


def test_regression_steps_to_the_offline_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_SHA", "abc123")
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    monkeypatch.setenv("SIMSCOPE_PROJECT", "chip")
    code, out, _ = run(capsys, "regr-start", "ci/42", "--submitted", "2", "--tag", "nightly",
                       "--regression-metadata", "lane=fast", "--integrate")
    assert code == 0
    assert out.startswith("regr-start ci/42: queued in .simscope/queue/outbox; deliver with: "
                          "pytest-simscope drain .simscope/queue --url URL")
    monkeypatch.setenv("SIMSCOPE_REGRESSION", "ci/42")
    code, out, _ = run(capsys, "regr-finish", "--submitted", "2")
    assert code == 0

    records = read_outbox(tmp_path / ".simscope" / "queue")
    assert [r["type"] for r in records] == ["regr-start", "regr-finish"]
    start = records[0]["body"]
    assert {k: v for k, v in start.items() if k not in ("starttime", "host")} == {
        "name": "ci/42", "pending": True, "dir": str(tmp_path), "project": "chip",
        "model_version": "abc123", "model_branch": "main", "integrate": True,
        "tag": "nightly", "submitted": 2,
        "custom_metadata": [["ci_system", "GitHub Actions"], ["lane", "fast"]],
    }
    assert records[1]["body"] == {"name": "ci/42", "pending": False, "submitted": 2}
    # Two jobs are missing, so the regression does not check clean yet.
    (problem,) = [str(p) for p in check_records(records)]
    assert "'submitted' is 2" in problem and "but 0 job(s) finished" in problem


def test_regression_steps_to_the_broker(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    # Credentials from the environment, for a URL that carries none.
    monkeypatch.setenv("SIMSCOPE_USERNAME", broker.user)
    monkeypatch.setenv("SIMSCOPE_PASSWORD", broker.password)
    monkeypatch.setenv("SIMSCOPE_AMQP_QUEUE", broker_queue)
    url = "amqp://127.0.0.1:5672/%2F"
    code, out, err = run(capsys, "regr-start", "live/1", "--submitted", "0", "--url", url)
    assert (code, err) == (0, "")
    assert out == f"regr-start live/1 (submitted 0): delivered to {url}\n"
    code, out, _ = run(capsys, "regr-finish", "live/1", "--url", url)
    assert code == 0
    messages = get_messages(broker_queue)
    assert [(m.type, m.correlation_id) for m in messages] == [
        ("regr-start", "live/1"), ("regr-finish", "live/1")]
    records = [{"type": m.type, "regression": m.correlation_id, "body": m.json()}
               for m in messages]
    assert check_records(records) == []
    assert not (tmp_path / ".simscope").exists()


def test_regression_step_queued_when_the_broker_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "regr-start", "down/1", "--url",
                         "amqp://guest:topsecret@127.0.0.1:1/", "--queue-dir", "spool")
    assert code == 1
    assert "regr-start: not delivered to amqp://guest:***@127.0.0.1:1/" in err
    assert out.startswith("regr-start down/1: queued in spool/outbox; deliver with: "
                          "pytest-simscope drain spool --url amqp://guest:***@127.0.0.1:1/")
    assert "topsecret" not in out + err
    assert [r["type"] for r in read_outbox(tmp_path / "spool")] == ["regr-start"]


# --- count --------------------------------------------------------------------------------


def count(pytester: pytest.Pytester, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_simscope.cli", "count", *args, *QUIET],
        capture_output=True, text=True, cwd=pytester.path, timeout=120,
    )


def test_count_collects_without_running(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest
        def test_one(): raise SystemExit("must not run")
        @pytest.mark.parametrize("i", range(4))
        def test_many(i): pass
        @pytest.mark.skip
        def test_skipped(): pass
        """,
        test_b="def test_b(): pass",
    )
    proc = count(pytester)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "7\n", "")
    proc = count(pytester, "-k", "many or test_b")
    assert (proc.returncode, proc.stdout) == (0, "5\n")
    proc = count(pytester, "--", "test_b.py")
    assert (proc.returncode, proc.stdout) == (0, "1\n")


def test_count_with_collection_errors_and_no_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_ok(): pass", test_broken="import no_such_module")
    proc = count(pytester)
    # The plugin publishes a failing job for the file that does not import.
    assert (proc.returncode, proc.stdout) == (1, "2\n")
    assert "no_such_module" in proc.stderr and "1 collection errors" in proc.stderr
    proc = count(pytester, "-k", "nothing_matches", "test_ok.py")
    assert (proc.returncode, proc.stdout) == (0, "0\n")


def test_count_usage_error(pytester: pytest.Pytester) -> None:
    proc = count(pytester, "--no-such-option")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def test_count_help_is_ours(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "count", "-h")
    assert code == 0 and out.startswith("usage: pytest-simscope count [PYTEST_ARGS ...]")


# --- check --------------------------------------------------------------------------------


def _write_stream(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


START: dict[str, object] = {"type": "regr-start", "regression": "r",
         "body": {"name": "r", "starttime": "2025-02-01T10:00:00.000001+00:00", "pending": True}}
FINISH: dict[str, object] = {"type": "regr-finish", "regression": "r",
                              "body": {"name": "r", "pending": False}}


def _job(uid: str, micro: int) -> dict[str, object]:
    start = f"2025-02-01T10:00:01.{micro:06d}+00:00"
    return {"type": "job-finish", "regression": "r", "body": {
        "category": "pytest", "uniqueid": uid, "result": "pass", "start_time": start,
        "finish_time": start, "compute_ms": 1, "config": uid, "fail_message": ""}}


def test_check_clean_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "run.jsonl"
    _write_stream(stream, [START, _job("a", 1), _job("b", 2), FINISH])
    code, out, _ = run(capsys, "check", str(stream))
    assert (code, out) == (0, f"check: 4 records in {stream}: no problems\n")


def test_check_reports_each_problem_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "run.jsonl"
    _write_stream(stream, [_job("a", 1), START, _job("a", 2), FINISH])
    with stream.open("a") as handle:
        handle.write("{not json\n")
    code, out, _ = run(capsys, "check", str(stream))
    assert code == 1
    lines = out.splitlines()
    assert lines[-1] == f"check: 4 records in {stream}: 3 problems"
    assert lines[0].startswith(f"{stream}: line 2 (regr-start r): regr-start must be the first")
    assert any(line.startswith(f"{stream}: line 3 (job-finish a): duplicate uniqueid 'a'")
               for line in lines)
    assert any(line.startswith(f"{stream}: line 5: invalid JSON") for line in lines)


def test_check_shard_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "shard.jsonl"
    _write_stream(stream, [_job("s1:a", 1), _job("s1:b", 2)])
    assert run(capsys, "check", str(stream))[0] == 1
    code, out, _ = run(capsys, "check", str(stream), "--shard")
    assert (code, out) == (0, f"check: 2 records in {stream}: no problems\n")


def test_check_queue_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["regr-start", "q/1", "--submitted", "0"]) == 0
    assert main(["regr-finish", "q/1"]) == 0
    capsys.readouterr()
    queue = tmp_path / ".simscope" / "queue"
    code, out, _ = run(capsys, "check", str(queue))
    assert (code, out) == (0, f"check: 2 messages in {queue}: no problems\n")

    (queue / "outbox" / "job-broken").mkdir()
    (queue / "outbox" / "job-broken" / "job.json").write_text('{"run_id": 3}')
    (queue / "outbox" / "job-coming").mkdir()
    code, out, err = run(capsys, "check", str(queue))
    assert code == 1
    assert out.splitlines() == [
        "outbox/job-broken: job.json has no 'run_id' string",
        f"check: 2 messages in {queue}: 1 problems",
    ]
    assert "note: outbox/job-coming: incomplete: no job.json yet; not checked" in err


def test_check_queue_problems_name_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["regr-start", "q/2", "--submitted", "3"]) == 0
    assert main(["regr-finish", "q/2"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "check", ".simscope/queue")
    assert code == 1
    (problem, summary) = out.splitlines()
    assert problem.startswith("outbox/job-")
    assert "-regression-q-2-" in problem and " seq 1 (regr-finish q/2): " in problem
    assert "'submitted' is 3" in problem
    assert summary == "check: 2 messages in .simscope/queue: 1 problems"


STOP_WHILE_LOCKED = """
import os
import signal
import threading
import time

from pytest_simscope.cli import _stop_on_signals

stop = threading.Event()
with _stop_on_signals(stop):
    with stop._cond:  # held as Event.wait() holds it, when the signal comes
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs in here
    assert stop.wait(10)
print("stopped")
"""


def test_a_signal_that_comes_while_the_stop_event_is_held_still_stops_a_watch() -> None:
    """drain --watch waits on an event; a signal handler that set it while the waiting
    thread held its lock would wait for that lock for ever."""
    proc = subprocess.run(
        [sys.executable, "-c", STOP_WHILE_LOCKED], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped"
