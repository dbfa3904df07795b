"""The ``pytest-simscope`` command.

::

    pytest-simscope drain QUEUE --url URL       deliver an offline queue, then archive it
    pytest-simscope regr-start REGRESSION ...   a CI pipeline's first step (shards follow)
    pytest-simscope regr-finish REGRESSION ...  its last step
    pytest-simscope count [PYTEST ARGS...]      how many jobs a run will publish
    pytest-simscope check FILE_OR_QUEUE         validate a recorded stream or a queue

Network settings come from flags or from the ``SIMSCOPE_*`` environment variables the
plugin reads (``SIMSCOPE_URL``, ``SIMSCOPE_AMQP_QUEUE``, ...), flag first; credentials from
the URL or ``SIMSCOPE_USERNAME`` / ``SIMSCOPE_PASSWORD``, and never printed.  Exit status:
0 when everything was done, 1 when something is left (undelivered, queued, invalid), 2 for
a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from pytest_simscope import __version__
from pytest_simscope.errors import PublishError, SettingsError
from pytest_simscope.models import Envelope, Regression, rfc3339
from pytest_simscope.redact import mask_url, mask_urls, redact
from pytest_simscope.settings import SPEC_BY_NAME, Spec, parse_value
from pytest_simscope.transports.base import Transport
from pytest_simscope.transports.network import with_credentials

PROG = "pytest-simscope"
EXIT_OK, EXIT_LEFT, EXIT_USAGE = 0, 1, 2
DEFAULT_QUEUE_DIR = ".simscope/queue"
DEFAULT_INTERVAL = 5.0
#: Entries from which a terminal gets a progress bar.
PROGRESS_MIN = 200

NETWORK_SETTINGS = (
    "url",
    "amqp_queue",
    "amqp_exchange",
    "amqp_routing_key",
    "http_vhost",
    "tls_verify",
    "ca_bundle",
    "client_cert",
    "client_key",
    "timeout",
    "tunnel_command",
)
REGRESSION_SETTINGS = (
    "project",
    "component",
    "model_version",
    "model_branch",
    "model_timestamp",
    "integrate",
    "queue",
    "tag",
    "group",
    "changelist_path",
    "regression_metadata",
)


class UsageProblem(Exception):
    """A bad command line or setting: printed with the command's usage, exit status 2."""


# --- settings -----------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_setting(parser: argparse.ArgumentParser | Any, name: str, **extra: Any) -> None:
    """A flag for the setting *name*, its help naming the environment variable too."""
    spec = SPEC_BY_NAME[name]
    help_text = f"{extra.pop('help', spec.help)} [env: {spec.env}]"
    if spec.kind == "bool" and name == "tls_verify":
        parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                            default=None, help=help_text)
    elif spec.kind == "bool":
        parser.add_argument(_flag(name), dest=name, nargs="?", const="true", default=None,
                            metavar="BOOL", help=help_text)
    elif spec.kind == "pairs":
        parser.add_argument(_flag(name), dest=name, action="append", default=None,
                            metavar=spec.metavar or "KEY=VALUE", help=help_text)
    else:
        metavar = "{" + ",".join(spec.choices) + "}" if spec.choices else spec.metavar
        parser.add_argument(_flag(name), dest=name, default=None, metavar=metavar or "VALUE",
                            help=help_text, **extra)


def resolve_settings(
    args: argparse.Namespace, names: Sequence[str], env: Mapping[str, str]
) -> dict[str, Any]:
    """Each setting from its flag, else its ``SIMSCOPE_*`` variable, else its default."""
    values: dict[str, Any] = {}
    for name in names:
        spec = SPEC_BY_NAME[name]
        raw = getattr(args, name, None)
        where = f"{_flag(name)} on the command line"
        from_env = False
        if raw in (None, [], ()):
            env_value = env.get(spec.env)
            if env_value is None or not env_value.strip():
                values[name] = spec.default
                continue
            raw, where, from_env = env_value, f"environment variable {spec.env}", True
        values[name] = _parse(spec, raw, where, from_env=from_env)
    return values


