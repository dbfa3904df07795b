"""The offline queue: complete entries only, safe and unique names, the SYS_19 manifest."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_simscope.models import Envelope
from pytest_simscope.transports import queue as queue_module
from pytest_simscope.transports.queue import (
    ARCHIVE,
    ENTRY_FILE,
    GITIGNORE_TEXT,
    OUTBOX,
    TMP,
    OfflineQueue,
    read_entry,
    read_outbox,
)

REGRESSION = "myrun/123"
NAME = re.compile(r"job-[0-9]{8}-[0-9]{6}-[A-Za-z0-9._-]+")
RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(10)}
CREATED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def live(uniqueid: str, config: str | None = None, regression: str = REGRESSION) -> Envelope:
    body = {"category": "pytest", "uniqueid": uniqueid, "result": "live"}
    if config is not None:
        body["config"] = config
    return Envelope(type="job-live", regression=regression, body=body)


def finish(
    uniqueid: str, result: str = "pass", config: str | None = None, regression: str = REGRESSION
) -> Envelope:
    body = {"category": "pytest", "uniqueid": uniqueid, "result": result}
    if config is not None:
        body["config"] = config
    return Envelope(type="job-finish", regression=regression, body=body)


def regr(kind: str, regression: str = REGRESSION, **fields: Any) -> Envelope:
    return Envelope(type=kind, regression=regression, body={"name": regression, **fields})


def entries(root: Path, where: str = OUTBOX) -> dict[str, dict[str, Any]]:
    return {folder.name: read_entry(folder) for folder in sorted((root / where).iterdir())}


def assert_windows_safe(name: str) -> None:
    assert NAME.fullmatch(name), name
    assert len(name) <= 255
    assert not name.endswith((".", " "))
    assert name.split(".")[0].upper() not in RESERVED


def assert_clean(root: Path) -> None:
    """Every entry complete (only job.json, valid), nothing left in tmp/."""
    assert list((root / TMP).iterdir()) == []
    for folder in (root / OUTBOX).iterdir():
        assert [child.name for child in folder.iterdir()] == [ENTRY_FILE]
        read_entry(folder)


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    """Every entry is made in the same second."""
    moment = dt.datetime(2026, 2, 10, 14, 30, 22, 500_000, tzinfo=dt.timezone.utc)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    nanoseconds = (moment - epoch) // dt.timedelta(microseconds=1) * 1000
    monkeypatch.setattr(queue_module, "_now_ns", lambda: nanoseconds)
    return moment


# --- the manifest ---------------------------------------------------------------------------


def test_job_entry_manifest_and_status(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path, run_id="0123456789ab", run_started="2026-02-10T14:30:22+00:00",
                         created_by="tester")
    queue.send([regr("regr-start", pending=True)])
    queue.send([live("tests/test_a.py::test_b", "tests/test_a.py::test_b")])
    found = entries(tmp_path)
    assert len(found) == 2
    (job_name,) = [name for name in found if "test_a-test_b" in name]
    job = found[job_name]
    assert job["status"] == "running"
    queue.send([finish("tests/test_a.py::test_b", "pass", "tests/test_a.py::test_b")])
    queue.send([regr("regr-finish", pending=False)])
    found = entries(tmp_path)
    job = found[job_name]
    assert CREATED_AT.fullmatch(job.pop("created_at"))
    assert CREATED_AT.fullmatch(job.pop("updated_at"))
    assert job == {
        "job_id": job_name,
        "created_by": "tester",
        "project": REGRESSION,
        "type": "simscope-job",
        "status": "completed",
        "run_id": "0123456789ab",
        "run_started": "2026-02-10T14:30:22+00:00",
        "uniqueid": "tests/test_a.py::test_b",
        "messages": [
            {"seq": 2, **live("tests/test_a.py::test_b", "tests/test_a.py::test_b").as_record()},
            {"seq": 3, **finish("tests/test_a.py::test_b", "pass",
                                "tests/test_a.py::test_b").as_record()},
        ],
    }
    assert job_name.startswith("job-") and job_name.endswith("-01234567-000002")
    (regression_name,) = [name for name in found if name != job_name]
    assert "-regression-myrun-123-" in regression_name
    regression = found[regression_name]
    assert regression["job_id"] == regression_name
    assert regression["type"] == "simscope-regression"
    assert regression["status"] == "completed"
    assert regression["uniqueid"] is None
    assert [m["type"] for m in regression["messages"]] == ["regr-start", "regr-finish"]
    assert_clean(tmp_path)


@pytest.mark.parametrize(("result", "status"), [("pass", "completed"), ("skip", "completed"),
                                                 ("fail", "failed")])
def test_finished_job_status(tmp_path: Path, result: str, status: str) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([live("t::a"), finish("t::a", result)])
    (entry,) = entries(tmp_path).values()
    assert entry["status"] == status


def test_regression_entry_is_running_until_it_finishes(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([regr("regr-start", pending=True), regr("regr-update", submitted=3)])
    (entry,) = entries(tmp_path).values()
    assert entry["status"] == "running"
    assert [m["type"] for m in entry["messages"]] == ["regr-start", "regr-update"]


def test_layout_and_gitignore(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "queue"
    OfflineQueue(root).send([finish("t::a")])
    assert sorted(p.name for p in root.iterdir()) == [
        ".gitignore", "archive", "inbox", "journal", "outbox", "tmp"
    ]
    assert (root / ".gitignore").read_text() == GITIGNORE_TEXT
    assert "*" in GITIGNORE_TEXT.splitlines()


def test_existing_gitignore_is_kept(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("mine\n")
    OfflineQueue(tmp_path).send([finish("t::a")])
    assert (tmp_path / ".gitignore").read_text() == "mine\n"


# --- order ------------------------------------------------------------------------------------


def test_read_outbox_returns_publication_order(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    stream = [
        regr("regr-start", pending=True),
        regr("regr-update", submitted=3),
        live("t::c"), live("t::a"), live("t::b"),
        finish("t::b"), finish("t::c", "fail"),
        Envelope.batch(REGRESSION, [finish("t::a"), finish("t::z", "skip")]),
        regr("regr-finish", pending=False),
    ]
    for envelope in stream:
        queue.send([envelope])
    expected = []
    for envelope in stream:
        if envelope.type == "batch-job-finish":
            assert isinstance(envelope.body, list)
            expected += [finish(body["uniqueid"], body["result"]).as_record()
                         for body in envelope.body]
        else:
            expected.append(envelope.as_record())
    assert read_outbox(tmp_path) == expected


def test_read_outbox_orders_runs_by_start(tmp_path: Path) -> None:
    later = OfflineQueue(tmp_path, run_id="bbbb", run_started="2026-01-02T00:00:00+00:00")
    earlier = OfflineQueue(tmp_path, run_id="aaaa", run_started="2026-01-01T00:00:00+00:00")
    later.send([finish("t::later", regression="r2")])
    earlier.send([finish("t::x", regression="r1"), finish("t::y", regression="r1")])
    assert [r["body"]["uniqueid"] for r in read_outbox(tmp_path)] == ["t::x", "t::y", "t::later"]


def test_read_outbox_of_nothing(tmp_path: Path) -> None:
    assert read_outbox(tmp_path / "missing") == []


# --- batches ----------------------------------------------------------------------------------


def test_batch_job_finish_is_one_entry_per_job(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([live("t::a")])
    finishes = [finish(uid, result) for uid, result in
                (("t::a", "pass"), ("t::b", "fail"), ("t::c", "skip"))]
    queue.send([Envelope.batch(REGRESSION, finishes)])
    found = list(entries(tmp_path).values())
    assert len(found) == 3
    by_id = {entry["uniqueid"]: entry for entry in found}
    assert [m["type"] for m in by_id["t::a"]["messages"]] == ["job-live", "job-finish"]
    assert by_id["t::a"]["status"] == "completed"
    assert by_id["t::b"]["status"] == "failed"
    assert [m["body"] for m in by_id["t::c"]["messages"]] == [finishes[2].body]
    assert all(m["type"] == "job-finish" for m in by_id["t::c"]["messages"])
    assert_clean(tmp_path)


# --- archived meanwhile -----------------------------------------------------------------------


def test_entry_archived_between_live_and_finish(tmp_path: Path) -> None:
    """The finish starts a new entry: nothing is lost, nothing written into the archive."""
    queue = OfflineQueue(tmp_path)
    queue.send([live("t::a")])
    (name,) = entries(tmp_path)
    shutil.move(str(tmp_path / OUTBOX / name), str(tmp_path / ARCHIVE / name))
    queue.send([live("t::a")])  # a heartbeat: also a new entry
    queue.send([finish("t::a", "fail")])
    archived = entries(tmp_path, ARCHIVE)
    assert [m["type"] for m in archived[name]["messages"]] == ["job-live"]
    assert [child.name for child in (tmp_path / ARCHIVE / name).iterdir()] == [ENTRY_FILE]
    (new_name, new_entry) = next(iter(entries(tmp_path).items()))
    assert new_name != name
    assert [m["type"] for m in new_entry["messages"]] == ["job-live", "job-finish"]
    assert new_entry["status"] == "failed"
    all_seqs = sorted(m["seq"] for e in (*archived.values(), new_entry) for m in e["messages"])
    assert all_seqs == [1, 2, 3]
    assert_clean(tmp_path)


def test_regression_entry_archived_meanwhile(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.send([regr("regr-start", pending=True)])
    (name,) = entries(tmp_path)
    shutil.rmtree(tmp_path / OUTBOX / name)
    queue.send([regr("regr-finish", pending=False)])
    (entry,) = entries(tmp_path).values()
    assert [m["type"] for m in entry["messages"]] == ["regr-finish"]
    assert entry["status"] == "completed"


# --- complete entries only ---------------------------------------------------------------------


def test_only_complete_entries_are_ever_seen(tmp_path: Path) -> None:
    """A watcher polling outbox/ (as a sync tool would) never finds a partial entry."""
    queue = OfflineQueue(tmp_path)
    queue.send([regr("regr-start", pending=True)])
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def watch() -> None:
        while not stop.is_set():
            for folder in list((tmp_path / OUTBOX).iterdir()):
                try:
                    children = sorted(child.name for child in folder.iterdir())
                    text = (folder / ENTRY_FILE).read_text(encoding="utf-8")
                except FileNotFoundError:
                    problems.append(f"{folder.name}: no {ENTRY_FILE}")
                    continue
                if children != [ENTRY_FILE]:
                    problems.append(f"{folder.name}: holds {children}")
                try:
                    json.loads(text)
                except ValueError:
                    problems.append(f"{folder.name}: partial {ENTRY_FILE}")
                seen.add(folder.name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for index in range(400):
            queue.send([live(f"t::{index}", f"t.py::test_{index}")])
            queue.send([finish(f"t::{index}", "pass", f"t.py::test_{index}")])
    finally:
        stop.set()
        watcher.join()
    assert problems == []
    assert len(seen) > 1
    assert_clean(tmp_path)


# --- the bytes of job.json ----------------------------------------------------------------------

ODD_TEXT = [
    "tests/日本語.py::テスト[ü]",
    "\udcff\udcfe.py::x[\udc80]",
    "tests/a.py::t[\x00nul\x00]",
    'q"uo\\te\n\t\u2028',
    "<too deep>",
    "\U0001f600 \ud83d",
]


def test_job_json_is_the_encoded_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen_now: dt.datetime
) -> None:
    """job.json, assembled around each body's own bytes, is exactly _encode(manifest)."""
    written: list[bytes] = []
    assemble = queue_module._Entry.data

    def checked(entry: queue_module._Entry, end: bytes) -> bytes:
        data = assemble(entry, end)
        assert data == queue_module._encode(entry.manifest)
        written.append(data)
        return data

    monkeypatch.setattr(queue_module._Entry, "data", checked)
    loop: dict[str, Any] = {"n": 1}
    loop["self"] = loop  # cut by dumps: at another depth alone than inside a manifest
    queue = OfflineQueue(tmp_path, run_id="ü\udcff\x00", run_started="2026\x00ü",
                         created_by='me "\udcff"')
    for text in ODD_TEXT:
        regression = f"r/{text}"
        queue.send([regr("regr-start", regression=regression, pending=True, note=text)])
        first = live(text, text, regression)
        first.body_bytes()  # encoded before, as the journal leaves it
        queue.send([first, finish(text, "fail", text, regression)])
        queue.send([Envelope.batch(regression, [finish(text + "1", regression=regression),
                                                finish(text + "2", "skip", "\x00")])])
        queue.send([Envelope("job-live", regression, {"uniqueid": text + "3", "self": loop}),
                    Envelope("job-finish", regression, {"uniqueid": text + "3", "n": 1.5})])
        queue.send([Envelope("job-finish", regression, {"result": text, "big": 10**30}),
                    Envelope("job-live", regression, [{"uniqueid": text}]),
                    Envelope("job-finish", regression, None)])
        queue.send([regr("regr-finish", regression=regression, pending=False)])
    found = entries(tmp_path)
    assert len(found) == len(ODD_TEXT) * 8
    for name, entry in found.items():
        data = (tmp_path / OUTBOX / name / ENTRY_FILE).read_bytes()
        assert data in written
        assert entry["job_id"] == name
        assert entry["created_at"] == "2026-02-10T14:30:22Z"
        assert entry.get("updated_at", entry["created_at"]) == entry["created_at"]
    records = read_outbox(tmp_path)
    assert [r["body"].get("uniqueid") for r in records if r["type"] == "job-finish"
            and isinstance(r["body"], dict)][:5] == [ODD_TEXT[0] + suffix for suffix in
                                                     ("", "1", "2", "3")] + [None]
    assert_clean(tmp_path)


