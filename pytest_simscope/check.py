"""Check a stream of Simscope messages against the publishing protocol.

The input is what the JSON-lines recorder writes: one record a line,
``{"type": ..., "regression": ..., "body": ...}``.  The checker reports every broken rule
as a :class:`Problem` instead of stopping at the first, so a test can assert that a
published stream is clean and a user can see all that is wrong with one at once.

What is checked, per record: the envelope (a known message type, a regression name, a body
of the right shape); each body against the :class:`~pytest_simscope.models.Regression` or
:class:`~pytest_simscope.models.Job` model, with JSON types checked strictly (the models
coerce, Simscope may not); the rules of each message type (``pending`` on ``regr-start``
and ``regr-finish``, what a live or finished job must and must not carry); RFC 3339
timestamps.  Per regression, across records: ``regr-start`` first, nothing after
``regr-finish``, one of each; finished jobs with distinct ``uniqueid`` and ``start_time``;
every live job finished; ``submitted`` equal to the number of finished jobs.

Nothing here imports pytest: the test suite and the ``pytest-simscope check`` command both
use it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import types
import typing
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pytest_simscope.models import JOB_TYPES, MESSAGE_TYPES, REGRESSION_TYPES, Job, Regression

__all__ = ["Problem", "check_file", "check_records", "load_jsonl", "summarize"]

RECORD_KEYS = ("type", "regression", "body")
FINISHED_RESULTS = ("pass", "fail", "skip")
TIMESTAMP_FIELDS = frozenset({"starttime", "start_time", "finish_time", "model_timestamp"})
# The protocol requires these on every finished job, beyond what the Job model requires
# (the model also describes live jobs, which need only category, uniqueid and result).
JOB_FINISH_REQUIRED = ("category", "uniqueid", "start_time", "config", "result", "fail_message")
LIVE_FORBIDDEN = ("compute_ms", "runtime_ms", "cycles", "fail_message")
TIMESTAMP_EXAMPLE = "2025-02-01T10:00:00.123456+00:00"

# Upper-case T and Z only, although RFC 3339 allows lower case: the server is written in
# Go (inference from its zero-time examples), whose RFC 3339 layout matches them literally.
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})"
)
# Near misses, matched only to say what is wrong with a timestamp.
_LOOSE_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?P<sep>[Tt ])[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}:?[0-9]{2})?"
)

# An instant to full precision: datetime keeps microseconds only, and a sender may use
# nanoseconds.
_Instant = tuple[dt.datetime, Decimal]


@dataclass(frozen=True)
class Problem:
    """One broken rule: where it is (a record, maybe a job in it) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check_records(
    records: Iterable[Mapping[str, Any]],
    *,
    sources: Sequence[str] | None = None,
    require_start_finish: bool = True,
) -> list[Problem]:
    """Check a stream of records; return its problems in record order (none when clean).

    ``sources[i]`` names where record *i* came from in the problems ("stream.jsonl:7");
    by default it is "record i+1".  With ``require_start_finish=False`` the stream may be a
    shard holding job messages only: a regression without ``regr-start`` or ``regr-finish``
    is then not a problem (and ``submitted`` is not compared with the jobs).
    """
    return [problem for _, problem in _check(records, sources, require_start_finish)]


def load_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Read a JSON-lines file into records; a broken line becomes a problem, not an error.

    Blank lines are skipped.  An unreadable file raises :class:`OSError`.
    """
    records, _, problems = _read_jsonl(path)
    return records, [problem for _, problem in problems]


def check_file(path: Path, *, require_start_finish: bool = True) -> list[Problem]:
    """Load and check a JSON-lines file; problems are located by line number."""
    records, lines, load_problems = _read_jsonl(path)
    sources = [f"line {number}" for number in lines]
    checked = _check(records, sources, require_start_finish)
    keyed = load_problems + [(lines[index], problem) for index, problem in checked]
    keyed.sort(key=lambda item: item[0])
    return [problem for _, problem in keyed]


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Count records per message type and jobs per result, e.g. ``{"job-finish": 3, "pass": 2}``.

    Jobs in a ``batch-job-finish`` each count for their result; only non-zero counts are
    present.
    """
    counts: Counter[str] = Counter()
    for record in records:
        type_ = record.get("type")
        if not isinstance(type_, str):
            continue
        counts[type_] += 1
        body = record.get("body")
        if type_ == "batch-job-finish" and isinstance(body, (list, tuple)):
            jobs: Sequence[Any] = body
        elif type_ in JOB_TYPES:
            jobs = [body]
        else:
            jobs = []
        for job in jobs:
            if isinstance(job, Mapping) and isinstance(job.get("result"), str):
                counts[job["result"]] += 1
    return dict(counts)