def _parse(spec: Spec, raw: Any, where: str, *, from_env: bool) -> Any:
    try:
        value = parse_value(spec, raw, from_env=from_env)
    except ValueError as exc:
        if spec.secret:
            raise UsageProblem(f"bad value for {where}") from None
        raise UsageProblem(f"bad value for {where}: {exc}") from None
    if spec.name == "url":
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme not in {"amqp", "amqps", "http", "https", "tunnel"}:
            raise UsageProblem(
                f"bad value for {where}: {mask_url(value)!r} must start with amqp://, "
                "amqps://, http://, https:// or tunnel:"
            )
    if spec.name == "model_timestamp":
        from pytest_simscope.timestamps import parse_rfc3339

        if parse_rfc3339(value) is None:
            raise UsageProblem(
                f"bad value for {where}: {value!r} is not an RFC 3339 timestamp with a UTC "
                "offset"
            )
    return value


class Destination:
    """Where messages go, built from the resolved network settings; knows its secrets."""

    def __init__(self, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.url: str | None = settings.get("url")
        self.full_url: str | None = None
        self.settings = settings
        username = env.get("SIMSCOPE_USERNAME") or None
        password = env.get("SIMSCOPE_PASSWORD") or None
        self.secrets = [s for s in (password,) if s]
        if self.url:
            with contextlib.suppress(ValueError):
                url_password = urlsplit(self.url).password
                if url_password:
                    self.secrets.append(url_password)
            self.full_url = with_credentials(self.url, username, password)

    @property
    def shown(self) -> str:
        return mask_url(self.url) if self.url else "(no URL)"

    def clean(self, text: str) -> str:
        """*text* safe to print: secrets and URL passwords masked."""
        return mask_urls(redact(text, self.secrets))

    def transport(self) -> Transport:
        from pytest_simscope.transports.network import NetworkOptions, network_transport

        assert self.full_url is not None
        options = NetworkOptions.from_settings(self.settings)
        try:
            return network_transport(self.full_url, options)
        except SettingsError as exc:
            raise UsageProblem(self.clean(str(exc))) from None


# --- the parser ---------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _network_group(parser: argparse.ArgumentParser, *, url_help: str) -> None:
    group = parser.add_argument_group(
        "destination",
        "Where messages go, as the plugin's --simscope-* settings; each flag falls back "
        "to its SIMSCOPE_* environment variable. Credentials: in the URL or "
        "SIMSCOPE_USERNAME/SIMSCOPE_PASSWORD.",
    )
    for name in NETWORK_SETTINGS:
        if name == "url":
            _add_setting(group, name, help=url_help)
        else:
            _add_setting(group, name)


DRAIN_EPILOG = """\
Entries that are not complete yet (no job.json, a file still being written, a sync tool's
temporary name) are skipped and picked up by a later run; regr-finish messages wait until
they are complete. A corrupt entry is reported and left in place. Entries in inbox/ are
copied into outbox/ first and never changed.

exit status: 0 all delivered, 1 something is left in outbox/, 2 usage error
"""

REGR_EPILOG = """\
Without --url (or SIMSCOPE_URL) the message goes to the offline queue; when the URL cannot
be reached it is queued there too, and the exit status is 1.

exit status: 0 delivered (or queued without a URL), 1 queued because delivery failed,
2 usage error
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Deliver, start, finish and check Simscope regressions published by "
        "pytest-simscope.",
        formatter_class=_Formatter,
        epilog="Run '%(prog)s COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    drain = commands.add_parser(
        "drain",
        help="deliver an offline queue to Simscope and archive what was delivered",
        description="Deliver every complete entry of QUEUE/outbox/ to Simscope, per "
        "regression in publication order (regr-start first, jobs, regr-finish last), "
        "then move each delivered entry to QUEUE/archive/. Dead runs' journals are "
        "recovered into the queue first.",
        epilog=DRAIN_EPILOG,
        formatter_class=_Formatter,
    )
    drain.add_argument("queue", metavar="QUEUE", help="the offline queue folder "
                       "(the plugin's default: .simscope/queue under the rootdir)")
    _network_group(drain, url_help="Where messages go: amqp(s)://, http(s)://, tunnel:. "
                   "Required unless --dry-run.")
    how = drain.add_argument_group("draining")
    _add_setting(how, "batch_size", help="Most job-finish messages combined into one "
                 "batch-job-finish (1: no batching).")
    how.add_argument("--watch", action="store_true",
                     help="keep draining as new entries arrive, until SIGINT or SIGTERM")
    how.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
                     help=f"seconds between two passes with --watch (default {DEFAULT_INTERVAL:g})")
    how.add_argument("--dry-run", action="store_true",
                     help="print what would be sent; deliver, archive and change nothing")
    how.add_argument("--json", action="store_true",
                     help="print one JSON object summing up the run on stdout")
    how.add_argument("--keep-live", action="store_true",
                     help="also send job-live messages whose job-finish follows in the same "
                     "pass (by default they are left out, as the plugin's publisher does)")
    how.add_argument("--no-inbox", dest="inbox", action="store_false",
                     help="leave entries in QUEUE/inbox/ alone")
    how.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                     help="an invalid job.json changed within SECONDS counts as still being "
                     "written, not as corrupt (default 10)")
    how.add_argument("--retries", type=int, default=3, metavar="N",
                     help="retries of a transient delivery failure without progress "
                     "(default 3)")
    how.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: when stderr is a terminal and "
                     f"there are at least {PROGRESS_MIN} entries)")
    drain.set_defaults(handler=cmd_drain, command_parser=drain)

    for kind, verb in (("regr-start", "start"), ("regr-finish", "finish")):
        sub = commands.add_parser(
            kind,
            help=f"publish the {kind} of a regression ({'first' if verb == 'start' else 'last'}"
            " step of a sharded CI pipeline)",
            description=f"Publish the {kind} message of REGRESSION, for a CI pipeline whose "
            "test steps run pytest with --simscope-shard NAME (they publish only jobs).",
            epilog=REGR_EPILOG,
            formatter_class=_Formatter,
        )
        sub.add_argument("regression", metavar="REGRESSION", nargs="?",
                         help="the regression name (default: SIMSCOPE_REGRESSION)")
        sub.add_argument("--submitted", type=_count_arg, metavar="N",
                         help="how many jobs the regression holds (see 'pytest-simscope "
                         "count')")
        if verb == "start":
            fields = sub.add_argument_group("regression fields")
            for name in REGRESSION_SETTINGS:
                _add_setting(fields, name)
            fields.add_argument("--command", dest="regression_command", metavar="TEXT",
                                help="the regression's command field")
        _network_group(sub, url_help="Where messages go: amqp(s)://, http(s)://, tunnel:. "
                       "Unset: the offline queue.")
        _add_setting(sub, "queue_dir", help="Offline queue folder, used without a URL or "
                     f"when it cannot be reached (default: {DEFAULT_QUEUE_DIR}).")
        sub.set_defaults(handler=cmd_regression, kind=kind, command_parser=sub)

    count = commands.add_parser(
        "count",
        help="count the jobs a pytest run will publish, without running the tests",
        description="Collect the tests as 'pytest --collect-only' would, with PYTEST_ARGS, "
        "and print how many jobs the run will publish (collected tests plus collection "
        "errors), for --submitted. pytest's own output goes to stderr when collection "
        "fails. Everything after 'count' is passed to pytest.",
        usage=f"{PROG} count [PYTEST_ARGS ...]",
        epilog="exit status: 0 counted, 1 collection errors (the count includes them), "
        "2 usage error",
        formatter_class=_Formatter,
    )
    count.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARGS")
    count.set_defaults(handler=None, command_parser=count)

    check = commands.add_parser(
        "check",
        help="validate a recorded JSON-lines stream or a queue folder",
        description="Check FILE_OR_QUEUE against the Simscope publishing rules: a JSON-lines "
        "file as --simscope-record writes it, or an offline queue folder (its outbox/, in "
        "the order drain would deliver it). Every problem is printed with where it is.",
        epilog="exit status: 0 no problem, 1 problems found, 2 usage error",
        formatter_class=_Formatter,
    )
    check.add_argument("path", metavar="FILE_OR_QUEUE")
    check.add_argument("--shard", action="store_true",
                       help="the stream is a shard's: jobs only, no regr-start/regr-finish")
    check.set_defaults(handler=cmd_check, command_parser=check)
    return parser


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        # File names from the queue may hold undecodable bytes (as surrogates): shown
        # escaped rather than failing on a strict UTF-8 stream.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    parser = build_parser()
    if args_list[:1] == ["count"] and not (set(args_list[1:2]) & {"-h", "--help"}):
        rest = args_list[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return cmd_count(rest)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    subparser: argparse.ArgumentParser = args.command_parser
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageProblem as exc:
        subparser.print_usage(sys.stderr)
        print(f"{subparser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before a command's own handling (drain's) took over
        print(f"{subparser.prog}: interrupted", file=sys.stderr)
        return EXIT_LEFT


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# --- drain --------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, enabled: bool | None) -> None:
        self.stream = stream
        self.enabled = enabled
        self._shown = False
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.enabled is False:
            return
        if self.enabled is None and (total < PROGRESS_MIN or not _isatty(self.stream)):
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\rdrain [{bar}] {done}/{total} entries")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set *stop*; a second one interrupts at once.

    The handler runs in the main thread between two of its steps, possibly inside
    ``stop.wait()`` while it holds the event's lock: setting the event there would wait
    for that lock for ever (a drain that Ctrl-C could not stop).  A thread of its own sets
    it as soon as the main thread lets go.
    """
    signalled: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if signalled:
            raise KeyboardInterrupt
        signalled.append(signum)
        threading.Thread(target=stop.set, name="simscope-drain-stop", daemon=True).start()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread there is no clean stop, but no harm either.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)


