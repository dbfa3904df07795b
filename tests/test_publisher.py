"""The background publisher alone, driven through fake transports.

Every test checks the promise the publisher exists for: what reached the transport plus
what reached the offline queue is the published stream, in order, with nothing missing
(only ``job-live`` messages whose own ``job-finish`` follows may be dropped).
"""

from __future__ import annotations

import itertools
import pickle
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_simscope import publisher as publisher_module
from pytest_simscope.errors import PermanentError, TransientError
from pytest_simscope.journal import Journal, recover
from pytest_simscope.models import Envelope
from pytest_simscope.publisher import INLINE_AVERAGE, INLINE_SLOW, Publisher, PublishStats
from pytest_simscope.transports.base import Transport
from pytest_simscope.transports.queue import OfflineQueue, read_outbox

REGRESSION = "nightly"

# A step of a FakeTransport's plan: None delivers the batch; an exception is raised after
# delivering nothing; (n, exception) delivers the first n envelopes, then raises.
Step = None | BaseException | tuple[int, BaseException]


def start() -> Envelope:
    return Envelope(type="regr-start", regression=REGRESSION, body={"name": REGRESSION})


def live(uid: str, regression: str = REGRESSION) -> Envelope:
    return Envelope(
        type="job-live",
        regression=regression,
        body={"category": "pytest", "uniqueid": uid, "result": "live"},
    )


def finish(uid: str, regression: str = REGRESSION, result: str = "pass") -> Envelope:
    return Envelope(
        type="job-finish",
        regression=regression,
        body={"category": "pytest", "uniqueid": uid, "result": result},
    )


def update(running: int) -> Envelope:
    return Envelope(
        type="regr-update", regression=REGRESSION, body={"name": REGRESSION, "running": running}
    )


def end() -> Envelope:
    return Envelope(type="regr-finish", regression=REGRESSION, body={"name": REGRESSION})


def run_of(jobs: int, *, lives: bool = True) -> list[Envelope]:
    """A regression as the reporter publishes it: start, each job live then finish, end."""
    stream = [start()]
    for i in range(jobs):
        if lives:
            stream.append(live(f"t{i}"))
        stream.append(finish(f"t{i}"))
    stream.append(end())
    return stream


def expand(envelopes: Iterable[Envelope]) -> list[Envelope]:
    """The stream as published: each batch-job-finish back into its job-finish messages."""
    out: list[Envelope] = []
    for env in envelopes:
        if env.type == "batch-job-finish":
            assert isinstance(env.body, list)
            out.extend(
                Envelope(type="job-finish", regression=env.regression, body=body)
                for body in env.body
            )
        else:
            out.append(env)
    return out


def without_superseded(stream: Sequence[Envelope], got: Sequence[Envelope]) -> list[Envelope]:
    """*stream* minus the job-live messages absent from *got* whose job-finish follows."""
    kept: list[Envelope] = []
    present = list(got)
    for index, env in enumerate(stream):
        if env.type == "job-live" and env not in present:
            assert any(
                later.type == "job-finish" and later.uniqueid == env.uniqueid
                for later in stream[index + 1 :]
            ), f"job-live of {env.uniqueid} dropped without its job-finish"
            continue
        kept.append(env)
    return kept


class FakeTransport(Transport):
    """A network transport that follows a plan, one step per ``send``, then delivers."""

    def __init__(
        self,
        plan: Sequence[Step] = (),
        *,
        delay: float = 0.0,
        gate: threading.Event | None = None,
        local: bool = False,
    ) -> None:
        self.name = "fake://broker"
        self.local = local
        self.plan = list(plan)
        self.delay = delay
        self.gate = gate
        self.batches: list[list[Envelope]] = []  # every send call's batch
        self.got: list[Envelope] = []  # what was delivered, in order
        self.closed = False
        self.in_send = threading.Event()

    def send(self, batch: Sequence[Envelope]) -> None:
        self.in_send.set()
        self.batches.append(list(batch))
        if self.gate is not None:
            self.gate.wait()
        if self.delay:
            time.sleep(self.delay)
        step = self.plan.pop(0) if self.plan else None
        if step is None:
            self.got.extend(batch)
            self.delivered = len(batch)
            return
        count, error = step if isinstance(step, tuple) else (0, step)
        self.got.extend(batch[:count])
        self.delivered = count
        raise error

    def close(self) -> None:
        self.closed = True


