"""The offline queue: a file-based job queue in the SYS_19 layout.

::

    <queue>/
    ├── .gitignore              keeps the queue out of version control
    ├── tmp/                    entries being built (same filesystem, then renamed)
    ├── journal/                the publisher's journals (see journal.py)
    ├── outbox/                 complete entries waiting to be delivered
    │   └── job-YYYYMMDD-HHMMSS-<name>/job.json
    ├── inbox/                  results handed back by a remote side (never changed in place)
    └── archive/                delivered entries

Every job gets one entry; the regression's own messages (start, updates, finish) get one
entry per run.  ``job.json`` carries the SYS_19 manifest fields and the Simscope messages
to deliver, each with its sequence number within the run, so a later drain can replay them
in the order they were published.  An entry appears in ``outbox/`` only complete: it is
built in ``tmp/`` and renamed; later messages of the same job replace ``job.json``
atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_simscope import __version__
from pytest_simscope.errors import PermanentError
from pytest_simscope.identity import job_slug, safe_slug
from pytest_simscope.messages import REGRESSION_TYPES, Envelope, dumps
from pytest_simscope.transports.base import Transport

ENTRY_FILE = "job.json"
OUTBOX, INBOX, ARCHIVE, TMP, JOURNAL = "outbox", "inbox", "archive", "tmp", "journal"
GITIGNORE_TEXT = "# Created by pytest-simscope: the offline queue is not source code.\n*\n"
_REGRESSION_KEY = "\x00regression"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_ENTRY_SUFFIX = os.sep + ENTRY_FILE

# The clock of entry names and manifest times (whole seconds, UTC); tests freeze it.
_now_ns = time.time_ns
# Bound once: a test may replace the os module's functions for the rest of its run, and
# pytest may still have to write the queue at the run's end.
_mkdir, _open, _write, _close = os.mkdir, os.open, os.write, os.close
_rename, _replace, _unlink = os.rename, os.replace, os.unlink


def ensure_layout(root: Path, anchor: Path | None = None) -> None:
    """Create the queue folders (and the ``.gitignore``) when missing.

    *anchor*: a folder above *root* that must exist (it is never created): the default
    queue lives in pytest's root folder, and a test that removed that folder must not see
    it come back (pytest's own end would then go differently).
    """
    if anchor is not None and not anchor.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the folder the queue is in was removed", str(anchor))
    for name in (OUTBOX, INBOX, ARCHIVE, TMP, JOURNAL):
        (root / name).mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        # A read-only .gitignore location must not stop the queue.
        with contextlib.suppress(OSError):
            write_atomic(ignore, GITIGNORE_TEXT.encode())


def run_slug(run_id: str) -> str:
    """The part of an entry's name that tells its run (see ``OfflineQueue._entry_name``)."""
    return safe_slug(run_id, 8) or "run"


def _encode(manifest: Any) -> bytes:
    # A lone surrogate (from an undecodable file name) cannot be UTF-8: write it as the
    # JSON escape it reads back as, so the entry is still valid JSON and loses nothing.
    return dumps(manifest).encode("utf-8", "backslashreplace")


# What ``dumps`` writes for a string (its encoder does not escape non-ASCII).
_json_string = json.encoder.encode_basestring


def _encode_string(text: str) -> bytes:
    """``_encode(text)`` of a ``str``, without the encoder's detour."""
    return _json_string(text).encode("utf-8", "backslashreplace")


def _cut_mark() -> bytes:
    """What ``dumps`` writes where it cuts a circular structure (see ``messages._plain``).

    The manifest nests a message body three levels deep, so a body cut on its own is cut
    at another depth than inside the whole manifest: such a body is never reused.
    """
    loop: list[Any] = []
    loop.append(loop)
    return dumps(loop).strip("[]").encode("utf-8", "backslashreplace")


_CUT = _cut_mark()


def write_atomic(path: Path, data: bytes, staging: Path | None = None) -> None:
    """Write *data* to *path* by writing a temporary file and renaming it over *path*.

    The temporary file is made in *staging* (same filesystem) when given, else beside
    *path*; it never stays behind.
    """
    tmp = (staging or path.parent) / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        _write_new(tmp, data)
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_new(path: str | os.PathLike[str], data: bytes) -> None:
    """Create *path* holding *data*, with as few system calls as the OS allows.

    The offline queue writes one file per test; ``open()`` adds two ``fstat`` and an
    ``isatty`` to each, which on some sandboxed machines cost more than the test itself.
    """
    fd = _open(path, _NEW_FILE, 0o644)
    try:
        if data:
            written = _write(fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[_write(fd, view) :]
    finally:
        _close(fd)


def _status(envelope: Envelope, previous: str) -> str:
    if envelope.type == "job-live":
        return "running"
    if envelope.type == "job-finish":
        body = envelope.body if isinstance(envelope.body, dict) else {}
        return "failed" if body.get("result") == "fail" else "completed"
    if envelope.type == "regr-start":
        return "running"
    if envelope.type == "regr-finish":
        return "completed"
    return previous or "submitted"


_JOB_TYPE = b',"type":' + _encode("simscope-job") + b',"status":'
_REGRESSION_TYPE = b',"type":' + _encode("simscope-regression") + b',"status":'
_STATUSES = {text: _encode(text) for text in ("submitted", "running", "completed", "failed")}


class _Entry:
    """An entry of this run: its manifest and, to write it again cheaply, its JSON parts.

    ``_encode(manifest)`` is ``head``, the status, ``middle``, the ``records`` (each
    message's JSON around its envelope's own body bytes) and the end.  ``records`` is
    ``None`` once a message needs the whole manifest encoded (see ``_CUT``).
    """

    __slots__ = ("head", "manifest", "middle", "name", "records")

    def __init__(self, manifest: dict[str, Any], head: bytes, middle: bytes) -> None:
        self.manifest = manifest
        self.name = ""
        self.head = head  # without the job_id until the entry has a name
        self.middle = middle
        self.records: list[bytes] | None = []

    def data(self, end: bytes) -> bytes:
        """``job.json``: the manifest as ``_encode`` gives it; *end* closes the messages."""
        records = self.records
        if records is None:
            return _encode(self.manifest)
        status = self.manifest["status"]
        return b"".join(
            (
                self.head,
                _STATUSES.get(status) or _encode(status),
                self.middle,
                b",".join(records),
                end,
            )
        )


class OfflineQueue(Transport):
    """Write messages into a SYS_19 queue folder; one instance per pytest run."""

    local = True

    def __init__(
        self,
        root: Path,
        *,
        run_id: str | None = None,
        run_started: str | None = None,
        created_by: str | None = None,
        anchor: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.anchor = anchor  # see ensure_layout
        self.run_id = run_id or os.urandom(6).hex()
        self.run_started = run_started or dt.datetime.now(dt.timezone.utc).isoformat()
        self.created_by = created_by or f"pytest-simscope {__version__} on {socket.gethostname()}"
        self.name = f"offline queue {self.root}"
        self._seq = 0
        self._entries = 0
        # Open entries: (regression, uniqueid) -> entry
        self._open: dict[tuple[str, str], _Entry] = {}
        self._layout_ready = False
        self.written = 0
        # What the write path derives from the public attributes, made again should one
        # of them be replaced: the folders as strings, the run's slug, their JSON.
        self._paths_of: Path | None = None
        self._tmp_prefix = self._outbox_prefix = ""
        self._paths()
        self._slug_of: str | None = None
        self._run_slug = ""
        # (created_by, run_id, run_started, their manifest JSON in two parts)
        self._fixed: tuple[object, object, object, bytes, bytes] = (None, None, None, b"", b"")
        # (second, entry name stamp, manifest time, its "created_at" and "updated_at"
        # JSON), replaced as a whole.
        self._clock: tuple[int, str, str, bytes, bytes] = (-1, "", "", b"", b"")
        # regression -> its "project" JSON.
        self._projects: dict[str, bytes] = {}

    @property
    def outbox(self) -> Path:
        return self.root / OUTBOX

    def _ready(self) -> None:
        if not self._layout_ready:
            try:
                ensure_layout(self.root, self.anchor)
            except OSError as exc:
                raise PermanentError(f"cannot create the offline queue {self.root}: {exc}") from exc
            self._layout_ready = True
        if self._paths_of is not self.root:
            self._paths()

    def _paths(self) -> None:
        root = os.fspath(self.root)
        self._tmp_prefix = os.path.join(root, TMP) + os.sep
        self._outbox_prefix = os.path.join(root, OUTBOX) + os.sep
        self._paths_of = self.root

    def send(self, batch: Sequence[Envelope]) -> None:
        self._ready()
        self.delivered = 0
        for envelope in batch:
            try:
                self._write(envelope)
            except OSError as exc:
                raise PermanentError(
                    f"cannot write to the offline queue {self.root}: {exc}"
                ) from exc
            self.delivered += 1

    def _entry_name(self, stamp: str, slug: str) -> str:
        self._entries += 1
        if self._slug_of is not self.run_id:
            self._run_slug = run_slug(self.run_id)
            self._slug_of = self.run_id
        return f"job-{stamp}-{slug}-{self._run_slug}-{self._entries:06d}"

    def _now(self) -> tuple[int, str, str, bytes, bytes]:
        """The current second (UTC) and what is made of it, formatted once a second."""
        second = _now_ns() // 1_000_000_000
        clock = self._clock
        if clock[0] != second:
            moment = time.gmtime(second)
            text = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)
            clock = self._clock = (
                second,
                time.strftime("%Y%m%d-%H%M%S", moment),
                text,
                b',"created_at":' + _encode(text),
                b'],"updated_at":' + _encode(text) + b"}",
            )
        return clock

    def _record(self, seq: int, envelope: Envelope) -> bytes | None:
        """``_encode`` of the message's record, around its body bytes; ``None``: do not."""
        raw = envelope.body_bytes()
        if _CUT in raw:
            return None
        return envelope.record_bytes(seq)

    def _write(self, envelope: Envelope) -> None:
        if envelope.type == "batch-job-finish" and isinstance(envelope.body, list):
            regression = envelope.regression
            for message in [
                Envelope(type="job-finish", regression=regression, body=item)
                for item in envelope.body
            ]:
                self._write_one(message)
        else:
            self._write_one(envelope)

    def _write_one(self, envelope: Envelope) -> None:
        seq = self._seq = self._seq + 1
        kind = envelope.type
        regression = envelope.regression
        body = envelope.body
        is_regression = kind in REGRESSION_TYPES
        uniqueid = envelope.uniqueid or ""
        key = (regression, _REGRESSION_KEY if is_regression else uniqueid)
        record = {"seq": seq, "type": kind, "regression": regression, "body": body}
        # The last message of its entry: the entry is not kept open for more.
        finished = kind == "regr-finish" if is_regression else kind == "job-finish" or not uniqueid
        clock = self._now()
        entry = self._open.get(key)
        if entry is not None:
            manifest = entry.manifest
            manifest["messages"].append(record)
            manifest["status"] = _status(envelope, manifest["status"])
            manifest["updated_at"] = clock[2]
            records = entry.records
            if records is not None:
                try:
                    encoded = self._record(seq, envelope)
                except BaseException:
                    entry.records = None  # _encode(manifest) raises too, now and later
                    raise
                if encoded is None:
                    entry.records = None
                else:
                    records.append(encoded)
            data = entry.data(clock[4])
            try:
                self._replace(self._outbox_prefix + entry.name + _ENTRY_SUFFIX, data)
            except FileNotFoundError:
                # The entry was delivered and archived meanwhile: start a new one.
                self._open.pop(key, None)
                manifest["messages"].pop()
            else:
                if finished:
                    self._open.pop(key, None)
                self.written += 1
                return
        if is_regression:
            slug = "regression-" + (safe_slug(regression, 40) or "unnamed")
        elif uniqueid:
            fields = body if isinstance(body, dict) else {}
            slug = job_slug(str(fields.get("config") or uniqueid))
        else:
            slug = safe_slug(kind) or "message"
        created_by, run_id, run_started = self.created_by, self.run_id, self.run_started
        manifest = {
            "job_id": "",
            "created_at": clock[2],
            "created_by": created_by,
            "project": regression,
            "type": "simscope-regression" if is_regression else "simscope-job",
            "status": _status(envelope, "submitted"),
            "run_id": run_id,
            "run_started": run_started,
            "uniqueid": None if is_regression else uniqueid or None,
            "messages": [record],
        }
        fixed = self._fixed
        if fixed[0] is not created_by or fixed[1] is not run_id or fixed[2] is not run_started:
            fixed = self._fixed = (
                created_by,
                run_id,
                run_started,
                b',"created_by":' + _encode(created_by),
                b',"run_id":' + _encode(run_id) + b',"run_started":' + _encode(run_started),
            )
        project = self._projects.get(regression)
        if project is None:
            project = self._projects[regression] = b',"project":' + _encode(regression)
        entry = _Entry(
            manifest,
            b"".join(
                (clock[3], fixed[3], project, _REGRESSION_TYPE if is_regression else _JOB_TYPE)
            ),
            b"".join(
                (
                    fixed[4],
                    b',"uniqueid":',
                    b"null" if is_regression or not uniqueid else _encode_string(uniqueid),
                    b',"messages":[',
                )
            ),
        )
        self._publish_entry(clock[1], slug, entry, seq, envelope)
        self.written += 1
        if not finished:
            self._open[key] = entry

    def _replace(self, path: str, data: bytes) -> None:
        """``write_atomic(path, data, root / TMP)``, for an entry's ``job.json``."""
        # Six random bytes: as random as the first twelve hex digits of a uuid4.
        tmp = f"{self._tmp_prefix}.{ENTRY_FILE}.{os.urandom(6).hex()}.tmp"
        try:
            _write_new(tmp, data)
            _replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                _unlink(tmp)
            raise

    def _publish_entry(
        self, stamp: str, slug: str, entry: _Entry, seq: int, envelope: Envelope
    ) -> str:
        """Build a new entry in ``tmp/`` and rename it into ``outbox/``; its name.

        *entry* holds one message, *envelope*, number *seq*.
        """
        manifest = entry.manifest
        rest = entry.head
        for _ in range(100):
            name = self._entry_name(stamp, slug)
            manifest["job_id"] = entry.name = name
            entry.head = b'{"job_id":' + _encode_string(name) + rest
            staging = self._tmp_prefix + name
            try:
                _mkdir(staging)
            except FileExistsError:
                continue
            except FileNotFoundError:
                ensure_layout(self.root, self.anchor)  # someone removed tmp/ while we ran
                _mkdir(staging)
            try:
                records = entry.records
                if records is not None and not records:
                    encoded = self._record(seq, envelope)  # where _encode(manifest) was
                    if encoded is None:
                        entry.records = None
                    else:
                        records.append(encoded)
                _write_new(staging + _ENTRY_SUFFIX, entry.data(b"]}"))
                # Renaming onto an existing entry fails (it is never empty), so a clash
                # with another writer is caught below without an extra look first.
                _rename(staging, self._outbox_prefix + name)
            except OSError as exc:
                _remove_tree(staging)
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            except BaseException:
                _remove_tree(staging)
                raise
            return name
        raise FileExistsError(f"no free entry name in {self.outbox} for {slug}")


def _remove_tree(folder: str) -> None:
    with contextlib.suppress(OSError):
        for child in os.listdir(folder):
            os.unlink(os.path.join(folder, child))
        os.rmdir(folder)


def read_entry(folder: Path) -> dict[str, Any]:
    """Load one entry's manifest (``ValueError`` if it is not a valid entry)."""
    data = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError(f"{folder.name}: job.json has no messages list")
    return data


def read_outbox(root: Path) -> list[dict[str, Any]]:
    """Every message in ``outbox/``, as recorder-style records, in publication order.

    Order: per run (by run start), by sequence number.  Used by tests and ``check``.
    """
    records: list[tuple[str, str, int, dict[str, Any]]] = []
    outbox = Path(root) / OUTBOX
    if not outbox.is_dir():
        return []
    for folder in outbox.iterdir():
        if not folder.is_dir() or not folder.name.startswith("job-"):
            continue
        manifest = read_entry(folder)
        for message in manifest["messages"]:
            records.append(
                (
                    str(manifest.get("run_started", "")),
                    str(manifest.get("run_id", "")),
                    int(message["seq"]),
                    {k: message[k] for k in ("type", "regression", "body")},
                )
            )
    records.sort(key=lambda item: item[:3])
    return [item[3] for item in records]
