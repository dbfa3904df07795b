"""Settings: precedence, sources, every ini file kind, bad values and secrets.

Unit tests call :func:`pytest_simscope.settings.resolve` directly; the rest run pytest with
``pytester`` and read what the ``-v`` header says (every setting, its value and its source),
what pytest printed for a bad value, and what the run wrote.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_simscope.check import check_records
from pytest_simscope.ci import CiDefaults, detect_ci
from pytest_simscope.errors import SettingsError
from pytest_simscope.identity import StartClock
from pytest_simscope.models import local_time, rfc3339
from pytest_simscope.settings import SPEC_BY_NAME, SPECS, Settings, resolve
from pytest_simscope.timestamps import parse_rfc3339

CI_MARKERS = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "JENKINS_HOME")
USAGE_ERROR = pytest.ExitCode.USAGE_ERROR
A_TEST = "def test_one():\n    open('test-ran', 'w').close()\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SIMSCOPE_* variable and no CI system from the machine running these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("SIMSCOPE_") or name in CI_MARKERS:
            monkeypatch.delenv(name)


# --- resolve(): the precedence table ----------------------------------------------------

LEVELS = ("flag", "env", "ini", "ci", "default")
GITHUB = CiDefaults(
    system="GitHub Actions",
    values={"model_version": "c1c1c1", "model_branch": "ci-branch"},
    origins={"model_version": "GITHUB_SHA", "model_branch": "GITHUB_REF_NAME"},
)

# setting -> the raw value each level gives, and what each resolves to.  A level's value
# differs from every lower level's, so the winner is visible.  CI defaults exist only for
# model_version and model_branch.
TABLE: dict[str, dict[str, tuple[Any, Any]]] = {
    "category": {
        "flag": ("from-flag", "from-flag"),
        "env": ("from-env", "from-env"),
        "ini": ("from-ini", "from-ini"),
        "default": (None, "pytest"),
    },
    "fail_message_limit": {
        "flag": ("300", 300),
        "env": ("400", 400),
        "ini": ("500", 500),
        "default": (None, 20000),
    },
    "testgroup": {
        "flag": ("class", "class"),
        "env": ("dir", "dir"),
        "ini": ("none", "none"),
        "default": (None, "file"),
    },
    "timeout": {
        "flag": ("1.5", 1.5),
        "env": ("2.5", 2.5),
        "ini": ("3.5", 3.5),
        "default": (None, 10.0),
    },
    "metadata": {
        "flag": (["a=1", "b=2"], (("a", "1"), ("b", "2"))),
        "env": ("c=3,d=4", (("c", "3"), ("d", "4"))),
        "ini": (["e=5"], (("e", "5"),)),
        "default": (None, ()),
    },
    "model_version": {
        "flag": ("f1f1f1", "f1f1f1"),
        "env": ("e1e1e1", "e1e1e1"),
        "ini": ("a1a1a1", "a1a1a1"),
        "ci": (None, "c1c1c1"),
        "default": (None, None),
    },
    "model_branch": {
        "flag": ("flag-branch", "flag-branch"),
        "env": ("env-branch", "env-branch"),
        "ini": ("ini-branch", "ini-branch"),
        "ci": (None, "ci-branch"),
        "default": (None, None),
    },
}


def expected_source(name: str, level: str, ini_path: str = "/x/pytest.ini") -> str:
    spec = SPEC_BY_NAME[name]
    return {
        "flag": f"command line {spec.flag}",
        "env": f"environment variable {spec.env}",
        "ini": f"ini key {spec.ini} in {ini_path}",
        "ci": f"CI default (GitHub Actions: {GITHUB.origins.get(name)})",
        "default": "default",
    }[level]


PRECEDENCE = [
    pytest.param(name, level, id=f"{name}-{level}")
    for name, levels in TABLE.items()
    for level in levels
]


@pytest.mark.parametrize(("name", "winner"), PRECEDENCE)
def test_precedence(name: str, winner: str) -> None:
    """The winner's value is used when it and every lower level give one."""
    spec = SPEC_BY_NAME[name]
    levels = TABLE[name]
    given = LEVELS[LEVELS.index(winner) :]
    cli = {name: levels["flag"][0]} if "flag" in given else {}
    env = {spec.env: levels["env"][0]} if "env" in given else {}
    ini = {name: levels["ini"][0]} if "ini" in given else {}
    ci = GITHUB if "ci" in given else CiDefaults()
    resolved = resolve(cli=cli, env=env, ini=ini, ini_path="/x/pytest.ini", ci=ci)
    assert getattr(resolved.settings, name) == levels[winner][1]
    assert resolved.sources[name] == expected_source(name, winner)


