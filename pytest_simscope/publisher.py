"""The publisher: hooks hand it messages; one background thread delivers them in order.

``publish`` never waits on the network: it journals the message (see journal.py), shows it
to the taps (the recorder) and puts it on a bounded in-memory queue.  (When the offline
queue itself is the destination, ``publish`` writes it directly instead: a thread making
a handful of file-system calls per test would trade the GIL with the tests at every one
of them, which costs the tests more than the calls.  A write slower than ``INLINE_SLOW``,
or writes slower than ``INLINE_AVERAGE`` on average, hand the rest to the sender thread,
so a slow or stalling disk holds the sender, not the tests.)
The sender thread

* drops a ``job-live`` that was not sent yet when its own ``job-finish`` is already queued,
* sends ``regr-start`` alone, so it is confirmed before any job message goes out,
* batches consecutive ``job-finish`` messages into ``batch-job-finish`` for network
  transports,
* retries transient failures with backoff and jitter within a time budget, and after that
  (or on a permanent failure) sends everything not yet delivered, in order, to the offline
  queue for the rest of the session.

The invariant behind "nothing lost, order kept": what reaches the broker is a *prefix* of
the published stream and what reaches the offline queue is the rest, written in order by
one writer at a time.  Delivering the queue later (``pytest-simscope drain``) therefore
delivers the rest of the stream in order.  A message may be sent twice (a connection lost
after the broker took a message but before it confirmed it, or a send still hanging when
the flush deadline passed), never zero times.  The one exception is an offline queue that
cannot be written (a full disk): those messages are counted as ``lost``, warned about, and
left in the journal for the next run to recover.

When more than ``max_pending`` messages wait in memory (a broker slower than the tests),
that message and every later one are spilled to an anonymous temporary file instead, and
the sender moves them to the offline queue once everything before them is settled: a slow
broker never blocks a test, never grows memory without bound and never reorders the queue.

At ``close`` the sender gets ``timeout`` seconds to finish; then whatever it has not
settled (in flight, waiting, spilled) goes to the offline queue, and a send still hanging
is ignored when it returns.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Protocol

from pytest_simscope.errors import PermanentError, PublishError, TransientError
from pytest_simscope.messages import Envelope
from pytest_simscope.transports.base import Transport

# Bound once: a test may replace time.monotonic for the rest of its run.
_monotonic = time.monotonic

Warn = Callable[[str], None]


class JournalLike(Protocol):
    """What the publisher needs of a journal (:mod:`pytest_simscope.journal`)."""

    def append(self, seq: int, envelope: Envelope) -> None: ...

    def ack(self, seq: int) -> None: ...

    def close(self, *, remove: bool) -> None: ...

# Items one ``send`` carries at most: a failure, the flush deadline or ``close`` is noticed
# between two sends, and a retry resends at most this much.
GROUP_ITEMS = 512
# Spilled messages moved to the offline queue per round.
SPILL_CHUNK = 1000
# Retry delays: first about BACKOFF_BASE * 2 seconds, doubling, at most BACKOFF_CAP, each
# scaled by a random factor in [0.5, 1.5) so many runs hit by one outage do not retry in step.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
# The offline queue as the destination is written by publish() itself until one write
# takes longer than this (seconds); then the sender thread takes over.
INLINE_SLOW = 0.05
# ... or once writes take this long on average (a slow disk): the sender's writes then
# overlap with whatever the tests wait for.
INLINE_AVERAGE = 0.0002
# After the flush deadline, how long ``close`` still waits for the sender to notice before
# leaving a send that hangs to itself.
ABANDON_GRACE = 0.5


class PublishStats:
    """What became of the messages of one run.

    A plain class (no dataclass): the delivery process imports this module, and every
    module it loads stays in its memory for the whole run.
    """

    FIELDS = (
        "published", "delivered", "queued", "superseded", "lost", "jobs", "fallback_reason",
        "confirmed",
    )

    def __init__(
        self,
        published: int = 0,
        delivered: int = 0,
        queued: int = 0,
        superseded: int = 0,
        lost: int = 0,
        jobs: int = 0,
        fallback_reason: str = "",
        warnings: list[str] | None = None,
        confirmed: int = 0,
    ) -> None:
        self.published = published
        self.delivered = delivered
        self.queued = queued
        self.superseded = superseded
        self.lost = lost
        self.jobs = jobs
        self.fallback_reason = fallback_reason
        # Taken care of by a delivery process that then failed: delivered, queued or (a
        # live job whose test had ended) left out; it cannot tell which any more.
        self.confirmed = confirmed
        self.warnings: list[str] = list(warnings or [])

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {name: getattr(self, name) for name in self.FIELDS}
        data["warnings"] = list(self.warnings)
        return data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublishStats):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"PublishStats({fields})"


def _jitter() -> float:
    """A random factor in [0.5, 1.5) (no ``random`` module: see PublishStats)."""
    return 0.5 + int.from_bytes(os.urandom(4), "little") / 2**32


class _Item:
    __slots__ = ("envelope", "seq")

    def __init__(self, seq: int, envelope: Envelope) -> None:
        self.seq = seq
        self.envelope = envelope


class _Spill:
    """Messages that did not fit in memory, in order: in an anonymous temporary file.

    If the file cannot be had or written, later messages wait in memory behind the ones
    already in the file: the order is kept and nothing is dropped, at the price of memory
    only when the temporary folder is failing too.

    Not thread-safe: the publisher calls it under its condition lock (or after the sender
    was abandoned).  Records are length-prefixed pickles: the file is written and read by
    this process only and disappears with it; the journal covers a crash.
    """

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._write_at = 0
        self._read_at = 0
        self._in_file = 0
        self._tail: deque[_Item] = deque()
        self._broken: Exception | None = None
        self.error = ""
        try:
            import tempfile  # only when the memory queue overflows

            self._file = tempfile.TemporaryFile(prefix="simscope-spill-")  # noqa: SIM115
        except OSError as exc:
            self.error = str(exc)

    @property
    def waiting(self) -> int:
        return self._in_file + len(self._tail)

    def append(self, item: _Item) -> None:
        if self._file is not None and not self._tail:
            try:
                import pickle

                data = pickle.dumps((item.seq, item.envelope), protocol=pickle.HIGHEST_PROTOCOL)
                self._file.seek(self._write_at)
                self._file.write(len(data).to_bytes(4, "little") + data)
                self._file.flush()
                self._write_at = self._file.tell()
            except Exception as exc:
                self.error = str(exc) or type(exc).__name__
            else:
                self._in_file += 1
                return
        self._tail.append(item)

    def take(self, limit: int) -> list[_Item]:
        """Up to *limit* of the oldest messages, removed from the spill.

        Raises if the file cannot be read back; the messages it did read are returned
        first, so the only ones lost are those still in ``waiting``.
        """
        if self._broken is not None:
            raise self._broken
        items: list[_Item] = []
        if self._in_file and self._file is not None:
            try:
                import pickle

                self._file.seek(self._read_at)
                while len(items) < limit and self._in_file:
                    head = self._file.read(4)
                    if len(head) != 4:
                        raise EOFError("spill file cut short")
                    size = int.from_bytes(head, "little")
                    seq, envelope = pickle.loads(self._file.read(size))
                    items.append(_Item(seq, envelope))
                    self._in_file -= 1
                    self._read_at = self._file.tell()
            except Exception as exc:
                if not items:
                    raise
                self._broken = exc
                return items
        while len(items) < limit and self._tail and not self._in_file:
            items.append(self._tail.popleft())
        return items

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()


class Publisher:
    """Deliver envelopes through *transport*, falling back to *spool* (the offline queue).

    *taps* (the JSON-lines recorder) see every envelope synchronously, in order.  When
    *transport* is the offline queue itself, pass it as *spool* too.  *batch_size* is the
    most ``job-finish`` messages in one ``batch-job-finish`` (1: no batching; local
    transports never batch).  *retry_budget* is how many seconds one outage is retried
    before the rest of the run goes to *spool*; *linger* how long the sender lets messages
    gather before a send.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        spool: Transport,
        taps: Sequence[Transport] = (),
        journal: JournalLike | None = None,
        batch_size: int = 100,
        max_pending: int = 10000,
        retry_budget: float = 30.0,
        linger: float = 0.2,
        warn: Warn | None = None,
        inline: bool | None = None,
    ) -> None:
        self.transport = transport
        self.spool = spool
        self.taps = list(taps)
        self.journal = journal
        self.batch_size = max(1, batch_size) if not transport.local else 1
        self.max_pending = max(1, max_pending)
        self.retry_budget = max(0.0, retry_budget)
        self.linger = linger
        self.stats = PublishStats()
        self._warn = warn or (lambda message: None)
        # Lock order: _spool_lock before _cond, never the other way round.
        self._cond = threading.Condition(threading.Lock())
        # The sender waits for work on _cond: only then does publish() need to wake it.
        self._idle = False
        self._spool_lock = threading.Lock()
        self._pending: deque[_Item] = deque()
        # Taken by the sender and not settled yet (delivered, queued or dropped).
        self._inflight: list[_Item] = []
        self._spill: _Spill | None = None
        self._overflow = False
        self._spill_noted = False
        self._seq = 0
        self._closing = False
        self._closed = False
        self._abandon = False
        self._abandoned = threading.Event()  # wakes the sender from a retry delay
        self._close_requested = threading.Event()  # ends a retry delay: the session is over
        self._close_at: float | None = None
        self._failures = 0
        self._last_error = ""
        self._degraded = transport is spool
        # The offline queue is the destination itself: publish() writes it directly,
        # unless a write is ever slow (see INLINE_SLOW).
        self._inline = transport is spool if inline is None else inline
        self._inline_time = 0.0  # moving average of one write, seconds
        # Journal acks stop at the first message that could not be queued, so the journal
        # keeps it (and what follows) for the next run to recover.
        self._acking = True
        self._on_tick: Callable[[], None] | None = None
        self._tick_interval = 0.0
        self._next_tick = 0.0
        self._thread = threading.Thread(target=self._run, name="simscope-publisher", daemon=True)
        self._started = False

    # -- producer side -------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def publish(self, envelope: Envelope, seq: int | None = None) -> None:
        """Take one message; never blocks on delivery and never raises.

        *seq*: the message's number in a journal written by the caller (the delivery
        process passes it on); the journal then only hears which numbers are safe.
        """
        if self._inline:
            # The offline queue is the destination: write it here, in order.  A sender
            # thread would hand the GIL back and forth with the tests at every one of
            # the file-system calls of an entry, which costs the tests far more than the
            # calls themselves.
            with self._spool_lock:
                item = self._take(envelope, seq)
                if item is not None:
                    started = _monotonic()
                    self._spool_locked([item])
                    self._ack(item.seq)
                    took = _monotonic() - started
                    self._inline_time = 0.9 * self._inline_time + 0.1 * took
                    if took > INLINE_SLOW or (
                        item.seq > 20 and self._inline_time > INLINE_AVERAGE
                    ):
                        # A slow (or stalling) file system must not hold the tests: the
                        # sender thread writes from the next message on, in order, while
                        # tests that wait (sleep, I/O) let it run.
                        self._inline = False
            return
        item = self._take(envelope, seq)
        if item is not None:
            self._write_spool([item])

    def _take(self, envelope: Envelope, seq: int | None = None) -> _Item | None:
        """Number, journal and record *envelope*; queue it for the sender or return it to
        be written to the offline queue by the caller."""
        direct: _Item | None = None
        with self._cond:
            if seq is None:
                self._seq += 1
            else:
                self._seq = max(self._seq, seq)
            item = _Item(self._seq if seq is None else seq, envelope)
            self.stats.published += 1
            if envelope.type == "job-finish":
                self.stats.jobs += 1
            # The journal first: a kill between the two writes leaves a message to recover
            # that the record lacks, never a recorded one that cannot be recovered.
            if self.journal is not None and seq is None:
                try:
                    self.journal.append(item.seq, envelope)
                except Exception as exc:
                    self._note(f"journal disabled: {exc}")
                    self.journal = None
            # Under the lock, so the record has the order the sender sees even when the
            # heartbeat thread publishes at the same time as the tests.
            if self.taps:
                for tap in list(self.taps):
                    try:
                        tap.send((envelope,))
                    except Exception as exc:
                        self._note(f"{tap.name}: {exc}; no longer written")
                        self.taps.remove(tap)
            if self._abandon or self._inline:
                direct = item  # straight to the offline queue (after close: always)
            elif self._overflow or len(self._pending) + len(self._inflight) >= self.max_pending:
                self._spill_item(item)
            else:
                self._pending.append(item)
                if self._idle:  # else the sender looks at _pending before it waits again
                    self._cond.notify()
        return direct

    @property
    def backlog(self) -> int:
        """Messages in memory not settled yet (waiting or being sent)."""
        return len(self._pending) + len(self._inflight)

    @property
    def overflowing(self) -> bool:
        return self._overflow

    def overflow(self) -> None:
        """From now on, spill what is published (as when ``max_pending`` messages wait):
        the delivery process found more than that many unread in the journal."""
        with self._cond:
            self._overflow = True

    def _spill_item(self, item: _Item) -> None:
        """Put *item* behind everything before it, outside memory (called under ``_cond``)."""
        if self._spill is None:
            self._overflow = True
            self._spill = _Spill()
            if self.transport is not self.spool:
                reason = f"more than {self.max_pending} messages waiting for {self.transport.name}"
                self.stats.fallback_reason = self.stats.fallback_reason or reason
                self._note(f"{reason}; the rest of this run goes to the offline queue")
        spill = self._spill
        spill.append(item)
        if spill.error and not self._spill_noted:
            self._spill_noted = True
            self._note(f"cannot spill to a temporary file ({spill.error}); holding in memory")
        self._cond.notify()

    def close(self, timeout: float) -> PublishStats:
        """Deliver what is left within *timeout* seconds, then queue the rest."""
        if self._closed:
            return self.stats
        self._closed = True
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._close_at = _monotonic()
        self._close_requested.set()
        why_late = f"not delivered within the flush timeout ({timeout:g} s)"
        if self._started:
            # Wait for the flush, but not for a destination that never took a message
            # and is failing: it is down or misconfigured, and waiting would only make
            # every run slower (a connect to a silent host can take the whole timeout).
            deadline = _monotonic() + max(0.0, timeout)
            try:
                while self._thread.is_alive() and not self._unreachable():
                    left = deadline - _monotonic()
                    if left <= 0:
                        break
                    self._thread.join(min(left, 0.05))
            except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) while waiting: stop waiting
                why_late = "delivery interrupted"
        # Holding _spool_lock: the sender is not half-way through writing to the queue, and
        # a late publish() waits until the leftovers are written before its own message.
        with self._spool_lock:
            with self._cond:
                self._abandon = True
                self._abandoned.set()
                leftover = list(self._inflight) + list(self._pending)
                self._pending.clear()
                self._inflight = []
                spill, self._spill = self._spill, None
            late = bool(leftover) or (spill is not None and spill.waiting > 0)
            if late and not self._degraded and not self.stats.fallback_reason:
                if self._unreachable() and self._last_error:
                    self._degrade(self._last_error)
                else:
                    reason = why_late
                    self.stats.fallback_reason = reason
                    self._note(f"{reason}; queued the rest of this run offline")
            self._spool_locked(leftover)
            if spill is not None:
                try:
                    while spill.waiting:
                        self._spool_locked(spill.take(SPILL_CHUNK))
                except Exception as exc:
                    self.stats.lost += spill.waiting
                    self._note(f"cannot read back spilled messages: {exc}")
                spill.close()
        if self._started and self._thread.is_alive():
            self._thread.join(ABANDON_GRACE)
        hanging = self._started and self._thread.is_alive()
        if self.journal is not None:
            self.journal.close(remove=self.stats.lost == 0)
        for transport in {id(t): t for t in (self.transport, self.spool, *self.taps)}.values():
            if hanging and transport is self.transport:
                # The sender is still inside its send; closing a client under a running
                # call is not safe (pika is not thread-safe).  It dies with the process.
                continue
            try:
                transport.close()
            except Exception as exc:  # closing must never fail the session
                self._note(f"closing {transport.name}: {exc}")
        return self.stats

    # -- sender thread -------------------------------------------------------------------

    def _note(self, message: str) -> None:
        self.stats.warnings.append(message)
        with contextlib.suppress(Exception):
            self._warn(message)

    def _waiting(self) -> bool:
        return bool(self._pending) or (self._spill is not None and self._spill.waiting > 0)

    def set_ticker(self, callback: Callable[[], None], interval: float) -> None:
        """Have the sender thread call *callback* about every *interval* seconds while the
        session runs (late live jobs, heartbeats): one thread fewer trading the GIL with
        the tests."""
        with self._cond:
            self._tick_interval = max(0.01, interval)
            self._next_tick = _monotonic() + self._tick_interval
            self._on_tick = callback
            self._cond.notify()  # a sender waiting without a timeout takes one now

    def _tick(self) -> float | None:
        """Run the ticker if it is due; how long the sender may wait before the next."""
        if self._on_tick is None or self._closing:
            return None
        now = _monotonic()
        if now >= self._next_tick:
            with contextlib.suppress(Exception):  # the ticker must never stop the sender
                self._on_tick()
            now = _monotonic()
            self._next_tick = now + self._tick_interval
        return max(0.0, self._next_tick - now)

    def _run(self) -> None:
        while True:
            try:
                wait = self._tick()  # outside the lock: the ticker publishes
            except Exception:  # the sender must survive anything
                wait = None
            with self._cond:
                if not self._waiting() and not self._closing:
                    self._idle = True
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._idle = False
                    if not self._waiting() and not self._closing:
                        continue  # woken for the ticker
                if self._abandon or not self._waiting():
                    return
                closing = self._closing
            if not closing and self.linger and len(self._pending) < GROUP_ITEMS:
                # Let a few messages gather: fewer wake-ups fighting the tests for the GIL,
                # and a fast test's live message is dropped before it is ever sent.  The
                # end of the session (close) cuts the wait short, and a full send group
                # does not wait.
                self._close_requested.wait(self.linger)
            with self._cond:
                if self._abandon:
                    return
                if self._pending:
                    items = list(self._pending)
                    self._pending.clear()
                elif self._spill is not None:
                    try:
                        items = self._spill.take(SPILL_CHUNK)
                    except Exception as exc:
                        # Unreadable spill file: the journal still holds these messages.
                        self.stats.lost += self._spill.waiting
                        self._acking = False
                        self._note(f"cannot read back spilled messages: {exc}")
                        self._spill.close()
                        self._spill = None
                        continue
                    # Everything before the first spilled message is settled now.
                    self._degraded = True
                else:  # pragma: no cover - _waiting() said there was something
                    continue
                self._inflight = items
            try:
                self._process(items)
            except Exception as exc:  # the sender must survive anything
                self._degrade(f"unexpected error: {type(exc).__name__}: {exc}")
                with self._cond:
                    rest = list(self._inflight)
                self._spool_from_sender(rest)
            with self._cond:
                if not self._abandon:
                    self._inflight = []

    def _process(self, items: list[_Item]) -> None:
        finished = {
            item.envelope.uniqueid
            for item in items
            if item.envelope.type == "job-finish" and item.envelope.uniqueid
        }
        kept: list[_Item] = []
        for item in items:
            env = item.envelope
            if env.type == "job-live" and env.uniqueid in finished:
                self.stats.superseded += 1
                continue
            kept.append(item)
        with self._cond:
            if self._abandon:
                return
            self._inflight = list(kept)
        for group in self._groups(kept):
            if self._abandon:
                return
            if self._degraded:
                self._spool_from_sender(group)
            else:
                self._deliver(group)
            self._ack(group[-1].seq)
        self._ack(items[-1].seq)

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Split into send groups: regr-start alone, the rest in runs of GROUP_ITEMS."""
        groups: list[list[_Item]] = []
        current: list[_Item] = []
        for item in items:
            if item.envelope.type == "regr-start":
                if current:
                    groups.append(current)
                groups.append([item])
                current = []
                continue
            current.append(item)
            if len(current) >= GROUP_ITEMS:
                groups.append(current)
                current = []
        if current:
            groups.append(current)
        return groups

    def _wire(self, group: list[_Item]) -> list[tuple[Envelope, list[_Item]]]:
        """The envelopes to send for *group*, each with the items it carries."""
        wire: list[tuple[Envelope, list[_Item]]] = []
        run: list[_Item] = []

        def flush_run() -> None:
            if len(run) == 1:
                wire.append((run[0].envelope, list(run)))
            elif run:
                batch = Envelope.batch(run[0].envelope.regression, [i.envelope for i in run])
                wire.append((batch, list(run)))
            run.clear()

        for item in group:
            env = item.envelope
            if self.batch_size > 1 and env.type == "job-finish" and isinstance(env.body, dict):
                if run and (
                    run[0].envelope.regression != env.regression or len(run) >= self.batch_size
                ):
                    flush_run()
                run.append(item)
                continue
            flush_run()
            wire.append((env, [item]))
        flush_run()
        return wire

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        # The transports already name themselves in their errors.
        return text if text.startswith(self.transport.name) else f"{self.transport.name}: {text}"

    def _deliver(self, group: list[_Item]) -> None:
        wire = self._wire(group)
        deadline = _monotonic() + self.retry_budget
        attempt = 0
        while wire:
            if self._abandon:
                return
            with contextlib.suppress(Exception):
                # A transport that fails before it touches ``delivered`` must not be
                # credited with the previous send's count.
                self.transport.delivered = 0
            try:
                self.transport.send([env for env, _ in wire])
            except TransientError as exc:
                wire = self._settle_partial(wire)
                if not wire:
                    return
                attempt += 1
                left = deadline - _monotonic()
                self._failures += 1
                self._last_error = self._reason(exc)
                if self._unreachable():
                    left = 0.0
                if left <= 0:
                    self._give_up(self._reason(exc), wire)
                    return
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * _jitter()
                if self._close_at is None:
                    self._close_requested.wait(min(delay, left))
                else:
                    self._abandoned.wait(min(delay, left))
                if self._abandon:
                    return
                continue
            except PermanentError as exc:
                wire = self._settle_partial(wire)
                self._give_up(self._reason(exc), wire)
                return
            except Exception as exc:
                # Not a PublishError: ``delivered`` cannot be trusted.  Queue the whole
                # batch; a message both at the broker and in the queue is sent twice,
                # which beats never.
                self._give_up(f"{self.transport.name}: {type(exc).__name__}: {exc}", wire)
                return
            self._settle_delivered([item for _, items in wire for item in items])
            return

    def _unreachable(self) -> bool:
        """The tests are over and the destination failed without ever taking a message."""
        return self._close_at is not None and self._failures > 0 and self.stats.delivered == 0

    def _settle_partial(
        self, wire: list[tuple[Envelope, list[_Item]]]
    ) -> list[tuple[Envelope, list[_Item]]]:
        """Count the envelopes the failed send delivered; the rest of *wire*."""
        try:
            done = max(0, min(int(self.transport.delivered), len(wire)))
        except Exception:
            done = 0
        self._settle_delivered([item for _, items in wire[:done] for item in items])
        return wire[done:]

    def _settle_delivered(self, items: list[_Item]) -> None:
        if not items:
            return
        with self._cond:
            if self._abandon:
                return  # close() queued them already
            self.stats.delivered += len(items)
            done = {id(i) for i in items}
            self._inflight = [i for i in self._inflight if id(i) not in done]

    def _give_up(self, reason: str, wire: list[tuple[Envelope, list[_Item]]]) -> None:
        self._degrade(reason)
        self._spool_from_sender([item for _, items in wire for item in items])

    def _degrade(self, reason: str) -> None:
        if not self._degraded:
            self._degraded = True
            self.stats.fallback_reason = reason
            self._note(f"{reason}; queueing the rest of this run offline")

    def _spool_from_sender(self, items: list[_Item]) -> None:
        if not items:
            return
        with self._spool_lock:
            if self._abandon:
                return  # close() queued them already
            self._spool_locked(items)
            with self._cond:
                done = {id(i) for i in items}
                self._inflight = [i for i in self._inflight if id(i) not in done]

    def _write_spool(self, items: list[_Item]) -> None:
        with self._spool_lock:
            self._spool_locked(items)

    def _spool_locked(self, items: list[_Item]) -> None:
        """Write *items* to the offline queue; the caller holds ``_spool_lock``."""
        if not items:
            return
        with contextlib.suppress(Exception):
            self.spool.delivered = 0
        try:
            self.spool.send([item.envelope for item in items])
        except Exception as exc:
            written = 0
            if isinstance(exc, PublishError):
                with contextlib.suppress(Exception):
                    written = max(0, min(int(self.spool.delivered), len(items)))
            self.stats.queued += written
            self.stats.lost += len(items) - written
            self._acking = False
            detail = str(exc) if isinstance(exc, PublishError) else f"{type(exc).__name__}: {exc}"
            self._note(f"{detail}; these messages were not queued")
            return
        self.stats.queued += len(items)

    def _ack(self, seq: int) -> None:
        journal = self.journal
        if journal is not None and self._acking and not self._abandon:
            with contextlib.suppress(Exception):
                journal.ack(seq)
