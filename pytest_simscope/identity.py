"""Identity rules: job uniqueids, unique start times and safe folder names.

* A job's ``uniqueid`` is derived from the test's node id, the xdist worker that ran it
  (only when the same test may run on several workers, as under ``--dist each``), the shard
  name (when several pytest processes fill one regression) and, when the same node id runs
  more than once in one session, its occurrence number.  Rerun attempts of one test keep the
  same uniqueid: the attempt chain is one job.
* ``start_time`` values are unique within a regression: Simscope drops jobs that share a
  start time, category and signature as duplicates, which would silently merge passing
  tests, so a clash is moved on by one microsecond.
* Folder names for the offline queue are made of ``[A-Za-z0-9._-]`` only, never a reserved
  Windows name, never ``.`` or ``..``, and bounded in length.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata

MAX_UNIQUEID = 240
_ID_KEEP = 200


def _bounded(text: str, limit: int = MAX_UNIQUEID, keep: int = _ID_KEEP) -> str:
    """Keep *text* if short enough, else a prefix plus a hash of the whole."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:keep]}~{digest}"


def make_uniqueid(
    nodeid: str,
    *,
    worker: str | None = None,
    shard: str | None = None,
    occurrence: int = 1,
) -> str:
    """The uniqueid of one job (see the module docstring)."""
    text = nodeid or "<unnamed>"
    if worker:
        text = f"{text}@{worker}"
    if occurrence > 1:
        text = f"{text}#{occurrence}"
    if shard:
        text = f"{shard}:{text}"
    return _bounded(text)


class StartClock:
    """Hands out start times that are unique within one regression.

    Times are whole microseconds since the epoch; a time already handed out is moved on to
    the next free microsecond, so no two jobs share one even when they start together.
    """

    def __init__(self) -> None:
        self._used: set[int] = set()

    def claim(self, epoch: float) -> dt.datetime:
        micros = round(epoch * 1_000_000)
        while micros in self._used:
            micros += 1
        self._used.add(micros)
        return dt.datetime.fromtimestamp(micros / 1_000_000).astimezone()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(10)]
    + [f"LPT{i}" for i in range(10)]
    + ["COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"]
)


def safe_slug(text: str, max_len: int = 48) -> str:
    """A readable, filesystem-safe fragment of *text* (may be empty).

    Non-ASCII letters are reduced to their ASCII base where one exists and dropped
    otherwise; separators, brackets and dot runs become single dashes or dots; the result
    never starts or ends with a dot or dash, so it cannot be ``.`` or ``..`` nor end in a
    character Windows refuses.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("-", ascii_text)
    slug = _DOTS.sub(".", slug)
    slug = slug[:max_len].strip(".-_")
    if slug.split(".")[0].upper() in _WINDOWS_RESERVED:
        slug = f"_{slug}"
    return slug


def job_slug(nodeid: str, max_len: int = 48) -> str:
    """A short descriptive name for a test: its file stem and test name, made safe."""
    path, _, rest = nodeid.partition("::")
    stem = path.rsplit("/", 1)[-1]
    if stem.endswith(".py"):
        stem = stem[:-3]
    name = f"{stem}-{rest}" if rest else stem
    return safe_slug(name, max_len) or "test"
