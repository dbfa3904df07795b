"""Delivery in a process of its own: the pytest process only journals its messages.

A thread in the pytest process costs the tests more than the work it does: each time it
wakes up it takes the GIL from the tests, and on sandboxed machines every such hand-over
is a pair of context switches that can cost a millisecond.  So the publishing process
(the only one, or the xdist controller) does no delivery at all.  :class:`CourierFront`
gives each message its number and copies it into the journal (a shared memory map: no
system call), and a child process, the *courier*, started at session start and holding
the journal's lock with it, reads the new journal lines every few milliseconds and
delivers them with a :class:`~pytest_simscope.publisher.Publisher`: the network, the
offline queue, retries, the fallback, the acks.  At session end the pytest process asks
it to finish and reads its figures back.

Nothing is lost on the way:

* the journal is written before anything else, so a message journaled is either
  delivered, queued, or still in the journal for the next run (or ``drain``) to recover;
* if the pytest process dies, the courier sees it go (its standard input closes, or the
  process is gone), delivers what the journal holds, closes what the run left open (a
  fail for each running test, the regression's ``regr-finish``: see
  :class:`~pytest_simscope.journal.Unfinished`) and removes the journal only when all of
  it is settled;
* if the courier dies, fails to start or does not finish in time, the pytest process
  queues every message of the journal not acknowledged yet itself (some may then be
  delivered twice, none zero times);
* a courier that cannot be started at all leaves the pytest process to publish in a
  thread of its own, as :class:`LocalFront` does.

:class:`Relay` sits between the journal's order and the publisher, in whichever process
delivers: it holds every message ``live_after`` seconds, so the live job of a test that
ends sooner is dropped (a test that ended needs no live message), and it re-sends the
live jobs of tests still running on the heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_simscope.compact import LIVE_LINE, PASS_LINE, RunFields
from pytest_simscope.journal import Journal, JournalTail, Unfinished, _read_acked, mark_closed
from pytest_simscope.messages import (
    RECORD_LINE,
    Envelope,
    MessageType,
    record_head,
)
from pytest_simscope.publisher import JournalLike, Publisher, PublishStats
from pytest_simscope.transports.base import Transport

# Bound once: a test may replace time.monotonic for the rest of its run.
_monotonic = time.monotonic

if TYPE_CHECKING:
    from pytest_simscope.transports.queue import OfflineQueue

# How often the courier looks for new journal lines (seconds).
POLL = 0.02
# The courier reads the journal only while fewer messages than this wait in its memory
# (the journal is the buffer: its memory stays small however far it lags), about
# READ_BYTES at a time.  When more than ``max_pending`` lines wait unread, it spills
# like the in-process publisher does, and the rest of the run goes to the offline queue.
READ_AHEAD = 500
READ_BYTES = 64 << 10
# The most messages a relay holds (see Relay.limit).
HOLD_LIMIT = 5000
# How much longer than the flush timeout the pytest process waits for the courier to
# report before it queues the journal itself: the courier's own start, and the offline
# queue writes after the deadline.
CLOSE_GRACE = 15.0
# Set to 1, the pytest process delivers in a thread of its own instead (tests use it).
INPROCESS_ENV = "PYTEST_SIMSCOPE_INPROCESS"


class Relay:
    """Hold messages ``live_after`` seconds, in order, then hand them to *publisher*.

    A ``job-live`` whose ``job-finish``, or a later ``job-live`` of the same job, arrives
    while it is held is dropped.  The live
    jobs handed on and not finished yet are re-sent every *heartbeat* seconds (0: never),
    with a ``regr-update`` of how many are running (not for a shard).  Not thread-safe:
    one caller at a time.
    """

    def __init__(
        self, publisher: Publisher, *, live_after: float, heartbeat: float, shard: str | None
    ) -> None:
        self.publisher = publisher
        self.live_after = max(0.0, live_after)
        self.heartbeat = max(0.0, heartbeat)
        self.shard = shard
        # [due, seq, envelope, dropped]
        self._held: deque[list[Any]] = deque()
        self._held_lives: dict[str, list[Any]] = {}
        # Live jobs handed on and not finished: uniqueid -> [envelope, last sent]
        self._live: dict[str, list[Any]] = {}
        # The number of the last message handed on: a heartbeat's re-send is numbered so
        # (acking it must not vouch for messages still held).
        self._released_seq = 0
        self._next_beat: float | None = None
        # At most this many held: beyond, the oldest go on before their time (a flood of
        # messages must not grow memory; some live jobs then go out that were not needed).
        self.limit = HOLD_LIMIT

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, seq: int, envelope: Envelope, now: float) -> None:
        """Take the message numbered *seq*, read at *now* (``time.monotonic()``)."""
        kind = envelope.type
        if kind == "job-finish" and self._held_lives:
            uid = envelope.uniqueid
            held = self._held_lives.pop(uid, None) if uid else None
            if held is not None:
                held[3] = True
                self.publisher.stats.superseded += 1
        if not self.live_after and not self._held:
            self._release(seq, envelope, now)
            return
        entry = [now + self.live_after, seq, envelope, False]
        self._held.append(entry)
        if kind == "job-live":
            uid = envelope.uniqueid
            if uid:
                # A later live job of the same job (its marker's fields came with its
                # setup report) stands for one still held.
                earlier = self._held_lives.get(uid)
                if earlier is not None:
                    earlier[3] = True
                    self.publisher.stats.superseded += 1
                self._held_lives[uid] = entry
        if len(self._held) > self.limit:
            self._release_held(self._held.popleft(), now)

    def pump(self, now: float, *, everything: bool = False) -> None:
        """Hand on every message held long enough (with *everything*: all of them)."""
        held = self._held
        while held and (everything or held[0][0] <= now):
            self._release_held(held.popleft(), now)

    def _release_held(self, entry: list[Any], now: float) -> None:
        envelope: Envelope = entry[2]
        if envelope.type == "job-live":
            uid = envelope.uniqueid
            if uid and self._held_lives.get(uid) is entry:
                del self._held_lives[uid]
        if not entry[3]:
            self._release(entry[1], envelope, now)

    def _release(self, seq: int, envelope: Envelope, now: float) -> None:
        kind = envelope.type
        if self.heartbeat and (kind == "job-live" or kind == "job-finish"):
            uid = envelope.uniqueid
            if uid:
                if kind == "job-live":
                    self._live[uid] = [envelope, now]
                else:
                    self._live.pop(uid, None)
        self._released_seq = seq
        self.publisher.publish(envelope, seq)

    def finish_with(self, envelopes: list[Envelope], now: float) -> None:
        """Hand on every message held, then *envelopes* (numbered as the last handed on, as
        a heartbeat's re-sends are: acking them vouches for nothing more)."""
        self.pump(now, everything=True)
        for envelope in envelopes:
            self._release(self._released_seq, envelope, now)

    def beat(self, now: float) -> None:
        """Re-send the live jobs that were last sent a heartbeat ago, if it is time."""
        if not self.heartbeat:
            return
        if self._next_beat is None:
            self._next_beat = now + min(self.heartbeat, 0.05)
        if now < self._next_beat:
            return
        self._next_beat = now + min(self.heartbeat, 0.05)
        if not self._live:
            return
        regression = ""
        due = False
        for entry in self._live.values():
            envelope = entry[0]
            regression = envelope.regression
            if now - entry[1] >= self.heartbeat:
                due = True
                entry[1] = now
                self.publisher.publish(envelope, self._released_seq)
        if due and not self.shard:
            body = {"name": regression, "running": len(self._live)}
            self.publisher.publish(Envelope("regr-update", regression, body), self._released_seq)


# Bound once: a test may replace them for the rest of the run (see CourierFront._exchange).
_write, _read, _select = os.write, os.read, select.select


@contextlib.contextmanager
def _sigpipe_ignored() -> Iterator[None]:
    """SIGPIPE ignored meanwhile (in the main thread; elsewhere it cannot be changed)."""
    previous: Any = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        if signal.getsignal(signal.SIGPIPE) != signal.SIG_IGN:
            previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signal.SIGPIPE, previous)


