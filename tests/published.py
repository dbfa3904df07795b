"""Run pytest under ``pytester`` with pytest-simscope and read back what it published.

``recorded(pytester, *args)`` runs pytest with a regression name and a JSON-lines record
file and returns the run's result and the recorded messages, in order.  The other helpers
pick jobs out of those records and replace the fields that change from run to run (times,
durations, host) with placeholders, so a test can compare whole bodies with ``==``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_simscope.check import check_records, load_jsonl

REGRESSION = "lifecycle/1"
RECORD = "simscope.jsonl"
TIME = "<time>"
MS = "<ms>"
HOST = "<host>"

# Plugins installed next to ours that make every inner run (and every xdist worker) seconds
# slower and that no inner run needs.
QUIET = ("-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:anyio")

# The key scenarios run without xdist, with xdist loaded but no workers, and with two
# workers (STYLE.md: "Key scenarios parametrized over -p no:xdist, -n 0 and -n 2").
XDIST_MODES = [
    pytest.param(("-p", "no:xdist"), id="no-xdist"),
    pytest.param(("-n", "0"), id="n0"),
    pytest.param(("-n", "2"), id="n2"),
]

# Environment that would change what an inner run publishes: our own settings, the CI
# systems whose variables fill regression fields, and options pytest adds on its own.
_ENV_PREFIXES = ("SIMSCOPE_", "PYTEST_SIMSCOPE_")
_ENV_NAMES = (
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "JENKINS_URL",
    "JENKINS_HOME",
)

_TIME_FIELDS = ("starttime", "start_time", "finish_time")
_MS_FIELDS = ("compute_ms", "runtime_ms")
_WORKER_HEADER = re.compile(r"^\[gw\d+\] \S+ -- Python .*\n", re.MULTILINE)


def isolate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every environment variable that would change what the plugin publishes."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES:
            monkeypatch.delenv(name)


def spawns_workers(args: Sequence[str]) -> bool:
    """Whether *args* start xdist workers (those runs go to a subprocess)."""
    for index, arg in enumerate(args):
        value = None
        if arg in ("-n", "--numprocesses") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--numprocesses="):
            value = arg.partition("=")[2]
        elif arg.startswith("-n") and len(arg) > 2:
            value = arg[2:]
        if value is not None and value != "0":
            return True
    return False


def record_path(pytester: pytest.Pytester) -> Path:
    return pytester.path / RECORD


def plugin_args(
    pytester: pytest.Pytester,
    *args: str,
    regression: str | None = REGRESSION,
    randomly: bool = False,
) -> list[str]:
    """The command line of an inner run: our options, then *args*."""
    full: list[str] = []
    if regression is not None:
        full += [
            f"--simscope-regression={regression}",
            f"--simscope-record={record_path(pytester)}",
            # A live job for every test, at its setup: without this, only tests still
            # running after 0.1 s get one, and what is recorded depends on timing
            # (test_live.py covers that default).
            "--simscope-live-after=0",
        ]
    if not randomly:
        full += ["-p", "no:randomly"]
    full += [*QUIET, *args]
    return full


def run(
    pytester: pytest.Pytester, *args: str, subprocess: bool | None = None
) -> pytest.RunResult:
    """Run pytest with exactly *args*; in a subprocess when xdist workers are asked for."""
    if subprocess is None:
        subprocess = spawns_workers(args)
    if subprocess:
        return pytester.runpytest_subprocess(*args, timeout=120)
    return pytester.runpytest_inprocess(*args)


def recorded(
    pytester: pytest.Pytester,
    *args: str,
    regression: str = REGRESSION,
    randomly: bool = False,
    subprocess: bool | None = None,
) -> tuple[pytest.RunResult, list[dict[str, Any]]]:
    """Run pytest with the plugin enabled; return the result and the recorded messages.

    Adds ``--simscope-regression`` and ``--simscope-record`` and, unless *randomly*,
    ``-p no:randomly``.
    """
    path = record_path(pytester)
    if path.exists():
        path.unlink()
    result = run(
        pytester,
        *plugin_args(pytester, *args, regression=regression, randomly=randomly),
        subprocess=subprocess,
    )
    return result, read_records(path)


def bare(
    pytester: pytest.Pytester, *args: str, subprocess: bool | None = None
) -> pytest.RunResult:
    """The same run without the plugin enabled, to compare exit statuses with."""
    return run(pytester, *plugin_args(pytester, *args, regression=None), subprocess=subprocess)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (an empty list when there is none); no bad lines."""
    if not path.exists():
        return []
    records, problems = load_jsonl(path)
    assert problems == [], "\n".join(str(p) for p in problems)
    return records


