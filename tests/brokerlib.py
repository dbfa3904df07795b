"""Helpers the integration tests use to drive and inspect the local RabbitMQ broker.

Everything talks to 127.0.0.1 only: the management HTTP API (port 15672) through httpx,
AMQP (port 5672) through pika, and the node itself through ``rabbitmqctl``. Every network
call and subprocess has a timeout. ``scripts/broker.sh`` brings a broker up when none
answers. This module imports no pytest; ``broker_fixtures`` holds the fixtures.
"""

from __future__ import annotations

import json as _json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika

HOST = "127.0.0.1"
AMQP_PORT = 5672
API_PORT = 15672
USER = "guest"
PASSWORD = "guest"
VHOST = "/"

REPO_ROOT = Path(__file__).resolve().parent.parent
BROKER_SCRIPT = REPO_ROOT / "scripts" / "broker.sh"

HTTP_TIMEOUT = 10.0
CTL_TIMEOUT = 60.0
# Long enough for a first-time apt-get install on a fresh CI machine.
SCRIPT_TIMEOUT = 1200.0
# How long start_broker_app() waits for AMQP and the API to answer again.
RESTART_TIMEOUT = 60.0


@dataclass(frozen=True)
class BrokerInfo:
    """Where the test broker listens and how to log in."""

    amqp_url: str
    api_url: str
    http_publish_url: str
    user: str
    password: str


BROKER = BrokerInfo(
    amqp_url=f"amqp://{USER}:{PASSWORD}@{HOST}:{AMQP_PORT}/%2F",
    api_url=f"http://{HOST}:{API_PORT}",
    http_publish_url=f"http://{USER}:{PASSWORD}@{HOST}:{API_PORT}",
    user=USER,
    password=PASSWORD,
)


@dataclass
class ReceivedMessage:
    """One message taken off a queue, with the AMQP properties tests check."""

    type: str | None
    correlation_id: str | None
    content_type: str | None
    delivery_mode: int | None
    body: bytes
    routing_key: str
    exchange: str
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    redelivered: bool = False

    def json(self) -> Any:
        """The body decoded as JSON."""
        return _json.loads(self.body)


class BrokerCommandError(RuntimeError):
    """A rabbitmqctl command failed; the message carries its output."""


# --- availability ---------------------------------------------------------------------