@pytest.mark.parametrize(
    ("flag", "env", "ini", "expected", "source"),
    [
        ("true", "false", "false", True, "command line --simscope-strict"),
        ("false", "true", None, False, "command line --simscope-strict"),
        (None, "yes", "off", True, "environment variable SIMSCOPE_STRICT"),
        (None, "0", "on", False, "environment variable SIMSCOPE_STRICT"),
        (None, None, "1", True, "ini key simscope_strict in /x/tox.ini"),
        (None, None, None, False, "default"),
    ],
)
def test_bool_precedence(
    flag: str | None, env: str | None, ini: str | None, expected: bool, source: str
) -> None:
    resolved = resolve(
        cli={"strict": flag},
        env={"SIMSCOPE_STRICT": env} if env is not None else {},
        ini={"strict": ini},
        ini_path="/x/tox.ini",
    )
    assert resolved.settings.strict is expected
    assert resolved.sources["strict"] == source


def test_empty_values_do_not_count() -> None:
    """An empty flag, variable or ini value falls through to the next source."""
    resolved = resolve(
        cli={"category": ""},
        env={"SIMSCOPE_CATEGORY": "  "},
        ini={"category": "from-ini"},
        ini_path="/x/setup.cfg",
    )
    assert resolved.settings.category == "from-ini"
    assert resolved.sources["category"] == "ini key simscope_category in /x/setup.cfg"


def test_secrets_come_from_the_environment_only() -> None:
    resolved = resolve(
        cli={"password": "from-flag", "username": "flag-user"},
        env={},
        ini={"password": "from-ini", "username": "ini-user"},
    )
    assert resolved.settings.password is None
    assert resolved.settings.username is None
    resolved = resolve(
        cli={}, env={"SIMSCOPE_PASSWORD": " p@ss word ", "SIMSCOPE_USERNAME": "me"}, ini={}
    )
    # A password is taken exactly as given: its spaces may be part of it.
    assert resolved.settings.password == " p@ss word "
    assert resolved.settings.username == "me"
    assert resolved.sources["password"] == "environment variable SIMSCOPE_PASSWORD"


def test_every_setting_has_a_source_and_defaults_validate() -> None:
    resolved = resolve(cli={}, env={}, ini={})
    assert set(resolved.sources) == {spec.name for spec in SPECS}
    assert set(resolved.sources.values()) == {"default"}
    for spec in SPECS:
        assert getattr(resolved.settings, spec.name) == (
            spec.default if spec.default != () else ()
        ), spec.name


def test_resolved_settings_are_frozen() -> None:
    settings = resolve(cli={}, env={}, ini={}).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.category = "other"


def test_settings_are_a_value_that_takes_only_known_names() -> None:
    """Settings is a plain class (cheaper to import than a dataclass): equal values compare
    and hash equal, nothing can be set or deleted, and an unknown name is refused."""
    first = resolve(cli={"regression": "r/1"}, env={}, ini={}).settings
    again = resolve(cli={"regression": "r/1"}, env={}, ini={}).settings
    other = resolve(cli={"regression": "r/2"}, env={}, ini={}).settings
    assert first == again and hash(first) == hash(again)
    assert first != other
    assert set(first.as_dict()) == {spec.name for spec in SPECS} == set(Settings.__annotations__)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del first.category
    with pytest.raises(TypeError, match="unknown settings: bogus"):
        Settings(bogus=1)


