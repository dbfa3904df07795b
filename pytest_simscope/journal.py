"""The publisher's journal: nothing already produced is lost, even to ``kill -9``.

Every message is appended to ``<queue>/journal/<run>.jsonl`` before it is handed to the
background sender (one line, written to the operating system at once, no fsync), and the
highest sequence number that is safe (confirmed by the broker or written to the offline
queue) is appended to ``<run>.acks``.  A clean end removes both files.  A run that died
leaves them behind; :func:`recover` moves its unconfirmed messages, in order, into the
offline queue.  A live run holds an exclusive lock on its journal, so recovery never takes
the messages of a run that is still going.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from pytest_simscope.models import Envelope, dumps

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _lock(handle: IO[Any]) -> bool:
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Journal:
    """Append-only record of the messages of one run and of how far they are safe."""

    def __init__(self, directory: Path, run_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{run_id}.jsonl"
        self.ack_path = directory / f"{run_id}.acks"
        self._lock = threading.Lock()
        self._handle = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        _lock(self._handle)
        self._acks = open(self.ack_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._acked = 0
        self._closed = False

    def append(self, seq: int, envelope: Envelope) -> None:
        line = dumps({"seq": seq, **envelope.as_record()}) + "\n"
        with self._lock:
            if not self._closed:
                self._handle.write(line)

    def ack(self, seq: int) -> None:
        """Everything up to *seq* is safe (delivered or queued)."""
        if seq <= self._acked:
            return
        self._acked = seq
        with self._lock:
            if not self._closed:
                self._acks.write(f"{seq}\n")

    def close(self, *, remove: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for handle in (self._handle, self._acks):
                with contextlib.suppress(OSError):
                    handle.close()
        if remove:
            for path in (self.path, self.ack_path):
                with contextlib.suppress(OSError):
                    path.unlink()


def _read_acked(path: Path) -> int:
    acked = 0
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                acked = max(acked, int(line))
    return acked


def orphaned_messages(path: Path) -> list[tuple[int, Envelope]] | None:
    """The unsafe messages of a dead run's journal, or ``None`` if its run is alive."""
    try:
        handle = open(path, "r+", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return None
    with handle:
        if not _lock(handle):
            return None
        acked = _read_acked(path.with_suffix(".acks"))
        found: list[tuple[int, Envelope]] = []
        for line in handle:
            try:
                data = json.loads(line)
                seq = int(data["seq"])
                if seq > acked:
                    found.append(
                        (seq, Envelope(type=data["type"], regression=data["regression"],
                                       body=data.get("body")))
                    )
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill: the message was never handed on
        return found


def recover(directory: Path, sink: Any, *, exclude: Path | None = None) -> int:
    """Move the unsafe messages of every dead run's journal into *sink* (a transport).

    Returns how many messages were recovered.  A journal is removed only after its
    messages were written to *sink*.
    """
    if not directory.is_dir():
        return 0
    recovered = 0
    for path in sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        if exclude is not None and path == exclude:
            continue
        found = orphaned_messages(path)
        if found is None:
            continue
        if found:
            sink.send([envelope for _, envelope in found])
            recovered += len(found)
        for leftover in (path, path.with_suffix(".acks")):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    return recovered
