"""The README is true: its runnable shell blocks run, and it lists every warning.

**Runnable blocks.**  A fenced block is runnable when the line just before its opening
fence is exactly ``<!-- runnable -->`` (an HTML comment, which GitHub does not show) and
the fence opens with ```` ```sh ````.  ``test_readme_runs`` follows them as a new user
would: in README order, in one bash shell (so ``. .venv/bin/activate`` in one block holds
for the next ones), each block starting in the top folder of a fresh copy of the checkout
(the README says every block runs from there), stopping at the first failing command.  The
shell has the variables the README asks the reader to set, pointing at the local RabbitMQ:
``AMQP_URL`` and ``HTTP_URL`` (without credentials), ``SIMSCOPE_USERNAME``,
``SIMSCOPE_PASSWORD`` and ``QUEUE`` (a fresh queue); and a stand-in ``simscope-tunnel`` on
``PATH`` that writes each message it is given to a JSON-lines file.  Afterwards the test
reads back what the blocks published (the broker queue, the stand-in's file) and checks it.

**Warnings.**  ``test_every_message_is_in_troubleshooting`` reads the package's source for
the messages the plugin and the command can print and checks that the literal text of each
appears in the README's Troubleshooting section.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from brokerlib import BrokerInfo, get_messages

from pytest_simscope.check import check_records, load_jsonl

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARK = "<!-- runnable -->"
# Creating a virtual environment and installing the checkout into it (twice: the demo
# script and the quick start) dominates; pip finds the packages in its cache.
TIMEOUT = 300

_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str


def runnable_blocks(text: str) -> list[Block]:
    """The README's runnable shell blocks, in order."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        if before.strip() != MARK:
            continue
        line = text.count("\n", 0, match.start()) + 1
        assert match["info"].strip() == "sh", f"README.md:{line}: a runnable block must be sh"
        blocks.append(Block(line, match["code"]))
    return blocks


def test_runnable_blocks_are_found() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = runnable_blocks(text)
    # Every marker is followed by a block it applies to.
    assert len(blocks) == text.splitlines().count(MARK)
    joined = "\n".join(block.code for block in blocks)
    for step in (
        "bash scripts/demo.sh",
        ". .venv/bin/activate",
        "pytest examples/minimal",
        '--simscope-url="$AMQP_URL"',
        '--simscope-url="$HTTP_URL"',
        "--simscope-url=tunnel:",
        "pytest-simscope drain ",
        "pytest-simscope regr-start ",
        "--simscope-shard=",
        "pytest-simscope regr-finish ",
    ):
        assert step in joined, step
    assert runnable_blocks(f"{MARK}\n```sh\necho hi\n```\n\n```sh\necho no\n```\n") == [
        Block(2, "echo hi\n")
    ]


# --- running them --------------------------------------------------------------------------

TUNNEL_STUB = """\
#!{python}
# A stand-in for the vendor's simscope-tunnel: appends the message it was given to
# $TUNNEL_LOG as a record ({{"type", "regression", "body"}}).
import json, os, sys

args = sys.argv[1:]
message_type = args[args.index("--publish") + 1]
regression = next(a.partition("=")[2] for a in args if a.startswith("--regression="))
config = next(a.partition("=")[2] for a in args if a.startswith("--config="))
with open(args[-1], encoding="utf-8") as body_file:
    body = json.load(body_file)
record = {{"type": message_type, "regression": regression, "body": body, "config": config}}
with open(os.environ["TUNNEL_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(record) + "\\n")
"""

# What the blocks publish, by regression name: see the blocks in README.md.
LIVE = {"nightly/42": 3, "nightly/43": 3, "nightly/45": 17, "minimal/1": 3}
TUNNEL = {"nightly/44": 3}