class LocalFront:
    """No courier: the relay and the publisher's thread run in the pytest process."""

    def __init__(self, publisher: Publisher, journal: Journal | None, relay: Relay) -> None:
        self.publisher = publisher
        self.journal = journal
        self.relay = relay
        self._lock = threading.Lock()
        self._seq = 0
        if relay.live_after or relay.heartbeat:
            periods = [p for p in (relay.live_after, relay.heartbeat) if p > 0]
            publisher.set_ticker(self._tick, min(0.05, *periods))

    @property
    def stats(self) -> PublishStats:
        return self.publisher.stats

    def start(self) -> None:
        self.publisher.start()

    def _note(self, message: str) -> None:
        self.publisher._note(message)

    def forget(self) -> None:
        """In a forked child: let go of the journal (the sender thread is not there)."""
        if self.journal is not None:
            self.journal.forget()

    def publish(self, envelope: Envelope) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
            if self.journal is not None:
                try:
                    self.journal.append(seq, envelope)
                except Exception as exc:
                    self.publisher._note(f"journal disabled: {exc}")
                    self.journal = None
                    self.publisher.journal = None
            now = _monotonic()
            self.relay.push(seq, envelope, now)
            self.relay.pump(now)

    def settle(self) -> None:
        """Nothing: no process was started."""

    def _tick(self) -> None:
        with self._lock:
            now = _monotonic()
            self.relay.pump(now)
            self.relay.beat(now)

    def close(self, timeout: float) -> PublishStats:
        with self._lock:
            self.relay.pump(_monotonic(), everything=True)
        return self.publisher.close(timeout)


