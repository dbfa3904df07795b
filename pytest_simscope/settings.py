"""Settings: one table of every setting, resolved once into a frozen, validated model.

Each setting exists as a ``--simscope-*`` flag, a ``simscope_*`` ini key and a
``SIMSCOPE_*`` environment variable (secrets as environment variables only).  Precedence is
flag > environment > ini > CI default > built-in default.  A bad value raises
:class:`~pytest_simscope.errors.SettingsError` naming the setting and where the value came
from; the plugin turns that into ``pytest.UsageError`` before any test runs.

Nothing here imports pytest: the plugin passes in what the command line, the environment and
the ini file said.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pytest_simscope.ci import CiDefaults
from pytest_simscope.errors import SettingsError

Kind = Literal["str", "int", "float", "bool", "choice", "pairs"]

DEFAULT_TUNNEL_COMMAND = (
    "simscope-tunnel --config={config} --publish {type} --regression={regression} {file}"
)


@dataclass(frozen=True)
class Spec:
    """One setting: its name, how values are read, and its help text."""

    name: str
    kind: Kind
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    secret: bool = False
    env_only: bool = False
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--simscope-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "simscope_" + self.name

    @property
    def env(self) -> str:
        return "SIMSCOPE_" + self.name.upper()

    @property
    def dest(self) -> str:
        return "simscope_" + self.name


def _s(name: str, help: str, **kw: Any) -> Spec:
    return Spec(name=name, kind="str", help=help, **kw)


SPECS: tuple[Spec, ...] = (
    # What to publish and where.
    _s("regression", "Regression name; setting it enables the plugin (e.g. myrun/123).",
       metavar="NAME"),
    _s("url", "Where messages go: amqp(s)://, http(s)://, tunnel:. Unset: the offline queue.",
       metavar="URL", secret=True),
    _s("queue_dir", "Offline queue folder (default: .simscope/queue under the rootdir).",
       metavar="DIR"),
    _s("record", "Also write every message, in order, to this JSON-lines file.",
       metavar="FILE"),
    _s("shard", "Publish only this run's jobs into a regression started elsewhere; "
       "uniqueids are namespaced by NAME.", metavar="NAME"),
    # Job fields.
    _s("category", "Job category.", default="pytest", metavar="NAME"),
    Spec("metadata", "pairs", "Job metadata KEY=VALUE (repeatable).", default=(),
         metavar="KEY=VALUE"),
    _s("build", "Job build field (build configuration).", metavar="TEXT"),
    Spec("testgroup", "choice", "Job testgroup: the test's file, directory, class, or none.",
         default="file", choices=("file", "dir", "class", "none")),
    _s("jobdir_root", "Write each test's log under this folder and publish it as jobdir.",
       metavar="DIR"),
    Spec("skips", "choice", "Publish skipped tests as skip jobs, or omit them.",
         default="publish", choices=("publish", "omit")),
    Spec("fail_message_limit", "int", "Longest fail_message in characters (head and tail kept).",
         default=20000, minimum=200, metavar="CHARS"),
    # Regression fields.
    _s("project", "Regression project.", metavar="NAME"),
    _s("component", "Regression component.", metavar="NAME"),
    _s("model_version", "Regression model_version (commit); CI default: the build's commit.",
       metavar="SHA"),
    _s("model_branch", "Regression model_branch; CI default: the build's branch.",
       metavar="BRANCH"),
    _s("model_timestamp", "Regression model_timestamp (RFC 3339).", metavar="TIME"),
    Spec("integrate", "bool", "Regression integrate flag.", metavar="BOOL"),
    _s("queue", "Regression queue (grid queue).", metavar="NAME"),
    _s("tag", "Regression tag.", metavar="TEXT"),
    _s("group", "Regression group (parent regression).", metavar="NAME"),
    _s("changelist_path", "Regression changelist_path.", metavar="PATH"),
    Spec("regression_metadata", "pairs", "Regression custom_metadata KEY=VALUE (repeatable).",
         default=(), metavar="KEY=VALUE"),
    # Network delivery.
    _s("amqp_queue", "AMQP queue (routing key) the Tunnel reads; set it to the Tunnel's input "
       "queue.", default="simscope-input", metavar="NAME"),
    _s("amqp_exchange", "AMQP exchange (default: the default exchange).", default="",
       metavar="NAME"),
    _s("amqp_routing_key", "AMQP routing key (default: the queue name).", metavar="KEY"),
    _s("http_vhost", "RabbitMQ vhost for http(s):// URLs.", default="/", metavar="VHOST"),
    Spec("tls_verify", "bool", "Verify TLS certificates.", default=True, metavar="BOOL"),
    _s("ca_bundle", "CA bundle file for TLS.", metavar="FILE"),
    _s("client_cert", "Client certificate file for TLS.", metavar="FILE"),
    _s("client_key", "Client key file for TLS.", metavar="FILE"),
    _s("tunnel_command", "Command template for tunnel: URLs.", default=DEFAULT_TUNNEL_COMMAND,
       metavar="TEMPLATE"),
    Spec("timeout", "float", "Seconds to wait for one network operation.", default=10.0,
         minimum=0.1, metavar="SECONDS"),
    Spec("batch_size", "int", "Most job-finish messages in one batch-job-finish (1: no batching).",
         default=100, minimum=1, metavar="N"),
    Spec("flush_timeout", "float", "Seconds to wait at session end before queueing the rest.",
         default=30.0, minimum=0, metavar="SECONDS"),
    Spec("retry_budget", "float", "Seconds spent retrying transient failures before falling back "
         "to the offline queue.", default=30.0, minimum=0, metavar="SECONDS"),
    Spec("max_pending", "int", "Most messages held in memory before spilling to the offline "
         "queue.", default=10000, minimum=10, metavar="N"),
    Spec("live_after", "float", "Publish a test's live job once it has run SECONDS (0: at "
         "setup, for every test).", default=0.1, minimum=0, metavar="SECONDS"),
    Spec("heartbeat", "float", "Re-send a running test's live job every SECONDS (0: off).",
         default=0.0, minimum=0, metavar="SECONDS"),
    Spec("strict", "bool", "Exit non-zero when some messages could not be delivered.",
         default=False, metavar="BOOL"),
    # Secrets: environment only.
    _s("username", "User for the broker when the URL has none.", env_only=True),
    _s("password", "Password for the broker when the URL has none.", env_only=True, secret=True),
)
SPEC_BY_NAME: dict[str, Spec] = {spec.name: spec for spec in SPECS}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_INT = re.compile(r"[+-]?[0-9]+")


class Settings:
    """The resolved settings of one run (frozen, compared by value).

    Every value was parsed and checked by :func:`parse_value` from its :class:`Spec`.
    Its repr masks the secrets (a traceback that shows locals must not print them).  A
    plain class rather than a dataclass: every pytest run with the plugin installed
    imports it, and a frozen dataclass of 43 fields costs milliseconds to make.
    """

    regression: str | None = None
    url: str | None = None
    queue_dir: str | None = None
    record: str | None = None
    shard: str | None = None
    category: str = "pytest"
    metadata: tuple[tuple[str, str], ...] = ()
    build: str | None = None
    testgroup: Literal["file", "dir", "class", "none"] = "file"
    jobdir_root: str | None = None
    skips: Literal["publish", "omit"] = "publish"
    fail_message_limit: int = 20000
    project: str | None = None
    component: str | None = None
    model_version: str | None = None
    model_branch: str | None = None
    model_timestamp: str | None = None
    integrate: bool | None = None
    queue: str | None = None
    tag: str | None = None
    group: str | None = None
    changelist_path: str | None = None
    regression_metadata: tuple[tuple[str, str], ...] = ()
    amqp_queue: str = "simscope-input"
    amqp_exchange: str = ""
    amqp_routing_key: str | None = None
    http_vhost: str = "/"
    tls_verify: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tunnel_command: str = DEFAULT_TUNNEL_COMMAND
    timeout: float = 10.0
    batch_size: int = 100
    flush_timeout: float = 30.0
    retry_budget: float = 30.0
    max_pending: int = 10000
    live_after: float = 0.1
    heartbeat: float = 0.0
    strict: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.regression)

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(_SETTING_NAMES)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, value in values.items():
            object.__setattr__(self, name, value)  # the rest keep the class's defaults

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTING_NAMES}

    def __repr__(self) -> str:
        shown = []
        for spec in SPECS:
            value = getattr(self, spec.name)
            if spec.secret and value:
                value = shown_value(spec, value)  # masked, as the -v header shows it
            shown.append(f"{spec.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


# Every setting is a field of Settings (tests/test_settings.py checks the two agree).
_SETTING_NAMES: tuple[str, ...] = tuple(spec.name for spec in SPECS)


@dataclass(frozen=True)
class Resolved:
    """Settings plus where each value came from."""

    settings: Settings
    sources: dict[str, str]
    ci: CiDefaults


def _parse_pairs(raw: Any, *, from_env: bool) -> tuple[tuple[str, str], ...]:
    items: list[str]
    if isinstance(raw, str):
        text = raw.strip()
        if from_env and text.startswith("{"):
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"is not valid JSON ({exc})") from None
            if not isinstance(loaded, dict):
                raise ValueError("must be a JSON object of names to values")
            return tuple(
                (str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in loaded.items()
            )
        sep = "\n" if "\n" in text else ","
        items = [part.strip() for part in text.split(sep)]
    else:
        items = [str(part).strip() for part in raw]
    pairs: list[tuple[str, str]] = []
    for item in items:
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def parse_value(spec: Spec, raw: Any, *, from_env: bool = False) -> Any:
    """Turn a raw value into the setting's type; ``ValueError`` says what is wrong."""
    if spec.kind == "pairs":
        return _parse_pairs(raw, from_env=from_env)
    if isinstance(raw, list):
        raw = " ".join(str(part) for part in raw)
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not a boolean (use true or false)")
    # A secret is taken as given: spaces at its ends may belong to it.
    text = str(raw) if spec.secret and spec.env_only else str(raw).strip()
    if spec.kind == "str":
        if not text.strip():
            raise ValueError("must not be empty")
        if "\x00" in text:
            raise ValueError("must not contain NUL characters")
        return text
    if spec.kind == "choice":
        if text not in spec.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(spec.choices)}")
        return text
    number: float
    if spec.kind == "int":
        if not _INT.fullmatch(text):
            raise ValueError(f"{text!r} is not a whole number")
        number = int(text)
    else:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
    if spec.minimum is not None and number < spec.minimum:
        raise ValueError(f"{text} is below the minimum of {spec.minimum:g}")
    return number


