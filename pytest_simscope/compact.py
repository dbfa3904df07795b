"""The usual test's journal lines in short: its facts, not its messages.

Most tests pass with nothing to add: no marker, no metadata, a node id of printable ASCII
that is its own uniqueid.  For such a test the reporter journals the live job and the
finish as a short line of numbers and the node id, and the run's *template line*, written
once before them, holds the rest of both bodies.  Whoever reads the journal (the courier,
the pytest process after a courier failed, the recovery of a dead run) makes the same
messages of them that the reporter makes of any other test, byte for byte.  Building
that JSON was a fifth of what the plugin added to a trivial test; now the courier does
it, in its own process.

The lines (each ends with a newline)::

    T{"regression": ..., "category": ..., "host": ..., "build": ..., "seed": ...,
      "metadata": [[name, value], ...], "testgroup": rule}
    L<seq> <start µs> <node id>
    P<seq> <start µs> <finish µs> <compute ms> <runtime ms> <node id>
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pytest_simscope.messages import Envelope, _clean_str, dumps, encode, stamp_ascii

_json_string = json.encoder.encode_basestring  # what dumps writes for a str

# The short lines, of their sequence number, start (whole microseconds since the epoch),
# for a finish its finish time, compute_ms and runtime_ms, and the node id's bytes.
LIVE_LINE = b"L%d %d %b\n"
PASS_LINE = b"P%d %d %d %d %d %b\n"


def json_bytes(text: str) -> bytes:
    """A string as ``dumps`` writes it, encoded."""
    return encode(_json_string(text))


def testgroup_by_rule(rule: str, nodeid: str) -> str | None:
    """The testgroup of *nodeid* by the ``testgroup`` setting's *rule*."""
    path, _, rest = nodeid.partition("::")
    if rule == "file":
        return path
    if rule == "none":
        return None
    if rule == "dir":
        return path.rpartition("/")[0] or "."
    if rule == "class":
        parts = rest.split("::")
        if len(parts) > 1:
            return f"{path}::{'::'.join(parts[:-1])}"
    return path


def is_short(nodeid: str) -> bool:
    """Whether a test of this node id (its own uniqueid) can be journaled in short."""
    return nodeid.isascii() and nodeid.isprintable() and bool(nodeid)


class RunFields:
    """What every job body of a run shares, as the JSON pieces the reporter writes them
    with, and the usual job's two bodies from them."""

    def __init__(
        self,
        regression: str,
        category: str,
        host: str,
        build: str | None,
        seed: str | None,
        metadata: Sequence[tuple[str, str]],
        testgroup: str,
    ) -> None:
        self.values: dict[str, Any] = {
            "regression": regression,
            "category": category,
            "host": host,
            "build": build,
            "seed": seed,
            "metadata": [list(pair) for pair in metadata],
            "testgroup": testgroup,
        }
        self.regression = regression
        self.rule = testgroup
        # host, build and seed: after config and testgroup in every job body.
        self.run = b',"host":' + json_bytes(host)
        if build:
            self.run += b',"build":' + json_bytes(build)
        if seed:
            self.run += b',"seed":' + json_bytes(seed)
        self.meta = (
            b',"metadata":' + encode(dumps(self.values["metadata"])) if metadata else b""
        )
        self._heads: dict[str, bytes] = {}
        # The usual job's bodies as %-templates of uniqueid, start_time, config and
        # testgroup (and, finished, compute_ms, runtime_ms and finish_time).
        head = self.head(category).replace(b"%", b"%%")
        run = self.run.replace(b"%", b"%%")
        meta = self.meta.replace(b"%", b"%%")
        fields = b'%b,"result":"RESULT","start_time":"%b","config":%b%b' + run
        self._live = head + fields.replace(b"RESULT", b"live") + meta + b"}"
        self._pass = (
            head
            + fields.replace(b"RESULT", b"pass")
            + b',"compute_ms":%d,"runtime_ms":%d,"finish_time":"%b","fail_message":""'
            + meta
            + b"}"
        )
        self._testgroup: tuple[str | None, bytes] = (None, b"")

    def head(self, category: str) -> bytes:
        """The JSON a job body of *category* starts with, up to its uniqueid's value."""
        head = self._heads.get(category)
        if head is None:
            head = self._heads[category] = (
                b'{"category":' + json_bytes(category) + b',"uniqueid":'
            )
        return head

    def line(self) -> bytes:
        """The template line."""
        return b"T" + encode(dumps(self.values)) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> RunFields:
        """The fields of a template line (``ValueError`` if it is not one)."""
        values = json.loads(line[1:])
        try:
            strings = [values[k] for k in ("regression", "category", "host", "testgroup")]
            optional = [values.get(k) for k in ("build", "seed")]
            pairs = [(name, value) for name, value in values["metadata"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a template line: {exc}") from None
        if not all(isinstance(s, str) for s in [*strings, *(p for pair in pairs for p in pair)]):
            raise ValueError("not a template line: a field is not a string")
        if not all(o is None or isinstance(o, str) for o in optional):
            raise ValueError("not a template line: a field is not a string")
        regression, category, host, rule = strings
        return cls(regression, category, host, optional[0], optional[1], pairs, rule)

    def testgroup_json(self, testgroup: str | None) -> bytes:
        """``,"testgroup":...`` as a job body has it (nothing for none), the last one kept:
        the tests of one file (or folder, class) run one after the other."""
        if not testgroup:
            return b""
        last = self._testgroup
        if testgroup != last[0]:
            last = self._testgroup = (
                testgroup,
                b',"testgroup":' + json_bytes(_clean_str(testgroup)),
            )
        return last[1]

    def envelope(self, line: bytes) -> tuple[int, Envelope]:
        """``(seq, message)`` of a short line, ``L`` or ``P`` (``ValueError`` if it is not
        one)."""
        kind = line[:1]
        if kind == b"L":
            seq, start, nodeid = line[1:].split(b" ", 2)
        elif kind == b"P":
            seq, start, finish, compute, runtime, nodeid = line[1:].split(b" ", 5)
        else:
            raise ValueError("not a short journal line")
        name = _nodeid(nodeid)
        uniqueid = _json_string(name).encode("ascii")  # its config too
        testgroup = self.testgroup_json(testgroup_by_rule(self.rule, name))
        start_time = stamp_ascii(_micros(start))
        if kind == b"L":
            body = self._live % (uniqueid, start_time, uniqueid, testgroup)
            message = Envelope.of_bytes("job-live", self.regression, body)
        else:
            finish_time = stamp_ascii(_micros(finish))
            body = self._pass % (
                uniqueid, start_time, uniqueid, testgroup,
                _count(compute), _count(runtime), finish_time,
            )
            message = Envelope.of_bytes("job-finish", self.regression, body)
        message.body = json.loads(body)
        return _count(seq), message


def _count(raw: bytes) -> int:
    if not raw.isdigit():
        raise ValueError(f"not a count: {raw[:20]!r}")
    return int(raw)


def _micros(raw: bytes) -> int:
    value = _count(raw)
    if not 0 < value < 10**17:
        raise ValueError(f"not a time: {value}")
    return value


def _nodeid(raw: bytes) -> str:
    text = raw.rstrip(b"\n").decode("ascii")
    if not is_short(text):
        raise ValueError("not a node id of a short line")
    return text
