"""The Simscope message bodies, as pydantic models: the schema of what the plugin publishes.

Field names follow the vendor's documentation exactly (``starttime`` on a regression,
``start_time`` on a job).  Nothing here imports pytest, so the models can be used by the
command-line tool and unit-tested alone.

A pytest run does not import this module unless a ``pytest_simscope_job`` hook needs a
:class:`Job` to edit: it builds plain dicts (see :mod:`pytest_simscope.messages`, which
also holds :class:`Envelope`, re-exported here), and the test suite and ``pytest-simscope
check`` validate what was published against these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pytest_simscope.messages import (
    JOB_TYPES,
    MAX_JOB_MS,
    MESSAGE_TYPES,
    REGRESSION_TYPES,
    Envelope,
    MessageType,
    _clean_str,
    dumps,
    local_time,
    metadata_pairs,
    rfc3339,
)

__all__ = [
    "JOB_TYPES",
    "MAX_JOB_MS",
    "MESSAGE_TYPES",
    "REGRESSION_TYPES",
    "Envelope",
    "Job",
    "JobResult",
    "MessageType",
    "Regression",
    "_clean_str",
    "dumps",
    "local_time",
    "metadata_pairs",
    "rfc3339",
]

JobResult = Literal["live", "pass", "fail", "skip"]


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