def copy_checkout(dest: Path) -> Path:
    """The files of the checkout as a clone would have them (tracked and new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode("utf-8", "surrogateescape")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not there
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def new_user_env(tmp: Path, broker: BrokerInfo, queue: str) -> dict[str, str]:
    """The environment of someone new to the project, plus the README's variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SIMSCOPE_", "PYTEST_", "PIP_REQUIRE", "VIRTUAL_ENV"))
        and name not in ("PYTHONPATH", "PYTHONHOME", "GITHUB_ACTIONS", "GITLAB_CI", "CI")
    }
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "simscope-tunnel"
    stub.write_text(TUNNEL_STUB.format(python=sys.executable), encoding="utf-8")
    stub.chmod(0o755)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if sys.prefix != sys.base_prefix:  # the test runs in a virtual environment: not theirs
        path = [p for p in path if Path(p) != Path(sys.executable).parent]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    host = "127.0.0.1"
    env.update(
        AMQP_URL=f"amqp://{host}:5672/%2F",
        HTTP_URL=f"http://{host}:15672",
        SIMSCOPE_USERNAME=broker.user,
        SIMSCOPE_PASSWORD=broker.password,
        QUEUE=queue,
        TUNNEL_LOG=str(tmp / "tunnel.jsonl"),
    )
    return env


def script(blocks: list[Block], root: Path) -> str:
    lines = ["set -eo pipefail", f"ROOT={json.dumps(str(root))}"]
    for number, block in enumerate(blocks, start=1):
        lines += [
            'cd "$ROOT"',
            f"echo '### runnable block {number}, README.md line {block.line}'",
            block.code.rstrip("\n"),
        ]
    # The blocks used what they installed, not a pytest-simscope from elsewhere.
    lines += [
        'cd "$ROOT"',
        "echo '### checks'",
        'test "$(command -v pytest-simscope)" = "$ROOT/.venv/bin/pytest-simscope"',
        'python -c "import pytest_simscope, sys; print(pytest_simscope.__file__)"'
        ' | grep -q "^$ROOT/"',
    ]
    return "\n".join(lines) + "\n"


def by_regression(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["regression"]].append(record)
    return dict(grouped)


def finished_jobs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for record in records:
        if record["type"] == "job-finish":
            jobs.append(record["body"])
        elif record["type"] == "batch-job-finish":
            jobs.extend(record["body"])
    return jobs


def assert_clean(records: list[dict[str, Any]]) -> None:
    problems = check_records(records)
    assert problems == [], "\n".join(str(p) for p in problems)


