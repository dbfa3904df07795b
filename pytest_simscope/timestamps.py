"""RFC 3339 timestamps as Simscope reads them."""

from __future__ import annotations

import datetime as dt
import re

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


def parse_rfc3339(text: str) -> dt.datetime | None:
    """The aware datetime of an RFC 3339 timestamp, or ``None`` if *text* is not one."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        return None
    value = text.upper().replace("Z", "+00:00")
    head, dot, tail = value.partition(".")
    if dot:
        digits = re.match(r"\d+", tail)
        assert digits is not None
        frac = digits.group(0)
        value = f"{head}.{frac[:6].ljust(6, '0')}{tail[len(frac):]}"
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None