def test_a_body_that_cannot_be_encoded_leaves_nothing(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    body: dict[Any, Any] = {"uniqueid": "t::a", (1, 2): "a key JSON cannot have"}
    with pytest.raises(TypeError):
        queue.send([Envelope("job-finish", REGRESSION, body)])
    assert queue.delivered == 0
    queue.send([finish("t::b")])
    assert [entry["uniqueid"] for entry in entries(tmp_path).values()] == ["t::b"]
    assert_clean(tmp_path)


# --- names ------------------------------------------------------------------------------------


def test_five_thousand_jobs_in_one_second(tmp_path: Path, frozen_now: dt.datetime) -> None:
    queue = OfflineQueue(tmp_path)
    # Half share one config; everything is written in the same (frozen) second.
    queue.send([finish(f"t::{i}", "pass", "tests/test_same.py::test_same" if i % 2 else f"x{i}")
                for i in range(5000)])
    names = [folder.name for folder in (tmp_path / OUTBOX).iterdir()]
    assert len(names) == len(set(names)) == 5000
    assert len({name.lower() for name in names}) == 5000  # distinct on Windows and macOS too
    for name in names:
        assert_windows_safe(name)
        assert name.startswith("job-20260210-143022-")
    assert len(read_outbox(tmp_path)) == 5000
    assert_clean(tmp_path)


def test_two_writers_with_one_run_id(tmp_path: Path, frozen_now: dt.datetime) -> None:
    """Names never clash, even for two queue objects of one run in the same second."""
    first = OfflineQueue(tmp_path, run_id="samerun")
    second = OfflineQueue(tmp_path, run_id="samerun")
    for index in range(50):
        first.send([finish(f"t::{index}", config="t.py::x")])
        second.send([finish(f"u::{index}", config="t.py::x")])
    found = entries(tmp_path)
    assert len(found) == 100
    assert {e["uniqueid"] for e in found.values()} == {
        *(f"t::{i}" for i in range(50)), *(f"u::{i}" for i in range(50))
    }
    for name, entry in found.items():
        assert entry["job_id"] == name
    assert_clean(tmp_path)


NASTY = [
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\System32\\cmd.exe",
    "\\\\server\\share\\x",
    "tests/a.py::test[\x00nul]",
    "tests/a.py::test[CON]",
    "CON",
    "nul.txt",
    "tests/日本語.py::テスト[ü]",
    "\udcff\udcfe.py::x",
    "..",
    ".",
    "tests/a.py::test[" + "x" * 10_000 + "]",
    "a" * 10_000,
    "tests/a.py::test[ . . ]",
    "~/.ssh/id_rsa",
    "$(rm -rf /)",
    "tests/a.py::test[a/b\\c:d*e?f\"g<h>i|j]",
]


@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_ids_and_regressions_stay_inside(tmp_path: Path, text: str) -> None:
    root = tmp_path / "q"
    queue = OfflineQueue(root, run_id=text)
    queue.send([regr("regr-start", regression=text, pending=True),
                live(text, text, regression=text), finish(text, "fail", text, regression=text),
                regr("regr-finish", regression=text, pending=False)])
    assert_stays_inside(tmp_path, root)
    found = entries(root)
    assert len(found) == 2
    for name, entry in found.items():
        assert_windows_safe(name)
        assert entry["job_id"] == name
        assert entry["project"] == text
    records = read_outbox(root)
    assert [r["type"] for r in records] == ["regr-start", "job-live", "job-finish", "regr-finish"]
    assert records[1]["body"]["uniqueid"] == text


def assert_stays_inside(top: Path, root: Path) -> None:
    for path in top.rglob("*"):
        assert path == root or root in path.parents, path
    for folder in (root / OUTBOX).iterdir():
        assert folder.parent == root / OUTBOX
    assert_clean(root)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(st.text(max_size=300), min_size=1, max_size=5),
    regression=st.text(min_size=1, max_size=200),
    run_id=st.text(max_size=20),
)
def test_any_id_stays_inside(ids: list[str], regression: str, run_id: str) -> None:
    with tempfile.TemporaryDirectory() as name:
        top = Path(name)
        root = top / "queue"
        queue = OfflineQueue(root, run_id=run_id or None)
        for uniqueid in ids:
            queue.send([live(uniqueid, uniqueid, regression)])
        for uniqueid in ids:
            queue.send([finish(uniqueid, "pass", uniqueid, regression)])
        assert_stays_inside(top, root)
        for folder in (root / OUTBOX).iterdir():
            assert_windows_safe(folder.name)
        assert len(read_outbox(root)) == 2 * len(ids)


