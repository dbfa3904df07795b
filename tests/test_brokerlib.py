"""The broker helpers against the real local RabbitMQ broker."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pika
import pytest
from brokerlib import (
    BrokerInfo,
    add_user,
    amqp_channel,
    bind_queue,
    broker_available,
    close_all_connections,
    declare_exchange,
    delete_exchange,
    delete_user,
    get_messages,
    queue_depth,
    start_broker_app,
    stop_broker_app,
)

pytestmark = pytest.mark.broker

# Closing every connection or stopping the broker app would break tests running at the
# same time in sibling xdist workers.
disruptive = pytest.mark.serial


def _publish(queue: str, body: bytes, **props: object) -> None:
    with amqp_channel() as channel:
        channel.basic_publish(
            exchange="", routing_key=queue, body=body, properties=pika.BasicProperties(**props)
        )


def test_broker_info(broker: BrokerInfo) -> None:
    assert broker.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert broker.api_url == "http://127.0.0.1:15672"
    assert broker.http_publish_url == "http://guest:guest@127.0.0.1:15672"
    assert (broker.user, broker.password) == ("guest", "guest")
    assert broker_available()


def test_round_trip_keeps_properties_and_order(broker_queue: str) -> None:
    payloads = [{"seq": i, "id": uuid.uuid4().hex} for i in range(5)]
    for i, payload in enumerate(payloads):
        _publish(
            broker_queue,
            json.dumps(payload).encode(),
            type="test.result",
            correlation_id=f"corr-{i}",
            content_type="application/json",
            delivery_mode=2,
        )
    assert queue_depth(broker_queue) == 5

    received = get_messages(broker_queue)

    assert [m.json() for m in received] == payloads
    assert [(m.type, m.correlation_id, m.content_type, m.delivery_mode) for m in received] == [
        ("test.result", f"corr-{i}", "application/json", 2) for i in range(5)
    ]
    assert {(m.exchange, m.routing_key) for m in received} == {("", broker_queue)}
    assert queue_depth(broker_queue) == 0
    assert get_messages(broker_queue) == []


def test_max_count_leaves_the_rest(broker_queue: str) -> None:
    for i in range(3):
        _publish(broker_queue, str(i).encode())

    assert [m.body for m in get_messages(broker_queue, max_count=2)] == [b"0", b"1"]
    assert [m.body for m in get_messages(broker_queue)] == [b"2"]


def test_wait_collects_late_messages(broker_queue: str) -> None:
    _publish(broker_queue, b"early")
    late = threading.Timer(0.2, _publish, args=(broker_queue, b"late"))
    late.start()
    try:
        received = get_messages(broker_queue, wait=1.0)
    finally:
        late.join()
    assert [m.body for m in received] == [b"early", b"late"]


def test_exchange_binding_routes_by_key(broker_queue: str) -> None:
    exchange = f"simscope-test-x-{uuid.uuid4().hex[:8]}"
    declare_exchange(exchange, "topic")
    try:
        bind_queue(broker_queue, exchange, "sim.#")
        with amqp_channel() as channel:
            channel.basic_publish(exchange=exchange, routing_key="sim.run.1", body=b"in")
            channel.basic_publish(exchange=exchange, routing_key="other", body=b"out")
        received = get_messages(broker_queue)
        assert [(m.body, m.exchange, m.routing_key) for m in received] == [
            (b"in", exchange, "sim.run.1")
        ]
    finally:
        delete_exchange(exchange)


def test_added_user_can_connect_and_wrong_password_cannot(broker_queue: str) -> None:
    name = f"simscope-test-user-{uuid.uuid4().hex[:8]}"
    add_user(name, "s3cret")
    try:
        with amqp_channel(name, "s3cret") as channel:
            channel.basic_publish(exchange="", routing_key=broker_queue, body=b"hi")
        with (
            pytest.raises(pika.exceptions.ProbableAuthenticationError),
            amqp_channel(name, "wrong"),
        ):
            pass
    finally:
        delete_user(name)
    assert [m.body for m in get_messages(broker_queue)] == [b"hi"]


@disruptive
def test_close_all_connections_then_get_messages(broker_queue: str) -> None:
    _publish(broker_queue, b"kept", delivery_mode=2)
    with amqp_channel() as channel:
        close_all_connections()
        # The broker closes the connection asynchronously; the next RPC notices.
        with pytest.raises(pika.exceptions.AMQPError):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                channel.queue_declare(queue=broker_queue, passive=True)
                time.sleep(0.1)
    assert [m.body for m in get_messages(broker_queue)] == [b"kept"]


@disruptive
def test_stop_and_start_app_round_trip(broker_queue: str) -> None:
    _publish(broker_queue, b"durable", delivery_mode=2)
    stop_broker_app()
    try:
        assert not broker_available(timeout=1.0)
    finally:
        start_broker_app()
    assert broker_available()
    assert [m.body for m in get_messages(broker_queue)] == [b"durable"]
