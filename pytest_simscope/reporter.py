"""The reporter: turns pytest's reports into Simscope messages.

One instance lives in the process that publishes (the only process, or the xdist
controller).  It sees reports, never items, so everything a worker knows about a test
(marker fields, metadata added by the test) arrives on the report as the JSON-safe
``simscope_data`` attribute set in the plugin's ``pytest_runtest_makereport`` wrapper.

A job opens when its first report arrives (``job-live`` after a setup that did not skip)
and finishes on its teardown report, on a crashed worker's report, or at session end (as a
``fail`` saying why).  Rerun attempts of one test stay one job: the last attempt
decides its result and metadata counts the reruns.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import pytest

from pytest_simscope.compact import RunFields, is_short, json_bytes, testgroup_by_rule
from pytest_simscope.failures import fail_message, first_line
from pytest_simscope.identity import (
    SeenHashes,
    StartClock,
    job_slug,
    make_uniqueid,
    safe_slug,
)
from pytest_simscope.messages import (
    DATA_ATTR,
    MAX_JOB_MS,
    Envelope,
    MessageType,
    _clean_str,
    dumps,
    encode,
    epoch_micros,
    metadata_pairs,
    stamp,
    stamp_ascii,
)
from pytest_simscope.redact import mask_urls, redact
from pytest_simscope.settings import Resolved


class _Local(Protocol):
    """What the reporter asks of :class:`~pytest_simscope.plugin.LocalTests`."""

    with_metadata: dict[str, Any]

    def data(self, report: Any) -> dict[str, Any] | None: ...


class Sink(Protocol):
    """Where the reporter's messages go (a courier front or a publisher; a front's
    ``publish_raw`` is used when it has one)."""

    def publish(self, envelope: Envelope) -> None: ...

    def _note(self, message: str) -> None: ...


_TestReport = pytest.TestReport
_json_string = json.encoder.encode_basestring  # what dumps writes for a str
_json = json_bytes

_RESULTS = {result: f'"{result}"'.encode() for result in ("pass", "fail", "skip")}


# A report with any of these is not the usual one (an xdist worker's, or carrying the
# data of a marker or metadata): see SimscopeReporter.take.
_UNUSUAL = frozenset(("node", "worker_id", DATA_ATTR))
# What a report without keywords is taken for: marked (the general way).
_MARKED = ("simscope",)
# Later than any time a report could carry (the year 5138): NaN and infinities are not
# before it.
_FAR = 1e11

# A job's testgroup until something needs it: the one the testgroup setting's rule gives
# its node id (a short journal line leaves it to the courier: see compact).  Told apart
# by identity.
_BY_RULE = "\x00by rule"

_PHASE_PREFIX = {"setup": "setup error: ", "teardown": "teardown error: ", "subtest": ""}


class _Open:
    """A job that has started and not finished yet (one per running test).

    Its collections start as shared empty ones and are replaced, never changed in place:
    the usual job allocates none.
    """

    # Slots: an attribute a job does not have on its own would be looked up the slow way.
    __slots__ = (
        "called",
        "category",
        "duration",
        "early",
        "failures",
        "last_report",
        "live_sent",
        "metadata",
        "nodeid",
        "outcome",
        "raw",
        "rerun_pending",
        "reruns",
        "sections",
        "skip_reason",
        "start_epoch",
        "start_micros",
        "stop_epoch",
        "subtests",
        "testgroup",
        "uniqueid",
        "usual",
        "worker",
        "xfail",
    )

    def __init__(
        self,
        nodeid: str,
        worker: str | None,
        uniqueid: str,
        start_epoch: float,
        start_micros: int,
        category: str,
        testgroup: str | None,
    ) -> None:
        self.nodeid = nodeid
        self.worker = worker
        self.uniqueid = uniqueid
        self.start_epoch = start_epoch
        # Its start_time, unique in the run (see StartClock): may be a little after
        # start_epoch, and the finish_time is never before it.
        self.start_micros = start_micros
        self.category = category
        self.testgroup = testgroup
        # Its live job was published (its setup did not skip).
        self.live_sent = False
        # The JSON of its body before and after the result (see SimscopeReporter._job_json).
        self.raw: tuple[bytes, bytes] | None = None
        # The usual job's node id as bytes, once its live job was journaled in short
        # (see SimscopeReporter._send_usual_live).
        self.usual: bytes | None = None
        self.reruns = 0
        self.subtests: Mapping[str, int] = _NO_SUBTESTS
        self.outcome = "passed"  # of the current attempt: passed, failed, skipped
        self.xfail = ""  # "xfailed" / "xpassed"
        self.skip_reason = ""
        self.failures: Sequence[tuple[str, Any]] = ()
        self.duration = 0.0
        self.stop_epoch = 0.0
        self.metadata: Sequence[tuple[str, str]] = ()
        self.sections: Sequence[tuple[str, str]] = ()
        self.last_report: Any = None
        # pytest-rerunfailures asked for another attempt: the next teardown report ends
        # that attempt, not the job, and the next setup report starts the attempt afresh.
        self.rerun_pending = False
        # The current attempt's call was reported (see SimscopeReporter._ends).
        self.called = False
        # Opened when its test started (SimscopeReporter.started), no setup report yet.
        self.early = False


_NO_SUBTESTS: Mapping[str, int] = MappingProxyType({})
_NO_DATA: Mapping[str, Any] = MappingProxyType({})


class _Wall:
    """The wall clock, where a test that replaces ``time.time`` for a while or for the
    whole session (monkeypatch, freezegun, which rewrites every module attribute that is
    the real function) does not reach it: a job's times are the run's, as pytest keeps
    its reports' own."""

    now = staticmethod(time.time)