# --- through pytest -----------------------------------------------------------------------------


def test_default_queue_through_pytest(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    for name in ("SIMSCOPE_URL", "SIMSCOPE_QUEUE_DIR", "SIMSCOPE_REGRESSION"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(
        test_nasty="""
        import pytest

        @pytest.mark.parametrize("x", ["../../etc", "CON", "日本", "a" * 300, "/abs"])
        def test_p(x):
            assert x != "CON"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--simscope-regression=nasty/1")
    result.assert_outcomes(passed=4, failed=1)
    root = pytester.path / ".simscope" / "queue"
    assert (root / ".gitignore").read_text() == GITIGNORE_TEXT
    assert (pytester.path / ".simscope" / ".gitignore").is_file()
    assert_clean(root)
    found = entries(root)
    assert len(found) == 6  # the regression and five jobs
    for name, entry in found.items():
        assert_windows_safe(name)
        assert entry["job_id"] == name
        assert entry["project"] == "nasty/1"
    statuses = sorted(entry["status"] for entry in found.values())
    assert statuses == ["completed"] * 5 + ["failed"]
    records = read_outbox(root)
    types = [r["type"] for r in records]
    assert types[:2] == ["regr-start", "regr-update"] and types[-1] == "regr-finish"
    assert types.count("job-finish") == 5
    assert {path.parent for path in pytester.path.rglob("job.json")} == {
        root / OUTBOX / name for name in found
    }
