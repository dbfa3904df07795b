"""The Simscope messages the plugin publishes, as pydantic models.

Field names follow the vendor's documentation exactly (``starttime`` on a regression,
``start_time`` on a job).  Nothing here imports pytest, so the models can be used by the
command-line tool and unit-tested alone.

An :class:`Envelope` is what travels through the publisher and the transports: the AMQP
``type`` property, the regression name (sent as the ``correlation_id``) and the JSON body.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
JobResult = Literal["live", "pass", "fail", "skip"]
REGRESSION_TYPES = frozenset({"regr-start", "regr-update", "regr-finish"})
JOB_TYPES = frozenset({"job-live", "job-finish", "batch-job-finish"})

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def body(self) -> dict[str, Any]:
        """The JSON body Simscope expects: unset fields are left out."""
        return self.model_dump(mode="json", exclude_none=True)


class Regression(_Model):
    """A Regression JSON object (``regr-start``, ``regr-update``, ``regr-finish``)."""

    name: str
    starttime: str | None = None
    pending: bool | None = None
    host: str | None = None
    dir: str | None = None
    command: str | None = None
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
    submitted: int | None = Field(default=None, ge=0)
    running: int | None = Field(default=None, ge=0)
    custom_metadata: list[tuple[str, str]] | None = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("regression name must not be empty")
        return value

    @field_validator("custom_metadata", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        return None if value is None else metadata_pairs(value)


class Job(_Model):
    """A Job JSON object (``job-live`` with result ``live``, or ``job-finish``)."""

    category: str
    uniqueid: str
    result: JobResult
    start_time: str | None = None
    finish_time: str | None = None
    compute_ms: int | None = Field(default=None, ge=0, le=MAX_JOB_MS)
    runtime_ms: int | None = Field(default=None, ge=0, le=MAX_JOB_MS)
    cycles: int | None = Field(default=None, ge=0)
    config: str | None = None
    fail_message: str | None = None
    seed: str | None = None
    build: str | None = None
    testgroup: str | None = None
    host: str | None = None
    jobdir: str | None = None
    username: str | None = None
    extid: str | None = None
    exit_code: int | None = None
    bucket: str | None = None
    sourcecode: str | None = None
    metadata: list[tuple[str, str]] | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        return None if value is None else metadata_pairs(value)

    @field_validator(
        "config", "fail_message", "seed", "build", "testgroup", "host", "jobdir", mode="before"
    )
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return None if value is None else _clean_str(value)

    @model_validator(mode="after")
    def _live_rules(self) -> Job:
        if self.result == "live":
            for name in ("compute_ms", "runtime_ms", "cycles", "fail_message"):
                if getattr(self, name) is not None:
                    raise ValueError(f"a live job must not carry {name}")
        return self


class Envelope(BaseModel):
    """One message: its Simscope type, the regression it belongs to and its JSON body."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: MessageType
    regression: str
    body: dict[str, Any] | list[dict[str, Any]] | None = None

    @property
    def uniqueid(self) -> str | None:
        """The job's uniqueid for job messages with a single body, else ``None``."""
        if isinstance(self.body, dict):
            value = self.body.get("uniqueid")
            return value if isinstance(value, str) else None
        return None

    def as_record(self) -> dict[str, Any]:
        return {"type": self.type, "regression": self.regression, "body": self.body}

    def body_bytes(self) -> bytes:
        """The UTF-8 JSON body as it goes on the wire."""
        return dumps(self.body).encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return _clean_str(value)


def dumps(value: Any) -> str:
    """Compact JSON that never fails on odd values (they become strings)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)