def _worker_of(extra: dict[str, Any]) -> str | None:
    """The xdist worker that sent a report, from its attributes (None: not a worker's)."""
    node = extra.get("node")
    if node is not None:
        wid = getattr(getattr(node, "gateway", None), "id", None)
        if isinstance(wid, str):
            return wid
    wid = extra.get("worker_id")
    return wid if isinstance(wid, str) else None


def _is_subtest(report: Any) -> bool:
    """A report of one subtest (pytest's ``subtests`` fixture or pytest-subtests)."""
    return type(report).__name__.lower() == "subtestreport"


def _crash_summary(longrepr: Any) -> str:
    """The one-line summary pytest shows for a failure (``ExceptionType: message``)."""
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if isinstance(message, str) and message.strip():
        line = first_line(message)
        # pytest's assertion rewriting drops the exception type ("assert 1 == 2");
        # put it back so every summary reads "ExceptionType: message".
        return f"AssertionError: {line}" if line.startswith("assert ") else line
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return first_line(str(longrepr[2]))
    if longrepr is None:
        return ""
    text = _clean_str(longrepr)
    return _doctest_summary(text) or first_line(text)


# A failed doctest's text (pytest's ReprFailDoctest, or its string from an xdist worker):
# the numbered lines of the docstring, what went wrong, then "file:line: <kind>".
_DOCTEST_LISTING = re.compile(r"(?:[0-9]{3}|\?\?\?) (.*)")
_DOCTEST_WHERE = re.compile(r"(.*):([0-9]+): (DocTestFailure|UnexpectedException)")