def test_the_repr_of_settings_masks_their_secrets() -> None:
    """A traceback that shows locals (``pytest -l``, an internal error) prints reprs: the
    broker password, in the URL or on its own, never appears there."""
    resolved = resolve(
        cli={"regression": "r/1", "url": "amqps://ci:url-secret@broker:5671/prod"},
        env={"SIMSCOPE_PASSWORD": "env-secret"},
        ini={},
    )
    for text in (repr(resolved), repr(resolved.settings), str(resolved.settings)):
        assert "url-secret" not in text and "env-secret" not in text
        assert "amqps://ci:***@broker:5671/prod" in text
        assert "password='***'" in text
    assert resolved.settings.url == "amqps://ci:url-secret@broker:5671/prod"
    assert resolved.settings.password == "env-secret"


# --- pairs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"a": "1", "b": "x=y"}', (("a", "1"), ("b", "x=y"))),
        ('  {"n": 3, "flag": true, "none": null}',
         (("n", "3"), ("flag", "true"), ("none", "null"))),
        ("a=1,b=2", (("a", "1"), ("b", "2"))),
        ("a=1, b = 2 ,", (("a", "1"), ("b", "2"))),
        ("a=1\nb=2,3\n", (("a", "1"), ("b", "2,3"))),
        ("url=http://h/?q=1", (("url", "http://h/?q=1"),)),
        ("empty=", (("empty", ""),)),
    ],
    ids=["json", "json-non-strings", "comma", "comma-spaces", "newline", "equals-in-value",
         "empty-value"],
)
def test_metadata_from_the_environment(raw: str, expected: tuple[tuple[str, str], ...]) -> None:
    resolved = resolve(cli={}, env={"SIMSCOPE_METADATA": raw}, ini={})
    assert resolved.settings.metadata == expected


def test_metadata_flag_values_keep_commas() -> None:
    """On the command line each flag is one pair: a comma belongs to the value."""
    resolved = resolve(cli={"metadata": ["a=1,2", "b=3"]}, env={}, ini={})
    assert resolved.settings.metadata == (("a", "1,2"), ("b", "3"))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ('{"a": 1', "is not valid JSON"),
        ('{"a": 1', "SIMSCOPE_METADATA"),
        ("novalue", "'novalue' is not KEY=VALUE"),
        ("=1", "'=1' is not KEY=VALUE"),
    ],
)
def test_bad_metadata(raw: str, why: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(why)):
        resolve(cli={}, env={"SIMSCOPE_METADATA": raw}, ini={})


