"""Keep secrets out of what the plugin prints.

Broker URLs carry passwords (``amqp://user:secret@host``) and a failing command may echo
them back in its error output.  Everything that reaches the terminal, a warning or a log
goes through :func:`mask_url` or :func:`redact` first.  Both are total: they are called
while reporting another failure, so they must never raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# Good enough to find URLs in an error message; quotes and brackets end them.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """*url* with the password of its user information replaced by ``***``.

    The scheme, user, host, port, path and query are kept so the result still says where
    messages go.  A string that cannot be understood is masked rather than echoed.
    """
    try:
        text = url if isinstance(url, str) else str(url)
    except Exception:
        return MASK
    try:
        return _mask(text)
    except Exception:  # pragma: no cover - _mask only slices strings; belt and braces
        return MASK


def _mask(text: str) -> str:
    scheme_end = text.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    authority_end = len(text)
    for stop in "/?#":
        found = text.find(stop, start)
        if found >= 0:
            authority_end = min(authority_end, found)
    # rfind: a password may hold an unquoted "@"; the host part never does.
    at = text.rfind("@", start, authority_end)
    if at < 0:
        # A password holding an unquoted "/", "?" or "#" ends the authority early, as
        # urllib would read it; look further so that such a password is not shown.
        at = text.rfind("@", start)
        if at < 0:
            return text
    colon = text.find(":", start, at)
    if colon < 0:
        # A user name alone is not a secret.
        return text
    return f"{text[: colon + 1]}{MASK}{text[at:]}"


def redact(text: str, secrets: Iterable[str]) -> str:
    """*text* with every non-empty secret, plain or URL-quoted, replaced by ``***``."""
    forms: set[str] = set()
    for secret in secrets:
        if not isinstance(secret, str) or not secret:
            continue
        # The forms URL and form encoders produce, with "/" quoted or not.
        forms.update((secret, quote(secret, safe=""), quote(secret)))
        forms.update((quote_plus(secret, safe=""), quote_plus(secret, safe="/")))
    # Longest first, so that a secret containing another is replaced whole.
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def mask_urls(text: str) -> str:
    """*text* with :func:`mask_url` applied to every URL found in it."""
    try:
        return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)
    except Exception:
        return MASK