def cmd_drain(args: argparse.Namespace) -> int:
    from pytest_simscope.drain import (
        DEFAULT_SETTLE,
        DrainBusy,
        Drainer,
        DrainOptions,
        PassResult,
        queue_lock,
    )

    env = os.environ
    settings = resolve_settings(args, (*NETWORK_SETTINGS, "batch_size"), env)
    root = Path(args.queue).expanduser()
    if not root.exists():
        raise UsageProblem(f"QUEUE {args.queue!r} does not exist")
    if not root.is_dir():
        raise UsageProblem(f"QUEUE {args.queue!r} is not a folder")
    markers = ("outbox", "inbox", "journal")
    if not any((root / name).is_dir() for name in markers) and any(root.iterdir()):
        hint = ""
        if (root / "queue" / "outbox").is_dir():
            hint = f"; did you mean {os.path.join(args.queue, 'queue')!r}?"
        raise UsageProblem(
            f"QUEUE {args.queue!r} is not an offline queue (no outbox/, inbox/ or journal/ "
            f"in it){hint}"
        )
    if args.interval <= 0:
        raise UsageProblem("--interval must be a positive number of seconds")
    if args.retries < 0:
        raise UsageProblem("--retries must not be negative")
    if args.settle is not None and args.settle < 0:
        raise UsageProblem("--settle must not be negative")
    destination = Destination(settings, env)
    if not destination.url and not args.dry_run:
        raise UsageProblem("no destination: give --url URL (or set SIMSCOPE_URL)")
    transport = destination.transport() if destination.url and not args.dry_run else None

    options = DrainOptions(
        batch_size=settings["batch_size"],
        dry_run=args.dry_run,
        keep_live=args.keep_live,
        inbox=args.inbox,
        settle=DEFAULT_SETTLE if args.settle is None else args.settle,
        retries=args.retries,
    )
    stop = threading.Event()
    bar = ProgressBar(sys.stderr, args.progress)
    drainer = Drainer(root, transport, options, stop=stop, progress=bar)
    total = _Totals()
    started = time.monotonic()

    def on_pass(result: PassResult) -> None:
        bar.clear()
        total.add(result)
        if not args.json and (result.delivered or result.recovered or result.errors
                              or result.imported):
            _print_pass(result, destination, args)

    try:
        with contextlib.ExitStack() as stack:
            if not args.dry_run:
                stack.enter_context(queue_lock(root))
            stack.enter_context(_stop_on_signals(stop))
            if args.watch and not args.dry_run:
                if not args.json:
                    print(f"watching {root} every {args.interval:g} s; Ctrl-C to stop",
                          file=sys.stderr)
                last = drainer.watch(args.interval, on_pass)
            else:
                last = drainer.run_pass()
                bar.clear()
                total.add(last)
    except DrainBusy as exc:
        _err(f"drain: {exc}; try again when it is done")
        return EXIT_LEFT
    except OSError as exc:
        bar.clear()
        _err(f"drain: cannot use the queue {args.queue}: {exc}")
        return EXIT_LEFT
    except KeyboardInterrupt:
        bar.clear()
        _err("drain: interrupted; undelivered entries stay in outbox/")
        return EXIT_LEFT
    finally:
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
    elapsed = time.monotonic() - started

    if args.dry_run:
        status = EXIT_LEFT if (last.corrupt or last.incomplete or last.errors) else EXIT_OK
    else:
        status = EXIT_OK if last.complete else EXIT_LEFT
    if args.json:
        print(json.dumps(_json_summary(root, destination, args, total, last, elapsed, status),
                         ensure_ascii=False))
        return status
    if args.dry_run:
        _print_dry_run(last)
    elif not args.watch:
        _print_pass(last, destination, args)
    else:
        left = len(last.left) + len(last.incomplete) + len(last.corrupt)
        print(f"drain: stopped watching after {total.passes} passes: {total.delivered} "
              f"messages delivered, {total.archived} entries archived, {left} left in "
              f"{args.queue}")
    for skipped in last.corrupt:
        _err(f"drain: corrupt entry {skipped.name}: {skipped.reason.removeprefix('corrupt: ')}"
             "; left in place, fix or remove it")
    if last.incomplete:
        names = ", ".join(s.name for s in last.incomplete[:5])
        more = f" and {len(last.incomplete) - 5} more" if len(last.incomplete) > 5 else ""
        held = f"; {last.held_back} regr-finish held back until they are" if last.held_back else ""
        _err(f"drain: {len(last.incomplete)} entries not complete yet ({names}{more}), "
             f"skipped{held}")
    return status


