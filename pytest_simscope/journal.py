"""The publisher's journal: nothing already produced is lost, even to ``kill -9``.

Every message is appended to ``<queue>/journal/<run>.jsonl`` before it is handed to the
background sender (one line, written to the operating system at once, no fsync), and the
highest sequence number that is safe (confirmed by the broker or written to the offline
queue) is appended to ``<run>.acks``.  A clean end removes both files.  A run that died
leaves them behind; :func:`recover` moves its unconfirmed messages, in order, into the
offline queue, then closes what the run left open (see :class:`Unfinished`).  A live run
holds an exclusive lock on its journal, so recovery never takes the messages of a run that
is still going.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pytest_simscope.compact import RunFields
from pytest_simscope.messages import Envelope

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _lock(handle: IO[Any] | int) -> bool:
    if fcntl is None:  # pragma: no cover - Windows
        return True
    fileno = handle if isinstance(handle, int) else handle.fileno()
    try:
        fcntl.flock(fileno, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# The journal maps only a window of its file at a time: pages already written leave the
# process's memory (the kernel still holds them) instead of adding to it for every test.
_WINDOW = max(1 << 20, mmap.ALLOCATIONGRANULARITY)
# The file is grown in steps of this much (zero bytes that no reader takes for a line).
_GROWTH = 4 << 20


class _Acks:
    """How far a journal's messages are safe: ``<run>.acks``, one number a line."""

    path: Path
    ack_path: Path
    _lock: threading.Lock
    _acks: IO[str] | None
    _acked: int
    _closed: bool

    def ack(self, seq: int) -> None:
        """Everything up to *seq* is safe (delivered or queued)."""
        with self._lock:
            if self._closed or seq <= self._acked:
                return
            self._acked = seq
            if self._acks is None:
                self._acks = open(self.ack_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._acks.write(f"{seq}\n")

    def close(self, *, remove: bool) -> None:
        """Stop; with *remove*, the run is settled and its files go."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if remove:
                # Removed while still locked: a recovery running now never sees the
                # journal unlocked with messages in it.
                for path in (self.path, self.ack_path):
                    with contextlib.suppress(OSError):
                        path.unlink()
            self._release(removed=remove)
            if self._acks is not None:
                with contextlib.suppress(OSError):
                    self._acks.close()

    def _release(self, *, removed: bool) -> None:
        """What else a closing journal lets go of."""


class Journal(_Acks):
    """Append-only record of the messages of one run and of how far they are safe.

    Messages are copied into a shared memory map of the journal file: the kernel owns
    those pages, so they outlive a killed process without a system call per message (a
    plain write per message costs more than the test it reports on, on some machines).
    Only a window of the file around the end is mapped, so a long run's journal does not
    stay in the process's memory.  The file is grown in steps; the unused tail holds zero
    bytes, which no reader takes for a message.  Where memory maps are not available, each
    line is written instead.
    """

    def __init__(self, directory: Path, run_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{run_id}.jsonl"
        self.ack_path = directory / f"{run_id}.acks"
        self._lock = threading.Lock()
        # Made under a name recovery does not look at, locked, and only then given its
        # real name: recovery can never find this journal unlocked and take it for dead.
        hidden = directory / f".{run_id}.{os.getpid()}.jsonl.new"
        self._fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._map: mmap.mmap | None = None
        self._size = 0  # of the file
        self._base = 0  # the file offset where the mapped window starts
        self._end = -1  # and where it ends (-1: no map, or closed)
        self._pos = 0
        try:
            _lock(self._fd)
            os.replace(hidden, self.path)
            self._acks = open(self.ack_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except BaseException:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                hidden.unlink()
            raise
        with contextlib.suppress(OSError, ValueError):
            self._map_window(0, 0)
        self._acked = 0
        self._closed = False

    def fileno(self) -> int:
        """The journal file, open and locked (a delivery process inherits it, lock and all)."""
        return self._fd

    def _map_window(self, pos: int, need: int) -> None:
        """Map a window that starts at or before *pos* and holds *need* bytes from it."""
        self._unmap()
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        length = max(_WINDOW, -(-(pos + need - base) // _WINDOW) * _WINDOW)
        if base + length > self._size:
            size = max(base + length, self._size + _GROWTH)
            os.ftruncate(self._fd, size)
            self._size = size
        self._map = mmap.mmap(self._fd, length, offset=base)
        self._base = base
        self._end = base + length

    def append(self, seq: int, envelope: Envelope) -> None:
        # The body's bytes are the ones that go on the wire: encoded once.
        self.write(envelope.record_bytes(seq) + b"\n")

    def write(self, data: bytes) -> None:
        """Append *data*, whole lines (a record and its newline)."""
        with self._lock:
            pos = self._pos
            end = pos + len(data)
            if end <= self._end:  # the usual line: it fits in the window mapped
                base = self._base
                self._map[pos - base : end - base] = data  # type: ignore[index]
                self._pos = end
            else:
                self._write_past(data, pos, end)

    def _write_past(self, data: bytes, pos: int, end: int) -> None:
        """:meth:`write` a line the window does not hold (the lock is held)."""
        if self._closed:
            return
        if self._map is not None:
            try:
                self._map_window(pos, len(data))
            except (OSError, ValueError):
                self._fall_back()
        if self._map is not None:
            self._map[pos - self._base : end - self._base] = data
        else:
            os.pwrite(self._fd, data, pos)
        self._pos = end

    def forget(self) -> None:
        """In a forked child: let go of the parent's journal (its lock, which the child
        shares, its map and files) without changing it, and take no lock to do so."""
        self._closed = True
        self._let_go()
        if self._acks is not None:
            with contextlib.suppress(OSError, ValueError):
                self._acks.close()
            self._acks = None

    def _unmap(self) -> None:
        self._end = -1
        if self._map is not None:
            with contextlib.suppress(OSError, ValueError):
                self._map.close()
            self._map = None

    def _let_go(self) -> None:
        """Unmap and close the file (its lock goes with the last descriptor)."""
        self._unmap()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _fall_back(self) -> None:
        """Write lines from now on; cut the file back to what was written."""
        self._unmap()
        os.ftruncate(self._fd, self._pos)

    def _release(self, *, removed: bool) -> None:
        if not removed:
            with contextlib.suppress(OSError, ValueError):
                self._fall_back()
        self._let_go()


_BODY_KEY = b',"body":'


def parse_line(line: bytes) -> tuple[int, Envelope]:
    """``(seq, envelope)`` of one journal line (``ValueError`` if it is not one).

    The body's bytes are kept as they were written: they go on the wire unchanged.
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a journal line is a JSON object")
    seq = data.pop("seq", None)
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("a journal line needs a sequence number")
    envelope = Envelope.from_record(data)
    # The first ',"body":' is the key itself: inside a JSON string a quote is escaped.
    at = line.find(_BODY_KEY)
    if at >= 0 and line.endswith(b"}"):
        envelope._raw = line[at + len(_BODY_KEY) : -1]
    return seq, envelope