# How the courier starts: the process pytest starts forks it and exits at once, so the
# courier is not a child of pytest (a test that waits for every child of its process,
# os.waitpid(-1) until there is none, must not wait for it), then it runs this module.
# Its arguments name it and the pytest process it serves, for tools that look for it.
_START = (
    "import os\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "import runpy\n"
    "runpy.run_module('pytest_simscope.courier', run_name='__main__', alter_sys=True)\n"
)
COURIER_ARG = "pytest_simscope.courier"


def _search_path() -> list[str]:
    """The courier's import path: this package's folder, then what this process searched
    when the plugin was loaded, in that order (standard library before site-packages),
    without the folder pytest was started in (a module there must not stand in for one
    the courier imports)."""
    import sysconfig

    import pytest_simscope

    package_root = str(Path(pytest_simscope.__file__).resolve().parent.parent)
    path = [package_root]
    for entry in pytest_simscope.STARTUP_PATH:
        if (
            entry
            and os.path.isabs(entry)
            and entry not in path
            and entry != pytest_simscope.STARTUP_CWD
            and os.path.exists(entry)
        ):
            path.append(entry)
    # The standard library and the installed packages first: a test folder on PYTHONPATH
    # holding a json.py or select.py must not stand in for the real one in the courier.
    installed = tuple(
        os.path.join(os.path.realpath(folder), "")
        for key, folder in sysconfig.get_paths().items()
        if key in ("stdlib", "platstdlib", "purelib", "platlib")
    )

    def is_installed(entry: str) -> bool:
        return os.path.join(os.path.realpath(entry), "").startswith(installed)

    rest = path[1:]
    return [package_root] + [e for e in rest if is_installed(e)] + [
        e for e in rest if not is_installed(e)
    ]


