"""The messages as they travel: envelopes, JSON encoding and time stamps.

This module is the runtime side of :mod:`pytest_simscope.models` and imports nothing
heavy: a pytest run builds its message bodies as plain dicts (the test suite validates
every published stream against the pydantic models with :mod:`pytest_simscope.check`), so
a run pays neither pydantic's import nor its validation per test.

An :class:`Envelope` is what travels through the publisher and the transports: the AMQP
``type`` property, the regression name (sent as the ``correlation_id``) and the JSON body.
Its body is encoded once, the first time anything asks, and the same bytes serve the
journal, the offline queue and the wire.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any, Literal

MessageType = Literal[
    "regr-start", "regr-update", "regr-finish", "job-live", "job-finish", "batch-job-finish"
]
MESSAGE_TYPES: tuple[str, ...] = (
    "regr-start",
    "regr-update",
    "regr-finish",
    "job-live",
    "job-finish",
    "batch-job-finish",
)
REGRESSION_TYPES = frozenset({"regr-start", "regr-update", "regr-finish"})
JOB_TYPES = frozenset({"job-live", "job-finish", "batch-job-finish"})
_TYPES = frozenset(MESSAGE_TYPES)

# The attribute of a pytest report that carries what the reporter needs from the test's
# item (marker fields, metadata added by the test), JSON-safe so xdist carries it.
DATA_ATTR = "simscope_data"

# Simscope rejects jobs longer than 24 days; clamp what we send so a clock jump on the
# test machine cannot get a real result refused.
MAX_JOB_MS = 24 * 24 * 3600 * 1000 - 1


def rfc3339(moment: dt.datetime) -> str:
    """Format *moment* as RFC 3339 with microseconds and its UTC offset."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    offset = moment.utcoffset()
    if offset is not None and offset.seconds % 60:
        # Historic zones have offsets with seconds, which RFC 3339 cannot express.
        moment = moment.astimezone(dt.timezone.utc)
    return moment.isoformat(timespec="microseconds")


def local_time(epoch: float) -> dt.datetime:
    """The aware local datetime of a ``time.time()`` value."""
    return dt.datetime.fromtimestamp(epoch).astimezone()


