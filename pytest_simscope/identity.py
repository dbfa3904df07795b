"""Identity rules: job uniqueids, unique start times and safe folder names.

* A job's ``uniqueid`` is derived from the test's node id, the xdist worker that ran it
  (only when the same test may run on several workers, as under ``--dist each``), the shard
  name (when several pytest processes fill one regression) and, when the same node id runs
  more than once in one session, its occurrence number::

      [<shard>:]<nodeid>[@<worker>][#<occurrence>]

  Rerun attempts of one test keep the same uniqueid: the attempt chain is one job.  So that
  different inputs never give the same uniqueid, the characters that separate the parts are
  percent-escaped where a part holds them: ``%``, ``@``, ``#`` and ``~`` everywhere, ``:``
  in a shard name and in a node id before its first ``::`` (its file path), and characters
  UTF-8 cannot carry (lone surrogates from undecodable file names).  Ordinary node ids
  (``tests/test_a.py::test_b[1-2]``) are unchanged.  An id longer than 240 characters keeps
  its first 200 and a hash of the whole after a ``~``.
* ``start_time`` values are unique within a regression: Simscope drops jobs that share a
  start time, category and signature as duplicates, which would silently merge passing
  tests, so a clash is moved on by one microsecond.
* Folder names for the offline queue are made of ``[A-Za-z0-9._-]`` only, never a reserved
  Windows name, never ``.`` or ``..``, never ending in a dot, and bounded in length.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import unicodedata
from array import array
from bisect import bisect_left

MAX_UNIQUEID = 240
_ID_KEEP = 200

_ESCAPES = {"%": "%25", "@": "%40", "#": "%23", "~": "%7E"}
_COLON = "%3A"


def _escape_char(ch: str, *, colon: bool) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if colon and ch == ":":
        return _COLON
    if "\ud800" <= ch <= "\udfff":
        return f"%u{ord(ch):04X}"
    return ch


# Anything _escape_char would change; most ids hold none of it, so they skip the loop.
_NEEDS_ESCAPE = re.compile("[%@#~\ud800-\udfff]")
_NEEDS_ESCAPE_COLON = re.compile("[%@#~:\ud800-\udfff]")


def _escape(text: str, *, colon: bool = False) -> str:
    if not (_NEEDS_ESCAPE_COLON if colon else _NEEDS_ESCAPE).search(text):
        return text
    return "".join(_escape_char(ch, colon=colon) for ch in text)


def _escape_nodeid(nodeid: str) -> str:
    # Colons in the file path (before the first "::", which never starts the id) are
    # escaped, so the first bare ":" of an id without a shard always begins a "::", while
    # the ":" after a shard name is followed by something else: the two cannot meet.
    split = nodeid.find("::", 1)
    if split < 0:
        split = len(nodeid)
    return _escape(nodeid[:split], colon=True) + _escape(nodeid[split:])


def _bounded(text: str, limit: int = MAX_UNIQUEID, keep: int = _ID_KEEP) -> str:
    """Keep *text* if short enough, else a prefix plus a hash of the whole."""
    if len(text) <= limit:
        return text
    import hashlib  # only for the rare long id: it loads OpenSSL, a few MB

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
    if (
        occurrence == 1
        and not worker
        and not shard
        # No colon before the first "::" (nor any, without one) and nothing to escape:
        # the usual node id is its own uniqueid.
        and nodeid.find(":") == nodeid.find("::", 1)
        and not _NEEDS_ESCAPE.search(nodeid)
        and 0 < len(nodeid) <= MAX_UNIQUEID
    ):
        return nodeid
    # "%00" is never produced by escaping: an empty node id cannot meet a real one.
    text = _escape_nodeid(nodeid) if nodeid else "%00"
    if worker:
        text = f"{text}@{_escape(worker)}"
    if occurrence > 1:
        text = f"{text}#{occurrence}"
    if shard:
        text = f"{_escape(shard, colon=True)}:{text}"
    return _bounded(text)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class SeenHashes:
    """Which strings were seen before, in about 8 bytes each (a set takes 40-70).

    Keeps 64-bit string hashes: new ones in a small set, merged from time to time into a
    sorted array searched by bisection.  Two different strings share a hash with odds of
    about n**2 / 2**65 (3e-10 for 100,000 tests), and then the second counts as seen.
    """

    MERGE_AT = 4096

    def __init__(self) -> None:
        self._sorted = array("q")
        self._recent: set[int] = set()

    def add(self, text: str) -> bool:
        """Note *text*; whether it was seen before."""
        key = hash(text)
        recent = self._recent
        if key in recent:
            return True
        merged = self._sorted
        index = bisect_left(merged, key)
        if index < len(merged) and merged[index] == key:
            return True
        recent.add(key)
        if len(recent) >= self.MERGE_AT:
            self._sorted = array("q", sorted((*merged, *recent)))
            recent.clear()
        return False

    def __contains__(self, text: str) -> bool:
        """Whether *text* was seen (noted by :meth:`add`)."""
        key = hash(text)
        if key in self._recent:
            return True
        index = bisect_left(self._sorted, key)
        return index < len(self._sorted) and self._sorted[index] == key

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)


class StartClock:
    """Hands out start times that are unique within one regression.

    Times are whole microseconds since the epoch; a time already handed out is moved on to
    the next free microsecond, so no two jobs share one even when they start together.
    Every claim is kept, exactly, in a sorted array of 8-byte integers: claims arrive
    nearly in order, so the usual claim is one comparison and an append, and a late one
    (an xdist report overtaken by another worker's) is a search near the end.
    """

    def __init__(self) -> None:
        self._claimed = array("q")
        self._last = -(1 << 62)
        self._lock = threading.Lock()

    def claim_micros(self, epoch: float) -> int:
        """A unique start time in whole microseconds, as near *epoch* as is free."""
        micros = round(epoch * 1_000_000)
        if micros > self._last:
            # The usual claim, later than every other.  Claims come from pytest's hooks, in
            # its main thread; the lock is for the claims that need a search.
            self._claimed.append(micros)
            self._last = micros
            return micros
        with self._lock:
            if micros > self._last:
                self._claimed.append(micros)
                self._last = micros
                return micros
            claimed = self._claimed
            index = bisect_left(claimed, micros)
            size = len(claimed)
            if index < size and claimed[index] == micros:
                # Taken, and so may be a run of times after it: claimed[k] - k is the
                # same along a run of consecutive times (the array is sorted, no two
                # equal), so the run's end is found by bisection, not by walking it.
                base = micros - index
                low, high = index + 1, size
                while low < high:
                    middle = (low + high) // 2
                    if claimed[middle] - middle == base:
                        low = middle + 1
                    else:
                        high = middle
                index = low
                micros = base + index
            if index == size:
                claimed.append(micros)
                self._last = micros
            else:
                claimed.insert(index, micros)
            return micros

    def claim(self, epoch: float) -> dt.datetime:
        """:meth:`claim_micros` as an aware local datetime (UTC where the local offset is
        not a whole number of minutes, which RFC 3339 cannot carry)."""
        micros = self.claim_micros(epoch)
        moment = (_EPOCH + dt.timedelta(microseconds=micros)).astimezone()
        offset = moment.utcoffset()
        if offset is not None and offset % dt.timedelta(minutes=1):
            moment = moment.astimezone(dt.timezone.utc)
        return moment


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(10)]
    + [f"LPT{i}" for i in range(10)]
    + ["COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"]
)


def safe_slug(text: str, max_len: int = 48) -> str:
    """A readable, filesystem-safe fragment of *text*, at most *max_len* long (may be empty).

    Non-ASCII letters are reduced to their ASCII base where one exists and dropped
    otherwise; separators, brackets and dot runs become single dashes or dots; the result
    never starts or ends with a dot or dash, so it cannot be ``.`` or ``..`` nor end in a
    character Windows refuses, and a reserved Windows device name (``CON``, ``nul.txt``,
    ``COM1``...) gets a leading underscore.
    """
    max_len = max(max_len, 2)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("-", ascii_text)
    slug = _DOTS.sub(".", slug)
    slug = slug[:max_len].strip(".-_")
    if slug.split(".")[0].upper() in _WINDOWS_RESERVED:
        slug = "_" + slug[: max_len - 1].rstrip(".-_")
    return slug


def job_slug(nodeid: str, max_len: int = 48) -> str:
    """A short descriptive name for a test: its file stem and test name, made safe."""
    path, _, rest = nodeid.partition("::")
    stem = path.rsplit("/", 1)[-1]
    if stem.endswith(".py"):
        stem = stem[:-3]
    name = f"{stem}-{rest}" if rest else stem
    return safe_slug(name, max_len) or "test"