class CourierFront:
    """The pytest process's side of a courier: number and journal each message, no more."""

    def __init__(
        self,
        journal: Journal,
        spool: OfflineQueue,
        config: dict[str, Any],
        *,
        executable: str | None = None,
    ) -> None:
        if os.name != "posix":
            # It inherits the journal's descriptor and waits on a pipe with select().
            raise OSError("a delivery process needs a POSIX system")
        self.journal = journal
        self.spool = spool
        self._run_id = spool.run_id
        self.stats = PublishStats()
        self._warnings: list[str] = []
        self._seq = 0
        self._unjournaled: list[Envelope] = []
        # raw_writer()'s writers, by message type and regression (for publish_raw).
        self._writers: dict[tuple[str, str], Callable[[bytes], None]] = {}
        self._closed = False
        fd = journal.fileno()
        config = dict(config, journal=str(journal.path), fd=fd, parent=os.getpid())
        import subprocess  # here: the courier process itself never needs it

        self._subprocess = subprocess
        env = dict(os.environ)
        # One malloc arena: the courier's few threads do not need their own, and each
        # costs resident memory.
        env.setdefault("MALLOC_ARENA_MAX", "1")
        env["PYTHONPATH"] = os.pathsep.join(_search_path())
        python = executable or sys.executable
        self._proc = subprocess.Popen(
            # -S: no site module (2-3 MB less for the whole run); the search path is
            # given instead.
            [python, "-S", "-c", _START, COURIER_ARG, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,  # a courier gone at once shows on the first write, not at close
            pass_fds=(fd,),
            # Not in pytest's process group: Ctrl-C stops the tests, and the tests'
            # end then stops the courier, after it delivered.  The courier stays in
            # this new group (its id is self._proc.pid) after its starter is gone.
            start_new_session=True,
            env=env,
            # Not the tests' folder: a module there must not stand in for one it imports.
            cwd=str(journal.path.parent),
        )
        try:
            assert self._proc.stdin is not None
            # Credentials travel through the pipe only: never argv, never a file.
            self._proc.stdin.write(json.dumps(config).encode("utf-8") + b"\n")
            self._proc.stdin.flush()
        except (OSError, ValueError):
            pass  # a courier that is gone already: close() queues the journal itself

    def start(self) -> None:
        """Nothing: the courier started with this object."""

    def settle(self, timeout: float = 10.0) -> None:
        """Collect the process that started the courier (it exits at once), before any
        test runs: a test that waits for a child of its own must not get that one."""
        with contextlib.suppress(Exception):
            self._proc.wait(timeout)

    def _note(self, message: str) -> None:
        self._warnings.append(message)

    def publish(self, envelope: Envelope) -> None:
        """Number and journal *envelope*: the courier does the rest."""
        self._seq += 1
        if not self._unjournaled:
            try:
                self.journal.append(self._seq, envelope)
                return
            except Exception as exc:
                self._journal_failed(exc)
        self._unjournaled.append(envelope)

    def publish_raw(self, kind: MessageType, regression: str, body: bytes) -> None:
        """``publish(Envelope.of_bytes(kind, regression, body))``, without the envelope:
        the reporter's job messages that are not the usual test's."""
        writer = self._writers.get((kind, regression))
        if writer is None:
            writer = self._writers[kind, regression] = self.raw_writer(kind, regression)
        writer(body)

    def raw_writer(self, kind: MessageType, regression: str) -> Callable[[bytes], None]:
        """``publish_raw`` for one kind of message of one regression, its record's head
        made once: the reporter's usual jobs, twice a test."""
        head = record_head(kind, regression)
        write = self.journal.write

        def publish(body: bytes) -> None:
            self._seq += 1
            if not self._unjournaled:
                try:
                    write(RECORD_LINE % (self._seq, head, body))
                    return
                except Exception as exc:
                    self._journal_failed(exc)
            self._unjournaled.append(Envelope.of_bytes(kind, regression, body))

        return publish

    def short_writers(self, fields: RunFields) -> tuple[Callable[..., None], ...] | None:
        """The writers of the usual job's short lines (see :mod:`~pytest_simscope.compact`):
        ``live(start_micros, nodeid)`` and ``passed(start_micros, finish_micros, compute,
        runtime, nodeid)``, the node id as bytes; ``None`` if the run's template line
        could not be journaled (then the reporter writes whole messages)."""
        if self._unjournaled:
            return None
        try:
            self.journal.write(fields.line())
        except Exception as exc:
            self._journal_failed(exc)
            return None
        write = self.journal.write
        unjournaled = self._unjournaled

        def writer(form: bytes) -> Callable[..., None]:
            def write_line(*facts: int | bytes) -> None:
                self._seq += 1
                line = form % (self._seq, *facts)
                if not unjournaled:
                    try:
                        write(line)
                        return
                    except Exception as exc:
                        self._journal_failed(exc)
                unjournaled.append(fields.envelope(line)[1])

            return write_line

        return writer(LIVE_LINE), writer(PASS_LINE)

    def forget(self) -> None:
        """In a forked child: let go of the journal and the courier's pipes."""
        self._closed = True
        self.journal.forget()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()

    def _journal_failed(self, exc: Exception) -> None:
        # The courier can no longer see what follows: it is kept for close().
        self._note(f"journal failed ({exc}); the rest of this run is queued at its end")

    def close(self, timeout: float) -> PublishStats:
        """Have the courier finish within *timeout*; its figures (or queue it all here)."""
        if self._closed:
            return self.stats
        self._closed = True
        result: dict[str, Any] = {}
        problem = ""
        try:
            out = self._exchange(max(0.0, timeout) + CLOSE_GRACE)
            lines = out.decode("utf-8", "replace").strip().splitlines()
            if lines:
                result = json.loads(lines[-1])
            if not isinstance(result, dict):
                result = {}
            if "stats" not in result:
                code = self._proc.returncode
                problem = str(
                    result.get("error")
                    or (f"it exited with {code}" if code else "it ended without a result")
                )
        except TimeoutError:
            problem = "it did not finish in time"
            self._kill()
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) while waiting: stop waiting
            problem = "delivery interrupted"
            self._kill()
        except Exception as exc:  # whatever it was, the journal still holds the run
            problem = f"{type(exc).__name__}: {exc}"
            self._kill()
        if not problem:
            try:
                stats = PublishStats(**result["stats"])
            except (TypeError, ValueError) as exc:
                problem = f"unreadable figures: {exc}"
        if problem:
            stats = self._queue_journal(f"the delivery process failed ({problem})")
        if self._unjournaled:
            self._queue(stats, self._unjournaled)
        stats.warnings = self._warnings + list(stats.warnings)
        with contextlib.suppress(Exception):
            # The courier removed the files once everything was settled; else they stay
            # for the next run to recover.
            self.journal.close(remove=False)
        with contextlib.suppress(Exception):
            self.spool.close()
        self.stats = stats
        return stats

    def _exchange(self, timeout: float) -> bytes:
        """Send ``close``, then read what the courier answers until it ends its output.

        Through functions bound at import (a test may have replaced os.write) and with
        SIGPIPE ignored (a test may have restored its default action, which would end
        pytest here were the courier gone).  ``TimeoutError`` after *timeout* seconds.
        """
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        with _sigpipe_ignored():
            try:
                _write(stdin.fileno(), b"close\n")
            except BrokenPipeError:
                pass  # gone: what it wrote before is still to be read
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()
        deadline = _monotonic() + timeout
        chunks: list[bytes] = []
        fd = stdout.fileno()
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = _select([fd], [], [], left)
            if ready:
                chunk = _read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        with contextlib.suppress(OSError):
            stdout.close()
        return b"".join(chunks)

    def _kill(self) -> None:
        """Stop the courier (its whole process group) and wait until it is gone."""
        group = self._proc.pid
        with contextlib.suppress(Exception):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._proc.kill()
        with contextlib.suppress(Exception):
            self._proc.wait(5)
        deadline = _monotonic() + 5
        while _monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except OSError:
                return  # nobody left in the group
            time.sleep(0.01)

    def _queue_journal(self, reason: str) -> PublishStats:
        """Queue every journaled message not acknowledged yet: the courier is gone."""
        stats = PublishStats(published=self._seq - len(self._unjournaled))
        stats.fallback_reason = reason
        # Read through a descriptor of its own: the journal's may be gone (a test that
        # closed every descriptor it did not open).
        fd = -1
        with contextlib.suppress(OSError):
            fd = os.open(self.journal.path, os.O_RDONLY)
        try:
            self._queue_unacked(stats, reason, fd if fd >= 0 else self.journal.fileno())
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return stats

    def _queue_unacked(self, stats: PublishStats, reason: str, fd: int) -> None:
        tail = JournalTail(self.journal.path, fd)
        done = False
        try:
            acked = _read_acked(tail.ack_path)
            journaled = tail.read()
        except OSError as exc:
            stats.warnings.append(f"{reason}; cannot read the journal: {exc}")
        else:
            found = [envelope for seq, envelope in journaled if seq > acked]
            stats.jobs = sum(1 for _, e in journaled if e.type == "job-finish")
            # What it confirmed went to the destination, to the offline queue, or (a live
            # job whose test had ended) nowhere: which one is not known here.
            stats.confirmed = len(journaled) - len(found)
            stats.warnings.append(
                f"{reason}; queued the rest of this run offline (it had taken care of "
                f"{stats.confirmed} messages: delivered or queued them, or left out the live "
                "jobs of tests that had ended)"
            )
            done = self._queue(stats, found)
        finally:
            with contextlib.suppress(Exception):
                tail.close(remove=done)

    def _queue(self, stats: PublishStats, envelopes: list[Envelope]) -> bool:
        if not envelopes:
            return True
        if self.spool.run_id == self._run_id:
            # The courier may have queued this run's first messages under its name and
            # numbers: what follows is queued as a run of its own that starts now, so a
            # drain delivers it after them, not in between.
            import datetime as dt

            # (A new leading part: entry names carry the run id's first 8 characters.)
            self.spool.run_id = f"{os.urandom(4).hex()}-rest-of-{self._run_id}"
            self.spool.run_started = dt.datetime.now(dt.timezone.utc).isoformat()
        with contextlib.suppress(Exception):
            self.spool.delivered = 0
        try:
            self.spool.send(envelopes)
        except Exception as exc:
            written = 0
            with contextlib.suppress(Exception):
                written = max(0, min(int(self.spool.delivered), len(envelopes)))
            stats.queued += written
            stats.lost += len(envelopes) - written
            stats.warnings.append(f"{exc}; these messages were not queued")
            return False
        stats.queued += len(envelopes)
        return True