# --- bad values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "env", "ini", "message"),
    [
        ({"fail_message_limit": "abc"}, {}, {},
         "bad value for --simscope-fail-message-limit from command line "
         "--simscope-fail-message-limit: 'abc' is not a whole number"),
        ({"fail_message_limit": "1_000"}, {}, {}, "'1_000' is not a whole number"),
        ({"fail_message_limit": "199"}, {}, {}, "199 is below the minimum of 200"),
        ({}, {"SIMSCOPE_SKIPS": "maybe"}, {},
         "bad value for --simscope-skips from environment variable SIMSCOPE_SKIPS: "
         "'maybe' is not one of publish, omit"),
        ({}, {}, {"batch_size": "0"},
         "bad value for --simscope-batch-size from ini key simscope_batch_size in "
         "/x/pytest.ini: 0 is below the minimum of 1"),
        ({}, {"SIMSCOPE_TIMEOUT": "nan"}, {}, "'nan' is not a finite number"),
        ({}, {"SIMSCOPE_HEARTBEAT": "-1"}, {}, "-1 is below the minimum of 0"),
        ({"strict": "maybe"}, {}, {}, "'maybe' is not a boolean (use true or false)"),
        ({"url": "ftp://host/"}, {}, {},
         "bad value for --simscope-url from command line --simscope-url: the URL must start "
         "with amqp://, amqps://, http://, https:// or tunnel:"),
        ({"url": "amqp://"}, {}, {}, "it names no host"),
        ({}, {}, {"model_timestamp": "2025-01-01 10:00:00Z"},
         "bad value for --simscope-model-timestamp from ini key simscope_model_timestamp in "
         "/x/pytest.ini: '2025-01-01 10:00:00Z' is not an RFC 3339 timestamp"),
        ({}, {"SIMSCOPE_MODEL_TIMESTAMP": "2025-01-01t10:00:00z"}, {}, "is not an RFC 3339"),
        ({"regression": "a\x1bb"}, {}, {}, "control characters are not allowed"),
    ],
)
def test_bad_value_names_setting_and_source(
    cli: dict[str, Any], env: dict[str, str], ini: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(cli=cli, env=env, ini=ini, ini_path="/x/pytest.ini")
    assert message in str(info.value)


def test_a_bad_value_lower_down_is_not_read() -> None:
    """Only the winning source is validated: a flag overrides a broken ini value."""
    resolved = resolve(cli={"batch_size": "5"}, env={}, ini={"batch_size": "zero"})
    assert resolved.settings.batch_size == 5


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:Sup3rS3cret@host/",
        "amqp://user:Sup3rS3cret@host:notaport/",
        "amqp://user:Sup3rS3cret@[::1/",
        "user:Sup3rS3cret@host",
        "amqp://user:Sup3rS3cret@host/\x00",
    ],
)
@pytest.mark.parametrize("where", ["flag", "env", "ini"])
def test_a_bad_url_never_shows_its_password(url: str, where: str) -> None:
    cli = {"url": url} if where == "flag" else {}
    env = {"SIMSCOPE_URL": url} if where == "env" else {}
    ini = {"url": url} if where == "ini" else {}
    with pytest.raises(SettingsError) as info:
        resolve(cli=cli, env=env, ini=ini, ini_path="/x/pytest.ini")
    text = str(info.value)
    assert "Sup3rS3cret" not in text
    assert text.startswith("bad value for --simscope-url from ")


# --- CI defaults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "system", "version", "branch", "metadata"),
    [
        (
            {"GITHUB_ACTIONS": "true", "GITHUB_SHA": "abc", "GITHUB_REF_NAME": "main",
             "GITHUB_HEAD_REF": "", "GITHUB_RUN_NUMBER": "7",
             "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r",
             "GITHUB_RUN_ID": "99"},
            "GitHub Actions", ("GITHUB_SHA", "abc"), ("GITHUB_REF_NAME", "main"),
            [("ci_system", "GitHub Actions"),
             ("ci_build_url", "https://github.com/o/r/actions/runs/99"),
             ("ci_build_number", "7")],
        ),
        (
            {"GITHUB_ACTIONS": "true", "GITHUB_SHA": "abc", "GITHUB_REF_NAME": "1/merge",
             "GITHUB_HEAD_REF": "feature"},
            "GitHub Actions", ("GITHUB_SHA", "abc"), ("GITHUB_HEAD_REF", "feature"),
            [("ci_system", "GitHub Actions")],
        ),
        (
            {"GITLAB_CI": "true", "CI_COMMIT_SHA": "def", "CI_COMMIT_REF_NAME": "dev",
             "CI_PIPELINE_IID": "12", "CI_JOB_URL": "https://gl/job/3"},
            "GitLab CI", ("CI_COMMIT_SHA", "def"), ("CI_COMMIT_REF_NAME", "dev"),
            [("ci_system", "GitLab CI"), ("ci_build_url", "https://gl/job/3"),
             ("ci_build_number", "12")],
        ),
        (
            {"JENKINS_URL": "https://j/", "GIT_COMMIT": "123", "BRANCH_NAME": "rel",
             "BUILD_NUMBER": "5", "BUILD_URL": "https://j/job/5/"},
            "Jenkins", ("GIT_COMMIT", "123"), ("BRANCH_NAME", "rel"),
            [("ci_system", "Jenkins"), ("ci_build_url", "https://j/job/5/"),
             ("ci_build_number", "5")],
        ),
        (
            {"BUILDKITE": "true", "BUILDKITE_COMMIT": "bk1", "BUILDKITE_BRANCH": "b",
             "BUILDKITE_BUILD_NUMBER": "8", "BUILDKITE_BUILD_URL": "https://bk/8"},
            "Buildkite", ("BUILDKITE_COMMIT", "bk1"), ("BUILDKITE_BRANCH", "b"),
            [("ci_system", "Buildkite"), ("ci_build_url", "https://bk/8"),
             ("ci_build_number", "8")],
        ),
    ],
    ids=["github", "github-pr", "gitlab", "jenkins", "buildkite"],
)
def test_ci_defaults(
    env: dict[str, str],
    system: str,
    version: tuple[str, str],
    branch: tuple[str, str],
    metadata: list[tuple[str, str]],
) -> None:
    ci = detect_ci(env)
    assert ci.system == system
    assert ci.values == {"model_version": version[1], "model_branch": branch[1]}
    assert ci.origins == {"model_version": version[0], "model_branch": branch[0]}
    assert ci.metadata == metadata
    resolved = resolve(cli={}, env=env, ini={}, ci=ci)
    assert resolved.settings.model_version == version[1]
    assert resolved.sources["model_version"] == f"CI default ({system}: {version[0]})"