def _describe(spec: Spec, kind: str, where: str) -> str:
    if kind == "flag":
        return f"command line {spec.flag}"
    if kind == "env":
        return f"environment variable {spec.env}"
    if kind == "ini":
        return f"ini key {spec.ini} in {where}" if where else f"ini key {spec.ini}"
    return kind


def resolve(
    *,
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    ini: Mapping[str, Any],
    ini_path: str = "",
    ci: CiDefaults | None = None,
) -> Resolved:
    """Resolve every setting from its sources, highest precedence first.

    *cli* maps setting names to what the command line gave (``None`` or empty: not given),
    *env* is the process environment, *ini* maps setting names to the raw ini values.
    """
    ci = ci or CiDefaults()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        candidates: list[tuple[str, Any]] = []
        if not spec.env_only:
            flag_value = cli.get(spec.name)
            if flag_value not in (None, "", [], ()):
                candidates.append(("flag", flag_value))
        env_value = env.get(spec.env)
        if env_value is not None and env_value.strip() != "":
            candidates.append(("env", env_value))
        if not spec.env_only:
            ini_value = ini.get(spec.name)
            if ini_value not in (None, "", []):
                candidates.append(("ini", ini_value))
        if not candidates:
            if spec.name in ci.values:
                values[spec.name] = ci.values[spec.name]
                sources[spec.name] = f"CI default ({ci.system}: {ci.origins[spec.name]})"
            else:
                sources[spec.name] = "default"
            continue
        kind, raw = candidates[0]
        where = _describe(spec, kind, ini_path)
        try:
            values[spec.name] = parse_value(spec, raw, from_env=kind == "env")
        except ValueError as exc:
            name = spec.env if spec.env_only else spec.flag
            # What is wrong with a secret would show (part of) it: name the setting only.
            raise SettingsError(
                f"bad value for {name} from {where}"
                + ("" if spec.secret else f": {exc}")
            ) from None
        sources[spec.name] = where
    _cross_checks(values, sources)
    return Resolved(Settings(**values), sources, ci)