class _Totals:
    """Counts summed over the passes of ``--watch``."""

    def __init__(self) -> None:
        self.passes = 0
        self.delivered = 0
        self.wire_messages = 0
        self.archived = 0
        self.superseded = 0
        self.recovered = 0
        self.imported = 0
        self.errors: list[str] = []

    def add(self, result: Any) -> None:
        self.passes += 1
        self.delivered += result.delivered
        self.wire_messages += result.wire_messages
        self.archived += result.archived
        self.superseded += result.superseded
        self.recovered += result.recovered
        self.imported += result.imported
        self.errors.extend(result.errors)


def _print_pass(result: Any, destination: Destination, args: argparse.Namespace) -> None:
    parts = [
        f"drain: {result.delivered} messages ({result.wire_messages} sent) to "
        f"{destination.shown}, {result.archived} entries archived"
    ]
    if result.superseded:
        parts.append(f"{result.superseded} job-live left out (their job finished)")
    if result.recovered:
        parts.append(f"{result.recovered} messages recovered from dead runs' journals")
    if result.imported:
        parts.append(f"{result.imported} entries copied from inbox/")
    left = len(result.left) + len(result.incomplete) + len(result.corrupt)
    if left:
        parts.append(
            f"{left} left in {args.queue} ({len(result.left)} not delivered, "
            f"{len(result.incomplete)} incomplete, {len(result.corrupt)} corrupt)"
        )
    else:
        parts.append("nothing left")
    print("; ".join(parts))
    for error in result.errors:
        _err(f"drain: {destination.clean(error)}")
    if result.errors and result.left:
        _err(f"drain: {len(result.left)} entries stay in outbox/; run the drain again to "
             "deliver them")
    if result.stopped:
        _err("drain: stopped by a signal; the rest stays in outbox/")


