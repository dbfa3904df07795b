"""One regression across many machines: four pytest processes run at once as shards of one
40-test suite, between ``pytest-simscope regr-start`` and ``regr-finish``, into one
regression on the real broker; live over AMQP, and through a shared offline queue that
``pytest-simscope drain`` delivers afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from brokerlib import BrokerInfo, get_messages
from test_drain import flatten

from pytest_simscope.check import check_records

REGRESSION = "ci/shards 17"
SHARDS = ("s1", "s2", "s3", "s4")
QUIET = ("-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:anyio",
         "-p", "no:randomly", "-p", "no:cacheprovider")
CI_VARS = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "JENKINS_HOME")

# Ten tests per shard: eight pass, one fails, one is skipped.
SHARD_FILE = """
import pytest

@pytest.mark.parametrize("i", range(8))
def test_pass(i):
    pass

def test_fail():
    assert 1 + 1 == 3

@pytest.mark.skip(reason="not on this platform")
def test_skip():
    pass
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SIMSCOPE_", "PYTEST_")) and k not in CI_VARS}


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_simscope.cli", *args],
                          capture_output=True, text=True, cwd=cwd, env=_env(), timeout=120)


@pytest.mark.parametrize("route", ["amqp", "offline-then-drain"])
def test_four_shards_fill_one_regression(
    pytester: pytest.Pytester, broker: BrokerInfo, broker_queue: str, route: str
) -> None:
    for shard in SHARDS:
        pytester.makepyfile(**{f"test_{shard}": SHARD_FILE})
    here = pytester.path
    queue_dir = here / "shared-queue"
    if route == "amqp":
        destination = ["--url", broker.amqp_url, "--amqp-queue", broker_queue]
        plugin_destination = [f"--simscope-url={broker.amqp_url}",
                              f"--simscope-amqp-queue={broker_queue}"]
    else:
        destination = ["--queue-dir", str(queue_dir)]
        plugin_destination = [f"--simscope-queue-dir={queue_dir}"]

    counted = cli(here, "count", *QUIET)
    assert counted.returncode == 0, counted.stderr
    submitted = int(counted.stdout)
    assert submitted == 40

    started = cli(here, "regr-start", REGRESSION, "--submitted", str(submitted),
                  "--project", "shards", *destination)
    assert started.returncode == 0, started.stderr

    shards = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", f"test_{shard}.py", *QUIET,
             f"--simscope-regression={REGRESSION}", f"--simscope-shard={shard}",
             *plugin_destination],
            cwd=here, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for shard in SHARDS
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in shards]
    for proc, output in zip(shards, outputs, strict=True):
        assert proc.returncode == 1, output  # one failing test per shard
        assert "8 passed, 1 skipped" in output and "1 failed" in output

    finished = cli(here, "regr-finish", REGRESSION, "--submitted", str(submitted),
                   *destination)
    assert finished.returncode == 0, finished.stderr

    if route != "amqp":
        checked = cli(here, "check", str(queue_dir))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        drained = cli(here, "drain", str(queue_dir), "--url", broker.amqp_url,
                      "--amqp-queue", broker_queue)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert not any((queue_dir / "outbox").iterdir())

    records = flatten(get_messages(broker_queue))
    assert {r["regression"] for r in records} == {REGRESSION}
    assert records[0]["type"] == "regr-start"
    assert records[0]["body"]["submitted"] == 40
    assert records[-1]["type"] == "regr-finish"
    assert [r["type"] for r in records].count("regr-start") == 1
    assert [r["type"] for r in records].count("regr-finish") == 1
    assert not [r for r in records if r["type"] == "regr-update"]

    jobs = [r["body"] for r in records if r["type"] == "job-finish"]
    # Every test exactly once, namespaced by its shard.
    expected = {
        f"{shard}:test_{shard}.py::{name}"
        for shard in SHARDS
        for name in [f"test_pass[{i}]" for i in range(8)] + ["test_fail", "test_skip"]
    }
    uniqueids = Counter(job["uniqueid"] for job in jobs)
    assert set(uniqueids) == expected and set(uniqueids.values()) == {1}
    assert len({job["start_time"] for job in jobs}) == len(jobs)
    assert Counter(job["result"] for job in jobs) == {"pass": 32, "fail": 4, "skip": 4}
    assert records[-1]["body"]["submitted"] == len(jobs) == 40
    assert check_records(records) == []