def assert_clean(
    records: Iterable[Mapping[str, Any]], *, require_start_finish: bool = True
) -> None:
    """The stream follows the protocol: ``check_records`` finds no problem."""
    problems = check_records(list(records), require_start_finish=require_start_finish)
    assert problems == [], "\n".join(str(p) for p in problems)


def types(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return [str(record["type"]) for record in records]


def bodies(records: Iterable[Mapping[str, Any]], type_: str) -> list[dict[str, Any]]:
    """The bodies of the messages of one type, in order."""
    return [dict(record["body"]) for record in records if record["type"] == type_]


def finished(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Finished jobs by uniqueid (each must be finished once)."""
    jobs: dict[str, dict[str, Any]] = {}
    for body in bodies(records, "job-finish"):
        uid = body["uniqueid"]
        assert uid not in jobs, f"job {uid} finished twice"
        jobs[uid] = body
    return jobs


def finished_by_nodeid(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Finished jobs grouped by the test's node id (``config``)."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for body in bodies(records, "job-finish"):
        jobs.setdefault(body["config"], []).append(body)
    return jobs


def job(records: Iterable[Mapping[str, Any]], nodeid: str) -> dict[str, Any]:
    """The one finished job of the test *nodeid*."""
    found = finished_by_nodeid(records).get(nodeid, [])
    assert len(found) == 1, f"{len(found)} finished jobs for {nodeid}"
    return found[0]


def job_messages(
    records: Iterable[Mapping[str, Any]],
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each job's own messages (type and body), in order, by uniqueid."""
    per_job: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for record in records:
        if record["type"] in ("job-live", "job-finish"):
            body = dict(record["body"])
            per_job.setdefault(body["uniqueid"], []).append((str(record["type"]), body))
    return per_job


def message_details(body: Mapping[str, Any]) -> str:
    """The full failure text under a fail_message's summary line, without xdist's header."""
    _, _, rest = str(body["fail_message"]).partition("\n")
    return _WORKER_HEADER.sub("", rest)


def normalise(body: Mapping[str, Any], *, summary_only: bool = True) -> dict[str, Any]:
    """*body* with times, durations and host replaced by placeholders.

    With *summary_only* a ``fail_message`` is cut to its first line (the summary Simscope
    buckets by); the text after it depends on Python's traceback format and xdist.
    """
    out = dict(body)
    for name in _TIME_FIELDS:
        if name in out:
            out[name] = TIME
    for name in _MS_FIELDS:
        if name in out:
            assert isinstance(out[name], int) and out[name] >= 0, (name, out[name])
            out[name] = MS
    if "host" in out:
        out["host"] = HOST
    if summary_only and isinstance(out.get("fail_message"), str):
        out["fail_message"] = out["fail_message"].partition("\n")[0]
    if isinstance(out.get("command"), str):
        # pytester adds its own --basetemp; where it puts it differs in a subprocess.
        words = shlex.split(out["command"])
        out["command"] = shlex.join(w for w in words if not w.startswith("--basetemp="))
    return out


def normalised(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The whole stream as (type, normalised body) pairs."""
    return [(str(r["type"]), normalise(r["body"])) for r in records]


def command(pytester: pytest.Pytester, *args: str, randomly: bool = False) -> str:
    """The ``command`` a regr-start of ``recorded(pytester, *args)`` carries (normalised)."""
    return shlex.join(["pytest", *plugin_args(pytester, *args, randomly=randomly)])


def live_body(nodeid: str, **fields: Any) -> dict[str, Any]:
    """The normalised body of a job-live for *nodeid* with the default settings."""
    body: dict[str, Any] = {
        "category": "pytest",
        "uniqueid": nodeid,
        "result": "live",
        "start_time": TIME,
        "config": nodeid,
        "host": HOST,
        "testgroup": nodeid.partition("::")[0],
    }
    body.update(fields)
    return body


def finish_body(nodeid: str, result: str, **fields: Any) -> dict[str, Any]:
    """The normalised body of a job-finish for *nodeid* with the default settings."""
    body = live_body(nodeid, result=result, finish_time=TIME, fail_message="")
    if result != "skip":
        body.update(compute_ms=MS, runtime_ms=MS)
    body.update(fields)
    return body
