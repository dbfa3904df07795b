"""Run every example under ``examples/`` as its README says and check what it published.

Each example is copied into a temporary folder and run in a subprocess, as a user would run
it there (``pytest`` in the example's folder, its ``pytest.ini`` in force).  What it
published is read back from a ``--simscope-record`` file, from its offline queue or from a
fresh queue on the local RabbitMQ broker, checked with ``check_records`` and then against
the example's README: job counts, results, metadata, the hook's changes, and for the
sharded pipeline that the four shards together publish every test exactly once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from brokerlib import BrokerInfo, get_messages

from pytest_simscope.check import check_records, load_jsonl

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RECORD = "simscope.jsonl"
TIMEOUT = 120

# Plugins installed next to ours that slow every run down and that no example needs;
# randomly would also reorder the tests and add a seed to every job.
QUIET = "-p no:randomly -p no:benchmark -p no:hypothesispytest -p no:anyio -p no:cacheprovider"
_CI_VARS = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "JENKINS_HOME", "CI")

Record = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------------


def example_env(**extra: str) -> dict[str, str]:
    """A user's environment: no SIMSCOPE_* or CI settings of ours, this Python's scripts first.

    ``pytest`` and ``pytest-simscope`` resolve to the environment that runs these tests
    (the project's .venv under scripts/test.sh), where the plugin is installed.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SIMSCOPE_", "PYTEST_")) and name not in _CI_VARS
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTEST_ADDOPTS"] = QUIET
    env.update(extra)
    return env


def copy_example(name: str, dest: Path) -> Path:
    """A copy of ``examples/NAME`` in *dest*, without what earlier runs left in the original."""
    target = dest / name
    shutil.copytree(
        EXAMPLES / name,
        target,
        ignore=shutil.ignore_patterns(
            ".simscope", ".pipeline", "__pycache__", ".pytest_cache", RECORD
        ),
    )
    return target


def run(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=dict(env if env is not None else example_env()),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def run_pytest(cwd: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                           list[Record]]:
    """``pytest ARGS`` in *cwd* with a record file; the result and the recorded messages."""
    record = cwd / RECORD
    result = run(
        cwd, sys.executable, "-m", "pytest", f"--simscope-record={record}", *args,
        env=example_env(**env),
    )
    records, problems = load_jsonl(record) if record.exists() else ([], [])
    assert problems == [], problems
    return result, records


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def assert_clean(records: Sequence[Mapping[str, Any]]) -> None:
    problems = check_records(list(records))
    assert problems == [], "\n".join(str(p) for p in problems)


def flatten(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """*records* with every batch-job-finish opened into its job-finish records."""
    flat: list[Record] = []
    for record in records:
        if record["type"] == "batch-job-finish":
            flat.extend(
                {"type": "job-finish", "regression": record["regression"], "body": body}
                for body in record["body"]
            )
        else:
            flat.append(dict(record))
    return flat


def broker_records(queue: str) -> list[Record]:
    """Everything on the broker queue, as records (batches kept as they came)."""
    return [
        {"type": m.type, "regression": m.correlation_id, "body": m.json()}
        for m in get_messages(queue)
    ]


def bodies(records: Iterable[Mapping[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [dict(r["body"]) for r in flatten(records) if r["type"] == type_]


def jobs_by_config(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Finished jobs by node id; every test finished once."""
    jobs: dict[str, dict[str, Any]] = {}
    for body in bodies(records, "job-finish"):
        assert body["config"] not in jobs, f"{body['config']} finished twice"
        jobs[body["config"]] = body
    return jobs


def metadata(job: Mapping[str, Any]) -> dict[str, str]:
    return {name: value for name, value in job.get("metadata") or []}


def outcome_line(text: str) -> str:
    """pytest's closing line, without its timing: ``1 failed, 2 passed``."""
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    assert lines, text
    return re.sub(r"^=+ | in [\d.]+s.*$", "", lines[-1]).strip()


def readme(name: str) -> str:
    return (EXAMPLES / name / "README.md").read_text(encoding="utf-8")


def submitted(records: Iterable[Mapping[str, Any]], type_: str) -> int:
    [body] = bodies(records, type_)
    return int(body["submitted"])


# --- every example ---------------------------------------------------------------------------


def test_every_example_has_a_readme_and_a_test() -> None:
    names = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert names == ["demo", "hook", "minimal", "sharded", "xdist"]
    tests = [name for name in globals() if name.startswith("test_")]
    for name in names:
        assert (EXAMPLES / name / "README.md").is_file(), name
        assert any(t == f"test_{name}" or t.startswith(f"test_{name}_") for t in tests), (
            f"examples/{name} has no test here"
        )


def test_demo(tmp_path: Path) -> None:
    """The suite scripts/demo.sh runs: every kind of job, into the offline queue."""
    here = copy_example("demo", tmp_path)
    result, records = run_pytest(here)
    assert result.returncode == 0, output(result)
    assert outcome_line(result.stdout) == "5 passed, 1 skipped, 1 xfailed"
    assert_clean(records)
    jobs = jobs_by_config(records)
    assert Counter(job["result"] for job in jobs.values()) == {"pass": 6, "skip": 1}
    assert metadata(jobs["test_demo.py::test_fifo_width[16]"])["width"] == "16"
    assert jobs["test_demo.py::test_lint_category"]["category"] == "lint"
    checked = run(here, "pytest-simscope", "check", ".simscope/queue")
    assert checked.returncode == 0, output(checked)


def test_minimal(tmp_path: Path) -> None:
    """Everything in pytest.ini; a plain ``pytest`` publishes to the offline queue."""
    here = copy_example("minimal", tmp_path)
    result, records = run_pytest(here)
    assert result.returncode == 0, output(result)
    assert outcome_line(result.stdout) == "2 passed, 1 skipped"
    assert "2 passed, 1 skipped" in readme("minimal")
    assert "queued in .simscope/queue/outbox" in result.stdout
    assert_clean(records)

    [start] = bodies(records, "regr-start")
    assert (start["name"], start["project"], start["component"]) == (
        "minimal/1", "alpha", "alpha_cpu",
    )
    jobs = jobs_by_config(records)
    assert {nodeid: job["result"] for nodeid, job in jobs.items()} == {
        "test_minimal.py::test_reset_value": "pass",
        "test_minimal.py::test_register_width": "pass",
        "test_minimal.py::test_on_board": "skip",
    }
    # The ini's metadata on every job; a skip also says why.
    ini_metadata = {"suite": "minimal", "owner": "verification"}
    for nodeid, job in jobs.items():
        expected = dict(ini_metadata)
        if nodeid.endswith("test_on_board"):
            expected["skip_reason"] = "Skipped: needs the FPGA board"
        assert metadata(job) == expected, nodeid
    assert submitted(records, "regr-finish") == len(jobs) == 3

    # The README's second command: the queue holds the same messages, and they are clean.
    checked = run(here, "pytest-simscope", "check", ".simscope/queue")
    assert checked.returncode == 0, output(checked)
    assert "no problems" in checked.stdout


def test_xdist(tmp_path: Path) -> None:
    """``pytest -n auto``: one job per test, the results and metadata the README lists."""
    pytest.importorskip("xdist")
    here = copy_example("xdist", tmp_path)
    result, records = run_pytest(here, "-n", "auto")
    assert result.returncode == 1, output(result)  # test_parity_error fails
    assert re.search(r"created: \d+/\d+ workers", result.stdout), output(result)
    line = outcome_line(result.stdout)
    assert line == "1 failed, 9 passed, 2 skipped, 1 xfailed, 1 xpassed"
    assert line in readme("xdist")
    assert_clean(records)

    jobs = jobs_by_config(records)
    results = {nodeid: job["result"] for nodeid, job in jobs.items()}
    fill = {f"test_fifo.py::test_fill[{depth}]": "pass" for depth in range(1, 5)}
    push_pop = {f"test_fifo.py::test_push_pop[{case}]": "pass" for case in ("1-1", "3-2", "4-4")}
    assert results == {
        **fill,
        **push_pop,
        "test_fifo.py::test_simulate": "pass",
        "test_fifo.py::test_overflow_interrupt": "skip",
        "test_fifo.py::test_windows_driver": "skip",
        "test_fifo.py::test_wrap_around": "pass",
        "test_fifo.py::test_timing_margin": "pass",
        "test_metadata.py::test_parity_error": "fail",
        "test_metadata.py::test_coverage": "pass",
    }
    assert metadata(jobs["test_fifo.py::test_wrap_around"]) == {"pytest_outcome": "xfailed"}
    assert metadata(jobs["test_fifo.py::test_timing_margin"]) == {"pytest_outcome": "xpassed"}
    failed = jobs["test_metadata.py::test_parity_error"]
    assert failed["fail_message"].startswith("AssertionError: odd parity on the bus")
    coverage = jobs["test_metadata.py::test_coverage"]
    assert coverage["category"] == "coverage"
    assert metadata(coverage) == {"tool": "verilator", "covered_bins": "118", "total_bins": "120"}

    # Only the controller published: one regression, submitted = every test.
    assert {r["regression"] for r in records} == {"xdist/1"}
    assert submitted(records, "regr-update") == submitted(records, "regr-finish") == len(jobs)
    assert len(jobs) == 14


@pytest.mark.parametrize(
    "mode", [pytest.param((), id="no-xdist"), pytest.param(("-n", "2"), id="n2")]
)
def test_hook(tmp_path: Path, mode: tuple[str, ...]) -> None:
    """conftest.py's pytest_simscope_job changes every job, also from the xdist controller."""
    if mode:
        pytest.importorskip("xdist")
    here = copy_example("hook", tmp_path)
    # A live job for every test, so that the hook is seen changing live jobs too.
    result, records = run_pytest(here, *mode, SIM_BUILD="rtl-cov", SIMSCOPE_LIVE_AFTER="0")
    assert result.returncode == 1, output(result)  # test_dma_burst fails
    assert outcome_line(result.stdout) == "1 failed, 2 passed"
    assert "1 failed, 2 passed" in readme("hook")
    assert "pytest_simscope_job raised" not in result.stdout
    assert_clean(records)

    # Every job, live and finished, got the build; the gate-level test its category.
    every = bodies(records, "job-live") + bodies(records, "job-finish")
    assert len(every) == 6
    assert {job["build"] for job in every} == {"rtl-cov"}
    for job in every:
        gate_level = job["config"].startswith("gate_level/")
        assert job["category"] == ("gate-level" if gate_level else "pytest"), job

    jobs = jobs_by_config(records)
    alu = jobs["test_blocks.py::test_alu_add"]
    assert (alu["result"], alu["cycles"], metadata(alu)) == ("pass", 4200, {
        "seed_file": "alu_add.seed"
    })
    assert "bucket" not in alu
    dma = jobs["test_blocks.py::test_dma_burst"]
    assert (dma["result"], dma["cycles"], dma["bucket"]) == ("fail", 9001, "team-dma")
    assert "cycles" not in metadata(dma)
    netlist = jobs["gate_level/test_netlist.py::test_netlist_reset"]
    assert "cycles" not in netlist and "metadata" not in netlist


# --- the sharded pipeline --------------------------------------------------------------------

SHARDED_REGRESSION = "sharded/ci 1"


def collected_nodeids(here: Path) -> set[str]:
    result = run(here, sys.executable, "-m", "pytest", "--collect-only", "-q")
    assert result.returncode == 0, output(result)
    return {line for line in result.stdout.splitlines() if "::" in line}


def run_pipeline(here: Path, **env: str) -> subprocess.CompletedProcess[str]:
    result = run(
        here, "bash", "run_locally.sh",
        env=example_env(SIMSCOPE_REGRESSION=SHARDED_REGRESSION, **env),
    )
    assert result.returncode == 0, output(result)
    return result


def assert_one_regression_of_every_test(records: list[Record], nodeids: set[str]) -> None:
    """The pipeline's stream: checked, started with submitted = every test, each test once."""
    assert_clean(records)
    assert {r["regression"] for r in records} == {SHARDED_REGRESSION}
    types = [r["type"] for r in records]
    assert types[0] == "regr-start" and types[-1] == "regr-finish"
    assert types.count("regr-start") == types.count("regr-finish") == 1
    assert "regr-update" not in types  # the shards publish jobs only
    jobs = bodies(records, "job-finish")
    assert submitted(records, "regr-start") == len(jobs) == len(nodeids) == 17

    # Every test exactly once, each under the name of the shard that ran it.
    by_shard: dict[str, set[str]] = {}
    for job in jobs:
        shard, _, nodeid = job["uniqueid"].partition(":")
        assert nodeid == job["config"]
        by_shard.setdefault(shard, set()).add(nodeid)
    assert sorted(by_shard) == ["shard-1", "shard-2", "shard-3", "shard-4"]
    assert all(by_shard.values())
    assert Counter(job["config"] for job in jobs) == Counter(nodeids)
    assert Counter(job["result"] for job in jobs) == {"pass": 16, "skip": 1}
    [start] = bodies(records, "regr-start")
    assert (start["project"], start["component"]) == ("alpha", "alpha_soc")


@pytest.mark.parametrize("destination", ["amqp", "http"])
def test_sharded_live(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str, destination: str
) -> None:
    """run_locally.sh with a URL: start, four shards at once and finish, all on the broker."""
    here = copy_example("sharded", tmp_path)
    url = broker.amqp_url if destination == "amqp" else broker.http_publish_url
    result = run_pipeline(here, SIMSCOPE_URL=url, SIMSCOPE_AMQP_QUEUE=broker_queue)
    assert "delivered to" in result.stdout and "offline:" not in result.stdout
    assert f"{broker.user}:{broker.password}@" not in result.stdout + result.stderr
    # Nothing had to be queued.
    assert not list((here / ".pipeline" / "queue" / "outbox").glob("*"))
    assert_one_regression_of_every_test(broker_records(broker_queue), collected_nodeids(here))


def test_sharded_offline_then_drain(
    tmp_path: Path, broker: BrokerInfo, broker_queue: str
) -> None:
    """run_locally.sh without a URL (an empty one, as a CI system sets a missing secret):
    the whole regression lands in one queue, which checks clean and drains in order."""
    here = copy_example("sharded", tmp_path)
    result = run_pipeline(here, SIMSCOPE_URL="")
    assert "offline: the whole regression is in .pipeline/queue" in result.stdout
    assert get_messages(broker_queue) == []

    checked = run(here, "pytest-simscope", "check", ".pipeline/queue")
    assert checked.returncode == 0, output(checked)
    assert "19 messages" in checked.stdout  # regr-start, 17 jobs, regr-finish

    drained = run(
        here, "pytest-simscope", "drain", ".pipeline/queue",
        "--url", broker.amqp_url, "--amqp-queue", broker_queue,
    )
    assert drained.returncode == 0, output(drained)
    assert "nothing left" in drained.stdout
    assert_one_regression_of_every_test(broker_records(broker_queue), collected_nodeids(here))


def test_split_is_a_partition(tmp_path: Path) -> None:
    """The example's --split I/N gives four disjoint parts that cover the suite."""
    here = copy_example("sharded", tmp_path)
    whole = collected_nodeids(here)
    parts = []
    for index in range(1, 5):
        result = run(
            here, sys.executable, "-m", "pytest", "--collect-only", "-q", f"--split={index}/4"
        )
        assert result.returncode == 0, output(result)
        parts.append({line for line in result.stdout.splitlines() if "::" in line})
    assert Counter(n for part in parts for n in part) == Counter(whole)
    assert all(parts)
    counted = run(here, "pytest-simscope", "count")
    assert counted.returncode == 0, output(counted)
    assert int(counted.stdout) == len(whole) == 17
    bad = run(here, sys.executable, "-m", "pytest", "--collect-only", "--split=5/4")
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR
    assert "I must be between 1 and N" in bad.stderr


# --- the CI files ------------------------------------------------------------------------------

SHARDED = EXAMPLES / "sharded"
GITHUB = SHARDED / ".github" / "workflows" / "simscope.yml"
GITLAB = SHARDED / ".gitlab-ci.yml"
LOCAL = SHARDED / "run_locally.sh"

# The commands the CI files run, which run_locally.sh runs too (the test above runs it).
START = 'pytest-simscope regr-start "$SIMSCOPE_REGRESSION" --submitted "$(pytest-simscope count)"'
FINISH = 'pytest-simscope regr-finish "$SIMSCOPE_REGRESSION"'
ACCEPT_QUEUED = "|| [ $? -eq 1 ]"


def _joined(path: Path) -> str:
    """The file with shell line continuations joined and runs of blanks made one."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    return re.sub(r"[ \t]+", " ", text)


@pytest.mark.parametrize("path", [GITHUB, GITLAB, LOCAL], ids=["github", "gitlab", "local"])
def test_ci_files_run_the_same_steps(path: Path) -> None:
    text = _joined(path)
    assert f"{START} {ACCEPT_QUEUED}" in text
    assert "--simscope-shard=" in text and "--split=" in text
    assert "pytest-simscope drain " in text
    assert f"{FINISH} {ACCEPT_QUEUED}" in text
    # The drain of what was queued comes before the regression is closed.
    assert text.index("pytest-simscope drain ") < text.index(FINISH)
    assert text.index(START) < text.index("--simscope-shard=")


def test_ci_files_structure() -> None:
    """Four shards between a start and a finish that runs even when a shard failed."""
    yaml = pytest.importorskip("yaml")
    github = yaml.safe_load(GITHUB.read_text(encoding="utf-8"))
    jobs = github["jobs"]
    assert list(jobs) == ["start", "shard", "finish"]
    assert jobs["shard"]["needs"] == "start"
    assert jobs["shard"]["strategy"]["matrix"]["shard"] == [1, 2, 3, 4]
    assert jobs["shard"]["strategy"]["fail-fast"] is False
    assert jobs["finish"]["needs"] == ["start", "shard"]
    assert jobs["finish"]["if"] == "always()"
    steps = jobs["finish"]["steps"]
    download = next(s for s in steps if s.get("uses", "").startswith("actions/download-artifact"))
    assert download["with"]["merge-multiple"] is True
    for name in ("start", "shard"):
        uploads = [s for s in jobs[name]["steps"] if "upload-artifact" in s.get("uses", "")]
        assert uploads and uploads[0]["if"] == "always()"
        assert uploads[0]["with"]["include-hidden-files"] is True

    gitlab = yaml.safe_load(GITLAB.read_text(encoding="utf-8"))
    assert gitlab["stages"] == ["start", "test", "finish"]
    assert gitlab["test"]["parallel"] == 4
    assert gitlab["test"]["dependencies"] == []
    assert gitlab["simscope-finish"]["when"] == "always"
    assert gitlab[".keep-queue"]["artifacts"]["when"] == "always"
    for name in ("simscope-start", "test", "simscope-finish"):
        assert gitlab[name]["extends"] == ".keep-queue"
    assert json.dumps(gitlab).count("--simscope-shard") == 1
