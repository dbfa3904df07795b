"""Publish envelopes to a RabbitMQ queue over AMQP 0-9-1, the way the Simscope Tunnel reads them.

Every message carries the Simscope type in the AMQP ``type`` property and the regression
name in ``correlation_id``; the body is the envelope's JSON, persistent
(``delivery_mode=2``) so it survives a broker restart on the durable input queue.

A message counts as delivered only once the broker has confirmed it (publisher confirms)
*and* routed it to a queue (``mandatory``): a message to a queue that does not exist comes
back as ``Basic.Return`` and is reported as a :class:`~pytest_simscope.errors.PermanentError`.

pika's ``BlockingChannel`` waits for the confirm of each message before publishing the next,
which caps a local broker at about 1,500 messages a second.  This transport drives pika's
asynchronous ``SelectConnection`` from the calling thread instead: it publishes a window of
messages, then runs the I/O loop until the broker's acks (often ``multiple=True``) catch up.
Nothing runs between two ``send`` calls, so there is no background thread to stop.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from pytest_simscope.errors import PermanentError, PublishError, SettingsError, TransientError
from pytest_simscope.messages import Envelope
from pytest_simscope.redact import mask_url, redact
from pytest_simscope.transports.base import Transport, unroutable_message

# Messages published but not yet confirmed.  Large enough that the broker's acks arrive
# in big ``multiple`` batches, small enough to stop soon after a failure and to bound
# what pika buffers for a huge batch.
WINDOW = 8192

# AMQP reply codes that retrying cannot cure.
_ACCESS_REFUSED = 403
_NOT_FOUND = 404
_PRECONDITION_FAILED = 406
_NOT_ALLOWED = 530
_PERMANENT_CODES = frozenset({_ACCESS_REFUSED, _NOT_FOUND, _PRECONDITION_FAILED, _NOT_ALLOWED})

_PENDING = 0
_ACKED = 1
_FAILED = 2


class _Confirms:
    """What the broker said about each envelope of one ``send``, by position in the batch."""

    def __init__(self, first_tag: int, batch: Sequence[Envelope], bodies: list[bytes]) -> None:
        self.first_tag = first_tag
        self.batch = batch
        self.bodies = bodies
        self.state = bytearray(len(batch))
        self.returned = bytearray(len(batch))
        self.published = 0
        self.resolved = 0
        self.nacked = 0
        self.returns = 0
        # Every position below ``low`` is resolved.
        self.low = 0

    @property
    def in_flight(self) -> int:
        return self.published - self.resolved

    def ack(self, tag: int, multiple: bool, ok: bool) -> None:
        last = min(tag - self.first_tag, self.published - 1)
        if last < 0:
            return
        if multiple:
            for index in range(self.low, last + 1):
                self._resolve(index, ok)
        else:
            self._resolve(last, ok)
        while self.low < self.published and self.state[self.low] != _PENDING:
            self.low += 1

    def _resolve(self, index: int, ok: bool) -> None:
        if self.state[index] != _PENDING:
            return
        if ok and not self.returned[index]:
            self.state[index] = _ACKED
        else:
            self.state[index] = _FAILED
            if not ok:
                self.nacked += 1
        self.resolved += 1

    def returned_message(self, type_: str | None, correlation_id: str | None, body: bytes) -> None:
        """Mark the envelope the broker handed back as not delivered.

        ``Basic.Return`` carries no delivery tag.  RabbitMQ sends it before the ack of the
        same message, so the message is still pending; taking the *earliest* pending
        envelope with the same content can only blame a position at or before the real
        one, which shortens the delivered prefix and never lengthens it.
        """
        self.returns += 1
        for index in range(self.low, self.published):
            if self.state[index] != _PENDING or self.returned[index]:
                continue
            envelope = self.batch[index]
            if (
                envelope.type == type_
                and envelope.regression == correlation_id
                and self.bodies[index] == body
            ):
                self.returned[index] = 1
                return
        # Unreachable unless the broker returned something we did not send: distrust
        # everything still pending rather than count a returned message as delivered.
        for index in range(self.low, self.published):
            if self.state[index] == _PENDING:
                self.returned[index] = 1

    def delivered(self) -> int:
        """How many envelopes, from the first, were acked and routed."""
        count = 0
        for value in self.state:
            if value != _ACKED:
                break
            count += 1
        return count


class AmqpTransport(Transport):
    """Publish to a queue of a RabbitMQ broker, with publisher confirms and ``mandatory``.

    *url* is ``amqp://user:password@host:port/vhost`` or ``amqps://...`` as pika's
    ``URLParameters`` reads it (the vhost URL-quoted: ``%2F`` for ``/``); *vhost* is used
    when the URL names none.  Messages go to *exchange* (the default exchange when empty)
    with *routing_key*, which defaults to *queue*.  The queue is never declared: the Tunnel
    owns it, and a missing queue must show up as an error rather than as messages piling up
    in a queue nobody reads.

    *connect_timeout* bounds opening the connection; *confirm_timeout* is the longest wait
    for the broker to confirm anything once messages are out.  For ``amqps`` the server
    certificate is verified against *ca_file* (or the system store) unless *verify* is
    false; *client_cert* and *client_key* present a client certificate.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str = "simscope-input",
        exchange: str = "",
        routing_key: str | None = None,
        vhost: str | None = None,
        connect_timeout: float = 5.0,
        confirm_timeout: float = 30.0,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        verify: bool = True,
    ) -> None:
        self.queue = queue
        self.exchange = exchange
        self.routing_key = queue if routing_key is None else routing_key
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self._params = _parameters(
            url,
            vhost=vhost,
            connect_timeout=connect_timeout,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
            verify=verify,
        )
        credentials = self._params.credentials
        self._user: str = credentials.username
        self._secrets = [credentials.password] if credentials.password else []
        scheme = "amqps" if self._params.ssl_options is not None else "amqp"
        host = self._params.host
        if ":" in host:
            host = f"[{host}]"
        self.vhost: str = self._params.virtual_host
        where = f"{scheme}://{quote(self._user, safe='')}:***@{host}:{self._params.port}"
        where += "/" + quote(self.vhost, safe="")
        if exchange:
            self.name = f"{where} exchange {exchange} key {self.routing_key}"
        else:
            self.name = f"{where} queue {queue}"
        self.delivered = 0

        self._ioloop: Any = None
        self._connection: Any = None
        self._channel: Any = None
        self._ready = False
        self._next_tag = 1
        self._failure: PublishError | None = None
        self._confirms: _Confirms | None = None
        self._blocked: str | None = None
        # State of the running I/O loop (see _run).
        self._until: Callable[[], bool] | None = None
        self._progress_at = 0.0
        self._timed_out = False
        self._timer: Any = None

    # -- the Transport interface -------------------------------------------------------

    def send(self, batch: Sequence[Envelope]) -> None:
        self.delivered = 0
        if not batch:
            return
        self._ensure_ready()
        bodies = [envelope.body_bytes() for envelope in batch]
        confirms = _Confirms(self._next_tag, batch, bodies)
        self._confirms = confirms
        try:
            error = self._publish(confirms)
        finally:
            self._confirms = None
        self.delivered = confirms.delivered()
        if error is None and self.delivered == len(batch):
            return
        if error is None:  # pragma: no cover - _publish reports every shortfall
            error = TransientError(f"{self.name}: the broker did not confirm every message")
        raise error

    def close(self) -> None:
        self._discard(graceful=True)
        if self._ioloop is not None:
            self._ioloop.close()
            self._ioloop = None

    # -- publishing ----------------------------------------------------------------------

    def _publish(self, confirms: _Confirms) -> PublishError | None:
        """Publish the batch and wait for its confirms; the error to raise, if any."""
        channel = self._channel
        stop: PublishError | None = None
        total = len(confirms.batch)
        while confirms.published < total:
            while confirms.published < total and confirms.in_flight < WINDOW:
                index = confirms.published
                envelope = confirms.batch[index]
                properties = pika.BasicProperties(
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,
                    type=envelope.type,
                    correlation_id=envelope.regression,
                )
                try:
                    channel.basic_publish(
                        self.exchange,
                        self.routing_key,
                        confirms.bodies[index],
                        properties,
                        mandatory=True,
                    )
                except pika.exceptions.ShortStringTooLong:
                    stop = PermanentError(
                        f"{self.name}: regression name too long for an AMQP correlation_id"
                        " (at most 255 bytes)"
                    )
                    break
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self._failure = self._failure or self._classify(exc)
                    break
                confirms.published += 1
                self._next_tag += 1
            if stop is not None or self._stopped(confirms):
                break
            self._run(lambda: confirms.in_flight <= WINDOW // 2, self.confirm_timeout)
            if self._timed_out or self._stopped(confirms):
                break
        if not self._timed_out and self._failure is None:
            self._run(lambda: confirms.in_flight == 0, self.confirm_timeout)

        if self._failure is not None:
            error = self._failure
            self._discard(graceful=False)
            return error
        if self._timed_out:
            self._discard(graceful=False)
            why = f" (publishing blocked by the broker: {self._blocked})" if self._blocked else ""
            return TransientError(
                f"{self.name}: no confirm from the broker within {self.confirm_timeout:g} s{why}"
            )
        if stop is not None:
            return stop
        if confirms.returns:
            return PermanentError(f"{self.name}: {self._unroutable()}")
        if confirms.nacked:
            return TransientError(
                f"{self.name}: the broker refused {confirms.nacked} message(s) (basic.nack;"
                " queue full or broker trouble)"
            )
        return None

    def _stopped(self, confirms: _Confirms) -> bool:
        """Whether publishing more of the batch is pointless."""
        return self._failure is not None or confirms.returns > 0 or confirms.nacked > 0

    def _unroutable(self) -> str:
        return unroutable_message(self.exchange, self.routing_key, self.vhost)

    # -- the connection ------------------------------------------------------------------

    def _ensure_ready(self) -> None:
        if self._connection is not None and self._ready and self._failure is None:
            # The broker may have closed the connection while we were not looking (idle
            # heartbeat timeout, an operator, a restart); one pass of the I/O loop reads
            # that, so the batch goes out on a fresh connection instead of failing.
            self._poll()
        if self._connection is not None and not (self._ready and self._failure is None):
            self._discard(graceful=False)
        if self._connection is None:
            self._connect()

    def _connect(self) -> None:
        if self._ioloop is None:
            self._ioloop = IOLoop()
        self._failure = None
        self._ready = False
        self._blocked = None
        connection = pika.SelectConnection(
            self._params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close,
            custom_ioloop=self._ioloop,
        )
        self._connection = connection
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        # pika's own stack timeout (the same value) covers TCP, TLS and the AMQP handshake
        # and reports through on_open_error; the extra second lets it fire first, because
        # closing a connection that is still opening trips an assertion inside pika 1.4.
        self._run(lambda: self._ready, self.connect_timeout + 1.0)
        if self._ready and self._failure is None:
            return
        error = self._failure or TransientError(
            f"{self.name}: could not connect within {self.connect_timeout:g} s"
        )
        self._discard(graceful=False)
        raise error

    def _discard(self, *, graceful: bool) -> None:
        """Forget the connection; close it first if it is open."""
        connection = self._connection
        self._connection = None
        self._channel = None
        self._ready = False
        self._failure = None
        if connection is None:
            return
        # A connection still opening is left to pika's stack timeout (see _connect); its
        # late callbacks are ignored once it is no longer ours.
        if connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass
            else:
                # A broken connection gets a moment to say goodbye, a healthy one more.
                self._run(lambda: bool(connection.is_closed), 2.0 if graceful else 0.5)
                self._failure = None

    def _poll(self) -> None:
        """Run one pass of the I/O loop: read what arrived, fire what is due."""
        self._ioloop.add_callback_threadsafe(self._ioloop.stop)
        self._start_loop()

    def _start_loop(self) -> None:
        try:
            self._ioloop.start()
        except Exception as exc:
            # An exception escaping pika's loop leaves the connection in an unknown
            # state: report it like a lost connection, which sends will replace.
            if self._failure is None:
                self._failure = TransientError(
                    f"{self.name}: pika failed: {type(exc).__name__}: {exc}"
                )

    def _run(self, until: Callable[[], bool], timeout: float) -> bool:
        """Drive the I/O loop until *until()* holds or a failure is recorded.

        Gives up, setting ``_timed_out``, after *timeout* seconds without progress: a big
        batch on a slow link may take long, but a silent broker should not hold the test
        session for longer than that.
        """
        self._timed_out = False
        if until() or self._failure is not None:
            return True
        self._until = until
        self._progress_at = time.monotonic()
        self._timer = self._ioloop.call_later(timeout, lambda: self._check_idle(timeout))
        try:
            self._start_loop()
        finally:
            self._until = None
            self._ioloop.remove_timeout(self._timer)
            self._timer = None
        return until()

    def _check_idle(self, timeout: float) -> None:
        idle = time.monotonic() - self._progress_at
        if idle >= timeout:
            self._timed_out = True
            self._ioloop.stop()
        else:
            self._timer = self._ioloop.call_later(timeout - idle, lambda: self._check_idle(timeout))

    def _poke(self, *, progress: bool = True) -> None:
        """Called by every callback: stop the loop once what ``_run`` waits for is there."""
        if progress:
            self._progress_at = time.monotonic()
        until = self._until
        if until is not None and (self._failure is not None or until()):
            self._ioloop.stop()

    # -- pika callbacks (they run inside the I/O loop) -------------------------------------

    def _on_open(self, connection: Any) -> None:
        if connection is not self._connection:
            self._poke(progress=False)
            return
        connection.channel(on_open_callback=self._on_channel_open)
        self._poke()

    def _on_channel_open(self, channel: Any) -> None:
        if channel.connection is not self._connection:
            self._poke(progress=False)
            return
        channel.add_on_close_callback(self._on_channel_close)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_ack_nack, callback=self._on_confirm_mode)
        self._channel = channel
        self._poke()

    def _on_confirm_mode(self, frame: Any) -> None:
        if self._channel is None:
            return
        # Delivery tags count from 1 on each channel once confirm mode is on.
        self._next_tag = 1
        self._ready = True
        self._poke()

    def _on_open_error(self, connection: Any, exc: BaseException) -> None:
        if connection is not self._connection:
            self._poke(progress=False)
            return
        self._failure = self._classify(exc)
        self._poke()

    def _on_close(self, connection: Any, exc: BaseException) -> None:
        if connection is not self._connection:
            self._poke(progress=False)
            return
        self._ready = False
        if self._failure is None:
            self._failure = self._classify(exc)
        self._poke()

    def _on_channel_close(self, channel: Any, exc: BaseException) -> None:
        if channel is not self._channel:
            self._poke(progress=False)
            return
        self._ready = False
        # A channel closed because its connection went is reported by _on_close.
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and self._failure is None:
            self._failure = self._classify(exc)
        elif isinstance(exc, pika.exceptions.ChannelClosedByClient):
            return
        self._poke()

    def _on_ack_nack(self, frame: Any) -> None:
        confirms = self._confirms
        method = frame.method
        if confirms is not None:
            ok = isinstance(method, pika.spec.Basic.Ack)
            confirms.ack(method.delivery_tag, bool(method.multiple), ok)
        self._poke()

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if self._confirms is not None:
            self._confirms.returned_message(properties.type, properties.correlation_id, body)
        self._poke()

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        self._blocked = str(getattr(frame.method, "reason", "") or "resource alarm")
        self._poke(progress=False)

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        self._blocked = None
        self._poke()

    # -- errors --------------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> PublishError:
        """Turn a pika exception into the error to report, without the password in it."""
        errors = pika.exceptions
        if isinstance(exc, errors.ProbableAuthenticationError | errors.AuthenticationError):
            return PermanentError(
                f"{self.name}: the broker refused the login of user {self._user!r}"
                " (wrong user name or password?)"
            )
        if isinstance(exc, errors.ProbableAccessDeniedError):
            return PermanentError(
                f"{self.name}: user {self._user!r} may not use virtual host {self.vhost!r}"
                " (missing vhost or permissions?)"
            )
        if isinstance(exc, errors.ConnectionClosedByClient):
            return TransientError(f"{self.name}: connection closed")
        if isinstance(exc, errors.ConnectionClosed | errors.ChannelClosed):
            code = exc.reply_code
            text = redact(str(exc.reply_text), self._secrets)
            what = "channel" if isinstance(exc, errors.ChannelClosed) else "connection"
            message = f"{self.name}: the broker closed the {what}: {code} {text}"
            if code in _PERMANENT_CODES:
                return PermanentError(message)
            return TransientError(message)
        if _certificate_problem(exc):
            return PermanentError(
                f"{self.name}: the broker's TLS certificate could not be verified"
                " (set the CA file, or check the host name)"
            )
        detail = redact(_describe(exc), self._secrets)
        return TransientError(f"{self.name}: {detail}")