# -- the courier process -----------------------------------------------------------------


def _transport(config: dict[str, Any], spool: Transport, warnings: list[str]) -> Transport:
    url = config.get("url")
    if not url:
        return spool
    from pytest_simscope.errors import PublishError, SettingsError
    from pytest_simscope.transports.network import (
        NetworkOptions,
        network_transport,
        with_credentials,
    )

    try:
        options = NetworkOptions(**config["network"])
        return network_transport(
            with_credentials(url, config.get("username"), config.get("password")), options
        )
    except (PublishError, SettingsError) as exc:
        warnings.append(f"{exc}; using the offline queue")
        return spool


def delivery(
    config: dict[str, Any], spool: Transport, journal: JournalLike | None
) -> tuple[Publisher, Relay]:
    """The publisher and the relay that deliver a run, from the settings a courier gets
    (:meth:`~pytest_simscope.session.SimscopePlugin.delivery_config`); in a courier or,
    when there is none, in the pytest process."""
    from pytest_simscope.errors import PublishError
    from pytest_simscope.transports.record import Recorder

    warnings = list(config.get("warnings") or [])
    transport = _transport(config, spool, warnings)
    taps: list[Transport] = []
    if config.get("record"):
        try:
            taps.append(Recorder(Path(config["record"])))
        except PublishError as exc:
            warnings.append(str(exc))
    publisher = Publisher(
        transport,
        spool=spool,
        taps=taps,
        journal=journal,
        batch_size=int(config.get("batch_size", 100)),
        max_pending=int(config.get("max_pending", 10000)),
        # No warn callback: warnings are collected and shown in the summary, so the
        # sender thread never writes into pytest's progress output.
        retry_budget=float(config.get("retry_budget", 30.0)),
    )
    for message in warnings:
        publisher._note(message)
    relay = Relay(
        publisher,
        live_after=float(config.get("live_after", 0.0)),
        heartbeat=float(config.get("heartbeat", 0.0)),
        shard=config.get("shard") or None,
    )
    return publisher, relay


