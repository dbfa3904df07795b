"""Deliver an offline queue to Simscope: the logic behind ``pytest-simscope drain``.

One *pass* over a queue folder:

1. recover the journals of dead runs into ``outbox/`` (see journal.py);
2. copy complete entries of ``inbox/`` that were not copied before into ``outbox/``
   (``inbox/`` itself is never changed, the SYS_19 rule);
3. read every entry of ``outbox/``, sorting them into complete ones, incomplete ones (no
   ``job.json`` yet, a file still being written, a sync tool's temporary name: picked up
   by a later pass) and corrupt ones (reported, left where they are);
4. send the messages of the complete entries, per regression in the order Simscope needs
   (``regr-start`` and ``regr-update`` first, the jobs by run and sequence number,
   ``regr-finish`` last), many per ``Transport.send`` call, consecutive ``job-finish``
   messages combined into ``batch-job-finish``;
5. after the broker confirmed every message of an entry, rename the entry into
   ``archive/`` with a timestamp in its name.

Crash safety rests on two facts: an entry is renamed into ``archive/`` only after all its
messages were confirmed, and a pass sends in the same order whatever was archived before,
so a pass killed at any moment and run again delivers every message at least once and the
first delivery of each message keeps the order.

A ``job-live`` whose own ``job-finish`` is sent later in the same pass is not sent (as the
publisher does: a finished job needs no live message); its entry is archived once that
``job-finish`` was confirmed.  While an entry is incomplete, the ``regr-finish`` of its
run's regressions is held back (of every regression when its run is not known), because
the entry may hold jobs that must come before it.  An entry folder that stays without a
``job.json`` for the settle time is reported as corrupt, so it holds nothing back; so is a
sync tool's temporary folder left unchanged as long.

Nothing here imports pytest or parses a command line (``cli.py`` does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pytest_simscope.errors import PermanentError, PublishError, TransientError
from pytest_simscope.journal import orphaned_messages, recover
from pytest_simscope.messages import Envelope
from pytest_simscope.transports.base import Transport
from pytest_simscope.transports.queue import (
    ARCHIVE,
    ENTRY_FILE,
    INBOX,
    JOURNAL,
    OUTBOX,
    TMP,
    OfflineQueue,
    ensure_layout,
    run_slug,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Seconds an invalid ``job.json`` may keep changing before it counts as corrupt.
DEFAULT_SETTLE = 10.0
#: Most queued messages handed to one ``Transport.send`` call (a batch-job-finish counts
#: for the jobs it carries): entries are archived after each call, so this bounds what a
#: killed drain sends again.
SEND_CHUNK = 1000
#: Where the names of the ``inbox/`` entries already copied into ``outbox/`` are kept.
INBOX_LEDGER = "inbox-imported.txt"
LOCK_FILE = "drain.lock"

_PHASE_START, _PHASE_JOBS, _PHASE_FINISH = 0, 1, 2
_REGRESSION_PHASE = {"regr-start": _PHASE_START, "regr-update": _PHASE_START,
                     "regr-finish": _PHASE_FINISH}


class DrainBusy(Exception):
    """Another drain holds the queue's lock."""


# --- reading entries ----------------------------------------------------------------------


def is_temporary(name: str) -> bool:
    """Whether *name* is a sync tool's or an editor's temporary, not (yet) an entry."""
    lowered = name.lower()
    return (
        name.startswith((".", "~"))
        or lowered.endswith((".tmp", ".part", ".partial", "~"))
        or ".syncthing." in lowered
    )


@dataclass(eq=False)
class Message:
    """One message of an entry, with what a pass has done with it."""

    entry: Entry
    seq: int
    envelope: Envelope
    done: bool = False
    #: The job-finish this superseded job-live waits for (set by :func:`plan`).
    superseded_by: Message | None = None
    #: Superseded job-live messages that are done when this one is confirmed.
    supersedes: list[Message] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.entry.run_id, self.seq)

    def finished_uniqueids(self) -> list[str]:
        """The uniqueids this job-finish or batch-job-finish finishes."""
        env = self.envelope
        if env.type == "job-finish":
            uid = env.uniqueid
            return [uid] if uid else []
        if env.type == "batch-job-finish" and isinstance(env.body, list):
            return [b["uniqueid"] for b in env.body if isinstance(b.get("uniqueid"), str)]
        return []


