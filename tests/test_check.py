"""Tests of the protocol checker: a clean stream passes, each broken rule is reported."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_simscope.check import Problem, check_file, check_records, load_jsonl, summarize
from pytest_simscope.models import Job, Regression, rfc3339

REGR = "nightly/1"
T0 = dt.datetime(2025, 2, 1, 10, 0, tzinfo=dt.timezone.utc)

Record = dict[str, Any]


def ts(seconds: float) -> str:
    """The timestamp *seconds* after T0, as the plugin writes it."""
    return rfc3339(T0 + dt.timedelta(seconds=seconds))


def rec(type_: str, body: Any, regression: str = REGR) -> Record:
    return {"type": type_, "regression": regression, "body": body}


def regr_start(regression: str = REGR, **fields: Any) -> Record:
    body = Regression(name=regression, starttime=ts(0), pending=True, **fields).body()
    return rec("regr-start", body, regression)


def regr_finish(regression: str = REGR, **fields: Any) -> Record:
    return rec(
        "regr-finish", Regression(name=regression, pending=False, **fields).body(), regression
    )


def job(uid: str, second: float, result: str = "pass", **fields: Any) -> dict[str, Any]:
    """A finished job body that breaks no rule: *second* after T0 makes its start_time."""
    values: dict[str, Any] = {
        "category": "pytest",
        "uniqueid": uid,
        "result": result,
        "start_time": ts(second),
        "finish_time": ts(second + 0.5),
        "config": uid,
        "fail_message": "AssertionError: assert 3 == 4" if result == "fail" else "",
    }
    if result != "skip":
        values["compute_ms"] = 500
    values.update(fields)
    return Job(**values).body()


def live(uid: str, second: float) -> dict[str, Any]:
    return Job(category="pytest", uniqueid=uid, result="live", start_time=ts(second)).body()


def finish(uid: str, second: float, result: str = "pass", regression: str = REGR) -> Record:
    return rec("job-finish", job(uid, second, result), regression)


def texts(problems: list[Problem]) -> list[str]:
    return [str(problem) for problem in problems]


def clean_stream() -> list[Record]:
    return [
        regr_start(submitted=4, host="ci-3", custom_metadata=[["python", "3.11"]]),
        rec("job-live", live("t::a", 1)),
        rec("job-live", live("t::a", 1)),  # a heartbeat
        rec("job-finish", job("t::a", 1, metadata=[["test_name", "a"]])),
        rec("job-live", live("t::b", 2)),
        rec("job-finish", job("t::b", 2, "fail")),
        rec("regr-update", {"name": REGR, "running": 0}),
        rec("batch-job-finish", [job("t::c", 3, "skip"), job("t::d", 4)]),
        regr_finish(),
    ]


def test_clean_stream_has_no_problems() -> None:
    assert check_records(clean_stream()) == []


def test_summarize_counts_types_and_results() -> None:
    assert summarize(clean_stream()) == {
        "regr-start": 1,
        "job-live": 3,
        "live": 3,
        "job-finish": 2,
        "pass": 2,
        "fail": 1,
        "regr-update": 1,
        "batch-job-finish": 1,
        "skip": 1,
        "regr-finish": 1,
    }


def test_problem_str_is_where_then_message() -> None:
    assert str(Problem("line 7 (job-finish t::a)", "missing required field 'config'")) == (
        "line 7 (job-finish t::a): missing required field 'config'"
    )


def test_sources_name_the_records() -> None:
    records = [regr_start(), rec("job-finish", {**job("t::a", 1), "config": None}), regr_finish()]
    problems = check_records(records, sources=["s.jsonl:1", "s.jsonl:2", "s.jsonl:3"])
    assert texts(problems) == ["s.jsonl:2 (job-finish t::a): missing required field 'config'"]
    with pytest.raises(ValueError, match="2 sources given for 3 records"):
        check_records(records, sources=["a", "b"])


# --- rule 1: the envelope -----------------------------------------------------------------


def test_envelope_problems() -> None:
    records: list[Any] = [
        regr_start(),
        rec("job_finish", job("t::a", 1)),
        rec("job-result", job("t::a", 1)),
        {"regression": REGR, "body": {}},
        {"type": "job-finish", "body": job("t::b", 2)},
        rec("job-finish", job("t::c", 3), regression="  "),
        {**finish("t::d", 4), "priority": 5},
        "not a record",
        regr_finish(),
    ]
    assert texts(check_records(records)) == [
        'record 2 (type "job_finish"): unknown message type "job_finish"; '
        "write it as 'job-finish'",
        'record 3 (type "job-result"): unknown message type "job-result"; expected one '
        "of regr-start, regr-update, regr-finish, job-live, job-finish, batch-job-finish",
        "record 4 (type null): missing 'type' (the message type)",
        "record 5 (job-finish t::b): missing 'regression' (the name of the regression the "
        "message belongs to)",
        "record 6 (job-finish t::c): 'regression' is empty",
        'record 7 (job-finish t::d): unexpected key "priority" in the record; a record has '
        "only type, regression and body",
        "record 8: a record must be an object, got a string",
    ]


def test_body_shapes() -> None:
    records = [
        rec("regr-start", None),
        rec("regr-update", ["submitted", 3]),
        rec("job-live", "t::a"),
        {"type": "job-finish", "regression": REGR},
        rec("batch-job-finish", job("t::b", 2)),
        rec("batch-job-finish", []),
        rec("batch-job-finish", [job("t::c", 3), "t::d"]),
        rec("regr-finish", None),
    ]
    assert texts(check_records(records)) == [
        "record 1 (regr-start nightly/1): body is null; a regr-start body is a Regression object",
        "record 2 (regr-update nightly/1): a regr-update body must be a Regression object, "
        "got an array",
        "record 3 (job-live): a job-live body must be a Job object; got a string",
        "record 4 (job-finish): a job-finish body must be a Job object; missing body",
        "record 5 (batch-job-finish): a batch-job-finish body must be an array of Job "
        "objects, got an object",
        "record 6 (batch-job-finish): a batch-job-finish with no jobs",
        "record 7 (batch-job-finish[1]): a batch-job-finish element must be a Job object, "
        "got a string",
    ]


def test_regr_finish_body_may_be_absent() -> None:
    records = [regr_start(), finish("t::a", 1), {"type": "regr-finish", "regression": REGR}]
    assert check_records(records) == []


# --- rule 2: regression bodies ------------------------------------------------------------


def test_regression_body_problems() -> None:
    start = regr_start()
    start["body"].update(name="nightly/2", start_time=ts(0), submitted="3")
    del start["body"]["starttime"]
    update = rec("regr-update", {"submitted": -1, "pending": "no"})
    records = [start, update, regr_finish(), rec("regr-finish", {"pending": True}, "other/1")]
    assert texts(check_records(records)) == [
        "record 1 (regr-start nightly/1): 'submitted' must be an integer, got a string (\"3\")",
        "record 1 (regr-start nightly/1): unexpected field 'start_time' (not a Regression "
        "field); did you mean 'starttime'?",
        'record 1 (regr-start nightly/1): body name "nightly/2" differs from the record\'s '
        'regression "nightly/1"',
        "record 1 (regr-start nightly/1): missing 'starttime' (when the regression started; "
        "note: no underscore on a regression)",
        "record 2 (regr-update nightly/1): 'pending' must be true or false, got a string (\"no\")",
        "record 2 (regr-update nightly/1): 'submitted': Input should be greater than or equal to 0",
        "record 4 (regr-finish other/1): a regr-finish body must set 'pending': false (the "
        "regression is over), got true",
        "record 4 (regr-finish other/1): regression 'other/1' has no regr-start; it must be "
        "the first message of the regression",
    ]


def test_regr_start_needs_pending_true() -> None:
    start = regr_start()
    del start["body"]["pending"]
    records = [start, regr_finish()]
    assert texts(check_records(records)) == [
        "record 1 (regr-start nightly/1): a regr-start must set 'pending': true (the "
        "regression is LIVE), got none",
    ]


def test_model_timestamp_after_starttime() -> None:
    records = [regr_start(model_timestamp=ts(60)), regr_finish()]
    assert texts(check_records(records)) == [
        "record 1 (regr-start nightly/1): 'model_timestamp' is later than the regression's "
        "'starttime' (Simscope flags this as an error)",
    ]


# --- rule 3: job bodies -------------------------------------------------------------------


def test_live_job_problems() -> None:
    records = [
        regr_start(),
        rec("job-live", {**live("t::a", 1), "compute_ms": 5, "fail_message": ""}),
        rec("job-live", {**live("t::b", 2), "result": "pass"}),
        rec("job-live", {"category": "pytest", "result": "live"}),
        finish("t::a", 1),
        finish("t::b", 2),
        regr_finish(),
    ]
    assert texts(check_records(records)) == [
        "record 2 (job-live t::a): a live job must not carry 'compute_ms'",
        "record 2 (job-live t::a): a live job must not carry 'fail_message'",
        "record 3 (job-live t::b): a job-live result must be 'live', got \"pass\"",
        "record 4 (job-live): missing required field 'uniqueid'",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"result": "PASS"}, "result \"PASS\" must be lower case: 'pass'"),
        ({"result": "error"}, 'result "error" is not one of pass, fail, skip'),
        (
            {"result": "live"},
            "result 'live' belongs in a job-live message; a finished job's result is pass, "
            "fail or skip",
        ),
        ({"config": None}, "missing required field 'config'"),
        ({"category": None}, "missing required field 'category'"),
        ({"start_time": None}, "missing required field 'start_time'"),
        ({"fail_message": None}, "missing required field 'fail_message'"),
        ({"compute_ms": None}, "missing 'compute_ms' (required for a pass job)"),
        ({"compute_ms": -5}, "'compute_ms': Input should be greater than or equal to 0"),
        ({"compute_ms": 5.0}, "'compute_ms' must be an integer, got a number (5.0)"),
        ({"config": 7}, "'config' must be a string, got a number (7)"),
        (
            {"starttime": ts(1)},
            "unexpected field 'starttime' (not a Job field); did you mean 'start_time'?",
        ),
    ],
)
def test_finished_job_problems(change: dict[str, Any], expected: str) -> None:
    body = {**job("t::a", 1), **change}
    body = {name: value for name, value in body.items() if value is not None}
    records = [regr_start(), rec("job-finish", body), regr_finish()]
    assert texts(check_records(records)) == [f"record 2 (job-finish t::a): {expected}"]


def test_fail_needs_a_fail_message_and_skip_needs_no_compute_ms() -> None:
    failed = {**job("t::a", 1, "fail"), "fail_message": " "}
    skipped = job("t::b", 2, "skip")
    assert "compute_ms" not in skipped
    records = [regr_start(), rec("job-finish", failed), rec("job-finish", skipped), regr_finish()]
    assert texts(check_records(records)) == [
        "record 2 (job-finish t::a): a failing job needs a non-empty 'fail_message' (Simscope "
        "buckets its first line into a signature)",
    ]


# --- rule 4: timestamps -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-02-01T10:00:01Z",
        "2025-02-01T10:00:01.1Z",
        "2025-02-01T10:00:01.123-05:00",
        "2025-02-01T10:00:01.123456+01:00",
        "2025-02-01T10:00:01.123456789+00:00",
    ],
)
def test_good_timestamps(stamp: str) -> None:
    records = [regr_start(), finish("t::a", 1), regr_finish()]
    records[1]["body"].update(start_time=stamp, finish_time="2025-02-01T23:00:00Z")
    assert check_records(records) == []


@pytest.mark.parametrize(
    ("stamp", "why"),
    [
        ("2025-02-01T10:00:01.123456", "has no UTC offset; add 'Z' or '+hh:mm'"),
        ("2025-02-01 10:00:01+00:00", "separates date and time with a space; RFC 3339 needs 'T'"),
        ("2025-02-01T10:00:01+0100", "writes its UTC offset without a colon; use '+hh:mm'"),
        ("2025-02-01t10:00:01z", "must write 'T' and 'Z' in upper case"),
        ("2025-02-30T10:00:01Z", "is not a valid date and time (day is out of range for month)"),
        ("1738404001", "is not an RFC 3339 timestamp like 2025-02-01T10:00:00.123456+00:00"),
        ("2025-02-01T10:00Z", "is not an RFC 3339 timestamp like 2025-02-01T10:00:00.123456+00:00"),
    ],
)
def test_bad_timestamps(stamp: str, why: str) -> None:
    records = [regr_start(), finish("t::a", 1), regr_finish()]
    records[1]["body"]["start_time"] = stamp
    assert texts(check_records(records)) == [
        f"record 2 (job-finish t::a): 'start_time' {json.dumps(stamp)} {why}"
    ]


def test_regression_timestamps_are_checked_too() -> None:
    start = regr_start()
    start["body"]["starttime"] = "2025-02-01T10:00:00"
    records = [start, regr_finish()]
    assert texts(check_records(records)) == [
        "record 1 (regr-start nightly/1): 'starttime' \"2025-02-01T10:00:00\" has no UTC "
        "offset; add 'Z' or '+hh:mm'",
    ]


def test_finish_time_before_start_time() -> None:
    records = [regr_start(), rec("job-finish", job("t::a", 10, finish_time=ts(9))), regr_finish()]
    # Same instant, finer precision than a microsecond, other offset: still before.
    late = job("t::b", 20, start_time="2025-02-01T10:00:20.0000005Z")
    late["finish_time"] = "2025-02-01T11:00:20.000000+01:00"
    records.insert(2, rec("job-finish", late))
    assert texts(check_records(records)) == [
        "record 2 (job-finish t::a): 'finish_time' is before 'start_time'",
        "record 3 (job-finish t::b): 'finish_time' is before 'start_time'",
    ]


# From 1980: before that some zones had offsets in seconds (Africa/Abidjan -00:16:08 in
# 1912), which isoformat() writes as "-00:16:08" and RFC 3339 cannot express.
@given(
    st.datetimes(
        min_value=dt.datetime(1980, 1, 1),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.timezones(),
    )
)
def test_every_timestamp_the_plugin_writes_is_accepted(moment: dt.datetime) -> None:
    records = [regr_start(), finish("t::a", 1), regr_finish()]
    records[1]["body"].update(start_time=rfc3339(moment), finish_time=rfc3339(moment))
    assert check_records(records) == []


# --- rule 5: order of messages ------------------------------------------------------------


def test_regr_start_must_come_first_and_once() -> None:
    records = [finish("t::a", 1), regr_start(), regr_start(), finish("t::b", 2), regr_finish()]
    assert texts(check_records(records)) == [
        "record 2 (regr-start nightly/1): regr-start must be the first message of regression "
        "'nightly/1', but record 1 came before it",
        "record 3 (regr-start nightly/1): second regr-start for regression 'nightly/1' (the "
        "first is at record 2)",
    ]


def test_nothing_after_regr_finish() -> None:
    records = [regr_start(), finish("t::a", 1), regr_finish(), finish("t::b", 2), regr_finish()]
    assert texts(check_records(records)) == [
        "record 4 (job-finish t::b): job-finish after the regr-finish of regression "
        "'nightly/1' at record 3",
        "record 5 (regr-finish nightly/1): second regr-finish for regression 'nightly/1' (the "
        "first is at record 3)",
    ]


def test_missing_regr_start_and_regr_finish() -> None:
    records = [finish("t::a", 1), finish("t::b", 2)]
    assert texts(check_records(records)) == [
        "record 1 (job-finish t::a): regression 'nightly/1' has no regr-start; it must be the "
        "first message of the regression",
        "record 2 (job-finish t::b): regression 'nightly/1' has no regr-finish (this is its "
        "last message)",
    ]


def test_shard_stream_needs_no_start_or_finish() -> None:
    records = [
        rec("job-live", live("t::a", 1)),
        finish("t::a", 1),
        rec("batch-job-finish", [job("t::b", 2), job("t::c", 3, "fail")]),
    ]
    assert check_records(records, require_start_finish=False) == []
    # The other rules still hold in a shard.
    records.append(finish("t::a", 4))
    assert texts(check_records(records, require_start_finish=False)) == [
        "record 4 (job-finish t::a): duplicate uniqueid 't::a': already finished at record 2",
    ]


# --- rule 6: finished jobs and live jobs --------------------------------------------------


def test_duplicate_uniqueid_and_start_time() -> None:
    records = [
        regr_start(),
        finish("t::a", 1),
        finish("t::a", 2),
        finish("t::b", 1),
        # The same instant written with another offset is the same start time.
        rec("job-finish", job("t::c", 3, start_time="2025-02-01T11:00:01.000000+01:00")),
        regr_finish(),
    ]
    assert texts(check_records(records)) == [
        "record 3 (job-finish t::a): duplicate uniqueid 't::a': already finished at record 2",
        "record 4 (job-finish t::b): start_time 2025-02-01T10:00:01.000000+00:00 is the same "
        "as job 't::a' at record 2; Simscope drops jobs with the same start time, category "
        "and signature as duplicates",
        "record 5 (job-finish t::c): start_time 2025-02-01T11:00:01.000000+01:00 is the same "
        "as job 't::a' at record 2; Simscope drops jobs with the same start time, category "
        "and signature as duplicates",
    ]


def test_live_jobs_must_be_finished() -> None:
    records = [
        regr_start(),
        rec("job-live", live("t::a", 1)),
        rec("job-live", live("t::b", 2)),
        finish("t::b", 2),
        rec("job-live", live("t::b", 2)),
        regr_finish(),
    ]
    assert texts(check_records(records)) == [
        "record 2 (job-live t::a): live job 't::a' is not finished before the regr-finish of "
        "regression 'nightly/1' at record 6",
        "record 5 (job-live t::b): job-live for 't::b' comes after its job-finish at record 4",
    ]
    shard = [rec("job-live", live("t::a", 1))]
    assert texts(check_records(shard, require_start_finish=False)) == [
        "record 1 (job-live t::a): live job 't::a' is never finished: no job-finish with this "
        "uniqueid follows",
    ]


# --- rule 7: submitted --------------------------------------------------------------------


def test_submitted_must_match_finished_jobs() -> None:
    records = [regr_start(submitted=3), finish("t::a", 1), finish("t::b", 2), regr_finish()]
    assert texts(check_records(records)) == [
        "record 4 (regr-finish nightly/1): 'submitted' is 3 (last sent at record 1) but 2 "
        "job(s) finished; Simscope will show the regression as ABORTED or its progress wrong",
    ]
    # The last value sent counts: here a regr-update corrects it.
    records.insert(1, rec("regr-update", {"name": REGR, "submitted": 2}))
    assert check_records(records) == []
    # So does one on the regr-finish itself.
    records = [regr_start(submitted=3), finish("t::a", 1), regr_finish(submitted=1)]
    assert check_records(records) == []
    # In a shard stream the other shards' jobs are elsewhere: nothing to compare.
    records = [regr_start(submitted=3), finish("t::a", 1), regr_finish()]
    assert check_records(records, require_start_finish=False) == []


# --- rule 8: metadata ---------------------------------------------------------------------


def test_metadata_must_be_string_pairs() -> None:
    start = regr_start()
    start["body"]["custom_metadata"] = {"python": "3.11"}
    bad = {**job("t::a", 1), "metadata": [["test_name", "a"], ["retries", 2], ["x"], "y"]}
    records = [start, rec("job-finish", bad), regr_finish()]
    assert texts(check_records(records)) == [
        "record 1 (regr-start nightly/1): 'custom_metadata' must be a list of [name, value] "
        "string pairs, got an object",
        "record 2 (job-finish t::a): 'metadata[1]' must be a [name, value] pair of strings, "
        'got ["retries", 2]',
        "record 2 (job-finish t::a): 'metadata[2]' must be a [name, value] pair of strings, "
        'got ["x"]',
        "record 2 (job-finish t::a): 'metadata[3]' must be a [name, value] pair of strings, "
        'got "y"',
    ]


# --- several regressions, batches, files --------------------------------------------------


def test_interleaved_regressions_are_checked_apart() -> None:
    other = "smoke/7"
    records = [
        regr_start(submitted=2),
        regr_start(other, submitted=1),
        finish("t::a", 1),
        # Same uniqueid and start time, other regression: no clash.
        finish("t::a", 1, regression=other),
        finish("t::b", 2),
        regr_finish(other),
        regr_finish(),
    ]
    assert check_records(records) == []
    records.insert(6, finish("t::c", 3, regression=other))
    assert texts(check_records(records)) == [
        "record 7 (job-finish t::c): job-finish after the regr-finish of regression 'smoke/7' "
        "at record 6",
    ]


def test_batch_job_finish_elements_are_checked_as_jobs() -> None:
    broken = {**job("t::c", 3, "fail"), "fail_message": ""}
    records = [
        regr_start(submitted=4),
        rec("job-live", live("t::c", 3)),
        finish("t::a", 1),
        rec("batch-job-finish", [job("t::b", 2), broken, job("t::a", 4)]),
        regr_finish(),
    ]
    assert texts(check_records(records)) == [
        "record 4 (batch-job-finish[1] t::c): a failing job needs a non-empty 'fail_message' "
        "(Simscope buckets its first line into a signature)",
        "record 4 (batch-job-finish[2] t::a): duplicate uniqueid 't::a': already finished at "
        "record 3",
    ]


def test_batch_duplicates_name_the_element() -> None:
    records = [
        regr_start(),
        rec("batch-job-finish", [job("t::a", 1), job("t::b", 1)]),
        finish("t::c", 1),
        regr_finish(),
    ]
    assert texts(check_records(records)) == [
        "record 2 (batch-job-finish[1] t::b): start_time 2025-02-01T10:00:01.000000+00:00 is "
        "the same as job 't::a' at record 2 element 0; Simscope drops jobs with the same "
        "start time, category and signature as duplicates",
        "record 3 (job-finish t::c): start_time 2025-02-01T10:00:01.000000+00:00 is the same "
        "as job 't::a' at record 2 element 0; Simscope drops jobs with the same start time, "
        "category and signature as duplicates",
    ]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reports_broken_lines(tmp_path: Path) -> None:
    good = [json.dumps(record) for record in clean_stream()]
    path = write_lines(
        tmp_path / "stream.jsonl",
        [good[0], "", '{"type": "job-live", ', "[1, 2]", '{"x": NaN}', *good[1:], "   "],
    )
    records, problems = load_jsonl(path)
    assert records == clean_stream()
    assert texts(problems) == [
        "line 3: invalid JSON: Expecting property name enclosed in double quotes (column 22)",
        "line 4: invalid JSON: expected an object, got an array",
        "line 5: invalid JSON: NaN is not a JSON value",
    ]


def test_load_jsonl_keeps_line_separators_inside_strings(tmp_path: Path) -> None:
    # U+2028 is legal unescaped in a JSON string; it must not split the line.
    record = finish("t::a", 1)
    record["body"]["fail_message"] = "one\u2028two"
    path = tmp_path / "stream.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_jsonl(path) == ([record], [])


def test_check_file_locates_problems_by_line(tmp_path: Path) -> None:
    stream = clean_stream()
    stream[3]["body"]["result"] = "Pass"
    lines = [json.dumps(record) for record in stream]
    lines.insert(2, "")
    lines.insert(5, "not json")
    path = write_lines(tmp_path / "stream.jsonl", lines)
    assert texts(check_file(path)) == [
        "line 5 (job-finish t::a): result \"Pass\" must be lower case: 'pass'",
        "line 6: invalid JSON: Expecting value (column 1)",
    ]
    shard = write_lines(tmp_path / "shard.jsonl", [json.dumps(finish("t::x", 9))])
    assert check_file(shard, require_start_finish=False) == []
    assert [problem.message for problem in check_file(shard)] == [
        "regression 'nightly/1' has no regr-start; it must be the first message of the regression",
        "regression 'nightly/1' has no regr-finish (this is its last message)",
    ]