def test_readme_runs(tmp_path: Path, broker: BrokerInfo, broker_queue: str) -> None:
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    root = copy_checkout(tmp_path / "checkout")
    env = new_user_env(tmp_path, broker, broker_queue)
    try:
        result = subprocess.run(
            ["bash", "-c", script(blocks, root)],
            cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the README's blocks took more than {TIMEOUT} s:\n{exc.stdout!r}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, _last_block(result.stdout) + "\n" + out[-6000:]
    assert f":{broker.password}@" not in out

    # The demo and the quick start queued their runs; the quick start's is drained below.
    assert "The offline queue (one folder per job, SYS_19 layout):" in out
    assert "simscope: 3 jobs (2 pass, 0 fail, 1 skip) of minimal/1 queued in " in out
    assert "check: 6 messages in examples/minimal/.simscope/queue: no problems" in out
    for name in ("nightly/42", "nightly/43", "nightly/44"):
        assert f"simscope: 3 jobs (2 pass, 0 fail, 1 skip) of {name} published: 6 messages" in out

    # What went to the broker: the live runs, the shards and the drained queue.
    records = [
        {"type": m.type, "regression": m.correlation_id, "body": m.json()}
        for m in get_messages(broker_queue)
    ]
    assert_clean(records)
    grouped = by_regression(records)
    assert {name: len(finished_jobs(r)) for name, r in grouped.items()} == LIVE
    for name, stream in grouped.items():
        types = [r["type"] for r in stream]
        assert (types[0], types[-1]) == ("regr-start", "regr-finish"), name
    shards = Counter(job["uniqueid"].partition(":")[0] for job in
                     finished_jobs(grouped["nightly/45"]))
    assert sorted(shards) == ["shard-1", "shard-2", "shard-3", "shard-4"]
    assert shards.total() == 17
    [start] = [r["body"] for r in grouped["nightly/45"] if r["type"] == "regr-start"]
    assert start["submitted"] == 17

    # What went through the stand-in tunnel command.
    tunnel, problems = load_jsonl(Path(env["TUNNEL_LOG"]))
    assert problems == []
    assert {r.pop("config") for r in tunnel} == {"/etc/simscope-tunnel.conf"}
    assert_clean(tunnel)
    grouped = by_regression(tunnel)
    assert {name: len(finished_jobs(r)) for name, r in grouped.items()} == TUNNEL

    # The drain archived what it delivered.
    queue = root / "examples" / "minimal" / ".simscope" / "queue"
    assert not list((queue / "outbox").iterdir())
    assert list((queue / "archive").iterdir())


def _last_block(stdout: str) -> str:
    markers = [line for line in stdout.splitlines() if line.startswith("### ")]
    return f"failed in {markers[-1][4:]}" if markers else "failed before the first block"


# --- the warnings ----------------------------------------------------------------------------


def _fragments(node: ast.expr) -> list[str] | None:
    """The literal pieces of a message built as a str or f-string; None if it is not one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [
            value.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str)
            else "\0"
            for value in node.values
        ]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fragments(node.left), _fragments(node.right)
        return None if left is None or right is None else left + right
    return None


def messages() -> Iterator[tuple[str, list[str]]]:
    """(where, literal fragments) of each message the plugin and the command print.

    The messages are: the publisher's and reporter's warnings (``_note``), the plugin's
    early warnings, summary lines and failures, and the command's ``_err`` lines.
    """
    for path in sorted((REPO / "pytest_simscope").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Call, ast.Assign)):
                continue
            value: ast.expr | None = None
            if isinstance(node, ast.Call) and node.args:
                func = ast.unparse(node.func)
                first = _fragments(node.args[0])
                if (
                    func.endswith(("._note", "._early_warnings.append"))
                    or func == "_err"
                    or (func.endswith(".append") and first and first[0].startswith("simscope:"))
                ):
                    value = node.args[0]
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = ast.unparse(node.targets[0])
                first = _fragments(node.value)
                if target == "self._failure" or (
                    target == "line" and first and first[0].startswith("simscope:")
                ):
                    value = node.value
            if value is None:
                continue
            pieces = _fragments(value)
            if pieces is None:
                continue
            text = "".join(pieces)
            fragments = [p.strip() for p in text.split("\0") if len(p.strip(" :;,.()")) >= 4]
            if fragments:
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                yield where, fragments


def troubleshooting() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Troubleshooting\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_message_is_in_troubleshooting() -> None:
    section = troubleshooting()
    found = list(messages())
    assert len(found) >= 25, found  # the extraction still sees the messages
    missing = [
        f"{where}: {fragment!r}"
        for where, fragments in found
        for fragment in fragments
        if fragment not in section
    ]
    assert missing == [], "not in the README's Troubleshooting:\n" + "\n".join(missing)


def test_build_and_install(tmp_path: Path) -> None:
    """The README's release check: ``scripts/check_build.sh`` builds the wheel and the sdist,
    installs each into a fresh virtual environment and smoke-runs it (about 30 s; PyPI for
    the build backend and the dependencies, from pip's cache once fetched)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIMSCOPE_", "PYTEST_", "VIRTUAL_ENV"))}
    env.update(PYTHON=sys.executable, DIST_DIR=str(tmp_path))
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "check_build.sh")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "the wheel and the sdist build, install and pass the smoke run" in result.stdout
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".gz", ".whl"]

# --- credentials as the README's first version put them --------------------------------------


def test_password_from_the_environment_joins_a_user_in_the_url() -> None:
    from pytest_simscope.transports.network import with_credentials

    assert (
        with_credentials("amqp://ci@rabbit.example.com:5672/%2F", None, "s3cret")
        == "amqp://ci:s3cret@rabbit.example.com:5672/%2F"
    )