def _print_dry_run(result: Any) -> None:
    from pytest_simscope.drain import envelope_summary

    for planned in result.planned:
        summary = envelope_summary(planned.envelope)
        what = summary.get("uniqueid") or (f"{summary['jobs']} jobs" if "jobs" in summary else "")
        source = planned.entries[0] if len(set(planned.entries)) == 1 else (
            f"{len(set(planned.entries))} entries")
        print(f"would send {summary['type']} {summary['regression']} {what}".rstrip()
              + f"  ({source})")
    print(
        f"dry run: {len(result.planned)} messages would be sent from {len(result.left)} "
        f"entries ({result.recovered} from dead runs' journals); {result.superseded} "
        f"job-live left out; {result.held_back} regr-finish held back; nothing was changed"
    )


def _json_summary(
    root: Path,
    destination: Destination,
    args: argparse.Namespace,
    total: _Totals,
    last: Any,
    elapsed: float,
    status: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": "drain",
        "queue": str(root),
        "destination": destination.shown if destination.url else None,
        "dry_run": bool(args.dry_run),
        "passes": total.passes,
        "delivered": total.delivered,
        "sent": total.wire_messages,
        "archived": total.archived,
        "superseded": total.superseded,
        "recovered": total.recovered,
        "imported": total.imported,
        "held_back": last.held_back,
        "left": list(last.left) if not args.dry_run else [],
        "incomplete": [{"entry": s.name, "reason": s.reason} for s in last.incomplete],
        "corrupt": [{"entry": s.name, "reason": s.reason} for s in last.corrupt],
        "errors": [destination.clean(e) for e in total.errors],
        "stopped": bool(last.stopped),
        "elapsed_s": round(elapsed, 3),
        "entries_per_s": round(total.archived / elapsed, 1) if elapsed > 0 else None,
        "exit_status": status,
    }
    if args.dry_run:
        out["would_send"] = [
            {"type": p.envelope.type, "regression": p.envelope.regression,
             "entries": p.entries, "seqs": p.seqs, "body": p.envelope.body}
            for p in last.planned
        ]
    return out


