"""Publish envelopes through the RabbitMQ management HTTP API.

For machines that can reach the broker's management port (often behind an HTTPS proxy)
but not AMQP.  Each envelope is one ``POST /api/exchanges/{vhost}/{exchange}/publish``
with the same properties the AMQP transport sets; the broker answers ``{"routed": true}``
once the message is on a queue, and that answer is the only one counted as delivered.
The API has no batch publish, so a batch is as many requests, on one kept-alive
connection.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from pytest_simscope import __version__
from pytest_simscope.errors import PermanentError, PublishError, SettingsError, TransientError
from pytest_simscope.messages import Envelope
from pytest_simscope.redact import mask_url, redact
from pytest_simscope.transports.base import Transport, unroutable_message

# The management API's name for the nameless default exchange.
DEFAULT_EXCHANGE = "amq.default"

# Statuses where waiting may help: request timeout, rate limiting.
_RETRY_LATER = frozenset({408, 425, 429})


class HttpTransport(Transport):
    """Publish each envelope with the management API's ``publish`` endpoint.

    *url* is the API base, ``http(s)://user:password@host:port[/path-prefix]``; the
    credentials become basic auth and are kept out of the base URL.  Messages go to
    *exchange* of *vhost* (the default exchange when empty) with *routing_key*, which
    defaults to *queue*.  *verify* is a bool or a CA bundle path and *cert* a client
    certificate (a file, or a ``(cert, key)`` pair); proxies come from the environment.
    *transport* replaces httpx's network transport, for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str = "simscope-input",
        exchange: str = "",
        routing_key: str | None = None,
        vhost: str = "/",
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            host = parts.netloc.rpartition("@")[2]
            user = unquote(parts.username or "")
            password = unquote(parts.password or "")
        except ValueError as exc:
            raise SettingsError(f"bad HTTP URL {mask_url(url)!r}: {exc}") from None
        if scheme not in ("http", "https") or not host:
            raise SettingsError(
                f"bad HTTP URL {mask_url(url)!r}: expected http(s)://user:password@host:port"
            )
        self.base_url = f"{scheme}://{host}{parts.path.rstrip('/')}"
        self.queue = queue
        self.exchange = exchange
        self.routing_key = queue if routing_key is None else routing_key
        self.vhost = vhost
        self.endpoint = (
            f"{self.base_url}/api/exchanges/{quote(vhost, safe='')}/"
            f"{quote(exchange or DEFAULT_EXCHANGE, safe='')}/publish"
        )
        self._user = user
        self._secrets = [password] if password else []
        shown = f"{quote(user, safe='')}:***@{host}" if user else host
        where = f"{scheme}://{shown}{parts.path.rstrip('/')} vhost {vhost}"
        if exchange:
            self.name = f"{where} exchange {exchange} key {self.routing_key}"
        else:
            self.name = f"{where} queue {queue}"
        self.delivered = 0
        self._client = httpx.Client(
            auth=(user, password) if user else None,
            verify=_ssl_context(verify, cert, url) if transport is None else True,
            timeout=timeout,
            transport=transport,
            trust_env=True,
            headers={"User-Agent": f"pytest-simscope/{__version__}"},
        )

    def send(self, batch: Sequence[Envelope]) -> None:
        for index, envelope in enumerate(batch):
            self.delivered = index
            self._publish(envelope)
        self.delivered = len(batch)

    def close(self) -> None:
        self._client.close()

    def _publish(self, envelope: Envelope) -> None:
        message = {
            "properties": {
                "type": envelope.type,
                "correlation_id": envelope.regression,
                "content_type": "application/json",
                "content_encoding": "utf-8",
                "delivery_mode": 2,
            },
            "routing_key": self.routing_key,
            "payload": envelope.body_bytes().decode("utf-8"),
            "payload_encoding": "string",
        }
        try:
            response = self._client.post(self.endpoint, json=message)
        except httpx.TimeoutException:
            raise TransientError(f"{self.name}: no answer in time") from None
        except httpx.HTTPError as exc:
            raise self._network_error(exc) from None
        self._check(response)

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            try:
                answer: Any = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict) or not isinstance(answer.get("routed"), bool):
                # A proxy's or another server's page: the URL is not the management API.
                raise PermanentError(
                    f"{self.name}: unexpected answer (not the RabbitMQ management API?):"
                    f" {self._excerpt(response)}"
                )
            if answer["routed"]:
                return
            raise PermanentError(f"{self.name}: {self._unroutable()}")
        reason = self._excerpt(response)
        if status == 401:
            # RabbitMQ answers 401 to bad credentials ("Login failed"), to a user without
            # access to the vhost (even one that does not exist) and to a user without
            # the management tag; publishing without write permission is a 400.
            if "login" in reason.lower() or not self._user:
                raise PermanentError(
                    f"{self.name}: HTTP 401, the broker refused the login of user"
                    f" {self._user!r} (wrong user name or password?)"
                )
            raise PermanentError(
                f"{self.name}: HTTP 401, user {self._user!r} is not allowed here (missing"
                f" virtual host {self.vhost!r}, no permission or no management tag?): {reason}"
            )
        if status == 403:
            raise PermanentError(
                f"{self.name}: HTTP 403, user {self._user!r} may not publish here: {reason}"
            )
        if status == 404:
            raise PermanentError(
                f"{self.name}: HTTP 404, virtual host {self.vhost!r} or exchange"
                f" {self.exchange or DEFAULT_EXCHANGE!r} not found (or not the API's"
                f" address): {reason}"
            )
        if status == 405:
            # What the management server's static file handler answers to a POST on an
            # unknown path: the API is not under this base URL.
            raise PermanentError(
                f"{self.name}: HTTP 405, no publish endpoint at {self.endpoint}"
                " (wrong management API address or path prefix?)"
            )
        if status >= 500 or status in _RETRY_LATER:
            raise TransientError(f"{self.name}: HTTP {status}: {reason}")
        raise PermanentError(f"{self.name}: HTTP {status}: {reason}")

    def _unroutable(self) -> str:
        return unroutable_message(self.exchange, self.routing_key, self.vhost)

    def _excerpt(self, response: httpx.Response) -> str:
        """The broker's reason for an error answer, on one short line."""
        try:
            answer: Any = response.json()
        except ValueError:
            answer = None
        if isinstance(answer, dict) and ("reason" in answer or "error" in answer):
            text = str(answer.get("reason") or answer.get("error"))
        else:
            text = response.text
        text = " ".join(text.split())
        if len(text) > 200:
            text = text[:197] + "..."
        return redact(text, self._secrets) or response.reason_phrase

    def _network_error(self, exc: httpx.HTTPError) -> PublishError:
        cause: BaseException | None = exc
        for _ in range(8):  # a bounded walk: exception chains can loop
            if cause is None:
                break
            if isinstance(cause, ssl.SSLCertVerificationError):
                return PermanentError(
                    f"{self.name}: the server's TLS certificate could not be verified"
                    " (set the CA bundle, or check the host name)"
                )
            cause = cause.__cause__ or cause.__context__
        detail = redact(str(exc) or type(exc).__name__, self._secrets)
        return TransientError(f"{self.name}: {detail}")


def _ssl_context(verify: bool | str, cert: str | tuple[str, str] | None, url: str) -> Any:
    """What httpx takes as ``verify``: a context built here, since httpx 0.28 deprecates
    passing a CA path or a client certificate to the client."""
    if verify is True and cert is None:
        return True
    try:
        if isinstance(verify, str):
            context = ssl.create_default_context(cafile=verify)
        else:
            context = httpx.create_ssl_context(verify=verify)
        if cert is not None:
            if isinstance(cert, str):
                context.load_cert_chain(cert)
            else:
                context.load_cert_chain(cert[0], cert[1])
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"cannot load TLS files for {mask_url(url)!r}: {exc}") from None
    return context
