"""The publisher: hooks hand it messages; one background thread delivers them in order.

``publish`` never waits on the network: it journals the message (see journal.py) and puts
it on a bounded in-memory queue.  The sender thread

* drops a ``job-live`` that was not sent yet when its own ``job-finish`` is already queued,
* sends ``regr-start`` alone, so it is confirmed before any job message goes out,
* batches consecutive ``job-finish`` messages into ``batch-job-finish`` for network
  transports,
* retries transient failures with backoff and jitter within a time budget, and after that
  (or on a permanent failure) sends everything not yet delivered, in order, to the offline
  queue for the rest of the session.

When the in-memory queue is full, that message and every later one go straight to the
offline queue, so a slow broker never blocks a test nor grows memory without bound.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pytest_simscope.errors import PermanentError, PublishError, TransientError
from pytest_simscope.journal import Journal
from pytest_simscope.models import Envelope
from pytest_simscope.transports.base import Transport

Warn = Callable[[str], None]


@dataclass
class PublishStats:
    """What became of the messages of one run."""

    published: int = 0
    delivered: int = 0
    queued: int = 0
    superseded: int = 0
    lost: int = 0
    jobs: int = 0
    fallback_reason: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Item:
    seq: int
    envelope: Envelope


class Publisher:
    """Deliver envelopes through *transport*, falling back to *spool* (the offline queue).

    *taps* (the JSON-lines recorder) see every envelope synchronously, in order.  When
    *transport* is the offline queue itself, pass it as *spool* too.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        spool: Transport,
        taps: Sequence[Transport] = (),
        journal: Journal | None = None,
        batch_size: int = 100,
        max_pending: int = 10000,
        retry_budget: float = 30.0,
        warn: Warn | None = None,
    ) -> None:
        self.transport = transport
        self.spool = spool
        self.taps = list(taps)
        self.journal = journal
        self.batch_size = batch_size if not transport.local else 1
        self.max_pending = max_pending
        self.retry_budget = retry_budget
        self.stats = PublishStats()
        self._warn = warn or (lambda message: None)
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._spool_lock = threading.Lock()
        self._seq = 0
        self._closing = False
        self._abandon = False
        self._overflow = False
        self._degraded = transport is spool
        self._inflight: list[_Item] = []
        self._thread = threading.Thread(target=self._run, name="simscope-publisher", daemon=True)
        self._started = False

    # -- producer side -------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def publish(self, envelope: Envelope) -> None:
        """Take one message; never blocks on delivery and never raises."""
        for tap in list(self.taps):
            try:
                tap.send((envelope,))
            except PublishError as exc:
                self._note(f"{tap.name}: {exc}")
                self.taps.remove(tap)
        with self._cond:
            self._seq += 1
            item = _Item(self._seq, envelope)
            self.stats.published += 1
            if envelope.type == "job-finish":
                self.stats.jobs += 1
            if self.journal is not None:
                try:
                    self.journal.append(item.seq, envelope)
                except (OSError, ValueError) as exc:
                    self._note(f"journal disabled: {exc}")
                    self.journal = None
            if self._closing and not self._thread.is_alive():
                overflow = True
            elif not self._overflow and len(self._pending) >= self.max_pending:
                self._overflow = True
                self._note(
                    f"more than {self.max_pending} messages waiting for {self.transport.name};"
                    " the rest of this run goes to the offline queue"
                )
                overflow = True
            else:
                overflow = self._overflow
            if not overflow:
                self._pending.append(item)
                self._cond.notify()
                return
        self._to_spool([item])

    def close(self, timeout: float) -> PublishStats:
        """Deliver what is left within *timeout* seconds, then queue the rest."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._started:
            self._thread.join(timeout)
        with self._cond:
            self._abandon = True
            leftover = list(self._inflight) + list(self._pending)
            self._pending.clear()
            self._inflight = []
        if leftover:
            if not self._degraded:
                self.stats.fallback_reason = self.stats.fallback_reason or (
                    f"not delivered within the flush timeout ({timeout:g} s)"
                )
            self._to_spool(leftover)
        if self.journal is not None:
            self.journal.close(remove=self.stats.lost == 0)
        for transport in {id(t): t for t in (self.transport, self.spool, *self.taps)}.values():
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

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._abandon or (not self._pending and self._closing):
                    return
                items = list(self._pending)
                self._pending.clear()
                self._inflight = items
            try:
                self._process(items)
            except Exception as exc:  # the sender must survive anything
                self._degrade(f"unexpected error: {type(exc).__name__}: {exc}")
                with self._cond:
                    rest = list(self._inflight)
                    self._inflight = []
                self._to_spool(rest)
            with self._cond:
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
        if not kept:
            self._ack(items[-1].seq)
            return
        for group in self._groups(kept):
            if self._abandon:
                return
            if self._degraded:
                self._to_spool(group)
            else:
                self._deliver(group)
            with self._cond:
                done = {id(i) for i in group}
                self._inflight = [i for i in self._inflight if id(i) not in done]
        self._ack(items[-1].seq)

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Split into send groups: regr-start alone, job-finish runs up to batch_size."""
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
            if len(current) >= max(self.batch_size, 64):
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
            if not run:
                return
            if len(run) == 1:
                wire.append((run[0].envelope, list(run)))
            else:
                body = [item.envelope.body for item in run]
                batch = Envelope(
                    type="batch-job-finish", regression=run[0].envelope.regression, body=body
                )
                wire.append((batch, list(run)))
            run.clear()

        for item in group:
            env = item.envelope
            if (
                self.batch_size > 1
                and env.type == "job-finish"
                and (not run or run[0].envelope.regression == env.regression)
                and len(run) < self.batch_size
            ):
                run.append(item)
                continue
            flush_run()
            if self.batch_size > 1 and env.type == "job-finish":
                run.append(item)
            else:
                wire.append((env, [item]))
        flush_run()
        return wire

    def _deliver(self, group: list[_Item]) -> None:
        wire = self._wire(group)
        deadline = time.monotonic() + self.retry_budget
        attempt = 0
        while wire:
            if self._abandon:
                return
            try:
                self.transport.send([env for env, _ in wire])
            except TransientError as exc:
                wire = self._count_partial(wire)
                attempt += 1
                delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
                if self._closing and self._abandon:
                    return
                if time.monotonic() + delay > deadline:
                    self._degrade(f"{self.transport.name}: {exc}")
                    self._to_spool([item for _, items in wire for item in items])
                    return
                time.sleep(delay)
                continue
            except PermanentError as exc:
                wire = self._count_partial(wire)
                self._degrade(f"{self.transport.name}: {exc}")
                self._to_spool([item for _, items in wire for item in items])
                return
            except Exception as exc:
                wire = self._count_partial(wire)
                self._degrade(f"{self.transport.name}: {type(exc).__name__}: {exc}")
                self._to_spool([item for _, items in wire for item in items])
                return
            self.stats.delivered += sum(len(items) for _, items in wire)
            return

    def _count_partial(
        self, wire: list[tuple[Envelope, list[_Item]]]
    ) -> list[tuple[Envelope, list[_Item]]]:
        done = max(0, min(self.transport.delivered, len(wire)))
        self.stats.delivered += sum(len(items) for _, items in wire[:done])
        return wire[done:]

    def _degrade(self, reason: str) -> None:
        if not self._degraded:
            self._degraded = True
            self.stats.fallback_reason = reason
            self._note(f"{reason}; queueing the rest of this run offline")

    def _to_spool(self, items: list[_Item]) -> None:
        if not items:
            return
        with self._spool_lock:
            try:
                self.spool.send([item.envelope for item in items])
            except PublishError as exc:
                written = max(0, min(self.spool.delivered, len(items)))
                self.stats.queued += written
                self.stats.lost += len(items) - written
                self._note(f"{self.spool.name}: {exc}")
                return
            self.stats.queued += len(items)

    def _ack(self, seq: int) -> None:
        if self.journal is not None:
            with contextlib.suppress(OSError, ValueError):
                self.journal.ack(seq)