@dataclass(eq=False)
class Entry:
    """A complete, valid entry of ``outbox/``."""

    name: str
    path: str
    run_id: str
    run_started: str
    signature: tuple[int, int, int]
    messages: list[Message] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return sum(1 for message in self.messages if not message.done)


@dataclass(frozen=True)
class Skipped:
    """An entry left where it is, and why."""

    name: str
    reason: str


@dataclass
class Scan:
    """What a look at one folder of the queue found."""

    entries: list[Entry] = field(default_factory=list)
    incomplete: list[Skipped] = field(default_factory=list)
    corrupt: list[Skipped] = field(default_factory=list)


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"invalid JSON in {ENTRY_FILE}: {exc.msg} (line {exc.lineno}, column {exc.colno})"


def _validate(folder: str, data: Any, signature: tuple[int, int, int]) -> Entry | str:
    """The entry *data* describes, or what is wrong with it."""
    if not isinstance(data, dict):
        return f"{ENTRY_FILE} is not a JSON object"
    run_id, run_started = data.get("run_id"), data.get("run_started")
    if not isinstance(run_id, str) or not run_id:
        return f"{ENTRY_FILE} has no 'run_id' string"
    if not isinstance(run_started, str):
        return f"{ENTRY_FILE} has no 'run_started' string"
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return f"{ENTRY_FILE} has no 'messages' list (or it is empty)"
    entry = Entry(os.path.basename(folder), folder, run_id, run_started, signature)
    seen: set[int] = set()
    for index, raw in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            return f"{where} is not an object"
        seq = raw.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            return f"{where} has no 'seq' number"
        if seq in seen:
            return f"{where}: seq {seq} appears twice"
        seen.add(seq)
        try:
            envelope = Envelope.from_record(
                {"type": raw.get("type"), "regression": raw.get("regression"),
                 "body": raw.get("body")}
            )
        except ValueError as exc:
            return f"{where}: {exc}"
        if not envelope.regression.strip():
            return f"{where}: 'regression' is empty"
        entry.messages.append(Message(entry, seq, envelope))
    return entry


def read_entry(folder: str | os.PathLike[str], *, settle: float = DEFAULT_SETTLE,
               now: float | None = None) -> Entry | Skipped | None:
    """Read one entry folder.

    Returns the :class:`Entry`, or a :class:`Skipped` whose reason starts with
    ``incomplete:`` or ``corrupt:``, or ``None`` if the folder vanished meanwhile.
    """
    # Plain strings, not pathlib: this runs for every entry and pathlib costs more than
    # the file system calls here.
    folder = os.fspath(folder)
    name = os.path.basename(folder)
    path = os.path.join(folder, ENTRY_FILE)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
            stat = os.fstat(handle.fileno())
    except FileNotFoundError:
        if not os.path.isdir(folder):
            return None
        if _changed_within(folder, settle, now):
            return Skipped(name, f"incomplete: no {ENTRY_FILE} yet")
        # Nothing came into it for a while: a folder left behind, not one being filled.
        return Skipped(name, f"corrupt: no {ENTRY_FILE}")
    except IsADirectoryError:
        return Skipped(name, f"corrupt: {ENTRY_FILE} is a folder")
    except OSError as exc:
        return Skipped(name, f"incomplete: cannot read {ENTRY_FILE}: {exc.strerror}")
    fresh = (now if now is not None else time.time()) - stat.st_mtime < settle
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"{ENTRY_FILE} is not UTF-8 ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        problem = f"{ENTRY_FILE} is empty" if not raw.strip() else _json_error(exc)
    else:
        result = _validate(folder, data, _signature(stat))
        if isinstance(result, Entry):
            return result
        return Skipped(name, f"corrupt: {result}")
    if fresh:
        # A file still being written (by a sync tool or an in-place copy) reads as broken
        # JSON; only one that stopped changing is really corrupt.
        return Skipped(name, f"incomplete: {problem} (still changing)")
    return Skipped(name, f"corrupt: {problem}")


def _changed_within(folder: str, settle: float, now: float | None) -> bool:
    """Whether *folder* or anything directly in it changed less than *settle* s ago."""
    limit = (now if now is not None else time.time()) - settle
    try:
        if os.stat(folder).st_mtime > limit:
            return True
        with os.scandir(folder) as children:
            return any(child.stat(follow_symlinks=False).st_mtime > limit for child in children)
    except OSError:
        return True  # cannot tell: wait