# --- reading ------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, Problem]]]:
    """Records, the line number of each, and (line number, problem) for broken lines."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    problems: list[tuple[int, Problem]] = []
    # Split the bytes on "\n" only: str.splitlines() would also break at U+2028 and
    # friends, which JSON allows unescaped inside strings.
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            problems.append(
                (number, Problem(where, f"not UTF-8: {exc.reason} at byte {exc.start + 1}"))
            )
            continue
        except json.JSONDecodeError as exc:
            problems.append(
                (number, Problem(where, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            )
            continue
        except ValueError as exc:
            problems.append((number, Problem(where, f"invalid JSON: {exc}")))
            continue
        if not isinstance(value, dict):
            problems.append(
                (
                    number,
                    Problem(where, f"invalid JSON: expected an object, got {_json_type(value)}"),
                )
            )
            continue
        records.append(value)
        lines.append(number)
    return records, lines, problems


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON and which other parsers refuse.
    raise ValueError(f"{name} is not a JSON value")


# --- field checks -------------------------------------------------------------------------


def _field_kinds(model: type[BaseModel]) -> dict[str, str]:
    """The JSON kind of each field of *model*: "string", "integer", "boolean" or "pairs".

    Read from the annotations so that a field added to the model is checked too.
    """
    kinds: dict[str, str] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = options[0] if len(options) == 1 else None
        origin = typing.get_origin(annotation)
        if annotation is str or (
            origin is typing.Literal
            and all(isinstance(arg, str) for arg in typing.get_args(annotation))
        ):
            kinds[name] = "string"
        elif annotation is bool:
            kinds[name] = "boolean"
        elif annotation is int:
            kinds[name] = "integer"
        elif origin is list:
            kinds[name] = "pairs"
    return kinds


_REGRESSION_KINDS = _field_kinds(Regression)
_JOB_KINDS = _field_kinds(Job)
_JOB_REQUIRED = tuple(name for name, info in Job.model_fields.items() if info.is_required())


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    """A short JSON rendering of *value* for a message."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except ValueError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_matches(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        # JSON 3.0 reads as a float here; a Go int field refuses it, so refuse it too.
        return isinstance(value, int) and not isinstance(value, bool)
    return True


_KIND_WORDS = {"string": "a string", "boolean": "true or false", "integer": "an integer"}


def _pairs_problems(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        return [f"'{name}' must be a list of [name, value] string pairs, got {_json_type(value)}"]
    return [
        f"'{name}[{index}]' must be a [name, value] pair of strings, got {_show(item)}"
        for index, item in enumerate(value)
        if not (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(part, str) for part in item)
        )
    ]