class ListSpool(Transport):
    """An offline queue in memory; ``room`` messages fit, then it is "disk full"."""

    local = True

    def __init__(self, room: int | None = None) -> None:
        self.name = "offline queue (test)"
        self.got: list[Envelope] = []
        self.room = room
        self.calls = 0

    def send(self, batch: Sequence[Envelope]) -> None:
        self.calls += 1
        self.delivered = 0
        for env in batch:
            if self.room is not None and len(self.got) >= self.room:
                raise PermanentError(f"cannot write to the {self.name}: No space left on device")
            self.got.append(env)
            self.delivered += 1


def make(
    transport: Transport,
    spool: Transport | None = None,
    **options: Any,
) -> Publisher:
    options.setdefault("linger", 0.0)
    options.setdefault("retry_budget", 5.0)
    return Publisher(transport, spool=spool or ListSpool(), **options)


def publish_all(publisher: Publisher, stream: Iterable[Envelope]) -> None:
    for env in stream:
        publisher.publish(env)


def union(transport: FakeTransport, spool: ListSpool) -> list[Envelope]:
    return expand(transport.got) + expand(spool.got)


# -- order, coalescing, batching --------------------------------------------------------------


def test_everything_is_delivered_in_order() -> None:
    transport, spool = FakeTransport(), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    publisher.start()
    stream = [*run_of(50), update(0)]
    for env in stream:
        publisher.publish(env)
        time.sleep(0.0005)  # let the sender interleave with the producer
    stats = publisher.close(5)

    assert spool.got == []
    assert expand(transport.got) == without_superseded(stream, transport.got)
    assert stats.published == len(stream)
    assert stats.jobs == 50
    assert stats.delivered + stats.superseded == len(stream)
    assert (stats.queued, stats.lost, stats.warnings) == (0, 0, [])
    assert transport.closed


def test_a_live_message_is_dropped_once_its_finish_is_queued() -> None:
    transport, spool = FakeTransport(), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    # Published before the sender starts: it sees everything at once.
    publish_all(publisher, [start(), live("a"), live("b"), finish("a"), live("c"), end()])
    publisher.start()
    stats = publisher.close(5)

    # a finished: its live is not sent; b and c never finished: theirs are.
    assert transport.got == [start(), live("b"), finish("a"), live("c"), end()]
    assert stats.superseded == 1
    assert stats.delivered == 5


def test_a_live_message_already_sent_is_not_taken_back() -> None:
    transport = FakeTransport()
    publisher = make(transport)
    publisher.start()
    publisher.publish(live("a"))
    deadline = time.monotonic() + 5
    while not transport.got and time.monotonic() < deadline:
        time.sleep(0.005)
    publisher.publish(finish("a"))
    stats = publisher.close(5)
    assert transport.got == [live("a"), finish("a")]
    assert stats.superseded == 0


def test_consecutive_job_finish_messages_become_batches() -> None:
    transport = FakeTransport()
    publisher = make(transport, batch_size=3)
    stream = [start(), *[finish(f"t{i}") for i in range(7)], update(0)]
    stream += [finish("x", "other-regression"), finish("y", "other-regression"), end()]
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)

    kinds = [
        (env.type, env.regression, len(env.body) if isinstance(env.body, list) else None)
        for env in transport.got
    ]
    assert kinds == [
        ("regr-start", REGRESSION, None),
        ("batch-job-finish", REGRESSION, 3),
        ("batch-job-finish", REGRESSION, 3),
        ("job-finish", REGRESSION, None),  # a run of one is not wrapped
        ("regr-update", REGRESSION, None),
        ("batch-job-finish", "other-regression", 2),
        ("regr-finish", REGRESSION, None),
    ]
    assert expand(transport.got) == stream
    assert stats.delivered == len(stream)


def test_a_batch_never_mixes_regressions() -> None:
    transport = FakeTransport()
    publisher = make(transport, batch_size=10)
    stream = [finish("a"), finish("b", "r2"), finish("c"), finish("d")]
    publish_all(publisher, stream)
    publisher.start()
    publisher.close(5)
    assert [env.type for env in transport.got] == ["job-finish", "job-finish", "batch-job-finish"]
    assert expand(transport.got) == stream


