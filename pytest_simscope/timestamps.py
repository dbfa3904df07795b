"""RFC 3339 timestamps as Simscope reads them.

Upper-case ``T`` and ``Z`` only, although RFC 3339 allows lower case: the protocol checker
(``check.py``) requires them, because the server's RFC 3339 layout matches them literally.
Any number of fraction digits is accepted (datetime keeps six); the offset is ``Z`` or
``+hh:mm``/``-hh:mm``.
"""

from __future__ import annotations

import datetime as dt
import re

_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})"
)


def parse_rfc3339(text: str) -> dt.datetime | None:
    """The aware datetime of an RFC 3339 timestamp, or ``None`` if *text* is not one."""
    if not isinstance(text, str):
        return None
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    try:
        return dt.datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}{zone}")
    except ValueError:
        return None