def test_no_ci() -> None:
    assert detect_ci({"CI": "true", "GITHUB_ACTIONS": "false"}) == CiDefaults()


# --- timestamps ----------------------------------------------------------------------------


def check_accepts(stamp: str) -> bool:
    """Whether the protocol checker takes *stamp* as a model_timestamp."""
    record = {
        "type": "regr-start",
        "regression": "r",
        "body": {"name": "r", "pending": True, "starttime": "9000-01-01T00:00:00Z",
                 "model_timestamp": stamp},
    }
    problems = check_records([record], require_start_finish=False)
    return not [p for p in problems if "model_timestamp" in str(p)]


STAMPS = [
    "2025-02-01T02:00:11.123-05:00",
    "2025-02-01T02:00:11Z",
    "2025-02-01T02:00:11.123456789+00:00",
    "2025-02-01t02:00:11Z",
    "2025-02-01T02:00:11z",
    "2025-02-01 02:00:11Z",
    "2025-02-01T02:00:11",
    "2025-02-01T02:00:11+0500",
    "2025-02-30T02:00:11Z",
    "2025-02-01T24:00:00Z",
    "2025-02-01T02:00:11+05:30:15",
    "2025-02-01T02:00:11Z\n",
    "\uff12\uff10\uff12\uff15-02-01T02:00:11Z",  # full-width digits
    "",
]


@pytest.mark.parametrize("stamp", STAMPS)
def test_parse_rfc3339_agrees_with_the_checker(stamp: str) -> None:
    assert (parse_rfc3339(stamp) is not None) == check_accepts(stamp)


def test_parse_rfc3339_upper_case_only() -> None:
    assert parse_rfc3339("2025-02-01T02:00:11Z") == dt.datetime(
        2025, 2, 1, 2, 0, 11, tzinfo=dt.timezone.utc
    )
    assert parse_rfc3339("2025-02-01t02:00:11Z") is None
    assert parse_rfc3339("2025-02-01T02:00:11z") is None
    assert parse_rfc3339("2025-02-01T02:00:11.1234567-01:30") == dt.datetime(
        2025, 2, 1, 2, 0, 11, 123456, tzinfo=dt.timezone(-dt.timedelta(hours=1, minutes=30))
    )


@pytest.fixture
def timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the process's local time zone (POSIX only); restored afterwards."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset needs a POSIX system")

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/St_Johns", "Asia/Kolkata", "UTC"])
def test_published_timestamps_are_rfc3339_in_a_normal_zone(timezone: Any, zone: str) -> None:
    timezone(zone)
    now = time.time()
    for stamp in (rfc3339(local_time(now)), rfc3339(StartClock().claim(now))):
        assert check_accepts(stamp), stamp
        assert parse_rfc3339(stamp) is not None
        assert re.fullmatch(r".*T.*\.[0-9]{6}(Z|[+-][0-9]{2}:[0-9]{2})", stamp), stamp