class _Stamps:
    """RFC 3339 local times of whole microseconds, fast enough to call for every test.

    The date, time and offset of the last second formatted are kept, so the usual call
    (a time within the same second as the previous one) only appends the microseconds.
    Equal to ``rfc3339(local_time(micros / 1e6))`` for every input.
    """

    def __init__(self) -> None:
        # (second, "YYYY-MM-DDTHH:MM:SS", "+HH:MM"), replaced as a whole: thread-safe.
        self._cache: tuple[int, str, str] = (-1, "", "")
        # The same as bytes, for ascii().
        self._ascii: tuple[int, bytes, bytes] = (-1, b"", b"")

    def __call__(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        cache = self._cache
        if second != cache[0]:
            local = time.localtime(second)
            offset = local.tm_gmtoff or 0
            if offset % 60:
                local = time.gmtime(second)
                offset = 0
            sign = "-" if offset < 0 else "+"
            hours, minutes = divmod(abs(offset) // 60, 60)
            cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", local),
                     f"{sign}{hours:02d}:{minutes:02d}")
            self._cache = cache
        return f"{cache[1]}.{fraction:06d}{cache[2]}"

    def ascii(self, micros: int) -> bytes:
        """``stamp(micros)`` as ASCII bytes, for JSON written as bytes."""
        second, fraction = divmod(micros, 1_000_000)
        cache = self._ascii
        if second != cache[0]:
            self(micros)
            text = self._cache
            cache = self._ascii = (second, text[1].encode("ascii"), text[2].encode("ascii"))
        return b"%b.%06d%b" % (cache[1], fraction, cache[2])


stamp = _Stamps()
"""``stamp(micros)``: ``rfc3339`` of a time given as whole microseconds since the epoch."""
stamp_ascii = stamp.ascii
"""``stamp_ascii(micros)``: ``stamp(micros)`` as ASCII bytes."""


def epoch_micros(epoch: float) -> int:
    return round(epoch * 1_000_000)


def _clean_str(value: Any) -> str:
    """Turn any value into a string JSON can carry and a server will accept."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception as exc:  # a __str__ that raises must not stop publishing
            text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    if text.isascii():
        if "\x00" in text:
            return text.replace("\x00", "\\x00")
        return text
    # Lone surrogates cannot be encoded as UTF-8; NUL bytes trip many consumers.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def metadata_pairs(items: Any) -> list[tuple[str, str]]:
    """Normalise metadata given as a mapping or as pairs into ``[name, value]`` strings."""
    if items is None:
        return []
    if isinstance(items, dict):
        iterable: Any = items.items()
    else:
        iterable = items
    pairs: list[tuple[str, str]] = []
    for item in iterable:
        name, value = item
        pairs.append((_clean_str(name), _clean_str(value)))
    return pairs


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return _clean_str(value)


_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default, check_circular=True
)


def dumps(value: Any) -> str:
    """Compact JSON that never fails on odd values (they become strings)."""
    try:
        return _encoder.encode(value)
    except ValueError:
        # A circular structure: cut it.
        return _encoder.encode(_plain(value))


def _plain(value: Any, depth: int = 0) -> Any:
    """*value* with non-finite floats as strings and anything too deep or circular cut."""
    if depth > 50:
        return "<too deep>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_clean_str(k) if not isinstance(k, (str, int, float, bool)) else k:
                _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value


def encode(text: str) -> bytes:
    # A lone surrogate is written as its escape rather than stopping the message.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


# The encoded '"type":...,"regression":...,"body":' part of a record, by type and regression.
_record_heads: dict[tuple[str, str], bytes] = {}


def record_head(type: str, regression: str) -> bytes:
    """The part of a record between its number and its body: type, regression, the body's
    key (made once for each pair)."""
    key = (type, regression)
    head = _record_heads.get(key)
    if head is None:
        head = _record_heads[key] = encode(
            f',"type":{dumps(type)},"regression":{dumps(regression)},"body":'
        )
    return head


# A record of a message: its number, its head (see record_head), its body's JSON.
RECORD = b'{"seq":%d%b%b}'
# The same as a journal's line.
RECORD_LINE = RECORD + b"\n"


def record_bytes(seq: int, type: str, regression: str, body: bytes) -> bytes:
    """The record of message *seq* (see :meth:`Envelope.record_bytes`), its body given as
    JSON bytes."""
    return RECORD % (seq, record_head(type, regression), body)


class Envelope:
    """One message: its Simscope type, the regression it belongs to and its JSON body.

    Immutable by convention: the body is encoded once and the bytes are kept.
    """

    __slots__ = ("_raw", "body", "regression", "type")

    type: MessageType
    regression: str
    body: dict[str, Any] | list[dict[str, Any]] | None

    def __init__(
        self,
        type: MessageType | str,
        regression: str,
        body: dict[str, Any] | list[dict[str, Any]] | None = None,
    ) -> None:
        if not isinstance(type, str) or type not in _TYPES:
            raise ValueError(f"unknown message type {type!r}")
        if not isinstance(regression, str):
            raise ValueError(f"the regression name must be a string, got {regression!r}")
        if body is not None and not isinstance(body, (dict, list)):
            raise ValueError(f"a message body is an object or an array, got {body!r}")
        self.type = type  # type: ignore[assignment]
        self.regression = regression
        self.body = body
        self._raw: bytes | None = None

    @classmethod
    def of_bytes(cls, type: MessageType, regression: str, raw: bytes) -> Envelope:
        """A message whose body exists only as its JSON bytes (*type* and *regression*
        trusted: the reporter's own, checked once)."""
        envelope = cls.__new__(cls)
        envelope.type = type
        envelope.regression = regression
        envelope.body = None
        envelope._raw = raw
        return envelope

    @classmethod
    def from_record(cls, record: Any) -> Envelope:
        """An envelope from ``{"type", "regression", "body"}`` read back from a file.

        Raises ``ValueError`` when the record is not one.
        """
        if not isinstance(record, dict):
            raise ValueError(f"a message is a JSON object, got {type(record).__name__}")
        extra = set(record) - {"type", "regression", "body"}
        if extra:
            raise ValueError(f"unexpected message fields: {', '.join(sorted(map(str, extra)))}")
        if "type" not in record or "regression" not in record:
            raise ValueError("a message needs a type and a regression")
        body = record.get("body")
        if isinstance(body, list) and not all(isinstance(b, dict) for b in body):
            raise ValueError("a message body array holds objects only")
        return cls(record["type"], record["regression"], body)

    @classmethod
    def batch(cls, regression: str, finishes: list[Envelope]) -> Envelope:
        """One ``batch-job-finish`` carrying the bodies of *finishes*, bytes reused."""
        bodies: list[dict[str, Any]] = [e.body for e in finishes]  # type: ignore[misc]
        envelope = cls("batch-job-finish", regression, bodies)
        envelope._raw = b"[" + b",".join(e.body_bytes() for e in finishes) + b"]"
        return envelope

    @property
    def uniqueid(self) -> str | None:
        """The job's uniqueid for job messages with a single body, else ``None``."""
        body = self.body
        if isinstance(body, dict):
            value = body.get("uniqueid")
            return value if isinstance(value, str) else None
        return None

    def as_record(self) -> dict[str, Any]:
        return {"type": self.type, "regression": self.regression, "body": self.body}

    def record_bytes(self, seq: int) -> bytes:
        """``{"seq", "type", "regression", "body"}`` as compact JSON, around the body's own
        bytes: the line the journal keeps and the record an offline-queue entry holds."""
        return record_bytes(seq, self.type, self.regression, self.body_bytes())

    def body_bytes(self) -> bytes:
        """The UTF-8 JSON body as it goes on the wire (encoded once)."""
        raw = self._raw
        if raw is None:
            raw = self._raw = encode(dumps(self.body))
        return raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return (self.type, self.regression, self.body) == (
            other.type,
            other.regression,
            other.body,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Envelope(type={self.type!r}, regression={self.regression!r}, body={self.body!r})"

    def __getstate__(self) -> tuple[str, str, Any, bytes | None]:
        return (self.type, self.regression, self.body, self._raw)

    def __setstate__(self, state: tuple[str, str, Any, bytes | None]) -> None:
        self.type, self.regression, self.body, self._raw = state  # type: ignore[assignment]
