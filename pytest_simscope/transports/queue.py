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
import uuid
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


def ensure_layout(root: Path) -> None:
    """Create the queue folders (and the ``.gitignore``) when missing."""
    for name in (OUTBOX, INBOX, ARCHIVE, TMP, JOURNAL):
        (root / name).mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        # A read-only .gitignore location must not stop the queue.
        with contextlib.suppress(OSError):
            write_atomic(ignore, GITIGNORE_TEXT.encode())


def _encode(manifest: dict[str, Any]) -> bytes:
    # A lone surrogate (from an undecodable file name) cannot be UTF-8: write it as the
    # JSON escape it reads back as, so the entry is still valid JSON and loses nothing.
    return dumps(manifest).encode("utf-8", "backslashreplace")


def write_atomic(path: Path, data: bytes, staging: Path | None = None) -> None:
    """Write *data* to *path* by writing a temporary file and renaming it over *path*.

    The temporary file is made in *staging* (same filesystem) when given, else beside
    *path*; it never stays behind.
    """
    tmp = (staging or path.parent) / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        _write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_new(path: Path, data: bytes) -> None:
    """Create *path* holding *data*, with as few system calls as the OS allows.

    The offline queue writes one file per test; ``open()`` adds two ``fstat`` and an
    ``isatty`` to each, which on some sandboxed machines cost more than the test itself.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


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
    ) -> None:
        self.root = Path(root)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run_started = run_started or dt.datetime.now(dt.timezone.utc).isoformat()
        self.created_by = created_by or f"pytest-simscope {__version__} on {socket.gethostname()}"
        self.name = f"offline queue {self.root}"
        self._seq = 0
        self._entries = 0
        # Open entries: (regression, uniqueid) -> (folder name, manifest)
        self._open: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._layout_ready = False
        self.written = 0

    @property
    def outbox(self) -> Path:
        return self.root / OUTBOX

    def _ready(self) -> None:
        if not self._layout_ready:
            try:
                ensure_layout(self.root)
            except OSError as exc:
                raise PermanentError(f"cannot create the offline queue {self.root}: {exc}") from exc
            self._layout_ready = True

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

    def _entry_name(self, now: dt.datetime, slug: str) -> str:
        self._entries += 1
        stamp = now.strftime("%Y%m%d-%H%M%S")
        run = safe_slug(self.run_id, 8) or "run"
        return f"job-{stamp}-{slug}-{run}-{self._entries:06d}"

    def _write(self, envelope: Envelope) -> None:
        messages: list[Envelope]
        if envelope.type == "batch-job-finish" and isinstance(envelope.body, list):
            messages = [
                Envelope(type="job-finish", regression=envelope.regression, body=item)
                for item in envelope.body
            ]
        else:
            messages = [envelope]
        for message in messages:
            self._write_one(message)

    def _write_one(self, envelope: Envelope) -> None:
        self._seq += 1
        is_regression = envelope.type in REGRESSION_TYPES
        uniqueid = envelope.uniqueid or ""
        key = (envelope.regression, _REGRESSION_KEY if is_regression else uniqueid)
        record = {"seq": self._seq, **envelope.as_record()}
        if is_regression:
            finished = envelope.type == "regr-finish"
        else:
            finished = envelope.type == "job-finish" or not uniqueid
        now = dt.datetime.now(dt.timezone.utc)
        opened = self._open.get(key)
        if opened is not None:
            name, manifest = opened
            manifest["messages"].append(record)
            manifest["status"] = _status(envelope, manifest["status"])
            manifest["updated_at"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
            folder = self.outbox / name
            try:
                write_atomic(folder / ENTRY_FILE, _encode(manifest), self.root / TMP)
            except FileNotFoundError:
                # The entry was delivered and archived meanwhile: start a new one.
                self._open.pop(key, None)
                manifest["messages"].pop()
                opened = None
            else:
                if finished:
                    self._open.pop(key, None)
                self.written += 1
                return
        if is_regression:
            slug = "regression-" + (safe_slug(envelope.regression, 40) or "unnamed")
        elif uniqueid:
            body = envelope.body if isinstance(envelope.body, dict) else {}
            slug = job_slug(str(body.get("config") or uniqueid))
        else:
            slug = safe_slug(envelope.type) or "message"
        manifest = {
            "job_id": "",
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created_by": self.created_by,
            "project": envelope.regression,
            "type": "simscope-regression" if is_regression else "simscope-job",
            "status": _status(envelope, "submitted"),
            "run_id": self.run_id,
            "run_started": self.run_started,
            "uniqueid": None if is_regression else uniqueid or None,
            "messages": [record],
        }
        name = self._publish_entry(now, slug, manifest)
        self.written += 1
        if not finished:
            self._open[key] = (name, manifest)

    def _publish_entry(self, now: dt.datetime, slug: str, manifest: dict[str, Any]) -> str:
        """Build a new entry in ``tmp/`` and rename it into ``outbox/``; its name."""
        for _ in range(100):
            name = self._entry_name(now, slug)
            manifest["job_id"] = name
            staging = self.root / TMP / name
            target = self.outbox / name
            try:
                staging.mkdir()
            except FileExistsError:
                continue
            except FileNotFoundError:
                ensure_layout(self.root)  # someone removed tmp/ while we ran
                staging.mkdir()
            try:
                _write_new(staging / ENTRY_FILE, _encode(manifest))
                # Renaming onto an existing entry fails (it is never empty), so a clash
                # with another writer is caught below without an extra look first.
                os.rename(staging, target)
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


def _remove_tree(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


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