def test_start_clock_avoids_offsets_with_seconds(timezone: Any) -> None:
    """Amsterdam was UTC+00:19:32 in 1930; RFC 3339 cannot write that offset."""
    timezone("Europe/Amsterdam")
    epoch = dt.datetime(1930, 6, 1, tzinfo=dt.timezone.utc).timestamp()
    moment = StartClock().claim(epoch)
    assert moment.timestamp() == epoch
    assert check_accepts(rfc3339(moment))


# --- through pytest ---------------------------------------------------------------------------

HEADER_LINE = re.compile(r"^  simscope (\w+) = (.*?) \((.*)\)$")


def shown_settings(output: str) -> dict[str, tuple[str, str]]:
    """What the -v header says: setting -> (shown value, source)."""
    found: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        match = HEADER_LINE.match(line)
        if match:
            found[match[1]] = (match[2], match[3])
    return found


INI_KINDS = {
    "pytest.ini": ("[pytest]\n", "{key} = {value}\n", "{key} =\n{lines}\n"),
    "tox.ini": ("[pytest]\n", "{key} = {value}\n", "{key} =\n{lines}\n"),
    "setup.cfg": ("[tool:pytest]\n", "{key} = {value}\n", "{key} =\n{lines}\n"),
    "pyproject.toml": ("[tool.pytest.ini_options]\n", "{key} = {toml}\n", "{key} = {toml}\n"),
}


def write_ini(pytester: pytest.Pytester, kind: str, values: dict[str, Any]) -> Path:
    """Write *values* (str, or list for pairs) as ini keys into a file of *kind*."""
    head, line, lines = INI_KINDS[kind]
    text = head
    for key, value in values.items():
        if isinstance(value, list):
            text += lines.format(
                key=key, lines="\n".join(f"    {item}" for item in value), toml=json.dumps(value)
            )
        else:
            text += line.format(key=key, value=value, toml=json.dumps(value))
    path = pytester.path / kind
    path.write_text(text, encoding="utf-8")
    return path


