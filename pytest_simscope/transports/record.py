"""The JSON-lines recorder: every envelope, in order, one JSON object a line."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from pytest_simscope.errors import PermanentError
from pytest_simscope.messages import Envelope, dumps
from pytest_simscope.transports.base import Transport


class Recorder(Transport):
    """Append ``{"type", "regression", "body"}`` lines to a file (created or truncated)."""

    local = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = f"record {self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise PermanentError(f"cannot open the record file {self.path}: {exc}") from exc

    def send(self, batch: Sequence[Envelope]) -> None:
        try:
            self._handle.write("".join(dumps(env.as_record()) + "\n" for env in batch))
        except (OSError, ValueError) as exc:
            raise PermanentError(f"cannot write the record file {self.path}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