def _cross_checks(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    url = values.get("url")
    if url is not None:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in {"amqp", "amqps", "http", "https", "tunnel"}:
            raise SettingsError(
                f"bad value for --simscope-url from {sources['url']}: the URL must start with "
                "amqp://, amqps://, http://, https:// or tunnel:"
            )
        if scheme != "tunnel":
            # The URL may hold a password: say what is wrong without showing any of it.
            problem = ""
            try:
                parts = urlsplit(url)
                if not url[len(scheme) + 1 :].startswith("//") or not parts.hostname:
                    problem = "it names no host (expected scheme://[user:password@]host[:port])"
                else:
                    parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                problem = "it has a bad port or host part"
            if problem:
                raise SettingsError(
                    f"bad value for --simscope-url from {sources['url']}: {problem}"
                )
    model_timestamp = values.get("model_timestamp")
    if model_timestamp is not None:
        from pytest_simscope.timestamps import parse_rfc3339

        if parse_rfc3339(model_timestamp) is None:
            raise SettingsError(
                f"bad value for --simscope-model-timestamp from {sources['model_timestamp']}: "
                f"{model_timestamp!r} is not an RFC 3339 timestamp with a UTC offset"
            )
    regression = values.get("regression")
    if regression is not None and any(ord(ch) < 32 for ch in regression):
        raise SettingsError(
            f"bad value for --simscope-regression from {sources['regression']}: "
            "control characters are not allowed in a regression name"
        )


def shown_value(spec: Spec, value: Any) -> str:
    """A value as the ``-v`` header shows it, secrets masked."""
    if value is None or value == ():
        return "-"
    if spec.name == "url":
        from pytest_simscope.redact import mask_url

        return mask_url(str(value))
    if spec.secret:
        return "***"
    if spec.kind == "pairs":
        return ", ".join(f"{k}={v}" for k, v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_table(specs: Sequence[Spec] = SPECS) -> list[tuple[str, str, str, str, str]]:
    """Rows of (flag, ini key, environment variable, default, help) for the README."""
    rows = []
    for spec in specs:
        default = spec.default
        if default in (None, ()):
            shown = ""
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default)
        rows.append(
            (
                "" if spec.env_only else spec.flag,
                "" if spec.env_only else spec.ini,
                spec.env,
                shown,
                spec.help,
            )
        )
    return rows