def _parameters(
    url: str,
    *,
    vhost: str | None,
    connect_timeout: float,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    verify: bool,
) -> Any:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ValueError("the scheme must be amqp or amqps")
        params = pika.URLParameters(url)
        query = parse_qs(parts.query)
    except Exception as exc:  # pika raises several kinds on a bad URL or query
        raise SettingsError(f"bad AMQP URL {mask_url(url)!r}: {exc}") from None
    if vhost is not None and parts.path in ("", "/"):
        params.virtual_host = vhost
    # One attempt per send: retrying is the publisher's business, and it must not stall
    # a test session behind pika's own retry loop.
    params.connection_attempts = 1
    params.retry_delay = 0
    if "socket_timeout" not in query:
        params.socket_timeout = connect_timeout
    if "stack_timeout" not in query:
        params.stack_timeout = connect_timeout
    params.client_properties = {"connection_name": "pytest-simscope"}
    if scheme == "amqps" and "ssl_options" not in query:
        try:
            context = ssl.create_default_context(cafile=ca_file)
            if client_cert:
                context.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"cannot load TLS files for {mask_url(url)!r}: {exc}") from None
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        params.ssl_options = pika.SSLOptions(context)
    return params


def _walk(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """*exc* and the exceptions it wraps (pika nests them in args and lists)."""
    found = [exc]
    if depth > 4:
        return found
    nested: list[Any] = [exc.__cause__, exc.__context__, getattr(exc, "exception", None)]
    nested.extend(exc.args)
    nested.extend(getattr(exc, "exceptions", None) or ())
    for item in nested:
        if isinstance(item, BaseException):
            found.extend(_walk(item, depth + 1))
        elif isinstance(item, list | tuple):
            found.extend(
                inner
                for value in item
                if isinstance(value, BaseException)
                for inner in _walk(value, depth + 1)
            )
    return found


def _certificate_problem(exc: BaseException) -> bool:
    return any(isinstance(inner, ssl.SSLCertVerificationError) for inner in _walk(exc))


def _describe(exc: BaseException) -> str:
    """A one-line description of a connection failure, innermost cause first."""
    chain = _walk(exc)
    if any(type(inner).__name__ == "AMQPConnectorStackTimeout" for inner in chain):
        return "cannot reach the broker: no answer in time"
    for inner in reversed(chain):
        if isinstance(inner, OSError):
            text = inner.strerror or str(inner) or type(inner).__name__
            return f"cannot reach the broker: {text}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