def _doctest_summary(text: str) -> str:
    """``Kind: file:line: >>> the example`` (and what it raised) for a failed doctest, or
    "" for any other text: its first line would be a line number of the docstring."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if not (_DOCTEST_LISTING.match(first) or first.startswith("EXAMPLE LOCATION UNKNOWN")):
        return ""
    where = next((m for m in map(_DOCTEST_WHERE.fullmatch, reversed(lines)) if m), None)
    if where is None:
        return ""
    example = ""
    raised = ""
    for line in lines:
        listed = _DOCTEST_LISTING.fullmatch(line)
        if listed and listed.group(1).lstrip().startswith(">>>"):
            example = listed.group(1).strip()
        elif line.startswith("UNEXPECTED EXCEPTION: ") and not raised:
            raised = f" raised {line[len('UNEXPECTED EXCEPTION: '):]}"
    name = where.group(1).replace("\\", "/").rpartition("/")[2]
    return first_line(f"{where.group(3)}: {name}:{where.group(2)}: {example}{raised}")


def _longrepr_text(report: Any) -> str:
    try:
        text = report.longreprtext
    except Exception:  # a broken repr must not cost the result
        text = _clean_str(getattr(report, "longrepr", ""))
    return _clean_str(text)


class SimscopeReporter:
    """Publish one pytest session as one Simscope regression."""

    def __init__(
        self,
        config: pytest.Config,
        resolved: Resolved,
        publisher: Sink,
        *,
        job_hook: Callable[..., Any] | None = None,
        seed: str | None = None,
        dist_each: bool = False,
        secrets: Sequence[str] = (),
        raw_bodies: bool = False,
        local: _Local | None = None,
        early: bool = False,
    ) -> None:
        self.secrets = list(secrets)
        # The marker fields and metadata of the tests this process runs (see take()).
        self._local = local
        self.config = config
        self.settings = resolved.settings
        self.resolved = resolved
        self.publisher = publisher
        self.regression = self.settings.regression or ""
        self.shard = self.settings.shard
        self.host = socket.gethostname()
        self.seed = seed
        self.dist_each = dist_each
        self._job_hook = job_hook
        self._hook_failed = False
        self._clock = StartClock()
        self._open: dict[tuple[str | None, str], _Open] = {}
        # How often each test that ran more than once ran so far, by node id (with the
        # worker under --dist each); _seen knows which ran at all.
        self._occurrences: dict[Any, int] = {}
        self._seen = SeenHashes()
        self._collect_failed: set[str] = set()
        # Jobs a worker_down already failed: xdist's own crash report for them follows.
        self._crashed: set[tuple[str | None, str]] = set()
        # The node id of each worker's last ended job (a worker may crash after it).
        self._last_done: dict[str, str] = {}
        self._submitted: int | None = None
        self._omitted = 0
        self._finished = 0
        self._results: dict[str, int] = {"pass": 0, "fail": 0, "skip": 0}
        self._started = False
        self._closed = False
        self._worker_counts: dict[str, int] = {}
        self._unreplaced = 0  # crashed workers (--dist each) no new worker took over yet
        self.start_epoch = _Wall.now()
        self._base_metadata = list(self.settings.metadata)
        self._build = self.settings.build
        self._category = str(self.settings.category)
        self._testgroup_rule = self.settings.testgroup
        # Job bodies are written as JSON from parts encoded once per job or per run.
        # raw_bodies: the sink only needs their bytes (a courier reads them back); else
        # (a pytest_simscope_job hook, delivery in this process) they are parsed back.
        publish_raw = getattr(publisher, "publish_raw", None)
        self._publish_raw: Callable[[MessageType, str, bytes], None] | None = (
            publish_raw if raw_bodies and job_hook is None else None
        )
        fields = RunFields(
            self.regression,
            self._category,
            self.host,
            self._build,
            self.seed,
            self._base_metadata,
            self._testgroup_rule,
        )
        self._fields = fields
        self._raw_head = fields.head
        self._raw_run = fields.run
        self._raw_meta = fields.meta
        self.jobdir_root: Path | None = None
        if self.settings.jobdir_root:
            # Where pytest started, not wherever a test moved the working folder to.
            self.jobdir_root = Path(self.settings.jobdir_root).expanduser()
            if not self.jobdir_root.is_absolute():
                self.jobdir_root = config.invocation_params.dir / self.jobdir_root
        # The usual passed test of this process is journaled in short, its facts only
        # (see compact), and no job log to write.
        writers_for = getattr(publisher, "short_writers", None)
        writers = (
            writers_for(fields)
            if self._publish_raw is not None
            and self.jobdir_root is None
            and writers_for is not None
            else None
        )
        self._plain = writers is not None
        if writers is not None:
            self._write_live, self._write_pass = writers
        # No way of its own for the usual report without _plain (a pytest_simscope_job
        # hook, delivery in this process or job logs need the general way), nor under
        # --dist each, whose tests are counted by worker.
        self.fast = self._plain and not dist_each
        # The NodeId object of the last report take() saw, and its job's key.
        self._last_ident: Any = None
        self._last_key: tuple[str | None, str] = (None, "")
        self._with_metadata: Mapping[str, Any] = local.with_metadata if local is not None else {}
        # Jobs open when their tests start (see started()), not at their setup reports.
        self.early = early and job_hook is None and not dist_each
        # The key of the job opened last (in this process: the test running; with early,
        # still ``early`` until its setup report comes).
        self._current: tuple[str | None, str] | None = None

    # -- regression ----------------------------------------------------------------------

    def _regression(self, **fields: Any) -> dict[str, Any]:
        """A Regression body: the name and every field that is set."""
        body: dict[str, Any] = {"name": self.regression}
        for name, value in fields.items():
            if value is not None:
                if name == "custom_metadata":
                    value = [list(pair) for pair in metadata_pairs(value)]
                body[name] = value
        return body

    def _send(self, kind: MessageType, body: Any) -> None:
        # Bodies are built here from known fields as plain dicts; the test suite validates
        # every published stream against the pydantic models (check.py) instead.
        self.publisher.publish(Envelope(kind, self.regression, body))

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.shard:
            return
        s = self.settings
        custom = list(self.resolved.ci.metadata) + list(s.regression_metadata)
        argv = ["pytest", *self.config.invocation_params.args]
        body = self._regression(
            starttime=stamp(epoch_micros(self.start_epoch)),
            pending=True,
            host=self.host,
            dir=str(self.config.invocation_params.dir),
            command=redact(mask_urls(_clean_str(shlex.join(str(a) for a in argv))), self.secrets),
            project=s.project,
            component=s.component,
            model_version=s.model_version,
            model_branch=s.model_branch,
            model_timestamp=s.model_timestamp,
            integrate=s.integrate,
            queue=s.queue,
            tag=s.tag,
            group=s.group,
            changelist_path=s.changelist_path,
            custom_metadata=custom or None,
        )
        self._send("regr-start", body)

    def set_submitted(self, count: int) -> None:
        """The number of jobs this run will publish is known (after collection)."""
        count += len(self._collect_failed)
        if count == self._submitted:
            return
        self._submitted = count
        if not self.shard:
            self._send("regr-update", self._regression(submitted=max(0, count - self._omitted)))

    def worker_collected(self, worker: str, count: int) -> None:
        """An xdist worker finished collecting *count* tests."""
        if self.dist_each and worker not in self._worker_counts and self._unreplaced:
            # Under --dist each, a worker started in place of a crashed one runs what
            # that one had left: its tests are already counted.
            self._unreplaced -= 1
            self._worker_counts[worker] = 0
            return
        self._worker_counts[worker] = count
        if self.dist_each:
            self.set_submitted(sum(self._worker_counts.values()))
        elif len(self._worker_counts) == 1:
            self.set_submitted(count)

    # -- jobs ----------------------------------------------------------------------------

    def _category_of(self, data: Mapping[str, Any]) -> str:
        return str(data.get("category") or self._category) if data else self._category

    def _testgroup(self, nodeid: str, data: Mapping[str, Any]) -> str | None:
        if data.get("testgroup"):
            return str(data["testgroup"])
        return self._testgroup_by_rule(nodeid)

    def _testgroup_by_rule(self, nodeid: str) -> str | None:
        return testgroup_by_rule(self._testgroup_rule, nodeid)

    def _testgroup_of(self, job: _Open) -> str | None:
        """*job*'s testgroup, worked out by the rule now if it was left for later."""
        testgroup = job.testgroup
        if testgroup is _BY_RULE:
            testgroup = job.testgroup = self._testgroup_by_rule(job.nodeid)
        return testgroup

    def _open_job(
        self, report: Any, key: tuple[str | None, str], data: Mapping[str, Any]
    ) -> _Open:
        nodeid = key[1]
        dist_each = self.dist_each
        # Nearly every node id runs once: only repeats are counted by name.
        if self._seen.add(f"{key[0]}\x00{nodeid}" if dist_each else nodeid):
            seen: Any = key if dist_each else nodeid
            count = self._occurrences.get(seen, 1) + 1
            self._occurrences[seen] = count
        else:
            count = 1
        uniqueid = make_uniqueid(
            nodeid,
            worker=key[0] if dist_each else None,
            shard=self.shard,
            occurrence=count,
        )
        start = getattr(report, "start", None) if report is not None else None
        if not isinstance(start, (int, float)) or not 0 < start < _FAR:
            start = _Wall.now()
        job = _Open(
            nodeid,
            key[0],
            uniqueid,
            start,
            self._clock.claim_micros(start),
            self._category_of(data),
            self._testgroup(nodeid, data) if data else _BY_RULE,
        )
        self._open[key] = job
        self._current = key
        return job

    def _job_json(self, job: _Open) -> tuple[bytes, bytes]:
        """The JSON of *job*'s body before the result's value and after it (made once a
        job): category, uniqueid, then start_time, config, testgroup, host, build, seed."""
        raw = job.raw
        if raw is None:
            uniqueid, start_time, config, testgroup = self._json_parts(job)
            tail = b',"start_time":"%b","config":%b%b%b' % (
                start_time,
                config,
                testgroup,
                self._raw_run,
            )
            raw = job.raw = (self._raw_head(job.category) + uniqueid + b',"result":', tail)
        return raw

    def _publish_job(self, kind: MessageType, body: dict[str, Any], report: Any) -> None:
        if self._job_hook is not None:
            try:
                from pytest_simscope.models import Job  # pydantic: only for hook users

                model = Job(**body)
                self._job_hook(job=model, report=report)
                body = model.body()
            except Exception as exc:
                if not self._hook_failed:
                    self._hook_failed = True
                    self.publisher._note(
                        f"pytest_simscope_job raised {type(exc).__name__}: {exc}; "
                        "jobs are published unchanged"
                    )
        self._send(kind, body)

    def started(self, nodeid: str) -> None:
        """A test starts (``pytest_runtest_logstart``, also an xdist worker's), with
        ``early``.

        Its job opens now and its live job is written, before its fixtures run: a test
        whose setup takes long shows as running, and one that dies in it (pytest killed,
        ``os._exit``, the xdist controller killed) is closed as a fail with the others that
        were running (see :class:`~pytest_simscope.journal.Unfinished`).  Whoever
        delivers still holds the live job ``live_after`` seconds and drops it if the test
        ended by then.  (A worker's test is known by its node id alone until its first
        report names the worker: see _adopt.)
        """
        try:
            key = (None, nodeid)
            if key in self._open or self._closed:
                return  # (in this process: pytest-rerunfailures starts each attempt)
            for worker in self._worker_counts:  # xdist's controller: a worker's the same
                if (worker, nodeid) in self._open:
                    return
            job = self._open_job(None, key, _NO_DATA)
            job.early = True
            if self._plain:
                self._send_usual_live(job)
            else:
                self._send_live(job, None)
        except Exception as exc:
            self.internal_error("test start", exc)

    def _adopt(self, key: tuple[str | None, str]) -> _Open | None:
        """The job opened when its test started, for a first report that has none: an
        xdist worker's (the start named no worker), or, in this process, a setup report
        whose node id is not the one the test started with (a plugin changed it: the same
        test, whose live job went out under the job's uniqueid, which it keeps)."""
        early = (None, key[1]) if key[0] is not None else self._current
        job = self._open.get(early) if early is not None else None
        if early is None or job is None or not job.early:
            return None
        del self._open[early]
        self._open[key] = job
        self._current = key
        job.worker = key[0]
        if job.nodeid != key[1]:
            job.nodeid = key[1]
            job.testgroup = _BY_RULE
            job.raw = job.usual = None
        return job

    def _send_live(self, job: _Open, report: Any) -> None:
        # Published when the test starts (see started()) or at its setup; whoever
        # delivers holds it live_after seconds and drops it if the test ended by then
        # (see courier.Relay).
        job.live_sent = True
        head, tail = self._job_json(job)
        raw = b"".join((head, b'"live"', tail, self._raw_meta, b"}"))
        self._publish_job_json("job-live", raw, report)

    def take(self, report: Any) -> None:
        """Take one report of the session: ``pytest_runtest_logreport``, three times a test,
        with ``fast`` (registered as the hook itself: see ``session.TestHooks``).

        The usual report, a passed phase of a test this process ran, with no marker and no
        metadata, is taken here in as few steps as can be: its instance dict is read
        directly (a missing attribute through getattr() costs an exception), and the
        test's job is opened, made live and finished as short journal lines (``_plain``,
        see compact).  Anything else goes to :meth:`_take_other`.  Nothing it
        raises reaches pytest.
        """
        try:
            if type(report) is _TestReport:
                extra = report.__dict__
                if extra.get("outcome") == "passed" and _UNUSUAL.isdisjoint(extra):
                    # pytest 9.2's node id is a property that makes a string each time;
                    # the reports of one test share one NodeId object (pytest 8 has none).
                    ident = extra.get("_id")
                    if ident is None or ident is not self._last_ident:
                        self._last_key = (None, report.nodeid)
                        self._last_ident = ident
                    key = self._last_key
                    duration = extra.get("duration")
                    if type(duration) is float:
                        # Only the teardown's stop counts: it is the job's (the general
                        # way finishes a job without one at the time it does).
                        when = extra.get("when")
                        job = self._open.get(key)
                        if when == "call":
                            if job is not None:
                                job.duration += duration
                                job.called = True
                                if extra.get("wasxfail") is not None:
                                    job.xfail = "xpassed"
                                return
                        elif "simscope" in extra.get("keywords", _MARKED):
                            pass  # a marked test's setup or teardown: the general way
                        elif when == "teardown":
                            stop = extra.get("stop")
                            if (
                                job is not None
                                and type(stop) is float
                                and 0.0 < stop < _FAR
                                and key[1] not in self._with_metadata
                            ):
                                job.duration += duration
                                job.stop_epoch = stop
                                if job.called and not job.rerun_pending:
                                    if job.outcome == "passed" and not (
                                        job.xfail or job.reruns or job.subtests or job.metadata
                                    ):
                                        self._finish_pass(key, job)
                                    else:
                                        self._finish(key, job)
                                elif self._ends(job):
                                    self._finish(key, job)
                                return
                        elif when == "setup":
                            if job is None:
                                if not self.early:
                                    job = self._open_job(report, key, _NO_DATA)
                                    job.duration = duration
                                    self._send_usual_live(job)
                                    return
                            elif job.early:  # opened by started()
                                job.early = False
                                job.duration += duration
                                return
            self._take_other(report)
        except Exception as exc:
            self.internal_error("test report", exc)

    def take_any(self, report: Any) -> None:
        """:meth:`take` without ``fast``: every report the general way."""
        try:
            self._take_other(report)
        except Exception as exc:
            self.internal_error("test report", exc)

    def _take_other(self, report: Any) -> None:
        """:meth:`take` for any report, the general way (all take() does where the usual
        report has no way of its own: see __init__)."""
        local = self._local
        self.logreport(report, local.data(report) if local is not None else None)

    def internal_error(self, what: str, exc: Exception) -> None:
        """Say that *what* failed with *exc* (in the summary): the run goes on."""
        self.publisher._note(f"internal error in {what}: {type(exc).__name__}: {exc}")

    def _json_parts(self, job: _Open) -> tuple[bytes, bytes, bytes, bytes]:
        """The JSON of *job*'s uniqueid, its start_time's value, its config, and its
        testgroup with the key (or nothing)."""
        nodeid = job.nodeid
        if job.uniqueid is nodeid and nodeid.isascii() and "\x00" not in nodeid:
            # The usual node id is its own uniqueid, and clean: one JSON string for both
            # (ASCII in, ASCII out).
            uniqueid = config = _json_string(nodeid).encode()
        else:
            uniqueid = _json(job.uniqueid)
            config = _json(_clean_str(nodeid))
        testgroup = self._fields.testgroup_json(self._testgroup_of(job))
        return (uniqueid, stamp_ascii(job.start_micros), config, testgroup)

    def _send_usual_live(self, job: _Open) -> None:
        """:meth:`_send_live` for a job of the run's category (``_plain``): journaled in
        short when its node id is its own uniqueid and plain (see compact)."""
        nodeid = job.nodeid
        if job.uniqueid is nodeid and is_short(nodeid):
            job.live_sent = True
            job.usual = usual = nodeid.encode("ascii")
            self._write_live(job.start_micros, usual)
        else:
            self._send_live(job, None)

    def logreport(self, report: pytest.TestReport, local: dict[str, Any] | None = None) -> None:
        """Take one report the general way; *local*: its marker fields and metadata when
        this process ran the test (an xdist worker's report carries them as an attribute
        instead)."""
        extra = getattr(report, "__dict__", None)
        if not isinstance(extra, dict):
            extra = {}
        worker = _worker_of(extra) if "node" in extra or "worker_id" in extra else None
        key = (worker, report.nodeid)
        when = str(report.when)  # not only pytest's three: "???" (a crash), a plugin's own
        data = local if local is not None else extra.get(DATA_ATTR) or {}
        if not isinstance(data, dict):
            data = {}
        job = self._open.get(key)
        if job is None and self.early and (worker is not None or when == "setup"):
            job = self._adopt(key)
        if job is None and worker is None and when != "setup" and self._current is not None:
            # A later phase's report whose node id a plugin changed (the test's setup
            # report had its own): it is the running test's.
            current = self._open.get(self._current)
            if current is not None and self._current[0] is None:
                job, key = current, self._current
        if when == "???":
            # A crash report: xdist's for the test a crashed worker was running (unless
            # worker_down, which xdist calls first, already ended it), or pytest-forked's
            # for a test whose forked process died.  It ends the job.
            if job is None and key in self._crashed:
                self._crashed.discard(key)
                return
            if job is None:
                if worker is not None and self._last_done.get(worker) == report.nodeid:
                    # It died after the test's teardown report, which ended the job.
                    self.publisher._note(
                        f"worker {worker!r} crashed after {report.nodeid!r} had ended; "
                        "its job keeps the result of its reports"
                    )
                    return
                job = self._open_job(report, key, data)
            self._crashed_with(job, report, extra)
            self._finish(key, job)
            return
        if job is None:
            job = self._open_job(report, key, data)
        subtest = type(report) is not _TestReport and _is_subtest(report)
        self._phase(job, report, when, data, extra, subtest)
        if when == "teardown" and not subtest and self._open.get(key) is job and self._ends(job):
            self._finish(key, job)

    @staticmethod
    def _ends(job: _Open) -> bool:
        """Whether the teardown report of *job*'s current attempt ends it.

        Not when pytest-rerunfailures asked for another attempt, nor when the attempt's
        setup passed and its call was never reported: flaky runs a failed attempt again
        so, handing on only its setup and teardown reports.  Either counts as a rerun.
        """
        if job.rerun_pending:
            return False
        if job.called or job.outcome != "passed" or job.xfail:
            return True
        job.reruns += 1
        job.rerun_pending = True
        return False

    def _phase(
        self,
        job: _Open,
        report: Any,
        when: str,
        data: dict[str, Any],
        extra: dict[str, Any],
        subtest: bool,
    ) -> None:
        """Take a setup, call or teardown report (or, *subtest*, a subtest's) of *job*."""
        if job.rerun_pending and (when == "setup" or subtest):
            # The next attempt of a rerun test: only the last attempt decides.  (Its
            # subtests report while it runs; pytest-rerunfailures hands on its setup
            # report only after it.)
            job.rerun_pending = False
            job.called = False
            job.outcome = "passed"
            job.failures = ()
            job.xfail = ""
            job.skip_reason = ""
            job.metadata = ()
            job.sections = ()
            job.subtests = _NO_SUBTESTS
        # Not only pytest's three outcomes: pytest-rerunfailures adds "rerun".
        outcome: str = str(report.outcome)
        if outcome == "rerun":  # pytest-rerunfailures' own outcome
            if not job.rerun_pending:  # once an attempt (its call and teardown may both)
                job.reruns += 1
            job.rerun_pending = True
            job.last_report = report
            return
        if subtest:
            # A subtest is part of its test's job: a failing one fails the job, the others
            # are counted; none of them ends the test or changes its own outcome.
            job.subtests = {**job.subtests, outcome: job.subtests.get(outcome, 0) + 1}
            if outcome == "failed":
                job.outcome = "failed"
                job.failures = [*job.failures, ("subtest", report)]
            return
        self._took(job, report, extra)
        if when != "setup" and when != "teardown":  # a call (or a plugin's own phase)
            job.called = True
        if data:
            added = data.get("metadata")
            if added:
                job.metadata = [*job.metadata, *metadata_pairs(added)]
            if when == "setup" and (job.early or not job.live_sent):
                # The job opened when its test started, or on an earlier report (a
                # subtest's, before pytest-rerunfailures handed on the setup report): the
                # marker's fields.
                fields = (self._category_of(data), self._testgroup(job.nodeid, data))
                if fields != (job.category, self._testgroup_of(job)):
                    job.category, job.testgroup = fields
                    job.raw = None
                    job.usual = None
                    if job.live_sent:  # when it started: sent again with them
                        self._send_live(job, report)
        if when == "setup":
            job.early = False
        if outcome == "passed":
            if when == "setup":
                if not job.live_sent:
                    self._send_live(job, report)
            elif when == "call" and extra.get("wasxfail") is not None:
                job.xfail = "xpassed"
            return
        wasxfail = extra.get("wasxfail")
        if when == "setup":
            if outcome == "skipped":
                if wasxfail is not None:
                    job.xfail = "xfailed"
                else:
                    job.outcome = "skipped"
                    job.skip_reason = _crash_summary(report.longrepr)
            elif not job.live_sent:
                self._send_live(job, report)
        if outcome == "failed":
            job.outcome = "failed"
            job.failures = [*job.failures, (when, report)]
        elif outcome == "skipped" and when == "call":
            if wasxfail is not None:
                job.xfail = "xfailed"
            else:
                job.outcome = "skipped" if job.outcome != "failed" else "failed"
                job.skip_reason = _crash_summary(report.longrepr)

    def _crashed_with(self, job: _Open, report: Any, extra: dict[str, Any]) -> None:
        """A crash report ends *job*: its outcome (pytest-forked's may be an xfail)."""
        job.last_report = report
        outcome = str(report.outcome)
        wasxfail = extra.get("wasxfail")
        if outcome == "skipped" and wasxfail is not None:
            job.xfail = "xfailed"
        elif outcome == "skipped":
            job.outcome = "skipped"
            job.skip_reason = _crash_summary(report.longrepr)
        elif outcome != "passed":
            job.outcome = "failed"
            job.failures = [*job.failures, ("crash", report)]

    def _took(self, job: _Open, report: Any, extra: dict[str, Any]) -> None:
        """A phase of *job* ended with *report*: its time, and the output captured."""
        job.last_report = report
        duration = extra.get("duration")
        if duration is None:
            duration = getattr(report, "duration", None)
        if isinstance(duration, (int, float)):
            job.duration += duration
        stop = extra.get("stop")
        if stop is None:
            stop = getattr(report, "stop", None)
        job.stop_epoch = stop if isinstance(stop, (int, float)) and 0 < stop < _FAR else _Wall.now()
        if self.jobdir_root is not None:
            # Each report carries every section captured so far for the test.
            sections = getattr(report, "sections", ()) or ()
            job.sections = [(str(name), _clean_str(content)) for name, content in sections]

    def _finish(self, key: tuple[str | None, str], job: _Open, *, why: str = "") -> None:
        self._open.pop(key, None)
        if key[0] is not None:
            self._last_done[key[0]] = key[1]
        if why:
            job.outcome = "failed"
        if job.outcome == "failed":
            result = "fail"
        elif job.outcome == "skipped":
            result = "skip"
        else:
            result = "pass"
        if result == "skip" and self.settings.skips == "omit" and not job.live_sent:
            self._omitted += 1
            if self._submitted is not None and not self.shard:
                self._send(
                    "regr-update", self._regression(submitted=self._submitted - self._omitted)
                )
            return
        start = job.start_epoch
        stop = job.stop_epoch or _Wall.now()
        compute = runtime = -1
        if result != "skip":
            compute = _ms(job.duration)
            runtime = max(compute, _ms(stop - start))
        finish_time = stamp_ascii(max(epoch_micros(stop), job.start_micros))
        message = self._failure_text(job, why) if result == "fail" else ""
        metadata = self._job_metadata(job, result)
        jobdir = self._write_log(job, message) if self.jobdir_root is not None else None
        self._finished += 1
        self._results[result] += 1
        head, tail = self._job_json(job)
        parts = [head, _RESULTS[result], tail]
        if compute >= 0:
            parts.append(b',"compute_ms":%d,"runtime_ms":%d' % (compute, runtime))
        parts.append(b',"finish_time":"%b","fail_message":' % finish_time)
        parts.append(_json(message) if message else b'""')
        if metadata:
            pairs = self._base_metadata + metadata
            parts.append(b',"metadata":' + encode(dumps([list(p) for p in pairs])))
        else:
            parts.append(self._raw_meta)
        if jobdir:
            parts.append(b',"jobdir":' + _json(jobdir))
        parts.append(b"}")
        self._publish_job_json("job-finish", b"".join(parts), job.last_report)

    def _finish_pass(self, key: tuple[str | None, str], job: _Open) -> None:
        """:meth:`_finish` for the usual job (``_plain``): it passed with nothing to add;
        journaled in short, as its live job was (see compact)."""
        usual = job.usual
        if usual is None:  # its live job went the general way
            self._finish(key, job)
            return
        stop = job.stop_epoch  # a time take() checked
        micros = max(epoch_micros(stop), job.start_micros)
        compute = _ms(job.duration)
        runtime = max(_ms(stop - job.start_epoch), compute)
        del self._open[key]
        self._finished += 1
        self._results["pass"] += 1
        self._write_pass(job.start_micros, micros, compute, runtime, usual)

    def _publish_job_json(self, kind: MessageType, raw: bytes, report: Any) -> None:
        """Publish a job message whose body is *raw* JSON: as it is when only its bytes
        are needed, else (a hook, or delivery in this process) as the dict it encodes."""
        if self._publish_raw is not None:
            self._publish_raw(kind, self.regression, raw)
        else:
            self._publish_job(kind, json.loads(raw), report)

    def _job_metadata(self, job: _Open, result: str) -> list[tuple[str, str]]:
        """The job's own metadata pairs (the run's come first, see _finish)."""
        if not (job.metadata or job.xfail or job.reruns or job.subtests or result == "skip"):
            return []
        metadata = list(job.metadata)
        if job.xfail:
            metadata.append(("pytest_outcome", job.xfail))
        if result == "skip" and job.skip_reason:
            metadata.append(("skip_reason", job.skip_reason[:300]))
        if job.reruns:
            metadata.append(("reruns", str(job.reruns)))
        if job.subtests:
            for outcome, count in sorted(job.subtests.items()):
                metadata.append((f"subtests_{outcome}", str(count)))
        return metadata

    def _failure_text(self, job: _Open, why: str) -> str:
        limit = self.settings.fail_message_limit
        if why:
            details = "\n\n".join(_longrepr_text(r) for _, r in job.failures)
            return fail_message(why, details, limit)
        if not job.failures:
            return fail_message("failed", "", limit)
        when, report = job.failures[0]
        prefix = _PHASE_PREFIX.get(when, "")
        summary = _crash_summary(report.longrepr)
        if when == "call" and getattr(report, "wasxfail", None) is not None:
            summary = summary or "XPASS(strict)"
        details = "\n\n".join(
            (f"[{w}] " if len(job.failures) > 1 else "") + _longrepr_text(r)
            for w, r in job.failures
        )
        return fail_message(summary, details, limit, prefix)

    def _write_log(self, job: _Open, message: str) -> str | None:
        assert self.jobdir_root is not None
        try:
            folder = (
                self.jobdir_root
                / (safe_slug(self.regression, 60) or "regression")
                / f"{job_slug(job.nodeid, 60)}-{_digest(job.uniqueid)}"
            )
            folder.mkdir(parents=True, exist_ok=True)
            parts = [f"test: {job.nodeid}", f"uniqueid: {job.uniqueid}", ""]
            if message:
                parts += ["== failure ==", message, ""]
            for name, content in job.sections:
                parts += [f"== {name} ==", content, ""]
            (folder / "log.txt").write_text(
                "\n".join(parts), encoding="utf-8", errors="backslashreplace"
            )
            return str(folder.resolve())
        except OSError as exc:
            self.publisher._note(f"cannot write the job log under {self.jobdir_root}: {exc}")
            self.jobdir_root = None
            return None

    def collect_failed(self, report: pytest.CollectReport) -> None:
        """A file that fails to import becomes a fail job of its own."""
        nodeid = report.nodeid or "<collection>"
        if nodeid in self._collect_failed:
            return  # every xdist worker reports the same collection error
        self._collect_failed.add(nodeid)
        if self._submitted is not None:
            self._submitted += 1
            if not self.shard:
                self._send(
                    "regr-update", self._regression(submitted=self._submitted - self._omitted)
                )
        start = stamp(self._clock.claim_micros(_Wall.now()))
        body: dict[str, Any] = {
            "category": self.settings.category,
            # A collector's node id never names a test (those go on with "::name"), so
            # the node id alone is unique; a "collect:" prefix would be escaped as part of
            # the file path.
            "uniqueid": make_uniqueid(nodeid, shard=self.shard),
            "result": "fail",
            "start_time": start,
            "finish_time": start,
            "compute_ms": 0,
            "runtime_ms": 0,
            "config": _clean_str(nodeid),
            "host": self.host,
            "fail_message": fail_message(
                _crash_summary(report.longrepr) or "collection failed",
                _longrepr_text(report),
                self.settings.fail_message_limit,
                "collection error: ",
            ),
        }
        testgroup = self._testgroup(nodeid, {})
        if testgroup:
            body["testgroup"] = testgroup
        if self.settings.build:
            body["build"] = self.settings.build
        if self._base_metadata:
            body["metadata"] = list(self._base_metadata)
        self._finished += 1
        self._results["fail"] += 1
        self._publish_job("job-finish", body, report)

    def interrupted(self, nodeid: str) -> None:
        """The session was interrupted while this process ran *nodeid*: a job for it, if
        it had none yet, for :meth:`finish` to end with the others."""
        key = (None, nodeid)
        # (One that ran already, its job ended, is not run again: the interrupt came
        # after it.)
        if key not in self._open and not self._closed and nodeid not in self._seen:
            self._open_job(None, key, {})

    def worker_down(self, worker: str, error: Any) -> None:
        """An xdist worker went away: its running tests end as failures."""
        if self.dist_each and worker in self._worker_counts:
            self._unreplaced += 1
        for key in [k for k in self._open if k[0] == worker]:
            job = self._open[key]
            self._crashed.add(key)
            self._finish(key, job, why=f"worker {worker!r} crashed while running {job.nodeid!r}")

    # -- end -----------------------------------------------------------------------------

    def finish(self, exitstatus: int | pytest.ExitCode) -> None:
        """Close every open job and the regression; safe to call more than once."""
        if self._closed or not self._started:
            return
        self._closed = True
        code = int(exitstatus)
        if code == pytest.ExitCode.INTERRUPTED:
            reason = "interrupted: the test session was stopped before this test finished"
        elif code == pytest.ExitCode.INTERNAL_ERROR:
            reason = "internal error: pytest failed before this test finished"
        else:
            reason = "the test session ended before this test finished"
        for key, job in list(self._open.items()):
            self._finish(key, job, why=reason)
        if self.shard:
            return
        # Tests that never started (-x, --maxfail, an interrupt, collection errors that
        # stop the session) are not submitted: the final count is the jobs published, so
        # a run that ended cleanly is not shown ABORTED.
        fields: dict[str, Any] = {"pending": False, "submitted": self._finished}
        self._send("regr-finish", self._regression(**fields))

    @property
    def results(self) -> dict[str, int]:
        return dict(self._results)


def _ms(seconds: float) -> int:
    """*seconds* as whole milliseconds from 0 to MAX_JOB_MS (NaN: 0)."""
    if 0.0 <= seconds < _MAX_SECONDS:
        return round(seconds * 1000)
    return MAX_JOB_MS if seconds >= _MAX_SECONDS else 0


_MAX_SECONDS = MAX_JOB_MS / 1000


def _digest(text: str) -> str:
    # hash() of a str changes with every process (PYTHONHASHSEED): jobdir names must not.
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
