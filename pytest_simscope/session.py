"""The publishing side of one pytest session: the publisher, the reporter and their hooks.

Imported by :mod:`pytest_simscope.plugin` only when publishing is enabled, so a pytest
run that does not publish never loads the reporter, the publisher or the transports.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import uuid
import weakref
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_simscope import courier
from pytest_simscope.errors import PublishError
from pytest_simscope.journal import Journal, recover
from pytest_simscope.plugin import local_tests
from pytest_simscope.publisher import PublishStats
from pytest_simscope.redact import mask_url, mask_urls, redact
from pytest_simscope.reporter import SimscopeReporter
from pytest_simscope.settings import SPECS, Resolved, Settings, shown_value
from pytest_simscope.transports.queue import GITIGNORE_TEXT, JOURNAL, OfflineQueue, write_atomic

# Bound once: a test may replace them for the rest of the run (see reraise_sigterm).
_raise_signal = signal.raise_signal
_exit = os._exit

Front = courier.CourierFront | courier.LocalFront

# Where pytest runs a test: a frame of these functions of _pytest/runner.py has it as
# "item" (see SimscopePlugin.pytest_keyboard_interrupt).
_RUNNER_FRAMES = ("runtestprotocol", "call_and_report", "call_runtest_hook")
_RUNNER_FILE = os.path.join("_pytest", "runner.py")

# Set while a run publishes, to its regression: pytest runs started inside it see it.
NESTED_ENV = "PYTEST_SIMSCOPE_PUBLISHING"

# The publishing plugins of this process.  A process forked from it (a test that forks,
# multiprocessing's "fork" start method) must not publish with their state: a child that
# went on running pytest would write into this run's journal and close its courier.
_publishing: weakref.WeakSet[SimscopePlugin] = weakref.WeakSet()
# What the child keeps untouched (no finalizer of the parent's objects runs in it).
_inherited: list[Any] = []


# Around a test's fork, SIGTERM is blocked in the forking thread: a child that inherited
# the plugin's handler would lose a SIGTERM arriving at once (Python forgets signals caught
# before its after-fork clean-up).  The child gets SIGTERM's default action back, then the
# signal is unblocked: one that came meanwhile ends it, as without the plugin.  The parent
# gets it after the fork, handled as usual.
_TERM = {signal.SIGTERM} if hasattr(signal, "SIGTERM") else set()


def _sigterm_blocked(blocked: bool) -> None:
    with contextlib.suppress(Exception):
        signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK, _TERM)


def _before_fork() -> None:
    if any(plugin.handles_sigterm for plugin in list(_publishing)):
        _sigterm_blocked(True)


def _after_fork_in_parent() -> None:
    if any(plugin.handles_sigterm for plugin in list(_publishing)):
        _sigterm_blocked(False)


def _after_fork_in_child() -> None:
    blocked = any(plugin.handles_sigterm for plugin in list(_publishing))
    for plugin in list(_publishing):
        plugin.forked()
    _publishing.clear()
    if blocked:
        _sigterm_blocked(False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class SimscopePlugin:
    """The publishing side: owns the publisher and the reporter for one session.

    Reports of tests run in this process get their data from the test (see
    :class:`~pytest_simscope.plugin.LocalTests`); reports from xdist workers carry it.
    """

    def __init__(self, config: pytest.Config, resolved: Resolved) -> None:
        self.config = config
        self.resolved = resolved
        self.settings: Settings = resolved.settings
        self.reporter: SimscopeReporter | None = None
        self.publisher: Front | None = None
        self.stats: PublishStats | None = None
        self.queue_root = self._queue_root()
        self.destination = self._destination()
        self.run_id = uuid.uuid4().hex[:12]
        # Runs that run no test publish nothing (--collect-only, --setup-plan, --setup-only,
        # --fixtures, --fixtures-per-test).
        option = config.option
        self.active = not any(
            getattr(option, name, False)
            for name in (
                "collectonly", "setupplan", "setuponly", "showfixtures", "show_fixtures_per_test"
            )
        )
        self.inactive_because = "no test runs"
        # A pytest run inside a test of a run that publishes this regression (pytester,
        # pytest.main, a subprocess) got the name from the environment or an ini file, not
        # from its own command line: its tests are not the regression's.
        regression = self.settings.regression or ""
        self._outer = os.environ.get(NESTED_ENV)
        source = resolved.sources.get("regression", "")
        if self._outer == regression and not source.startswith("command line"):
            self.active = False
            self.inactive_because = "the pytest run this one runs in publishes it"
        self._set_env = self.active
        if self._set_env:
            os.environ[NESTED_ENV] = regression
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._got_sigterm = False
        self.local = local_tests(config)
        _publishing.add(self)
        self.recovered = 0
        self._secrets = self._secret_values()
        self._early_warnings: list[str] = []
        self._failure = ""
        # The summary lines were printed (pytest_terminal_summary, or late: shutdown()).
        self._summary_shown = False

    # -- setup ---------------------------------------------------------------------------

    def _queue_root(self) -> Path:
        if self.settings.queue_dir:
            root = Path(self.settings.queue_dir).expanduser()
            if not root.is_absolute():
                root = self.config.invocation_params.dir / root
            return root
        return self.config.rootpath / ".simscope" / "queue"

    def _queue_anchor(self) -> Path | None:
        """The folder the default queue is in (pytest's root folder): never recreated."""
        return None if self.settings.queue_dir else self.config.rootpath

    def _destination(self) -> str:
        if self.settings.url:
            return mask_url(self.settings.url)
        return f"offline queue {self._rel(self.queue_root / 'outbox')}"

    def _rel(self, path: Path) -> str:
        """*path* relative to where pytest was started when it is below it, else whole."""
        try:
            relative = os.path.relpath(path, self.config.invocation_params.dir)
        except ValueError:
            return str(path)
        return str(path) if relative.startswith("..") else relative

    def _secret_values(self) -> list[str]:
        secrets = [s for s in (self.settings.password,) if s]
        if self.settings.url:
            with contextlib.suppress(ValueError):
                password = urlsplit(self.settings.url).password
                if password:
                    secrets.append(password)
        return secrets

    def _clean(self, text: str) -> str:
        return redact(mask_urls(text), self._secrets)

    def _record_path(self) -> Path | None:
        if not self.settings.record:
            return None
        path = Path(self.settings.record).expanduser()
        if not path.is_absolute():
            path = self.config.invocation_params.dir / path
        return path

    def _start_publisher(self) -> Front:
        spool = OfflineQueue(self.queue_root, run_id=self.run_id, anchor=self._queue_anchor())
        self._write_gitignore()
        journal: Journal | None = None
        try:
            journal_dir = self.queue_root / JOURNAL
            journal_dir.mkdir(parents=True, exist_ok=True)
            # A dead run's messages are queued as a run of their own (their own run id
            # and numbering), never under this run's, which the courier numbers from 1.
            self.recovered = recover(
                journal_dir, OfflineQueue(self.queue_root, anchor=self._queue_anchor())
            )
            journal = Journal(journal_dir, self.run_id)
        except (OSError, PublishError) as exc:
            journal = None
            self._early_warnings.append(f"journal unavailable: {exc}")
        if journal is not None and os.environ.get(courier.INPROCESS_ENV) != "1":
            try:
                return courier.CourierFront(journal, spool, self.delivery_config())
            except Exception as exc:  # no courier: this process delivers instead
                self._early_warnings.append(
                    f"cannot start the delivery process ({exc}); publishing from this one"
                )
        return self._local_front(spool, journal)

    def delivery_config(self) -> dict[str, Any]:
        """What delivering this run needs to know (JSON: a courier gets it on its stdin)."""
        from pytest_simscope.transports.network import NetworkOptions

        s = self.settings
        record = self._record_path()
        return {
            "queue_root": str(self.queue_root),
            "queue_anchor": str(anchor) if (anchor := self._queue_anchor()) else None,
            "run_id": self.run_id,
            "url": s.url,
            "username": s.username,
            "password": s.password,
            "network": NetworkOptions.from_settings(s.as_dict())._asdict(),
            "record": str(record) if record else None,
            "batch_size": s.batch_size,
            "max_pending": s.max_pending,
            "retry_budget": s.retry_budget,
            "flush_timeout": s.flush_timeout,
            "live_after": s.live_after,
            "heartbeat": s.heartbeat,
            "shard": s.shard,
            "warnings": list(self._early_warnings),
        }

    def _local_front(self, spool: OfflineQueue, journal: Journal | None) -> Front:
        publisher, relay = courier.delivery(self.delivery_config(), spool, journal)
        front = courier.LocalFront(publisher, journal, relay)
        front.start()
        return front

    def _write_gitignore(self) -> None:
        if self.settings.queue_dir:
            return
        top = self.queue_root.parent
        with contextlib.suppress(OSError):
            top.mkdir(parents=True, exist_ok=True)
            ignore = top / ".gitignore"
            if not ignore.exists():
                write_atomic(ignore, GITIGNORE_TEXT.encode("utf-8"))

    # -- session -------------------------------------------------------------------------

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.local.session = session
        if not self.active:
            return
        try:
            self.publisher = self._start_publisher()
            seed = None
            if self.config.pluginmanager.hasplugin("randomly"):
                value = getattr(self.config.option, "randomly_seed", None)
                if isinstance(value, int):
                    seed = str(value)
            hook = self.config.hook.pytest_simscope_job
            self.reporter = SimscopeReporter(
                self.config,
                self.resolved,
                self.publisher,
                job_hook=hook if hook.get_hookimpls() else None,
                seed=seed,
                dist_each=getattr(self.config.option, "dist", "no") == "each",
                secrets=self._secrets,
                # A courier reads the journal back: only the bytes of each job count.
                raw_bodies=isinstance(self.publisher, courier.CourierFront),
                local=self.local,
                # Tests open their jobs as they start, unless no live job may go out
                # before the setup report: with live_after 0 it would for every test,
                # skipped or not, and an omitted skip would leave its live job unfinished.
                early=self.settings.live_after > 0 and self.settings.skips != "omit",
            )
            self.reporter.start()
            self.config.pluginmanager.register(TestHooks(self.reporter), TestHooks.NAME)
        except Exception as exc:  # publishing must never stop the tests
            self.active = False
            self._failure = f"pytest-simscope could not start: {type(exc).__name__}: {exc}"
            return
        self._install_sigterm()

    def _guard(self, what: str, func: Any, *args: Any) -> None:
        reporter = self.reporter
        if reporter is None:
            return
        try:
            func(*args)
        except Exception as exc:
            reporter.internal_error(what, exc)

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.publisher is not None:
            self.publisher.settle()  # before the first test runs
        if self.reporter is not None:
            self._guard("collection", self.reporter.set_submitted, len(session.items))

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and self.reporter is not None:
            self._guard("collection report", self.reporter.collect_failed, report)

    @pytest.hookimpl
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C, SIGTERM or pytest.exit(): a test interrupted before its first report (in
        a fixture's setup) was running too, and ends as a fail with the others."""
        if self.reporter is None:
            return
        item = None
        tb: TracebackType | None = excinfo.tb
        while tb is not None:
            # The innermost test this session's runner was running (not any "item" of a
            # hook that loops over items, nor of a nested session).
            code = tb.tb_frame.f_code
            if code.co_name in _RUNNER_FRAMES and code.co_filename.endswith(_RUNNER_FILE):
                candidate = tb.tb_frame.f_locals.get("item")
                if isinstance(candidate, pytest.Item) and candidate.session is self.local.session:
                    item = candidate
            tb = tb.tb_next
        if item is not None:
            self._guard("interrupt", self.reporter.interrupted, item.nodeid)

    @pytest.hookimpl(trylast=True)  # after other plugins changed the exit status
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.reporter is None or self.publisher is None:
            return
        self._guard("session finish", self.reporter.finish, exitstatus)
        try:
            self.stats = self.publisher.close(self.settings.flush_timeout)
        except Exception as exc:
            self._failure = f"closing the publisher failed: {type(exc).__name__}: {exc}"
        self._restore_sigterm()
        strict_fail = (
            self.settings.strict and self.stats is not None and self._undelivered(self.stats)
        )
        if strict_fail and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _undelivered(self, stats: PublishStats) -> bool:
        if stats.lost:
            return True
        return bool(self.settings.url) and stats.queued > 0

    # -- terminal ------------------------------------------------------------------------

    @pytest.hookimpl
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        where = self.destination
        if self.settings.shard:
            where += f", shard {self.settings.shard}"
        lines = [f"simscope: regression {self.settings.regression} -> {where}"]
        if not self.active:
            lines[0] += f" (not publishing: {self.inactive_because})"
        if config.option.verbose > 0:
            for spec in SPECS:
                value = getattr(self.settings, spec.name)
                source = self.resolved.sources.get(spec.name, "default")
                lines.append(f"  simscope {spec.name} = {shown_value(spec, value)} ({source})")
        return [self._clean(line) for line in lines]

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._summary_shown = True
        self._write_summary(terminalreporter)

    def _write_summary(self, terminal: Any) -> None:
        for line in self.summary_lines():
            terminal.write_line(self._clean(line))

    def _late_summary(self) -> None:
        """The summary, where pytest ended without one (an exit status it prints none for:
        ``pytest.exit(returncode=N)``, an internal error): where the results went, and the
        command that delivers them, are said all the same."""
        if self._summary_shown:
            return
        self._summary_shown = True
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None:
            return
        with contextlib.suppress(Exception):  # a terminal a test broke, say
            self._write_summary(terminal)

    def summary_lines(self) -> list[str]:
        if self._failure:
            return [f"simscope: {self._failure}"]
        stats = self.stats
        if stats is None or self.reporter is None:
            return []
        results = self.reporter.results
        total = sum(results.values())
        jobs = f"{total} job" if total == 1 else f"{total} jobs"
        counts = f"{results['pass']} pass, {results['fail']} fail, {results['skip']} skip"
        outbox = self._rel(self.queue_root / "outbox")
        queue = self._rel(self.queue_root)
        # The command is printed to be copied: a folder with spaces stays one argument.
        drain = f"pytest-simscope drain {shlex.quote(queue)}"
        of = f"simscope: {jobs} ({counts}) of {self.settings.regression}"
        if not self.settings.url:
            if stats.lost and not stats.queued:
                line = (
                    f"{of} NOT queued: {stats.lost} messages could not be written to "
                    f"the offline queue {queue}"
                )
            else:
                besides = (
                    f", besides the {stats.confirmed} the delivery process took care of"
                    if stats.confirmed
                    else ""
                )
                line = (
                    f"{of} queued in {outbox} ({stats.queued} messages{besides}); deliver "
                    f"with: {drain} --url URL"
                )
        elif stats.queued:
            done = (
                f"{stats.confirmed} messages taken care of by the delivery process"
                if stats.confirmed
                else f"{stats.delivered} messages delivered to {self.destination}"
            )
            line = (
                f"{of}: {done}, {stats.queued} queued in {outbox}; deliver with: {drain} "
                f"--url {mask_url(self.settings.url)}"
            )
        elif stats.lost:
            line = f"{of}: {stats.delivered} messages delivered to {self.destination}"
        else:
            line = f"{of} published: {stats.delivered} messages delivered to {self.destination}"
        lines = [line]
        if self.recovered:
            lines.append(
                f"simscope: recovered {self.recovered} unsent messages of an earlier run "
                f"into {outbox}"
            )
        if stats.lost and (stats.queued or self.settings.url):  # else the line above says it
            lines.append(f"simscope: warning: {stats.lost} messages could not be queued")
        seen: set[str] = set()
        for warning in stats.warnings:
            if warning not in seen:
                seen.add(warning)
                lines.append(f"simscope: warning: {warning}")
            if len(seen) >= 5 and self.config.option.verbose <= 0:
                break
        return lines

    # -- signals and the ticker ------------------------------------------------------------

    def _install_sigterm(self) -> None:
        if not hasattr(signal, "SIGTERM"):
            return
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if previous not in (signal.SIG_DFL, None):
                return  # someone else handles SIGTERM: leave it to them
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread
            return
        self._prev_sigterm = previous
        self._sigterm_installed = True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._got_sigterm = True
        self._restore_sigterm()
        raise KeyboardInterrupt("SIGTERM")

    def _restore_sigterm(self) -> None:
        if self._sigterm_installed:
            self._sigterm_installed = False
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._prev_sigterm or signal.SIG_DFL)

    def reraise_sigterm(self) -> None:
        """After a SIGTERM was turned into a clean end, die of it as pytest would have."""
        if self._got_sigterm and os.environ.get("PYTEST_SIMSCOPE_NO_REKILL") != "1":
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            try:
                _raise_signal(signal.SIGTERM)  # bound at import: a test may patch os.kill
            except Exception:
                _exit(128 + signal.SIGTERM)  # the shell's status for a SIGTERM death

    def forked(self) -> None:
        """In a forked child: publish nothing, touch nothing of the parent's run, and give
        SIGTERM back its action from before the plugin (see _before_fork)."""
        _inherited.extend((self.reporter, self.publisher))
        with contextlib.suppress(Exception):  # the reporter's own hooks
            self.config.pluginmanager.unregister(name=TestHooks.NAME)
        # Its journal's lock must not outlive the parent in a child that lives on: a
        # recovery would take the dead run for a live one.  (Nor the courier's pipes.)
        with contextlib.suppress(Exception):
            if self.publisher is not None:
                self.publisher.forget()
        self.reporter = None
        self.publisher = None
        self.active = False
        self._restore_sigterm()  # the forking thread is the child's main thread

    @property
    def handles_sigterm(self) -> bool:
        return self._sigterm_installed

    def shutdown(self) -> None:
        """Last resort at unconfigure: close whatever sessionfinish did not."""
        self._restore_sigterm()
        if self._set_env:
            self._set_env = False
            if self._outer is None:
                os.environ.pop(NESTED_ENV, None)
            else:
                os.environ[NESTED_ENV] = self._outer
        if self.publisher is not None and self.stats is None:
            with contextlib.suppress(Exception):
                if self.reporter is not None:
                    self.reporter.finish(pytest.ExitCode.INTERNAL_ERROR)
                self.stats = self.publisher.close(self.settings.flush_timeout)
        self._late_summary()


class TestHooks:
    """The hooks that run for every test, registered when the reporter is made.

    They are the reporter's own methods (pluggy calls bound methods as it calls functions),
    not a method here that calls one there: a layer less, four times a test.  Each catches
    what it raises itself.
    """

    NAME = "simscope-tests"

    def __init__(self, reporter: SimscopeReporter) -> None:
        self.pytest_runtest_logreport = reporter.take if reporter.fast else reporter.take_any
        if reporter.early:
            self.pytest_runtest_logstart = reporter.started


class XdistHooks:
    """Hooks that exist only when pytest-xdist is installed (controller side)."""

    def __init__(self, plugin: SimscopePlugin) -> None:
        self.plugin = plugin

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        reporter = self.plugin.reporter
        if reporter is not None:
            worker = str(getattr(getattr(node, "gateway", None), "id", "?"))
            self.plugin._guard("xdist collection", reporter.worker_collected, worker, len(ids))

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        reporter = self.plugin.reporter
        if reporter is not None and error:
            worker = str(getattr(getattr(node, "gateway", None), "id", "?"))
            self.plugin._guard("xdist worker down", reporter.worker_down, worker, error)