def _timestamp_problem(text: str) -> str | None:
    """Why *text* is not an RFC 3339 timestamp with an offset, or None if it is one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        loose = _LOOSE_TIMESTAMP.fullmatch(text)
        if loose is not None:
            zone = loose["zone"]
            if loose["sep"] == " ":
                return "separates date and time with a space; RFC 3339 needs 'T'"
            if zone is None:
                return "has no UTC offset; add 'Z' or '+hh:mm'"
            if zone not in ("Z", "z") and ":" not in zone:
                return "writes its UTC offset without a colon; use '+hh:mm'"
            return "must write 'T' and 'Z' in upper case"
        return f"is not an RFC 3339 timestamp like {TIMESTAMP_EXAMPLE}"
    try:
        _parse(match)
    except ValueError as exc:
        return f"is not a valid date and time ({exc})"
    return None


def _instant(text: Any) -> _Instant | None:
    """The instant *text* names, for comparing timestamps; None if it is not one."""
    if not isinstance(text, str):
        return None
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    try:
        return _parse(match)
    except ValueError:
        return None


def _parse(match: re.Match[str]) -> _Instant:
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    moment = dt.datetime.fromisoformat(f"{match['date']}T{match['time']}{zone}")
    fraction = Decimal("0." + (match["fraction"] or "0"))
    return moment.astimezone(dt.timezone.utc), fraction


def _model_problems(model: type[BaseModel], body: Mapping[str, Any], skip: set[str]) -> list[str]:
    """What *model* says about *body*, leaving out fields already reported in *skip*.

    Missing fields are left out too: the caller knows which ones each message type needs.
    """
    data = {name: value for name, value in body.items() if name not in skip}
    try:
        model.model_validate(data)
    except ValidationError as exc:
        messages = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            if error["type"] == "missing":
                continue
            if error["type"] == "extra_forbidden":
                name = str(loc[0])
                message = f"unexpected field '{name}' (not a {model.__name__} field)"
                close = difflib.get_close_matches(name, list(model.model_fields), n=1)
                if close:
                    message += f"; did you mean '{close[0]}'?"
                messages.append(message)
                continue
            text = str(error["msg"]).removeprefix("Value error, ")
            if loc:
                path = str(loc[0]) + "".join(f"[{part}]" for part in loc[1:])
                messages.append(f"'{path}': {text}")
            else:
                messages.append(text)
        return messages
    return []


def _field_problems(
    kinds: Mapping[str, str], body: Mapping[str, Any], flagged: set[str]
) -> list[str]:
    """JSON types, metadata pairs and timestamps of *body*; adds bad fields to *flagged*."""
    messages: list[str] = []
    for name, value in body.items():
        kind = kinds.get(name)
        if kind is None or value is None:
            continue
        if kind == "pairs":
            found = _pairs_problems(name, value)
        elif not _kind_matches(kind, value):
            found = [
                f"'{name}' must be {_KIND_WORDS[kind]}, got {_json_type(value)} ({_show(value)})"
            ]
        elif name in TIMESTAMP_FIELDS:
            why = _timestamp_problem(value)
            found = [] if why is None else [f"'{name}' {_show(value)} {why}"]
        else:
            found = []
        if found:
            flagged.add(name)
            messages.extend(found)
    return messages


# --- the stream checker -------------------------------------------------------------------


@dataclass
class _Live:
    index: int
    where: str


@dataclass
class _RegressionState:
    """What the checker remembers about one regression while reading the stream."""

    first: int
    first_where: str
    last: int = 0
    last_where: str = ""
    start: str | None = None
    finish: str | None = None
    starttime: _Instant | None = None
    submitted: tuple[int, str] | None = None
    finished_jobs: int = 0
    uniqueids: dict[str, str] = field(default_factory=dict)
    start_times: dict[_Instant | str, tuple[str, str]] = field(default_factory=dict)
    live: dict[str, _Live] = field(default_factory=dict)


class _Checker:
    """Reads records one at a time; per-regression rules are settled in :meth:`finish`."""

    def __init__(self, sources: Sequence[str], require_start_finish: bool) -> None:
        self.sources = sources
        self.require = require_start_finish
        self.regressions: dict[str, _RegressionState] = {}
        self.problems: list[tuple[int, Problem]] = []

    def report(self, index: int, where: str, message: str) -> None:
        self.problems.append((index, Problem(where, message)))

    def finish(self) -> list[tuple[int, Problem]]:
        for name, state in self.regressions.items():
            if self.require and state.start is None:
                self.report(
                    state.first,
                    state.first_where,
                    f"regression '{name}' has no regr-start; it must be the first "
                    f"message of the regression",
                )
            if self.require and state.finish is None:
                self.report(
                    state.last,
                    state.last_where,
                    f"regression '{name}' has no regr-finish (this is its last message)",
                )
            for uid, live in state.live.items():
                self.report(
                    live.index,
                    live.where,
                    f"live job '{uid}' is never finished: no job-finish with this uniqueid follows",
                )
        # Stable sort: problems found at the end of the stream go with their records.
        self.problems.sort(key=lambda item: item[0])
        return self.problems

    def record(self, index: int, record: Any) -> None:
        source = self.sources[index]
        if not isinstance(record, Mapping):
            self.report(index, source, f"a record must be an object, got {_json_type(record)}")
            return
        type_ = record.get("type")
        regression = record.get("regression")
        body = record.get("body")
        where = f"{source} ({_describe(type_, regression, body)})"

        for key in record:
            if key not in RECORD_KEYS:
                self.report(
                    index,
                    where,
                    f"unexpected key {_show(key)} in the record; a record "
                    f"has only type, regression and body",
                )
        type_ok = self._check_type(index, where, type_)
        regression_ok = self._check_regression_name(index, where, regression)
        if not (type_ok and isinstance(type_, str)):
            return
        state = None
        if regression_ok and isinstance(regression, str):
            state = self._sequence(index, where, type_, regression)
        if type_ in REGRESSION_TYPES:
            self._regression_message(index, where, type_, regression, record, state)
        elif type_ == "batch-job-finish":
            self._batch(index, source, body, state)
        else:
            self._job(index, where, source, type_, record, state)

    def _check_type(self, index: int, where: str, type_: Any) -> bool:
        if type_ is None:
            self.report(index, where, "missing 'type' (the message type)")
            return False
        if type_ not in MESSAGE_TYPES:
            message = f"unknown message type {_show(type_)}; expected one of " + ", ".join(
                MESSAGE_TYPES
            )
            if isinstance(type_, str) and type_.lower().replace("_", "-") in MESSAGE_TYPES:
                message = (
                    f"unknown message type {_show(type_)}; write it as "
                    f"'{type_.lower().replace('_', '-')}'"
                )
            self.report(index, where, message)
            return False
        return True

    def _check_regression_name(self, index: int, where: str, regression: Any) -> bool:
        if regression is None:
            self.report(
                index,
                where,
                "missing 'regression' (the name of the regression the message belongs to)",
            )
        elif not isinstance(regression, str):
            self.report(
                index, where, f"'regression' must be a string, got {_json_type(regression)}"
            )
        elif not regression.strip():
            self.report(index, where, "'regression' is empty")
        else:
            return True
        return False

    def _sequence(self, index: int, where: str, type_: str, regression: str) -> _RegressionState:
        """Order rules: regr-start first, one of each, nothing after regr-finish."""
        source = self.sources[index]
        state = self.regressions.get(regression)
        if state is None:
            state = _RegressionState(first=index, first_where=where)
            self.regressions[regression] = state
            if type_ == "regr-start":
                state.start = source
        elif type_ == "regr-start":
            if state.start is not None:
                self.report(
                    index,
                    where,
                    f"second regr-start for regression '{regression}' "
                    f"(the first is at {state.start})",
                )
            else:
                self.report(
                    index,
                    where,
                    f"regr-start must be the first message of "
                    f"regression '{regression}', but "
                    f"{self.sources[state.first]} came before it",
                )
                state.start = source
        if state.finish is not None:
            if type_ == "regr-finish":
                self.report(
                    index,
                    where,
                    f"second regr-finish for regression '{regression}' "
                    f"(the first is at {state.finish})",
                )
            else:
                self.report(
                    index,
                    where,
                    f"{type_} after the regr-finish of regression '{regression}' at {state.finish}",
                )
        state.last, state.last_where = index, where
        return state

    # --- regression messages ---

    def _regression_message(
        self,
        index: int,
        where: str,
        type_: str,
        regression: Any,
        record: Mapping[str, Any],
        state: _RegressionState | None,
    ) -> None:
        body = record.get("body")
        source = self.sources[index]
        if body is None and type_ != "regr-finish":
            what = "missing body" if "body" not in record else "body is null"
            self.report(index, where, f"{what}; a {type_} body is a Regression object")
        elif body is not None and not isinstance(body, Mapping):
            self.report(
                index, where, f"a {type_} body must be a Regression object, got {_json_type(body)}"
            )
        elif isinstance(body, Mapping):
            self._regression_body(index, where, type_, regression, body, state)
        if type_ == "regr-finish" and state is not None and state.finish is None:
            state.finish = source
            self._regression_finished(index, where, regression, state)

    def _regression_body(
        self,
        index: int,
        where: str,
        type_: str,
        regression: Any,
        body: Mapping[str, Any],
        state: _RegressionState | None,
    ) -> None:
        flagged: set[str] = set()
        messages = _field_problems(_REGRESSION_KINDS, body, flagged)
        messages += _model_problems(Regression, body, flagged)
        name = body.get("name")
        if isinstance(name, str) and isinstance(regression, str) and name != regression:
            messages.append(
                f"body name {_show(name)} differs from the record's regression {_show(regression)}"
            )
        pending = body.get("pending")
        if type_ == "regr-start":
            if body.get("starttime") is None:
                messages.append(
                    "missing 'starttime' (when the regression started; note: no "
                    "underscore on a regression)"
                )
            if "pending" not in flagged and pending is not True:
                messages.append(
                    f"a regr-start must set 'pending': true (the regression is "
                    f"LIVE), got {_show(pending) if 'pending' in body else 'none'}"
                )
        elif type_ == "regr-finish" and "pending" not in flagged and pending is not False:
            messages.append(
                f"a regr-finish body must set 'pending': false (the regression is "
                f"over), got {_show(pending) if 'pending' in body else 'none'}"
            )
        starttime = _instant(body.get("starttime"))
        if starttime is None and state is not None:
            starttime = state.starttime
        model_time = _instant(body.get("model_timestamp"))
        if model_time is not None and starttime is not None and model_time > starttime:
            messages.append(
                "'model_timestamp' is later than the regression's 'starttime' "
                "(Simscope flags this as an error)"
            )
        for message in messages:
            self.report(index, where, message)
        if state is not None:
            if body.get("starttime") is not None and "starttime" not in flagged:
                state.starttime = _instant(body["starttime"])
            submitted = body.get("submitted")
            if isinstance(submitted, int) and not isinstance(submitted, bool) and submitted >= 0:
                state.submitted = (submitted, self.sources[index])

    def _regression_finished(
        self, index: int, where: str, regression: Any, state: _RegressionState
    ) -> None:
        for uid, live in state.live.items():
            self.report(
                live.index,
                live.where,
                f"live job '{uid}' is not finished before the regr-finish of "
                f"regression '{regression}' at {state.finish}",
            )
        state.live.clear()
        if self.require and state.submitted is not None:
            submitted, submitted_at = state.submitted
            if submitted != state.finished_jobs:
                self.report(
                    index,
                    where,
                    f"'submitted' is {submitted} (last sent at {submitted_at}) but "
                    f"{state.finished_jobs} job(s) finished; Simscope will show the "
                    f"regression as ABORTED or its progress wrong",
                )

    # --- job messages ---

    def _batch(self, index: int, source: str, body: Any, state: _RegressionState | None) -> None:
        where = f"{source} (batch-job-finish)"
        if not isinstance(body, (list, tuple)):
            self.report(
                index,
                where,
                f"a batch-job-finish body must be an array of Job objects, got {_json_type(body)}",
            )
            return
        if not body:
            self.report(index, where, "a batch-job-finish with no jobs")
        for position, job in enumerate(body):
            uid = job.get("uniqueid") if isinstance(job, Mapping) else None
            job_where = f"{source} (batch-job-finish[{position}]" + (
                f" {uid})" if isinstance(uid, str) else ")"
            )
            if not isinstance(job, Mapping):
                self.report(
                    index,
                    job_where,
                    f"a batch-job-finish element must be a Job object, got {_json_type(job)}",
                )
                continue
            self._job_body(index, job_where, "job-finish", job)
            if state is not None:
                self._track_finish(index, job_where, f"{source} element {position}", job, state)

    def _job(
        self,
        index: int,
        where: str,
        source: str,
        type_: str,
        record: Mapping[str, Any],
        state: _RegressionState | None,
    ) -> None:
        body = record.get("body")
        if not isinstance(body, Mapping):
            what = "missing body" if "body" not in record else f"got {_json_type(body)}"
            self.report(index, where, f"a {type_} body must be a Job object; {what}")
            return
        self._job_body(index, where, type_, body)
        if state is None:
            return
        if type_ == "job-finish":
            self._track_finish(index, where, source, body, state)
            return
        uid = body.get("uniqueid")
        if not isinstance(uid, str):
            return
        finished_at = state.uniqueids.get(uid)
        if finished_at is not None:
            self.report(
                index, where, f"job-live for '{uid}' comes after its job-finish at {finished_at}"
            )
        elif state.finish is None:
            # Repeated job-live messages are heartbeats; the first one is the one to blame.
            # (After regr-finish, that problem is already reported.)
            state.live.setdefault(uid, _Live(index, where))

    def _job_body(self, index: int, where: str, type_: str, body: Mapping[str, Any]) -> None:
        flagged: set[str] = set()
        messages = _field_problems(_JOB_KINDS, body, flagged)
        result = body.get("result")
        if type_ == "job-live":
            required: Sequence[str] = _JOB_REQUIRED
            if isinstance(result, str) and result != "live":
                flagged.add("result")
                messages.append(f"a job-live result must be 'live', got {_show(result)}")
            for name in LIVE_FORBIDDEN:
                if body.get(name) is not None:
                    flagged.add(name)
                    messages.append(f"a live job must not carry '{name}'")
        else:
            required = tuple(dict.fromkeys((*_JOB_REQUIRED, *JOB_FINISH_REQUIRED)))
            if isinstance(result, str) and result not in FINISHED_RESULTS:
                flagged.add("result")
                if result.lower() in FINISHED_RESULTS:
                    messages.append(
                        f"result {_show(result)} must be lower case: '{result.lower()}'"
                    )
                elif result == "live":
                    messages.append(
                        "result 'live' belongs in a job-live message; a finished "
                        "job's result is pass, fail or skip"
                    )
                else:
                    messages.append(f"result {_show(result)} is not one of pass, fail, skip")
            fail_message = body.get("fail_message")
            if result == "fail" and isinstance(fail_message, str) and not fail_message.strip():
                messages.append(
                    "a failing job needs a non-empty 'fail_message' (Simscope "
                    "buckets its first line into a signature)"
                )
            if result in ("pass", "fail") and body.get("compute_ms") is None:
                messages.append(f"missing 'compute_ms' (required for a {result} job)")
        for name in required:
            if body.get(name) is None:
                messages.append(f"missing required field '{name}'")
        start, finish = _instant(body.get("start_time")), _instant(body.get("finish_time"))
        if start is not None and finish is not None and finish < start:
            messages.append("'finish_time' is before 'start_time'")
        messages += _model_problems(Job, body, flagged)
        for message in messages:
            self.report(index, where, message)

    def _track_finish(
        self,
        index: int,
        where: str,
        ref: str,
        body: Mapping[str, Any],
        state: _RegressionState,
    ) -> None:
        """Duplicate checks and live bookkeeping for one finished job."""
        state.finished_jobs += 1
        uid = body.get("uniqueid")
        if isinstance(uid, str):
            state.live.pop(uid, None)
            first = state.uniqueids.get(uid)
            if first is not None:
                self.report(
                    index, where, f"duplicate uniqueid '{uid}': already finished at {first}"
                )
                # A job sent twice has its start time twice too; one problem says it.
                return
            state.uniqueids[uid] = ref
        start_time = body.get("start_time")
        if not isinstance(start_time, str):
            return
        # Simscope compares instants, so "...+01:00" and the same moment in Z collide too.
        key: _Instant | str = _instant(start_time) or start_time
        earlier = state.start_times.get(key)
        if earlier is not None:
            other_uid, other_ref = earlier
            self.report(
                index,
                where,
                f"start_time {start_time} is the same as job '{other_uid}' at "
                f"{other_ref}; Simscope drops jobs with the same start time, category "
                f"and signature as duplicates",
            )
        else:
            state.start_times[key] = (uid if isinstance(uid, str) else "?", ref)


def _describe(type_: Any, regression: Any, body: Any) -> str:
    """The short description of a record in a problem's location: type and job or name."""
    if not isinstance(type_, str) or type_ not in MESSAGE_TYPES:
        return f"type {_show(type_)}"
    if type_ in ("job-live", "job-finish") and isinstance(body, Mapping):
        uid = body.get("uniqueid")
        return f"{type_} {uid}" if isinstance(uid, str) else type_
    if type_ in REGRESSION_TYPES and isinstance(regression, str):
        return f"{type_} {regression}"
    return type_


def _check(
    records: Iterable[Mapping[str, Any]],
    sources: Sequence[str] | None,
    require_start_finish: bool,
) -> list[tuple[int, Problem]]:
    """Problems keyed by the index of the record they belong to, in record order."""
    items = list(records)
    if sources is None:
        sources = [f"record {number}" for number in range(1, len(items) + 1)]
    elif len(sources) != len(items):
        raise ValueError(f"{len(sources)} sources given for {len(items)} records")
    checker = _Checker(sources, require_start_finish)
    for index, record in enumerate(items):
        checker.record(index, record)
    return checker.finish()