# --- regr-start / regr-finish -------------------------------------------------------------


def cmd_regression(args: argparse.Namespace) -> int:
    from pytest_simscope.ci import detect_ci
    from pytest_simscope.transports.queue import OfflineQueue

    env = os.environ
    kind: str = args.kind
    name = args.regression or env.get("SIMSCOPE_REGRESSION", "").strip()
    if not name:
        raise UsageProblem("no REGRESSION given (and SIMSCOPE_REGRESSION is not set)")
    if any(ord(ch) < 32 for ch in name):
        raise UsageProblem("control characters are not allowed in a regression name")
    settings = resolve_settings(args, (*NETWORK_SETTINGS, "queue_dir"), env)
    destination = Destination(settings, env)
    fields: dict[str, Any] = {}
    if args.submitted is not None:
        fields["submitted"] = args.submitted
    if kind == "regr-start":
        regression = resolve_settings(args, REGRESSION_SETTINGS, env)
        ci = detect_ci(env)
        for key, value in ci.values.items():
            if regression.get(key) is None:
                regression[key] = value
        custom = list(ci.metadata) + list(regression.pop("regression_metadata") or ())
        fields.update({k: v for k, v in regression.items() if v is not None})
        if custom:
            fields["custom_metadata"] = custom
        if args.regression_command:
            fields["command"] = args.regression_command
        fields.update(
            starttime=rfc3339(dt.datetime.now().astimezone()),
            pending=True,
            host=socket.gethostname(),
            dir=os.getcwd(),
        )
    else:
        fields["pending"] = False
    try:
        body = Regression(name=name, **fields).body()
    except ValueError as exc:
        raise UsageProblem(str(exc).splitlines()[0]) from None
    envelope = Envelope(kind, name, body)
    queue_dir = Path(settings["queue_dir"] or DEFAULT_QUEUE_DIR).expanduser()

    def to_queue(why: str) -> int:
        queue = OfflineQueue(queue_dir)
        try:
            queue.send([envelope])
        except PublishError as exc:
            _err(f"{kind}: {why}; and it could not be queued: {exc}")
            return EXIT_LEFT
        # The URL as the plugin's summary shows it: masked, so not for pasting as it is.
        drain = f"{PROG} drain {shlex.quote(str(queue_dir))} --url " + (
            destination.shown if destination.url else "URL")
        print(f"{kind} {name}: queued in {queue_dir / 'outbox'}; deliver with: {drain}")
        return EXIT_OK if not why else EXIT_LEFT

    if not destination.url:
        return to_queue("")
    transport = destination.transport()
    try:
        transport.send([envelope])
    except PublishError as exc:
        reason = f"not delivered to {destination.shown}: {destination.clean(str(exc))}"
        _err(f"{kind}: {reason}")
        return to_queue(reason)
    finally:
        with contextlib.suppress(Exception):
            transport.close()
    extra = f" (submitted {args.submitted})" if args.submitted is not None else ""
    print(f"{kind} {name}{extra}: delivered to {destination.shown}")
    return EXIT_OK


