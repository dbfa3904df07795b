"""Publish envelopes by running the vendor's ``simscope-tunnel`` command, one per message.

For sites where only the Tunnel may talk to the broker.  The body goes to a private
temporary JSON file; the command is a template split like a shell would (``shlex``) but
run without one, so a regression name with spaces or quotes is passed as it is.  The
placeholders ``{type}``, ``{regression}``, ``{file}`` and ``{config}`` are filled in each
argument; nothing else in the template is touched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from pytest_simscope.errors import PermanentError, SettingsError, TransientError
from pytest_simscope.messages import Envelope
from pytest_simscope.redact import mask_urls, redact
from pytest_simscope.transports.base import DEFAULT_TUNNEL_COMMAND, Transport

DEFAULT_COMMAND = DEFAULT_TUNNEL_COMMAND
DEFAULT_CONFIG = "simscope-tunnel.conf"
PLACEHOLDERS = frozenset({"type", "regression", "file", "config"})

_PLACEHOLDER = re.compile(r"\{(type|regression|file|config)\}")
# Anything that looks like a placeholder, to catch typos such as {regresion}.
_LOOKS_LIKE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_LINE = 300


def config_from_url(url: str) -> str:
    """The Tunnel config path of a ``tunnel:`` URL (``tunnel:/etc/simscope-tunnel.conf``)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "tunnel":
        raise SettingsError(f"not a tunnel URL: {url!r} (expected tunnel:/path/to/config)")
    if rest.startswith("//"):
        # tunnel:///etc/x.conf, the form a URL-minded user may write.
        rest = rest[2:]
    return os.path.expanduser(rest) if rest else DEFAULT_CONFIG


class TunnelTransport(Transport):
    """Run *command* for each envelope; a zero exit status means delivered.

    *url* is ``tunnel:`` (config ``simscope-tunnel.conf`` in the working directory) or
    ``tunnel:/path/to/simscope-tunnel.conf``.  *timeout* bounds each run.  *secrets* are
    removed from the command's error output before it is shown.
    """

    def __init__(
        self,
        url: str = "tunnel:",
        *,
        command: str = DEFAULT_COMMAND,
        timeout: float = 60.0,
        secrets: Iterable[str] = (),
    ) -> None:
        self.config = config_from_url(url)
        try:
            template = shlex.split(command)
        except ValueError as exc:
            raise SettingsError(f"bad tunnel command {command!r}: {exc}") from None
        if not template:
            raise SettingsError("the tunnel command is empty")
        for arg in template:
            for name in _LOOKS_LIKE_PLACEHOLDER.findall(arg):
                if name not in PLACEHOLDERS:
                    raise SettingsError(
                        f"unknown placeholder {{{name}}} in tunnel command {command!r};"
                        " use {type}, {regression}, {file} and {config}"
                    )
        if not any("{file}" in arg for arg in template):
            raise SettingsError(
                f"tunnel command {command!r} must pass the message file: add {{file}}"
            )
        self.template = template
        self.timeout = timeout
        self._secrets = list(secrets)
        self.name = f"tunnel command {template[0]} (config {self.config})"
        self.delivered = 0
        self._directory: str | None = None

    def send(self, batch: Sequence[Envelope]) -> None:
        for index, envelope in enumerate(batch):
            self.delivered = index
            self._publish(envelope)
        self.delivered = len(batch)

    def close(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def command_for(self, envelope: Envelope, file: str) -> list[str]:
        """The argument list run for *envelope* whose body is in *file*."""
        values = {
            "type": envelope.type,
            "regression": envelope.regression,
            "file": file,
            "config": self.config,
        }
        # One pass, so a regression named "{file}" stays a name.
        return [
            _PLACEHOLDER.sub(lambda match: values[match.group(1)], arg) for arg in self.template
        ]

    def _publish(self, envelope: Envelope) -> None:
        if self._directory is None or not os.path.isdir(self._directory):
            self._directory = tempfile.mkdtemp(prefix="pytest-simscope-tunnel-")
        fd, path = tempfile.mkstemp(prefix=f"{envelope.type}-", suffix=".json", dir=self._directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(envelope.body_bytes())
            self._run(self.command_for(envelope, path))
        finally:
            Path(path).unlink(missing_ok=True)

    def _run(self, args: list[str]) -> None:
        program = args[0]
        try:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Its own process group, so a timeout also kills what it started.
                start_new_session=True,
            )
        except FileNotFoundError:
            raise PermanentError(
                f"{self.name}: command {program!r} not found (is the Simscope Tunnel"
                " installed and on PATH?)"
            ) from None
        except PermissionError:
            raise PermanentError(f"{self.name}: command {program!r} is not executable") from None
        except OSError as exc:
            raise TransientError(f"{self.name}: cannot run {program!r}: {exc}") from None
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            raise TransientError(
                f"{self.name}: no result within {self.timeout:g} s; the command was killed"
            ) from None
        if process.returncode == 0:
            return
        line = self._first_line(stderr) or self._first_line(stdout)
        status = process.returncode
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise TransientError(f"{self.name}: {how}" + (f": {line}" if line else ""))

    def _first_line(self, output: bytes) -> str:
        for raw in output.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if line:
                line = mask_urls(redact(line, self._secrets))
                if len(line) > _MAX_LINE:
                    line = line[: _MAX_LINE - 3] + "..."
                return line
        return ""


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass
    # Not communicate(): a grandchild that left the group could hold the pipes open.
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