def scan(folder: Path, *, settle: float = DEFAULT_SETTLE) -> Scan:
    """Sort the entries of *folder* (``outbox/`` or ``inbox/``) by what can be done."""
    found = Scan()
    now = time.time()
    try:
        children = sorted(os.scandir(folder), key=lambda item: item.name)
    except FileNotFoundError:
        return found
    for child in children:
        try:
            if not child.is_dir():
                continue
        except OSError:
            continue
        name = child.name
        if is_temporary(name):
            # A folder a sync tool is still bringing in; other hidden folders (.stfolder,
            # .stversions) belong to the sync tool and are none of our business.
            if "job-" in name:
                if _changed_within(child.path, settle, now):
                    found.incomplete.append(Skipped(name, "incomplete: a temporary name"))
                else:  # left behind: it holds nothing back (see read_entry)
                    found.corrupt.append(Skipped(name, "corrupt: a temporary name, left"))
            continue
        if not name.startswith("job-"):
            continue
        result = read_entry(child.path, settle=settle, now=now)
        if isinstance(result, Entry):
            found.entries.append(result)
        elif isinstance(result, Skipped):
            if result.reason.startswith("corrupt:"):
                found.corrupt.append(result)
            else:
                found.incomplete.append(result)
    return found


# --- planning -----------------------------------------------------------------------------


@dataclass
class Plan:
    """The messages of one pass in sending order, and those not sent."""

    send: list[Message] = field(default_factory=list)
    superseded: list[Message] = field(default_factory=list)
    held_back: list[Message] = field(default_factory=list)


def _order_key(message: Message) -> tuple[int, int, str, str, int]:
    type_ = message.envelope.type
    phase = _REGRESSION_PHASE.get(type_, _PHASE_JOBS)
    rank = 0 if type_ == "regr-start" else 1
    entry = message.entry
    return (phase, rank, entry.run_started, entry.run_id, message.seq)


def plan(
    entries: Sequence[Entry],
    *,
    already_sent: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset(),
    hold_finish: bool | Collection[str] = False,
    keep_live: bool = False,
) -> Plan:
    """Order the messages of *entries* for sending.

    Per regression: ``regr-start`` messages, then ``regr-update``, then job messages by
    (run start, run id, sequence number), then ``regr-finish``.  Regressions follow each
    other in the order of their first message.  Messages in *already_sent* are marked done.
    With *hold_finish*, ``regr-finish`` messages are left out (``True``: all of them; a
    collection: those of the regressions it names).  Unless *keep_live*, a
    ``job-live`` followed by its own ``job-finish`` is left out and done with it.
    """
    per_regression: dict[str, list[Message]] = {}
    for entry in entries:
        for message in entry.messages:
            if message.key in already_sent:
                message.done = True
                continue
            per_regression.setdefault(message.envelope.regression, []).append(message)
    ordered_groups = []
    for messages in per_regression.values():
        first = min((m.entry.run_started, m.entry.run_id, m.seq) for m in messages)
        messages.sort(key=_order_key)
        ordered_groups.append((first, messages))
    ordered_groups.sort(key=lambda item: item[0])

    result = Plan()
    for _, messages in ordered_groups:
        if not keep_live:
            _supersede(messages, result)
        for message in messages:
            if message.superseded_by is not None:
                continue
            if (
                hold_finish
                and message.envelope.type == "regr-finish"
                and (hold_finish is True or message.envelope.regression in hold_finish)
            ):
                result.held_back.append(message)
                continue
            result.send.append(message)
    return result


def waiting_regressions(
    entries: Sequence[Entry], incomplete: Sequence[str]
) -> bool | frozenset[str]:
    """The regressions whose ``regr-finish`` waits for the *incomplete* entries (named).

    ``True``: every regression (an incomplete entry whose run is not known here may belong
    to any).  An entry's name carries its run's slug (``OfflineQueue._entry_name``): an
    incomplete entry of a run with complete entries holds back only that run's.
    """
    if not incomplete:
        return False
    by_run: dict[str, set[str]] = {}
    for entry in entries:
        regressions = by_run.setdefault(f"-{run_slug(entry.run_id)}-", set())
        regressions.update(message.envelope.regression for message in entry.messages)
    waiting: set[str] = set()
    for name in incomplete:
        found = [regressions for mark, regressions in by_run.items() if mark in name]
        if not found:
            return True
        for regressions in found:
            waiting |= regressions
    return frozenset(waiting)