def run_header(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Collect only with -v: the header lists every setting, nothing is published."""
    pytester.makepyfile(test_one=A_TEST)
    return pytester.runpytest("--co", "-v", "-p", "no:cacheprovider", *args)


@pytest.mark.parametrize("kind", list(INI_KINDS))
def test_every_ini_file_kind(pytester: pytest.Pytester, kind: str) -> None:
    path = write_ini(
        pytester,
        kind,
        {
            "simscope_regression": "ini/1",
            "simscope_category": "from-ini",
            "simscope_batch_size": "7",
            "simscope_strict": "true",
            "simscope_metadata": ["a=1", "b=x y"],
        },
    )
    result = run_header(pytester)
    assert result.ret == pytest.ExitCode.OK
    shown = shown_settings(result.stdout.str())
    assert set(shown) == {spec.name for spec in SPECS}
    source = f"ini key {{}} in {path}"
    assert shown["regression"] == ("ini/1", source.format("simscope_regression"))
    assert shown["category"] == ("from-ini", source.format("simscope_category"))
    assert shown["batch_size"] == ("7", source.format("simscope_batch_size"))
    assert shown["strict"] == ("true", source.format("simscope_strict"))
    assert shown["metadata"] == ("a=1, b=x y", source.format("simscope_metadata"))
    assert shown["timeout"] == ("10.0", "default")


@pytest.mark.parametrize(
    ("name", "winner"),
    [param for param in PRECEDENCE if param.values[0] in ("model_version", "category")],
)
def test_precedence_through_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str, winner: str
) -> None:
    levels = TABLE[name]
    spec = SPEC_BY_NAME[name]
    given = LEVELS[LEVELS.index(winner) :]
    args = ["--simscope-regression=p/1"]
    if "flag" in given:
        args.append(f"{spec.flag}={levels['flag'][0]}")
    if "env" in given:
        monkeypatch.setenv(spec.env, levels["env"][0])
    ini_path = write_ini(pytester, "tox.ini", {spec.ini: levels["ini"][0]} if "ini" in given
                         else {})
    if "ci" in given:
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
        monkeypatch.setenv("GITHUB_SHA", "c1c1c1")
        monkeypatch.setenv("GITHUB_REF_NAME", "ci-branch")
    result = run_header(pytester, *args)
    assert result.ret == pytest.ExitCode.OK
    shown = shown_settings(result.stdout.str())
    value = levels[winner][1]
    assert shown[name] == ("-" if value is None else str(value),
                           expected_source(name, winner, str(ini_path)))


def test_metadata_flag_is_repeatable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--simscope-regression=m/1", "--simscope-record=rec.jsonl",
        "--simscope-metadata", "a=1", "--simscope-metadata=b=2,3", "--simscope-metadata",
        "c=",
    )
    assert result.ret == pytest.ExitCode.OK
    records = [json.loads(line) for line in (pytester.path / "rec.jsonl").read_text().splitlines()]
    finish = [r["body"] for r in records if r["type"] == "job-finish"]
    assert [body["metadata"] for body in finish] == [[["a", "1"], ["b", "2,3"], ["c", ""]]]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ('{"a": "1", "b": "two words"}', "a=1, b=two words"),
        ("a=1,b=2", "a=1, b=2"),
        ("a=1\nb=2,3", "a=1, b=2,3"),
    ],
    ids=["json", "comma", "newline"],
)
def test_metadata_from_environment_through_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, raw: str, shown: str
) -> None:
    monkeypatch.setenv("SIMSCOPE_METADATA", raw)
    result = run_header(pytester, "--simscope-regression=m/1")
    assert shown_settings(result.stdout.str())["metadata"] == (
        shown, "environment variable SIMSCOPE_METADATA"
    )


BAD_VALUES = [
    pytest.param(
        ["--simscope-fail-message-limit=abc"], {}, {},
        "bad value for --simscope-fail-message-limit from command line "
        "--simscope-fail-message-limit: 'abc' is not a whole number",
        id="flag-int",
    ),
    pytest.param(
        [], {"SIMSCOPE_SKIPS": "maybe"}, {},
        "bad value for --simscope-skips from environment variable SIMSCOPE_SKIPS: "
        "'maybe' is not one of publish, omit",
        id="env-choice",
    ),
    pytest.param(
        [], {}, {"simscope_batch_size": "0"},
        "bad value for --simscope-batch-size from ini key simscope_batch_size in {ini}: "
        "0 is below the minimum of 1",
        id="ini-minimum",
    ),
    pytest.param(
        ["--simscope-url=ftp://user:Sup3rS3cret@host/"], {}, {},
        "bad value for --simscope-url from command line --simscope-url: the URL must start "
        "with amqp://, amqps://, http://, https:// or tunnel:",
        id="flag-url-scheme",
    ),
    pytest.param(
        [], {"SIMSCOPE_URL": "amqp://user:Sup3rS3cret@host:port/"}, {},
        "bad value for --simscope-url from environment variable SIMSCOPE_URL: it has a bad "
        "port or host part",
        id="env-url-port",
    ),
    pytest.param(
        [], {}, {"simscope_url": "https//user:Sup3rS3cret@host"},
        "bad value for --simscope-url from ini key simscope_url in {ini}: the URL must start "
        "with amqp://, amqps://, http://, https:// or tunnel:",
        id="ini-url",
    ),
    pytest.param(
        [], {}, {"simscope_model_timestamp": "2025-01-01T10:00:00"},
        "bad value for --simscope-model-timestamp from ini key simscope_model_timestamp in "
        "{ini}: '2025-01-01T10:00:00' is not an RFC 3339 timestamp with a UTC offset",
        id="ini-timestamp",
    ),
    pytest.param(
        ["--simscope-model-timestamp=2025-01-01t10:00:00z"], {}, {},
        "bad value for --simscope-model-timestamp from command line "
        "--simscope-model-timestamp: '2025-01-01t10:00:00z' is not an RFC 3339 timestamp "
        "with a UTC offset",
        id="flag-timestamp-lower-case",
    ),
    pytest.param(
        [], {"SIMSCOPE_STRICT": "perhaps"}, {},
        "bad value for --simscope-strict from environment variable SIMSCOPE_STRICT: "
        "'perhaps' is not a boolean (use true or false)",
        id="env-bool",
    ),
    pytest.param(
        [], {"SIMSCOPE_METADATA": "{oops"}, {},
        "bad value for --simscope-metadata from environment variable SIMSCOPE_METADATA: "
        "is not valid JSON",
        id="env-json",
    ),
]


@pytest.mark.parametrize(("args", "env", "ini", "message"), BAD_VALUES)
def test_bad_value_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ini_path = write_ini(pytester, "pytest.ini", ini)
    pytester.makepyfile(test_one=A_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--simscope-regression=bad/1", *args)
    assert result.ret == USAGE_ERROR
    errors = result.stderr.str()
    assert f"ERROR: pytest-simscope: {message.format(ini=ini_path)}" in errors
    output = result.stdout.str() + errors
    assert "Sup3rS3cret" not in output
    assert "collected" not in output
    assert not (pytester.path / "test-ran").exists()
    assert not (pytester.path / ".simscope").exists()


def test_bad_value_stops_pytest_even_without_a_regression(pytester: pytest.Pytester) -> None:
    """A broken setting is an error even in a run that would not publish."""
    pytester.makepyfile(test_one=A_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--simscope-batch-size=x")
    assert result.ret == USAGE_ERROR
    assert not (pytester.path / "test-ran").exists()


SECRET_PASSWORD = "Env-Pa55word-8d1e"
URL_PASSWORD = "Url-Pa55word-77c2"


def all_text_below(folder: Path) -> str:
    return "\n".join(
        path.read_text(encoding="utf-8", errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    )


@pytest.mark.parametrize("url_from", ["flag", "env", "ini", "env-credentials"])
def test_passwords_never_appear(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, url_from: str
) -> None:
    """Not in the -v header, the summary, the warnings, the queue or the record file."""
    # Port 1 refuses at once: the run falls back to the offline queue and says so.
    url = f"amqp://user:{URL_PASSWORD}@127.0.0.1:1/"
    monkeypatch.setenv("SIMSCOPE_PASSWORD", SECRET_PASSWORD)
    args = ["--simscope-regression=secret/1", "--simscope-record=rec.jsonl", "-v",
            "--simscope-retry-budget=0", "--simscope-timeout=2", "-p", "no:cacheprovider"]
    if url_from == "flag":
        args.append(f"--simscope-url={url}")
    elif url_from == "env":
        monkeypatch.setenv("SIMSCOPE_URL", url)
    elif url_from == "ini":
        write_ini(pytester, "pytest.ini", {"simscope_url": url})
    else:
        monkeypatch.setenv("SIMSCOPE_URL", "amqp://127.0.0.1:1/")
        monkeypatch.setenv("SIMSCOPE_USERNAME", "user")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.OK
    output = result.stdout.str() + result.stderr.str()
    shown = shown_settings(output)
    assert shown["password"] == ("***", "environment variable SIMSCOPE_PASSWORD")
    assert "queued in" in output  # the fallback happened and was reported
    written = all_text_below(pytester.path / ".simscope")
    written += (pytester.path / "rec.jsonl").read_text(encoding="utf-8")
    assert "regr-start" in written
    for secret in (SECRET_PASSWORD, URL_PASSWORD):
        assert secret not in output
        assert secret not in written, f"{secret} was written to the queue or the record file"


def test_bool_flag_does_not_swallow_the_test_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:randomly", "--simscope-regression=b/1", "--simscope-strict", "test_one.py",
        "--simscope-no-tls-verify", "-v",
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*simscope strict = true (command line --simscope-strict)*"])
    result.stdout.fnmatch_lines(["*simscope tls_verify = false (command line*"])


def test_bad_settings_are_ignored_when_the_plugin_is_not_enabled(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMSCOPE_TIMEOUT", "abc")
    pytester.makeini("[pytest]\nsimscope_batch_size = none\n")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    assert pytester.runpytest_inprocess("-p", "no:randomly").ret == pytest.ExitCode.OK
    result = pytester.runpytest_inprocess("-p", "no:randomly", "--simscope-regression=r/1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--simscope-timeout*environment variable SIMSCOPE_TIMEOUT*"])
