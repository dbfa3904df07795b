"""Choose the network transport a Simscope URL asks for.

``amqp://`` and ``amqps://`` speak AMQP to the broker, ``http://`` and ``https://`` go
through the RabbitMQ management API, ``tunnel:`` runs the vendor's ``simscope-tunnel``
command.  The knobs every kind may need travel together in :class:`NetworkOptions`; each
kind uses the ones that make sense for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

from pytest_simscope.errors import SettingsError
from pytest_simscope.redact import mask_url
from pytest_simscope.transports.base import DEFAULT_TUNNEL_COMMAND, Transport

SCHEMES = ("amqp", "amqps", "http", "https", "tunnel")


class NetworkOptions(NamedTuple):
    """Settings for the network transports.

    *vhost* is the HTTP API's virtual host, and the AMQP one when the URL names none.
    *verify*, *ca_file*, *client_cert* and *client_key* apply to ``amqps`` and ``https``.
    *timeout* bounds connecting and each wait for the server; *tunnel_timeout* each run of
    the tunnel command.
    """

    queue: str = "simscope-input"
    exchange: str = ""
    routing_key: str | None = None
    vhost: str = "/"
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 10.0
    tunnel_command: str = DEFAULT_TUNNEL_COMMAND
    tunnel_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> NetworkOptions:
        """The options named by the plugin's settings (``amqp_queue``, ``ca_bundle``, ...)."""
        return cls(
            queue=settings["amqp_queue"],
            exchange=settings["amqp_exchange"],
            routing_key=settings["amqp_routing_key"],
            vhost=settings["http_vhost"],
            verify=settings["tls_verify"],
            ca_file=settings["ca_bundle"],
            client_cert=settings["client_cert"],
            client_key=settings["client_key"],
            timeout=settings["timeout"],
            tunnel_command=settings["tunnel_command"],
        )


def network_transport(url: str, options: NetworkOptions) -> Transport:
    """The transport for *url*; a :class:`SettingsError` for a URL it cannot serve."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except (ValueError, AttributeError):
        scheme = ""
    # Imported on demand: a run that publishes over HTTP need not load pika, and a run
    # with no network URL loads neither client.
    if scheme in ("amqp", "amqps"):
        from pytest_simscope.transports.amqp import AmqpTransport

        return AmqpTransport(
            url,
            queue=options.queue,
            exchange=options.exchange,
            routing_key=options.routing_key,
            vhost=options.vhost,
            connect_timeout=options.timeout,
            confirm_timeout=options.timeout,
            ca_file=options.ca_file,
            client_cert=options.client_cert,
            client_key=options.client_key,
            verify=options.verify,
        )
    if scheme in ("http", "https"):
        from pytest_simscope.transports.http import HttpTransport

        verify: bool | str = options.verify
        if options.verify and options.ca_file:
            verify = options.ca_file
        cert: str | tuple[str, str] | None = options.client_cert
        if options.client_cert and options.client_key:
            cert = (options.client_cert, options.client_key)
        return HttpTransport(
            url,
            queue=options.queue,
            exchange=options.exchange,
            routing_key=options.routing_key,
            vhost=options.vhost,
            verify=verify,
            cert=cert,
            timeout=options.timeout,
        )
    if scheme == "tunnel":
        from pytest_simscope.transports.tunnel import TunnelTransport

        return TunnelTransport(url, command=options.tunnel_command, timeout=options.tunnel_timeout)
    raise SettingsError(
        f"unsupported Simscope URL {mask_url(url)!r}: use amqp://, amqps://, http://,"
        " https:// or tunnel:"
    )


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """Put SIMSCOPE_USERNAME/SIMSCOPE_PASSWORD into *url* when it carries no user."""
    if not (username or password) or url.startswith("tunnel:"):
        return url
    parts = urlsplit(url)
    if parts.password or not parts.hostname:
        return url  # the URL's own credentials win
    host = parts.netloc.rpartition("@")[2]
    # A user written in the URL is kept as written (already quoted).
    user = parts.netloc.rpartition("@")[0] if parts.username else quote(username or "", safe="")
    secret = f":{quote(password, safe='')}" if password else ""
    return urlunsplit(parts._replace(netloc=f"{user}{secret}@{host}"))
