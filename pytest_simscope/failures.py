"""Failure text: the ``fail_message`` Simscope buckets by its first line."""

from __future__ import annotations

from pytest_simscope.messages import _clean_str

SUMMARY_LIMIT = 300
_MARK = "\n[... {cut} characters cut by pytest-simscope ...]\n"


def first_line(text: str) -> str:
    """The first non-blank line of *text*, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def cut_middle(text: str, limit: int) -> str:
    """Keep the head and tail of *text* within *limit* characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    mark_len = len(_MARK.format(cut=len(text)))
    if limit <= mark_len:
        # No room to say what was cut: keep the head only, within the limit.
        return text[: max(0, limit)]
    room = limit - mark_len
    head = room * 2 // 3
    tail = room - head
    cut = len(text) - head - tail
    return text[:head] + _MARK.format(cut=cut) + (text[len(text) - tail :] if tail else "")


def fail_message(summary: str, details: str, limit: int, prefix: str = "") -> str:
    """A fail_message: a short stable summary line, then the full text, within *limit*.

    Simscope buckets failures by the first line only, so it is one line of at most
    ``SUMMARY_LIMIT`` characters; the rest is the full pytest failure text.
    """
    summary = first_line(_clean_str(summary)) or first_line(_clean_str(details)) or "failed"
    line = f"{prefix}{summary}"
    if len(line) > SUMMARY_LIMIT:
        line = line[: SUMMARY_LIMIT - 3] + "..."
    details = _clean_str(details).strip("\n")
    if not details or details == summary:
        return line[:limit]
    room = limit - len(line) - 1
    if room <= 0:
        return line[:limit]
    return f"{line}\n{cut_middle(details, room)}"