def _supersede(messages: list[Message], result: Plan) -> None:
    """Link each job-live to the later job-finish of the same job, if there is one."""
    finisher: dict[str, Message] = {}
    for message in reversed(messages):
        type_ = message.envelope.type
        if type_ in ("job-finish", "batch-job-finish"):
            for uid in message.finished_uniqueids():
                finisher[uid] = message
        elif type_ == "job-live":
            live_uid = message.envelope.uniqueid
            later = finisher.get(live_uid) if live_uid else None
            if later is not None:
                message.superseded_by = later
                later.supersedes.append(message)
                result.superseded.append(message)


def wire(messages: Sequence[Message], batch_size: int) -> list[tuple[Envelope, list[Message]]]:
    """The envelopes to send: runs of ``job-finish`` become ``batch-job-finish``."""
    out: list[tuple[Envelope, list[Message]]] = []
    run: list[Message] = []

    def flush() -> None:
        if len(run) == 1:
            out.append((run[0].envelope, [run[0]]))
        elif run:
            body = [m.envelope.body for m in run if isinstance(m.envelope.body, dict)]
            out.append(
                (Envelope("batch-job-finish", run[0].envelope.regression, body),
                 list(run))
            )
        run.clear()

    for message in messages:
        env = message.envelope
        if batch_size > 1 and env.type == "job-finish" and isinstance(env.body, dict):
            if run and (run[0].envelope.regression != env.regression or len(run) >= batch_size):
                flush()
            run.append(message)
            continue
        flush()
        out.append((env, [message]))
    flush()
    return out


# --- the inbox ----------------------------------------------------------------------------


def _read_ledger(path: Path) -> set[str]:
    with contextlib.suppress(OSError):
        return set(path.read_text(encoding="utf-8", errors="replace").splitlines())
    return set()


def import_inbox(root: Path, *, settle: float = DEFAULT_SETTLE) -> tuple[int, Scan]:
    """Copy the complete entries of ``inbox/`` not copied before into ``outbox/``.

    ``inbox/`` is only read.  An entry is copied again when its ``job.json`` changed since.
    Returns how many were copied and what was found there.
    """
    inbox = root / INBOX
    found = scan(inbox, settle=settle)
    if not found.entries:
        return 0, found
    ledger_path = root / INBOX_LEDGER
    ledger = _read_ledger(ledger_path)
    copied = 0
    for entry in found.entries:
        _, mtime_ns, size = entry.signature
        mark = f"{entry.name}\t{mtime_ns}\t{size}"
        if mark in ledger:
            continue
        staging = root / TMP / f"{entry.name}.inbox-{uuid.uuid4().hex[:8]}"
        shutil.copytree(entry.path, staging)
        target = root / OUTBOX / entry.name
        if target.exists():
            target = target.with_name(f"{entry.name}-inbox-{mtime_ns}")
        if target.exists():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.rename(staging, target)
            copied += 1
        # After the copy is in place: a crash in between copies it again (a duplicate
        # delivery), never loses it.
        with open(ledger_path, "a", encoding="utf-8") as handle:
            handle.write(mark + "\n")
        ledger.add(mark)
    return copied, found


# --- archiving ----------------------------------------------------------------------------


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def archive_entry(root: Path, entry: Entry) -> str | None:
    """Rename *entry* into ``archive/``; ``None`` (and the entry left) if it changed.

    The plugin may still be adding messages to an entry of a running job.  A ``job.json``
    replaced after this pass read it may hold messages that were not sent, so such an
    entry goes back to ``outbox/`` for the next pass.
    """
    if _signature(os.stat(os.path.join(entry.path, ENTRY_FILE))) != entry.signature:
        return None
    archive = os.path.join(root, ARCHIVE)
    base = os.path.join(archive, f"{entry.name}--archived-{_stamp()}")
    target, counter = base, 1
    while os.path.lexists(target):
        counter += 1
        target = f"{base}-{counter}"
    os.rename(entry.path, target)
    try:
        changed = _signature(os.stat(os.path.join(target, ENTRY_FILE))) != entry.signature
    except OSError:
        changed = True
    if changed and not os.path.lexists(entry.path):
        os.rename(target, entry.path)
        return None
    return target


# --- a pass -------------------------------------------------------------------------------


@dataclass
class Planned:
    """One envelope a dry run would send."""

    envelope: Envelope
    entries: list[str]
    seqs: list[int]