def _amqp_answers(timeout: float) -> bool:
    try:
        with socket.create_connection((HOST, AMQP_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def _api_answers(timeout: float) -> bool:
    try:
        response = httpx.get(
            f"{BROKER.api_url}/api/overview", auth=(USER, PASSWORD), timeout=timeout
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def broker_available(timeout: float = 2.0) -> bool:
    """Whether both AMQP and the management API answer on 127.0.0.1."""
    return _amqp_answers(timeout) and _api_answers(timeout)


def _wait_available(deadline: float) -> bool:
    while True:
        if broker_available():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def ensure_broker() -> BrokerInfo:
    """Return the broker's coordinates, running ``scripts/broker.sh`` first if it is down.

    Raises RuntimeError, with the script's output, when the broker still does not answer.
    """
    if broker_available():
        return BROKER
    try:
        proc = subprocess.run(
            ["bash", str(BROKER_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{BROKER_SCRIPT} could not be run: {exc}") from exc
    if proc.returncode != 0 or not _wait_available(time.monotonic() + 10):
        raise RuntimeError(
            f"RabbitMQ is not answering on {HOST}:{AMQP_PORT} / {HOST}:{API_PORT} after "
            f"{BROKER_SCRIPT} (exit {proc.returncode}):\n{proc.stdout.strip()}"
        )
    return BROKER


# --- management HTTP API --------------------------------------------------------------


def _q(name: str) -> str:
    return quote(name, safe="")


@contextmanager
def _api() -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{BROKER.api_url}/api", auth=(USER, PASSWORD), timeout=HTTP_TIMEOUT
    ) as client:
        yield client


def _check(response: httpx.Response, *, allow_404: bool = False) -> None:
    if allow_404 and response.status_code == 404:
        return
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code}: {response.text}",
            request=response.request,
            response=response,
        )


def declare_queue(name: str, durable: bool = True) -> None:
    """Declare a queue on vhost "/" (no-op if it exists with the same settings)."""
    with _api() as api:
        _check(
            api.put(
                f"/queues/{_q(VHOST)}/{_q(name)}",
                json={"durable": durable, "auto_delete": False, "arguments": {}},
            )
        )


def delete_queue(name: str) -> None:
    """Delete a queue on vhost "/"; a missing queue is fine."""
    with _api() as api:
        _check(api.delete(f"/queues/{_q(VHOST)}/{_q(name)}"), allow_404=True)


def declare_exchange(name: str, type: str = "topic") -> None:
    """Declare a durable exchange on vhost "/"."""
    with _api() as api:
        _check(
            api.put(
                f"/exchanges/{_q(VHOST)}/{_q(name)}",
                json={"type": type, "durable": True, "auto_delete": False, "arguments": {}},
            )
        )


def delete_exchange(name: str) -> None:
    """Delete an exchange on vhost "/"; a missing exchange is fine."""
    with _api() as api:
        _check(api.delete(f"/exchanges/{_q(VHOST)}/{_q(name)}"), allow_404=True)


def bind_queue(queue: str, exchange: str, routing_key: str) -> None:
    """Bind ``queue`` to ``exchange`` with ``routing_key`` on vhost "/"."""
    with _api() as api:
        _check(
            api.post(
                f"/bindings/{_q(VHOST)}/e/{_q(exchange)}/q/{_q(queue)}",
                json={"routing_key": routing_key, "arguments": {}},
            )
        )


def add_user(name: str, password: str, tags: str = "") -> None:
    """Create (or update) a user with full permissions on vhost "/"."""
    with _api() as api:
        _check(api.put(f"/users/{_q(name)}", json={"password": password, "tags": tags}))
        _check(
            api.put(
                f"/permissions/{_q(VHOST)}/{_q(name)}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            )
        )


def delete_user(name: str) -> None:
    """Delete a user; a missing user is fine."""
    with _api() as api:
        _check(api.delete(f"/users/{_q(name)}"), allow_404=True)


# --- AMQP -----------------------------------------------------------------------------


def connection_parameters(user: str = USER, password: str = PASSWORD) -> Any:
    """pika parameters for the local broker, with every wait bounded."""
    return pika.ConnectionParameters(
        host=HOST,
        port=AMQP_PORT,
        virtual_host=VHOST,
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
        blocked_connection_timeout=10,
        # A broker that stops answering mid-RPC is noticed instead of blocking forever.
        heartbeat=10,
        client_properties={"connection_name": "simscope-tests"},
    )


@contextmanager
def amqp_channel(user: str = USER, password: str = PASSWORD) -> Iterator[Any]:
    """A pika BlockingChannel on a fresh connection, closed on exit."""
    connection = pika.BlockingConnection(connection_parameters(user, password))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def queue_depth(name: str) -> int:
    """Messages ready in the queue, exact at the time of the call.

    Uses a passive AMQP declare rather than the management API, whose counters are
    refreshed only every few seconds.
    """
    with amqp_channel() as channel:
        frame = channel.queue_declare(queue=name, passive=True)
        return int(frame.method.message_count)


def _to_received(method: Any, props: Any, body: bytes) -> ReceivedMessage:
    return ReceivedMessage(
        type=props.type,
        correlation_id=props.correlation_id,
        content_type=props.content_type,
        delivery_mode=props.delivery_mode,
        body=bytes(body),
        routing_key=str(method.routing_key),
        exchange=str(method.exchange),
        headers=dict(props.headers or {}),
        message_id=props.message_id,
        redelivered=bool(method.redelivered),
    )


def get_messages(name: str, max_count: int = 100000, wait: float = 0.0) -> list[ReceivedMessage]:
    """Take (and ack) every message in the queue, oldest first, up to ``max_count``.

    With ``wait`` > 0, keep polling until no new message has arrived for ``wait`` seconds,
    for publishers that are still sending.
    """
    received: list[ReceivedMessage] = []
    with amqp_channel() as channel:
        last_arrival = time.monotonic()
        while len(received) < max_count:
            method, props, body = channel.basic_get(queue=name, auto_ack=False)
            if method is not None:
                received.append(_to_received(method, props, body))
                # Acked one by one so a dropped connection returns nothing already read.
                channel.basic_ack(delivery_tag=method.delivery_tag)
                last_arrival = time.monotonic()
                continue
            if time.monotonic() - last_arrival >= wait:
                break
            time.sleep(min(0.05, wait))
    return received


# --- rabbitmqctl ----------------------------------------------------------------------


def _rabbitmqctl(*args: str, timeout: float = CTL_TIMEOUT) -> str:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    # The Debian wrapper only runs for root or the rabbitmq user.
    command = [exe, *args] if os.geteuid() == 0 else ["sudo", "-n", exe, *args]
    try:
        proc = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerCommandError(f"rabbitmqctl {' '.join(args)}: {exc}") from exc
    if proc.returncode != 0:
        raise BrokerCommandError(
            f"rabbitmqctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout.strip()}"
        )
    return proc.stdout


def close_all_connections() -> None:
    """Close every client connection on the broker; clients see a connection-forced close."""
    _rabbitmqctl("close_all_connections", "test")


def stop_broker_app() -> None:
    """Stop the RabbitMQ application (the node stays up); AMQP and the API go away."""
    _rabbitmqctl("stop_app")


def start_broker_app() -> None:
    """Start the RabbitMQ application again and wait until AMQP and the API answer."""
    _rabbitmqctl("start_app")
    if not _wait_available(time.monotonic() + RESTART_TIMEOUT):
        raise RuntimeError(f"RabbitMQ did not answer within {RESTART_TIMEOUT:.0f}s of start_app")