class LineReader:
    """A journal's lines, read in order, to ``(seq, message)``: the records of
    :func:`parse_line`, and the usual job's short lines by the template line before them
    (see :mod:`~pytest_simscope.compact`), for which it gives ``None``."""

    def __init__(self) -> None:
        self._fields: RunFields | None = None

    def __call__(self, line: bytes) -> tuple[int, Envelope] | None:
        """One line, its newline cut or not (``ValueError`` if it is none of these)."""
        first = line[:1]
        if first == b"{":
            return parse_line(line.rstrip(b"\n"))
        if first == b"L" or first == b"P":
            if self._fields is None:
                raise ValueError("a short journal line without its template")
            return self._fields.envelope(line)
        if first == b"T":
            self._fields = RunFields.from_line(line)
            return None
        raise ValueError("not a journal line")


class JournalTail(_Acks):
    """The delivery process's side of a journal: the new lines, and how far they are safe.

    *fd* is the journal file the writer opened and locked, inherited: the lock then holds
    while either process lives, so no recovery takes messages this process still owes.
    The writer grows the file with zero bytes ahead of its lines, and a line being
    copied in shows a zero byte until it is whole, so reading stops at the first zero.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.ack_path = path.with_suffix(".acks")
        self._fd = fd
        self._offset = 0
        self._lock = threading.Lock()
        self._acks: IO[str] | None = None  # opened at the first ack
        self._acked = 0
        self._closed = False
        self.bad_lines = 0
        self.lines_read = 0
        self._reader = LineReader()

    def read(self, limit: int = 1 << 20, *, everything: bool = True) -> list[tuple[int, Envelope]]:
        """The messages written since the last call (whole lines only).

        Without *everything*, about *limit* bytes of them at most (at least one line).
        """
        found: list[tuple[int, Envelope]] = []
        while True:
            data = os.pread(self._fd, limit, self._offset)
            cut = data.find(b"\0")
            whole = cut < 0 and len(data) == limit
            if cut >= 0:
                data = data[:cut]
            end = data.rfind(b"\n")
            if end < 0:
                if whole:  # one line longer than the read: read more at once
                    limit *= 2
                    continue
                return found
            self._offset += end + 1
            lines = data[:end].split(b"\n")
            self.lines_read += len(lines)
            reader = self._reader
            for line in lines:
                try:
                    item = reader(line)
                except (ValueError, KeyError, TypeError):
                    self.bad_lines += 1
                else:
                    if item is not None:
                        found.append(item)
            if not whole or not everything:
                return found

    def written_beyond(self, size: int) -> bool:
        """Whether the writer has written at least *size* bytes not read yet."""
        if size <= 0:
            return True
        try:
            byte = os.pread(self._fd, 1, self._offset + size - 1)
        except OSError:
            return False
        return bool(byte) and byte != b"\0"

    @property
    def average_line(self) -> float:
        """The average length of the lines read so far (bytes, newline included)."""
        return self._offset / self.lines_read if self.lines_read else 512.0

    def append(self, seq: int, envelope: Envelope) -> None:
        """Nothing: the writer journaled it."""



# The fail_message of a test that was running when its pytest process died.
DIED_WHILE_RUNNING = (
    "the pytest process ended while this test ran (killed, or ended by a test or a plugin: "
    "os._exit, pytest-timeout's thread method)"
)


class Unfinished:
    """What a run left open: running jobs, and regressions it started and did not finish.

    Fed every message of a run in order; :meth:`closing` gives the messages a run that died
    (pytest killed, or ended by ``os._exit`` in a test) never sent: a ``fail`` for each job
    still live, then ``regr-finish`` for each regression this run started (a shard starts
    none, so a shard's is left to whoever starts and finishes the regression).
    """

    def __init__(self) -> None:
        self.lives: dict[str, Envelope] = {}
        # Regressions this run started, with the number of jobs it finished in each.
        self.finished: dict[str, int] = {}
        self.closed: set[str] = set()

    def see(self, envelope: Envelope) -> None:
        kind = envelope.type
        if kind == "job-live":
            uid = envelope.uniqueid
            if uid:
                self.lives[uid] = envelope
        elif kind == "job-finish":
            uid = envelope.uniqueid
            if uid:
                self.lives.pop(uid, None)
            self._count(envelope.regression, 1)
        elif kind == "batch-job-finish":
            bodies = envelope.body if isinstance(envelope.body, list) else []
            for body in bodies:
                uid = body.get("uniqueid") if isinstance(body, dict) else None
                if isinstance(uid, str):
                    self.lives.pop(uid, None)
            self._count(envelope.regression, len(bodies))
        elif kind == "regr-start":
            self.finished.setdefault(envelope.regression, 0)
        elif kind == "regr-finish":
            self.closed.add(envelope.regression)

    def _count(self, regression: str, jobs: int) -> None:
        if regression in self.finished:
            self.finished[regression] += jobs

    def closing(self) -> list[Envelope]:
        """The messages that close what is open (none when nothing is)."""
        from pytest_simscope.messages import MAX_JOB_MS, epoch_micros, stamp
        from pytest_simscope.timestamps import parse_rfc3339

        closing: list[Envelope] = []
        now = epoch_micros(time.time())
        for uid, live in self.lives.items():
            body: dict[str, Any] = dict(live.body) if isinstance(live.body, dict) else {}
            body["uniqueid"] = uid
            body["result"] = "fail"
            started = parse_rfc3339(str(body.get("start_time") or ""))
            start = end = now
            if started is not None:
                start = epoch_micros(started.timestamp())
                end = max(now, start)
            # How long it ran until then (its own phases' time is not known).
            body["compute_ms"] = body["runtime_ms"] = min(MAX_JOB_MS, (end - start) // 1000)
            body["finish_time"] = stamp(end)
            body["fail_message"] = DIED_WHILE_RUNNING
            closing.append(Envelope("job-finish", live.regression, body))
            self._count(live.regression, 1)
        self.lives.clear()
        for regression, jobs in self.finished.items():
            if regression not in self.closed:
                self.closed.add(regression)
                body = {"name": regression, "pending": False, "submitted": jobs}
                closing.append(Envelope("regr-finish", regression, body))
        return closing


# A line of <run>.acks: the delivery process closed the run its pytest left open (see
# Unfinished), so a recovery of the journal it left must not close it again.
CLOSED_MARK = "closed"


def mark_closed(journal: Path) -> None:
    """Note, in the acks of *journal* when it is still there, that its run was closed."""
    if journal.exists():
        with contextlib.suppress(OSError), open(
            journal.with_suffix(".acks"), "a", encoding="utf-8"
        ) as handle:
            handle.write(f"{CLOSED_MARK}\n")


def _read_acks(path: Path) -> tuple[int, bool]:
    """How far a run's messages are safe, and whether its courier closed the run."""
    acked = 0
    closed = False
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip() == CLOSED_MARK:
                closed = True
                continue
            with contextlib.suppress(ValueError):
                acked = max(acked, int(line))
    return acked, closed


def _read_acked(path: Path) -> int:
    return _read_acks(path)[0]


def _read_orphan(handle: IO[str], path: Path) -> list[tuple[int, Envelope]]:
    """The unconfirmed messages of a dead run's journal, then those that close what the
    run left open (numbered after the last; see :class:`Unfinished`)."""
    acked, closed = _read_acks(path.with_suffix(".acks"))
    found: list[tuple[int, Envelope]] = []
    unfinished = Unfinished()
    last = 0
    reader = LineReader()
    for line in handle:
        if not line.endswith("\n"):
            continue  # the last line, cut short by the kill: never handed on
        try:
            item = reader(line.encode())  # (read as text with errors replaced)
        except (ValueError, KeyError, TypeError):
            continue  # not a message line: nothing that can be delivered
        if item is None:
            continue  # the template of the short lines that follow
        seq, envelope = item
        unfinished.see(envelope)
        last = max(last, seq)
        if seq > acked:
            found.append((seq, envelope))
    found.sort(key=lambda item: item[0])
    if not closed:
        found.extend((last + n, envelope) for n, envelope in enumerate(unfinished.closing(), 1))
    return found


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[IO[str] | None]:
    """Open and lock a dead run's journal; ``None`` if its run is alive or it is gone.

    The lock is held until the block ends, so two recoveries never take the same messages.
    """
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        yield None
        return
    with handle:
        if not _lock(handle):
            yield None
            return
        # Another recovery may have finished with this file (and removed it) between our
        # open and our lock: then it is not the journal at *path* any more.
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except OSError:
            same = False
        yield handle if same else None


def orphaned_messages(path: Path) -> list[tuple[int, Envelope]] | None:
    """The unsafe messages of a dead run's journal, or ``None`` if its run is alive."""
    with _claim(path) as handle:
        return None if handle is None else _read_orphan(handle, path)


def recover(directory: Path, sink: Any, *, exclude: Path | None = None) -> int:
    """Move the unsafe messages of every dead run's journal into *sink* (a transport).

    Returns how many messages were recovered.  A journal is removed only after its
    messages were written to *sink*, and stays locked until then.
    """
    if not directory.is_dir():
        return 0
    recovered = 0
    journals: list[tuple[float, Path]] = []
    for path in directory.glob("*.jsonl"):
        with contextlib.suppress(OSError):  # removed meanwhile by its run
            journals.append((path.stat().st_mtime, path))
    for _, path in sorted(journals):
        if exclude is not None and path == exclude:
            continue
        with _claim(path) as handle:
            if handle is None:
                continue
            found = _read_orphan(handle, path)
            if found:
                sink.send([envelope for _, envelope in found])
                recovered += len(found)
            for leftover in (path, path.with_suffix(".acks")):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
    for acks in directory.glob("*.acks"):
        if not acks.with_suffix(".jsonl").exists():
            with contextlib.suppress(OSError):  # left by a recovery that was itself cut short
                acks.unlink()
    return recovered