@dataclass
class PassResult:
    """What one pass did."""

    delivered: int = 0
    wire_messages: int = 0
    superseded: int = 0
    archived: int = 0
    recovered: int = 0
    imported: int = 0
    entries: int = 0
    left: list[str] = field(default_factory=list)
    incomplete: list[Skipped] = field(default_factory=list)
    corrupt: list[Skipped] = field(default_factory=list)
    held_back: int = 0
    errors: list[str] = field(default_factory=list)
    planned: list[Planned] = field(default_factory=list)
    stopped: bool = False

    @property
    def complete(self) -> bool:
        """Nothing was left in ``outbox/`` and nothing went wrong."""
        return not (self.left or self.incomplete or self.corrupt or self.errors)


Progress = Callable[[int, int], None]


@dataclass
class _Progress:
    """Which entries of a pass were archived (or tried: archiving is tried once)."""

    archived: set[str] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)


@dataclass
class DrainOptions:
    """How a pass behaves (the command line's flags)."""

    batch_size: int = 100
    dry_run: bool = False
    keep_live: bool = False
    inbox: bool = True
    settle: float = DEFAULT_SETTLE
    retries: int = 3
    retry_delay: float = 0.25
    send_chunk: int = SEND_CHUNK


class Drainer:
    """Drains one queue through one transport, pass after pass (``--watch``).

    Keeps, across passes, which messages it already delivered from entries it could not
    archive yet, so a later pass does not send them again.
    """

    def __init__(
        self,
        root: Path,
        transport: Transport | None,
        options: DrainOptions | None = None,
        *,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.root = Path(root)
        self.transport = transport
        self.options = options or DrainOptions()
        self.stop = stop or threading.Event()
        self.progress = progress
        self._sent: set[tuple[str, int]] = set()

    # -- steps -----------------------------------------------------------------------------

    def _recover(self, result: PassResult) -> None:
        journal = self.root / JOURNAL
        if self.options.dry_run:
            for path in sorted(journal.glob("*.jsonl")) if journal.is_dir() else []:
                found = orphaned_messages(path)
                if found:
                    result.recovered += len(found)
                    result.planned.extend(
                        Planned(envelope, [f"{JOURNAL}/{path.name}"], [seq])
                        for seq, envelope in found
                    )
            return
        try:
            result.recovered = recover(journal, OfflineQueue(self.root))
        except (OSError, PublishError) as exc:
            result.errors.append(f"recovering the journals in {journal}: {exc}")

    def run_pass(self) -> PassResult:
        """Recover, import, read, send and archive once."""
        result = PassResult()
        options = self.options
        if not options.dry_run:
            try:
                ensure_layout(self.root)
            except OSError as exc:
                # Without archive/ nothing could be archived: delivering would only send
                # the same entries again next time.
                result.errors.append(f"cannot prepare the queue folder {self.root}: {exc}")
                return result
        self._recover(result)
        inbox_incomplete: list[Skipped] = []
        if options.inbox:
            if options.dry_run:
                inbox_scan = scan(self.root / INBOX, settle=options.settle)
            else:
                try:
                    result.imported, inbox_scan = import_inbox(self.root, settle=options.settle)
                except OSError as exc:
                    result.errors.append(f"copying from {INBOX}/: {exc}")
                    inbox_scan = Scan()
            inbox_incomplete = inbox_scan.incomplete
            result.corrupt.extend(
                Skipped(f"{INBOX}/{s.name}", s.reason) for s in inbox_scan.corrupt
            )
        found = scan(self.root / OUTBOX, settle=options.settle)
        result.entries = len(found.entries)
        result.incomplete = [Skipped(f"{OUTBOX}/{s.name}", s.reason) for s in found.incomplete]
        result.incomplete += [Skipped(f"{INBOX}/{s.name}", s.reason) for s in inbox_incomplete]
        result.corrupt = [Skipped(f"{OUTBOX}/{s.name}", s.reason)
                          for s in found.corrupt] + result.corrupt
        order = plan(
            found.entries,
            already_sent=self._sent,
            hold_finish=waiting_regressions(
                found.entries, [skipped.name for skipped in result.incomplete]
            ),
            keep_live=options.keep_live,
        )
        result.superseded = len(order.superseded)
        result.held_back = len(order.held_back)
        pending = order.send
        envelopes = wire(pending, options.batch_size)
        if options.dry_run:
            result.planned.extend(
                Planned(env, [m.entry.name for m in carried], [m.seq for m in carried])
                for env, carried in envelopes
            )
            result.left = [f"{OUTBOX}/{entry.name}" for entry in found.entries]
            return result
        done = _Progress()
        self._archive_done(found.entries, result, done)
        self._send_all(envelopes, len(found.entries), result, done)
        result.left = [
            f"{OUTBOX}/{entry.name}" for entry in found.entries
            if entry.name not in done.archived
        ]
        return result

    def _send_all(
        self,
        envelopes: list[tuple[Envelope, list[Message]]],
        total: int,
        result: PassResult,
        done: _Progress,
    ) -> None:
        if not envelopes:
            return
        if self.transport is None:
            result.errors.append("no destination to deliver to")
            return
        chunk = max(1, self.options.send_chunk)
        position = 0
        attempts = 0
        while position < len(envelopes):
            if self.stop.is_set():
                result.stopped = True
                return
            end, carried = position, 0
            while end < len(envelopes) and (end == position or carried < chunk):
                carried += len(envelopes[end][1])
                end += 1
            batch = envelopes[position:end]
            try:
                self.transport.send([env for env, _ in batch])
            except PublishError as exc:
                confirmed = max(0, min(self.transport.delivered, len(batch)))
                self._archive_done(self._confirm(batch[:confirmed], result), result, done)
                position += confirmed
                attempts = 0 if confirmed else attempts + 1
                if isinstance(exc, TransientError) and attempts <= self.options.retries:
                    # Back off a little; a connection that dropped mid-way is back at once.
                    if self.stop.wait(self.options.retry_delay * 2 ** max(0, attempts - 1)):
                        result.stopped = True
                        return
                    continue
                kind = "permanent" if isinstance(exc, PermanentError) else "transient"
                result.errors.append(f"delivery failed ({kind}): {exc}")
                return
            except Exception as exc:  # a transport bug must not lose what was confirmed
                result.errors.append(f"delivery failed: {type(exc).__name__}: {exc}")
                return
            self._archive_done(self._confirm(batch, result), result, done)
            position += len(batch)
            attempts = 0
            if self.progress is not None:
                self.progress(len(done.archived), total)

    def _confirm(self, batch: Sequence[tuple[Envelope, list[Message]]],
                 result: PassResult) -> list[Entry]:
        """Mark what the broker confirmed; the entries that may now be complete."""
        touched: dict[int, Entry] = {}
        for _, carried in batch:
            result.wire_messages += 1
            for message in carried:
                message.done = True
                self._sent.add(message.key)
                result.delivered += 1
                touched[id(message.entry)] = message.entry
                for live in message.supersedes:
                    live.done = True
                    self._sent.add(live.key)
                    touched[id(live.entry)] = live.entry
        return list(touched.values())

    def _archive_done(self, entries: Sequence[Entry], result: PassResult,
                      done: _Progress) -> None:
        for entry in entries:
            if entry.name in done.tried or entry.remaining:
                continue
            done.tried.add(entry.name)
            try:
                target = archive_entry(self.root, entry)
            except FileNotFoundError:
                # Gone meanwhile (another drain archived it); nothing of ours is lost.
                done.archived.add(entry.name)
                continue
            except OSError as exc:
                result.errors.append(f"cannot archive {OUTBOX}/{entry.name}: {exc}")
                continue
            if target is None:
                continue  # changed since read: the next pass sends what was added
            done.archived.add(entry.name)
            result.archived += 1
            for message in entry.messages:
                self._sent.discard(message.key)

    def watch(self, interval: float, on_pass: Callable[[PassResult], None]) -> PassResult:
        """Run passes every *interval* seconds until :attr:`stop` is set."""
        last = PassResult()
        while not self.stop.is_set():
            last = self.run_pass()
            on_pass(last)
            if self.stop.wait(interval):
                break
        return last


@contextlib.contextmanager
def queue_lock(root: Path) -> Iterator[None]:
    """Hold the queue's drain lock (so two drains never deliver the same entries at once).

    Raises :class:`DrainBusy` when another drain holds it.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    (root / TMP).mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(root / TMP / LOCK_FILE, "a", encoding="utf-8")  # noqa: SIM115
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DrainBusy(f"another drain is delivering {root}") from None
        yield
    finally:
        handle.close()


def envelope_summary(envelope: Envelope) -> dict[str, Any]:
    """A short description of an envelope for the dry-run listing."""
    out: dict[str, Any] = {"type": envelope.type, "regression": envelope.regression}
    body = envelope.body
    if isinstance(body, list):
        out["jobs"] = len(body)
    elif isinstance(body, dict) and "uniqueid" in body:
        out["uniqueid"] = body["uniqueid"]
    return out