# --- count --------------------------------------------------------------------------------


def _counter() -> Any:
    """A pytest plugin that counts what a run would publish as jobs."""
    import pytest

    class Counter:
        def __init__(self) -> None:
            self.items: int | None = None
            self.collect_errors: set[str] = set()

        @pytest.hookimpl
        def pytest_collectreport(self, report: pytest.CollectReport) -> None:
            # The plugin publishes a failing job for each collector that fails.
            if report.failed:
                self.collect_errors.add(report.nodeid or "<collection>")

        @pytest.hookimpl
        def pytest_collection_finish(self, session: pytest.Session) -> None:
            self.items = len(session.items)

    return Counter()


def cmd_count(pytest_args: Sequence[str]) -> int:
    import pytest

    counter = _counter()
    output = io.StringIO()
    # pytest's output (and warnings other plugins print) is shown only when collection
    # fails: stdout carries the number alone, for N=$(pytest-simscope count ...).
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = int(pytest.main(["--collect-only", "-q", *pytest_args], plugins=[counter]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(pytest.ExitCode.USAGE_ERROR)
    if code == pytest.ExitCode.USAGE_ERROR or (counter.items is None and code not in (0, 5)):
        sys.stderr.write(output.getvalue())
        _err("count: pytest could not collect with these arguments")
        return EXIT_USAGE
    total = (counter.items or 0) + len(counter.collect_errors)
    print(total)
    if code in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        return EXIT_OK
    sys.stderr.write(output.getvalue())
    _err(f"count: {len(counter.collect_errors)} collection errors, counted as the failing "
         "jobs the plugin publishes for them")
    return EXIT_LEFT


# --- check --------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from pytest_simscope.check import check_file, load_jsonl

    path = Path(args.path).expanduser()
    if not path.exists():
        raise UsageProblem(f"{args.path!r} does not exist")
    require = not args.shard
    notes: list[str] = []
    if path.is_dir():
        problems, count, notes = _check_queue(path, require)
        what = f"{count} messages in {path}"
    else:
        try:
            problems = [str(p) for p in check_file(path, require_start_finish=require)]
            count = len(load_jsonl(path)[0])
        except OSError as exc:
            raise UsageProblem(f"cannot read {args.path!r}: {exc.strerror}") from None
        problems = [f"{args.path}: {p}" for p in problems]
        what = f"{count} records in {args.path}"
    for problem in problems:
        print(problem)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if problems:
        print(f"check: {what}: {len(problems)} problems")
        return EXIT_LEFT
    print(f"check: {what}: no problems")
    return EXIT_OK


def _check_queue(root: Path, require: bool) -> tuple[list[str], int, list[str]]:
    from pytest_simscope.check import check_records
    from pytest_simscope.drain import plan, scan
    from pytest_simscope.transports.queue import OUTBOX

    outbox = root / OUTBOX
    if not outbox.is_dir():
        raise UsageProblem(f"{str(root)!r} is not an offline queue (no outbox/ in it)")
    found = scan(outbox)
    problems = [
        f"{OUTBOX}/{s.name}: {s.reason.removeprefix('corrupt: ')}" for s in found.corrupt
    ]
    notes = [f"{OUTBOX}/{s.name}: {s.reason}; not checked" for s in found.incomplete]
    order = plan(found.entries, keep_live=True).send
    records = [m.envelope.as_record() for m in order]
    sources = [f"{OUTBOX}/{m.entry.name} seq {m.seq}" for m in order]
    problems += [str(p) for p in check_records(records, sources=sources,
                                               require_start_finish=require)]
    return problems, len(records), notes


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