def serve(config: dict[str, Any], control: int = 0) -> PublishStats:
    """Deliver the journal named in *config* until *control* says ``close`` or closes."""
    from pytest_simscope.transports.queue import OfflineQueue

    if config.get("url") and "pika.adapters.asyncio_connection" not in sys.modules:
        # pika's adapters module imports its asyncio adapter, and with it asyncio (about
        # 4 MB that stay in this process for the whole run); the select adapter used here
        # never needs it.  (Only here: the pytest process's tests may need the real one.)
        stub = types.ModuleType("pika.adapters.asyncio_connection")
        stub.AsyncioConnection = None  # type: ignore[attr-defined]
        sys.modules[stub.__name__] = stub
    anchor = config.get("queue_anchor")
    spool = OfflineQueue(
        Path(config["queue_root"]), run_id=config["run_id"], anchor=Path(anchor) if anchor else None
    )
    tail = JournalTail(Path(config["journal"]), int(config["fd"]))
    publisher, relay = delivery(config, spool, tail)
    publisher.start()
    parent = int(config.get("parent") or 0)
    unfinished = Unfinished()
    closing = told = False
    wait = POLL
    while not closing:
        ready, _, _ = select.select([control] if control >= 0 else [], [], [], wait)
        if ready:
            try:
                chunk = os.read(control, 4096)
            except OSError:
                chunk = b""
            if b"close" in chunk:
                closing = told = True
            elif not chunk:
                # The pipe's end: the pytest process is gone, or it lives on without its
                # end (a test closed its descriptors).  The check below tells which, and
                # until it is gone this delivers on (close() then finds the courier
                # unreachable and queues what is left).
                control = -1
                closing = not parent
        elif parent and not _alive(parent):
            # Gone, though a process it forked still holds the pipe open.
            closing = True
        now = _monotonic()
        wait = POLL
        ahead = min(READ_AHEAD, publisher.max_pending)
        if closing or publisher.overflowing or publisher.backlog < ahead:
            found = tail.read(READ_BYTES, everything=closing)
            for seq, envelope in found:
                unfinished.see(envelope)
                relay.push(seq, envelope, now)
            if found:
                wait = 0.0  # there may be more: read on at once
        elif tail.written_beyond(int(publisher.max_pending * tail.average_line)):
            publisher.overflow()
        else:
            wait = POLL / 4  # the sender is busy: look again soon
        relay.pump(now, everything=closing)
        relay.beat(now)
    if not told:
        # pytest died without closing its run (killed, or a test called os._exit): close
        # what it left open, after everything it journaled.
        relay.finish_with(unfinished.closing(), now)
    if tail.bad_lines:
        publisher._note(f"{tail.bad_lines} unreadable journal lines skipped")
    stats = publisher.close(float(config.get("flush_timeout", 5.0)))
    if not told:
        # A journal left behind (something could be neither delivered nor queued) is
        # recovered later: without closing the run a second time.
        mark_closed(tail.path)
    return stats


def _alive(pid: int) -> bool:
    """Whether process *pid* still runs (a zombie, dead but not yet collected, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return True  # no /proc: the signal test is all there is
    # "pid (comm) state ...": the name may hold anything, the state follows the last ")".
    return stat.rpartition(b")")[2].split()[:1] != [b"Z"]


def _first_line(fd: int) -> bytes:
    """The first line of *fd*, read without reading past it (the rest is for serve)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    return bytes(data)


def main() -> int:
    # Ctrl-C and a terminal's hang-up are for the tests: the courier ends when told to,
    # or when the pytest process is gone, after it delivered.
    for name in ("SIGINT", "SIGHUP", "SIGPIPE"):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        config = json.loads(_first_line(0))
        if not isinstance(config, dict):
            raise ValueError("no configuration")
        result: dict[str, Any] = {"stats": serve(config).as_dict()}
    except BaseException as exc:  # reported to the pytest process, which queues for us
        result = {"error": f"{type(exc).__name__}: {exc}"}
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now: skip the interpreter's tear-down (pika's
    # and the sender's threads, module clean-up), which pytest would otherwise wait for.
    os._exit(code)