@pytest.mark.parametrize("local", [False, True], ids=["batching-off", "local-transport"])
def test_no_batches_when_batching_is_off_or_the_transport_is_local(local: bool) -> None:
    transport = FakeTransport(local=local)
    publisher = make(transport, batch_size=1 if not local else 100)
    stream = [finish(f"t{i}") for i in range(5)]
    publish_all(publisher, stream)
    publisher.start()
    publisher.close(5)
    assert transport.got == stream


def test_regr_start_goes_alone_and_first() -> None:
    transport = FakeTransport()
    publisher = make(transport)
    stream = run_of(5)
    publish_all(publisher, stream)
    publisher.start()
    publisher.close(5)
    assert transport.batches[0] == [start()]
    assert all(start() not in batch for batch in transport.batches[1:])
    assert expand(transport.got) == without_superseded(stream, transport.got)


def test_jobs_wait_until_regr_start_is_confirmed() -> None:
    # regr-start fails twice; no job message may overtake it.
    error = TransientError("fake://broker: connection reset")
    transport = FakeTransport([error, error])
    publisher = make(transport)
    stream = run_of(3, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    deadline = time.monotonic() + 10
    while len(expand(transport.got)) < len(stream) and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = publisher.close(5)
    assert transport.batches[:3] == [[start()], [start()], [start()]]
    assert expand(transport.got) == stream
    assert stats.queued == 0


# -- failures -------------------------------------------------------------------------------


def test_transient_failures_are_retried_then_delivered() -> None:
    error = TransientError("fake://broker: connection reset")
    transport, spool = FakeTransport([error, error, error]), ListSpool()
    publisher = make(transport, spool)
    publisher.start()
    stream = run_of(10, lives=False)
    publish_all(publisher, stream)
    # Retries happen while the tests run; at session end a destination that never took a
    # message is not waited for (see the next test), so let the retries succeed first.
    deadline = time.monotonic() + 10
    while len(expand(transport.got)) < len(stream) and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = publisher.close(10)
    assert len(transport.batches) >= 4
    assert expand(transport.got) == stream
    assert spool.got == []
    assert (stats.delivered, stats.queued, stats.warnings) == (len(stream), 0, [])


def test_retries_back_off_with_jitter() -> None:
    error = TransientError("fake://broker: down")
    stamps: list[float] = []

    class Stamped(FakeTransport):
        def send(self, batch: Sequence[Envelope]) -> None:
            stamps.append(time.monotonic())
            super().send(batch)

    transport = Stamped([error] * 4)
    publisher = make(transport)
    publisher.publish(finish("a"))
    publisher.start()
    # Backoff applies while the tests run; close() cuts a pending delay short.
    deadline = time.monotonic() + 10
    while len(stamps) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    publisher.close(10)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 4
    # 0.05 * 2**n scaled by [0.5, 1.5): each gap is within its window, and the windows grow.
    for attempt, gap in enumerate(gaps, start=1):
        base = 0.05 * 2**attempt
        assert 0.5 * base - 0.01 <= gap <= 1.5 * base + 0.1, (attempt, gaps)


def test_an_exhausted_retry_budget_queues_everything_left_in_order() -> None:
    error = TransientError("fake://broker: connection refused")
    transport, spool = FakeTransport([None] + [error] * 1000), ListSpool()
    publisher = make(transport, spool, retry_budget=0.3)
    publisher.start()
    stream = run_of(20, lives=False)
    publisher.publish(stream[0])
    began = time.monotonic()
    publish_all(publisher, stream[1:])
    stats = publisher.close(10)

    assert time.monotonic() - began < 3
    assert transport.got == [start()]
    assert expand(spool.got) == stream[1:]  # the rest, in order, once the budget was spent
    assert stats.delivered == 1
    assert stats.queued == len(stream) - 1
    assert stats.fallback_reason == "fake://broker: connection refused"
    assert stats.warnings == [
        "fake://broker: connection refused; queueing the rest of this run offline"
    ]


def test_after_giving_up_later_messages_are_not_sent_to_the_broker() -> None:
    transport, spool = FakeTransport([PermanentError("fake://broker: unroutable")]), ListSpool()
    publisher = make(transport, spool)
    publisher.start()
    publisher.publish(start())
    deadline = time.monotonic() + 5
    while not spool.got and time.monotonic() < deadline:
        time.sleep(0.005)
    stream = [finish("a"), finish("b"), end()]
    publish_all(publisher, stream)
    stats = publisher.close(5)
    assert len(transport.batches) == 1  # never tried again: the broker gets a prefix only
    assert expand(spool.got) == [start(), *stream]
    assert stats.queued == 4


def test_a_permanent_error_is_not_retried() -> None:
    error = PermanentError("fake://broker: the broker refused the login of user 'u'")
    transport, spool = FakeTransport([error]), ListSpool()
    publisher = make(transport, spool, retry_budget=30)
    stream = run_of(3, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    began = time.monotonic()
    stats = publisher.close(10)
    assert time.monotonic() - began < 2
    assert len(transport.batches) == 1
    assert expand(spool.got) == stream
    assert stats.fallback_reason == "fake://broker: the broker refused the login of user 'u'"


def test_the_warning_names_the_transport_once() -> None:
    transport = FakeTransport([PermanentError("no such queue")])
    publisher = make(transport)
    publisher.publish(start())
    publisher.start()
    stats = publisher.close(5)
    assert stats.warnings == ["fake://broker: no such queue; queueing the rest of this run offline"]


def test_a_partial_delivery_is_counted_and_the_rest_resent_once() -> None:
    # The first send of the jobs delivers two envelopes, then the connection drops.
    transport, spool = FakeTransport([None, (2, TransientError("reset"))]), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    stream = run_of(6, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert transport.got == stream  # no duplicate, no gap
    assert transport.batches[2] == stream[3:]  # the resend starts after the delivered two
    assert (stats.delivered, stats.queued) == (len(stream), 0)


def test_a_partial_delivery_then_a_permanent_error_splits_the_stream() -> None:
    transport, spool = FakeTransport([None, (3, PermanentError("gone"))]), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    stream = run_of(6, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert transport.got == stream[:4]
    assert spool.got == stream[4:]
    assert (stats.delivered, stats.queued, stats.lost) == (4, len(stream) - 4, 0)


def test_a_partial_batch_counts_every_job_it_carried() -> None:
    transport, spool = FakeTransport([(1, PermanentError("gone"))]), ListSpool()
    publisher = make(transport, spool, batch_size=3)
    stream = [finish(f"t{i}") for i in range(7)]
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert expand(transport.got) == stream[:3]  # the first batch-job-finish of three
    assert expand(spool.got) == stream[3:]
    assert (stats.delivered, stats.queued) == (3, 4)


def test_a_stale_delivered_count_is_not_trusted() -> None:
    class Forgetful(FakeTransport):
        """Fails before touching ``delivered``."""

        def send(self, batch: Sequence[Envelope]) -> None:
            if len(self.batches) >= 1:
                self.batches.append(list(batch))
                raise PermanentError("gone")
            super().send(batch)

    transport, spool = Forgetful(), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    publisher.publish(start())
    publisher.start()
    deadline = time.monotonic() + 5
    while not transport.got and time.monotonic() < deadline:
        time.sleep(0.005)
    stream = [finish("a"), finish("b")]
    publish_all(publisher, stream)
    stats = publisher.close(5)
    assert spool.got == stream
    assert (stats.delivered, stats.queued) == (1, 2)


def test_an_unexpected_exception_queues_the_batch_and_the_sender_survives() -> None:
    transport, spool = FakeTransport([(1, RuntimeError("bug in a transport"))]), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    stream = run_of(3, lives=False)
    publish_all(publisher, stream[:3])
    publisher.start()
    deadline = time.monotonic() + 5
    while len(spool.got) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    publish_all(publisher, stream[3:])
    stats = publisher.close(5)
    # The transport claimed one delivered, but an unexpected error makes that count
    # untrustworthy: the whole batch is queued (sent twice at worst, never lost).
    assert spool.got == stream
    assert stats.queued == len(stream)
    assert stats.warnings == [
        "fake://broker: RuntimeError: bug in a transport; queueing the rest of this run offline"
    ]


def test_an_error_inside_the_sender_itself_is_survived(monkeypatch: pytest.MonkeyPatch) -> None:
    transport, spool = FakeTransport(), ListSpool()
    publisher = make(transport, spool)

    def broken(group: list[Any]) -> list[Any]:
        raise ValueError("broken batching")

    monkeypatch.setattr(publisher, "_wire", broken)
    stream = run_of(3, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert expand(spool.got) == stream
    assert stats.fallback_reason == "unexpected error: ValueError: broken batching"


# -- the in-memory queue is bounded -----------------------------------------------------------


def test_overflow_spills_and_queues_in_order_without_blocking() -> None:
    gate = threading.Event()
    transport, spool = FakeTransport(gate=gate), ListSpool()
    publisher = make(transport, spool, max_pending=10, batch_size=1)
    publisher.start()
    stream = run_of(300, lives=False)
    publisher.publish(stream[0])
    assert transport.in_send.wait(5)  # the sender is stuck in its first send
    began = time.monotonic()
    publish_all(publisher, stream[1:])
    took = time.monotonic() - began
    assert took < 2, f"publish blocked for {took:.2f} s"
    assert len(publisher._pending) <= 10
    gate.set()
    stats = publisher.close(10)

    # Ten fit in memory (the one being sent and nine waiting) and went to the broker; the
    # rest went to the queue.
    assert transport.got == stream[:10]
    assert spool.got == stream[10:]
    assert (stats.delivered, stats.queued, stats.lost) == (10, len(stream) - 10, 0)
    assert stats.warnings == [
        "more than 10 messages waiting for fake://broker; the rest of this run goes to the "
        "offline queue"
    ]


def test_overflow_then_a_broker_failure_keeps_the_queue_in_order() -> None:
    # The messages in memory fail *after* later ones were spilled: they must still land in
    # the queue before them.
    gate = threading.Event()
    transport = FakeTransport([None, PermanentError("gone")], gate=gate)
    spool = ListSpool()
    publisher = make(transport, spool, max_pending=10, batch_size=1)
    publisher.start()
    stream = run_of(100)
    publisher.publish(stream[0])
    assert transport.in_send.wait(5)
    publish_all(publisher, stream[1:])
    gate.set()
    stats = publisher.close(10)
    assert transport.got == [start()]
    assert expand(spool.got) == without_superseded(stream[1:], spool.got)
    assert stats.lost == 0


def test_overflow_with_the_offline_queue_as_transport_says_nothing() -> None:
    spool = ListSpool()
    # Through the sender thread (as after a slow write), where the overflow can happen.
    publisher = Publisher(spool, spool=spool, max_pending=10, linger=0, inline=False)
    stream = run_of(50, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert spool.got == stream
    assert (stats.queued, stats.warnings) == (len(stream), [])


def test_the_offline_queue_as_transport_is_written_by_publish_itself() -> None:
    """No sender thread in between: each message is in the queue when publish() returns,
    so the tests never trade the GIL with a thread doing file-system calls."""
    spool = ListSpool()
    publisher = Publisher(spool, spool=spool)  # never started
    stream = run_of(20)
    for index, envelope in enumerate(stream):
        publisher.publish(envelope)
        assert spool.got == stream[: index + 1]
    stats = publisher.close(5)
    assert (stats.queued, stats.lost, stats.warnings) == (len(stream), 0, [])


class SlowOnce(ListSpool):
    """An offline queue whose third write stalls (a busy or network file system)."""

    def send(self, batch: Sequence[Envelope]) -> None:
        if self.calls == 2:
            time.sleep(INLINE_SLOW * 2)
        super().send(batch)


class SlowDisk(ListSpool):
    """An offline queue on a slow disk: every write takes a little too long."""

    def send(self, batch: Sequence[Envelope]) -> None:
        time.sleep(INLINE_AVERAGE * 3)
        super().send(batch)


@pytest.mark.parametrize(
    ("spool_class", "direct"),
    [pytest.param(SlowOnce, 3, id="one-stalled-write"), pytest.param(SlowDisk, 20, id="slow-disk")],
)
def test_a_slow_offline_queue_hands_the_writing_to_the_sender(
    spool_class: type[ListSpool], direct: int
) -> None:
    spool = spool_class()
    publisher = Publisher(spool, spool=spool, linger=0)
    publisher.start()
    stream = run_of(30)
    publish_all(publisher, stream)
    # The first ones went in directly; the rest waits for the sender thread, so a queue
    # that stays slow holds the sender, not the tests.
    assert spool.got[:direct] == stream[:direct]
    assert not publisher._inline
    stats = publisher.close(10)
    # In order; the sender drops a job-live whose job-finish waits behind it.
    assert spool.got == without_superseded(stream, spool.got)
    assert [e.uniqueid for e in spool.got if e.type == "job-finish"] == [
        f"t{i}" for i in range(30)
    ]
    assert (stats.queued + stats.superseded, stats.lost) == (len(stream), 0)


def test_overflow_without_a_temporary_folder_keeps_order_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_tmp(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_tmp)
    gate = threading.Event()
    transport, spool = FakeTransport(gate=gate), ListSpool()
    publisher = make(transport, spool, max_pending=10, batch_size=1)
    publisher.start()
    stream = run_of(100, lives=False)
    publisher.publish(stream[0])
    assert transport.in_send.wait(5)
    publish_all(publisher, stream[1:])
    gate.set()
    stats = publisher.close(10)
    assert union(transport, spool) == stream
    assert stats.lost == 0
    assert any("cannot spill to a temporary file" in w for w in stats.warnings)


def test_a_spill_file_that_fails_part_way_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tempfile.TemporaryFile

    class Filling:
        """A temporary file that takes five records, then reports a full disk."""

        def __init__(self) -> None:
            self.file = real()
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes > 5:
                raise OSError(28, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: Filling())
    gate = threading.Event()
    transport, spool = FakeTransport(gate=gate), ListSpool()
    publisher = make(transport, spool, max_pending=10, batch_size=1)
    publisher.start()
    stream = run_of(60, lives=False)
    publisher.publish(stream[0])
    assert transport.in_send.wait(5)
    publish_all(publisher, stream[1:])
    gate.set()
    stats = publisher.close(10)
    assert union(transport, spool) == stream
    assert stats.lost == 0


def test_an_unreadable_spill_counts_lost_and_keeps_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal", "run1")
    gate = threading.Event()
    transport, spool = FakeTransport(gate=gate), ListSpool()
    publisher = make(transport, spool, journal=journal, max_pending=10, batch_size=1)
    publisher.start()
    stream = run_of(50, lives=False)
    publisher.publish(stream[0])
    assert transport.in_send.wait(5)
    publish_all(publisher, stream[1:])

    real_loads = pickle.loads
    reads = 0

    def failing_loads(data: bytes) -> Any:
        nonlocal reads
        reads += 1
        if reads > 5:
            raise pickle.UnpicklingError("spill file damaged")
        return real_loads(data)

    monkeypatch.setattr(pickle, "loads", failing_loads)
    gate.set()
    stats = publisher.close(10)
    # Ten were in memory; five were read back from the spill before it broke.
    assert union(transport, spool) == stream[:15]
    assert stats.lost == len(stream) - 15
    assert "cannot read back spilled messages: spill file damaged" in stats.warnings
    assert journal.path.exists()
    recovered = ListSpool()
    recover(tmp_path / "journal", recovered)
    assert recovered.got == stream[15:]  # the next run gets back exactly what was lost


def test_spill_round_trip_is_exact() -> None:
    spill = publisher_module._Spill()
    odd = Envelope(
        type="job-finish",
        regression="ü \x00 regression",
        body={"category": "c", "uniqueid": "u", "result": "fail", "fail_message": "\udcff"},
    )
    items = [publisher_module._Item(i, odd if i % 2 else finish(str(i))) for i in range(2500)]
    for item in items[:1500]:
        spill.append(item)
    taken = spill.take(1000)
    for item in items[1500:]:
        spill.append(item)
    taken += spill.take(10_000)
    spill.close()
    assert [(i.seq, i.envelope) for i in taken] == [(i.seq, i.envelope) for i in items]
    assert spill.waiting == 0


# -- closing ----------------------------------------------------------------------------------


def test_a_hanging_transport_is_left_behind_at_the_flush_deadline() -> None:
    gate = threading.Event()
    transport, spool = FakeTransport(gate=gate), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    publisher.start()
    stream = run_of(20, lives=False)
    publish_all(publisher, stream)
    assert transport.in_send.wait(5)

    began = time.monotonic()
    stats = publisher.close(0.3)
    took = time.monotonic() - began
    assert took < 2, f"close took {took:.2f} s"
    assert expand(spool.got) == stream  # the send still hanging counts as not delivered
    assert stats.queued == len(stream)
    assert stats.fallback_reason == "not delivered within the flush timeout (0.3 s)"
    assert not transport.closed  # never closed under a running send

    # When the hanging send returns, nothing is queued twice and the counts stand.
    gate.set()
    publisher._thread.join(5)
    assert not publisher._thread.is_alive()
    assert expand(spool.got) == stream
    assert (stats.delivered, stats.queued) == (0, len(stream))


def test_close_flushes_what_the_deadline_allows() -> None:
    transport, spool = FakeTransport(delay=0.01), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    publisher.start()
    stream = run_of(30, lives=False)
    publish_all(publisher, stream)
    stats = publisher.close(10)
    assert transport.got == stream
    assert stats.queued == 0


def test_close_without_start_queues_everything() -> None:
    transport, spool = FakeTransport(), ListSpool()
    publisher = make(transport, spool)
    stream = run_of(3, lives=False)
    publish_all(publisher, stream)
    stats = publisher.close(1)
    assert transport.batches == []
    assert spool.got == stream
    assert stats.queued == len(stream)


def test_close_twice_and_publish_after_close() -> None:
    transport, spool = FakeTransport(), ListSpool()
    publisher = make(transport, spool)
    publisher.start()
    publisher.publish(start())
    first = publisher.close(5)
    second = publisher.close(5)
    assert first is second
    publisher.publish(end())  # a straggler: queued, not lost
    assert transport.got == [start()]
    assert spool.got == [end()]
    assert (first.delivered, first.queued) == (1, 1)


def test_a_flush_deadline_of_zero_still_loses_nothing() -> None:
    transport, spool = FakeTransport(delay=0.05), ListSpool()
    publisher = make(transport, spool, batch_size=1)
    publisher.start()
    stream = run_of(20, lives=False)
    publish_all(publisher, stream)
    stats = publisher.close(0)
    publisher._thread.join(5)
    # Everything is somewhere; a send that was running at the deadline may be in both.
    got = union(transport, spool)
    assert [env for env in stream if env not in got] == []
    assert stats.delivered + stats.queued >= len(stream)


# -- the offline queue failing ----------------------------------------------------------------


def test_a_full_disk_counts_and_reports_lost_messages() -> None:
    transport = FakeTransport([PermanentError("fake://broker: gone")])
    spool = ListSpool(room=3)
    publisher = make(transport, spool)
    stream = run_of(5, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert spool.got == stream[:3]
    assert (stats.queued, stats.lost) == (3, len(stream) - 3)
    assert any("No space left on device" in w and "not queued" in w for w in stats.warnings)


def test_a_spool_raising_anything_counts_lost_not_crash() -> None:
    class Broken(ListSpool):
        def send(self, batch: Sequence[Envelope]) -> None:
            raise RuntimeError("bug in the queue")

    spool = Broken()
    publisher = Publisher(spool, spool=spool, linger=0)
    publisher.publish(start())
    publisher.start()
    stats = publisher.close(5)
    assert (stats.queued, stats.lost) == (0, 1)
    assert stats.warnings == ["RuntimeError: bug in the queue; these messages were not queued"]


def test_lost_messages_stay_in_the_journal_for_the_next_run(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", "run1")
    transport = FakeTransport([None, PermanentError("fake://broker: gone")])
    spool = ListSpool(room=2)
    publisher = make(transport, spool, journal=journal, batch_size=1)
    stream = run_of(5, lives=False)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert stats.lost == len(stream) - 3
    assert journal.path.exists()  # kept: it holds what the queue could not take

    later = ListSpool()
    assert recover(tmp_path / "journal", later) > 0
    # Everything after the start (the last confirmed message) comes back, in order.
    assert later.got == stream[1:]


def test_a_clean_run_removes_its_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", "run1")
    transport = FakeTransport()
    publisher = make(transport, journal=journal)
    publisher.start()
    publish_all(publisher, run_of(5))
    publisher.close(5)
    assert not journal.path.exists()
    assert not journal.ack_path.exists()


def test_after_a_crash_the_journal_holds_everything_not_confirmed(tmp_path: Path) -> None:
    gate = threading.Event()
    journal = Journal(tmp_path / "journal", "run1")
    transport = FakeTransport(gate=gate)
    publisher = make(transport, journal=journal, batch_size=1)
    publisher.start()
    stream = run_of(10, lives=False)
    publisher.publish(stream[0])
    gate.set()
    deadline = time.monotonic() + 5
    while not transport.got and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # let the ack land
    gate.clear()
    transport.in_send.clear()
    publisher.publish(stream[1])
    assert transport.in_send.wait(5)  # stuck in the second send ...
    publish_all(publisher, stream[2:])
    journal.close(remove=False)  # ... when the process dies: no close(), no cleanup

    recovered = ListSpool()
    recover(tmp_path / "journal", recovered)
    assert transport.got == [start()]
    assert recovered.got == stream[1:]
    gate.set()
    publisher.close(5)  # only to stop the thread


# -- producer side ----------------------------------------------------------------------------


def test_publish_never_raises_and_a_broken_tap_is_dropped() -> None:
    class BadTap(ListSpool):
        def send(self, batch: Sequence[Envelope]) -> None:
            raise OSError("record file gone")

    class BadJournal:
        def append(self, seq: int, envelope: Envelope) -> None:
            raise RuntimeError("journal broken")

        def ack(self, seq: int) -> None:
            raise AssertionError("never acked once disabled")

        def close(self, *, remove: bool) -> None:
            pass

    good_tap = ListSpool()
    transport = FakeTransport()
    publisher = make(transport, taps=[BadTap(), good_tap], journal=BadJournal())
    stream = run_of(3)
    publish_all(publisher, stream)
    publisher.start()
    stats = publisher.close(5)
    assert good_tap.got == stream
    assert stats.warnings == [
        "journal disabled: journal broken",
        "offline queue (test): record file gone; no longer written",
    ]
    assert expand(transport.got) == without_superseded(stream, transport.got)


def test_taps_see_the_publish_order_from_several_threads() -> None:
    tap = ListSpool()
    transport = FakeTransport()
    publisher = make(transport, taps=[tap], batch_size=1)
    publisher.start()

    def produce(prefix: str) -> None:
        for i in range(200):
            publisher.publish(finish(f"{prefix}{i}"))

    threads = [threading.Thread(target=produce, args=(p,)) for p in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    publisher.close(5)
    assert transport.got == tap.got
    assert len(tap.got) == 600


def test_publish_is_cheap_while_the_broker_is_slow() -> None:
    transport = FakeTransport(delay=0.2)
    publisher = make(transport)
    publisher.start()
    began = time.monotonic()
    publish_all(publisher, run_of(500))
    took = time.monotonic() - began
    publisher.close(0)
    assert took < 1.0


def test_offline_mode_writes_the_queue_in_order(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path / "queue", run_id="r1")
    publisher = Publisher(queue, spool=queue, linger=0)
    publisher.start()
    stream = run_of(20)
    publish_all(publisher, stream)
    stats = publisher.close(5)
    got = [Envelope(**record) for record in read_outbox(tmp_path / "queue")]
    assert got == without_superseded(stream, got)
    assert stats.delivered == 0
    assert stats.queued + stats.superseded == len(stream)
    assert stats.warnings == []


def test_stats_default() -> None:
    stats = PublishStats()
    assert (stats.published, stats.delivered, stats.queued, stats.lost) == (0, 0, 0, 0)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    # A publisher left hanging on purpose is released by its test; give it a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [
            t for t in threading.enumerate()
            if t not in before and t.name == "simscope-publisher" and t.is_alive()
        ]
        if not extra:
            return
        time.sleep(0.01)
    raise AssertionError(f"publisher threads still running: {extra}")


def test_a_destination_that_never_worked_is_not_waited_for_at_session_end() -> None:
    error = TransientError("fake://broker: down")
    transport, spool = FakeTransport([error] * 1000), ListSpool()
    publisher = make(transport, spool)
    publisher.retry_budget = 60.0
    publisher.start()
    stream = run_of(3, lives=False)
    publish_all(publisher, stream)
    started = time.monotonic()
    stats = publisher.close(30)
    assert time.monotonic() - started < 1.5
    assert [item for item in spool.got] == stream
    assert (stats.delivered, stats.queued) == (0, len(stream))
