"""Secrets never reach the terminal: URL masking and secret redaction."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_simscope.redact import mask_url, mask_urls, redact


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "amqp://guest:guest@127.0.0.1:5672/%2F",
            "amqp://guest:***@127.0.0.1:5672/%2F",
        ),
        (
            "amqps://user:s%40cret@broker.example.com/simscope?heartbeat=30",
            "amqps://user:***@broker.example.com/simscope?heartbeat=30",
        ),
        (
            "https://ci:pw@proxy.example.com:8443/rabbitmq/",
            "https://ci:***@proxy.example.com:8443/rabbitmq/",
        ),
        ("http://user@host:15672", "http://user@host:15672"),
        ("amqp://127.0.0.1:5672/%2F", "amqp://127.0.0.1:5672/%2F"),
        ("tunnel:/etc/simscope-tunnel.conf", "tunnel:/etc/simscope-tunnel.conf"),
        ("", ""),
        # An unquoted "@" or "/" in the password: the whole password is still hidden.
        ("amqp://u:p@ss@host/v", "amqp://u:***@host/v"),
        ("amqp://u:pa/ss@host/v", "amqp://u:***@host/v"),
        ("amqp://u:pa?ss#x@host", "amqp://u:***@host"),
        ("http://[::1", "http://[::1"),
        ("amqp://u:@host", "amqp://u:***@host"),
        ("user:secret@host:5672", "user:***@host:5672"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_mask_url_on_a_value_that_is_not_a_string() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert mask_url(Unprintable()) == "***"  # type: ignore[arg-type]
    assert mask_url(None) == "None"  # type: ignore[arg-type]


password_text = st.text(min_size=1).filter(lambda text: "***" not in text)


@given(user=st.from_regex(r"[a-z]{1,8}", fullmatch=True), password=password_text)
def test_mask_url_hides_any_quoted_password(user: str, password: str) -> None:
    url = f"amqp://{user}:{quote(password, safe='')}@broker.example.com:5671/%2F"
    assert mask_url(url) == f"amqp://{user}:***@broker.example.com:5671/%2F"


@given(st.text())
def test_mask_url_never_raises(text: str) -> None:
    assert isinstance(mask_url(text), str)


@given(password=st.text(alphabet=st.characters(blacklist_characters="@"), min_size=1))
def test_mask_url_hides_an_unquoted_password_without_at(password: str) -> None:
    masked = mask_url(f"amqp://me:{password}@host/")
    assert masked.startswith("amqp://me:***@")
    assert masked.endswith("@host/")


def test_redact_plain_and_quoted_forms() -> None:
    text = "login p@ss/w rd failed; url amqp://u:p%40ss%2Fw%20rd@h and p%40ss/w+rd"
    assert redact(text, ["p@ss/w rd"]) == "login *** failed; url amqp://u:***@h and ***"


def test_redact_ignores_empty_secrets_and_replaces_longest_first() -> None:
    assert redact("abc abcdef", ["", "abc", "abcdef"]) == "*** ***"
    assert redact("nothing here", []) == "nothing here"


def test_mask_urls_in_text() -> None:
    text = "error: cannot reach 'amqp://bob:hunter2@mq:5672/%2F' (also https://a:b@c/x)"
    assert (
        mask_urls(text)
        == "error: cannot reach 'amqp://bob:***@mq:5672/%2F' (also https://a:***@c/x)"
    )
