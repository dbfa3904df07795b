"""The AMQP transport against the real local RabbitMQ broker, plus its confirm bookkeeping."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from brokerlib import (
    BrokerInfo,
    add_user,
    amqp_channel,
    bind_queue,
    close_all_connections,
    declare_exchange,
    delete_exchange,
    delete_queue,
    delete_user,
    get_messages,
)

from pytest_simscope.errors import PermanentError, SettingsError, TransientError
from pytest_simscope.models import Envelope
from pytest_simscope.transports.amqp import AmqpTransport, _Confirms

# Closing every connection on the broker would break tests running at the same time in
# other xdist workers; scripts/test.sh runs these alone.
disruptive = pytest.mark.serial


def job(uniqueid: str, regression: str = "regr-1", result: str = "pass") -> Envelope:
    return Envelope(
        type="job-finish",
        regression=regression,
        body={"category": "pytest", "uniqueid": uniqueid, "result": result},
    )


def mixed_batch() -> list[Envelope]:
    name = "nightly ü 2024-05-01 #7"
    return [
        Envelope(type="regr-start", regression=name, body={"name": name, "pending": True}),
        Envelope(
            type="job-live",
            regression=name,
            body={"category": "pytest", "uniqueid": "a", "result": "live"},
        ),
        job("a", name),
        Envelope(
            type="batch-job-finish",
            regression=name,
            body=[
                {"category": "pytest", "uniqueid": "b", "result": "fail", "fail_message": "é"},
                {"category": "pytest", "uniqueid": "c", "result": "skip"},
            ],
        ),
        Envelope(type="regr-update", regression=name, body={"name": name, "running": 0}),
        Envelope(type="regr-finish", regression=name, body=None),
    ]


@pytest.fixture
def transport(broker: BrokerInfo, broker_queue: str) -> Iterator[AmqpTransport]:
    with AmqpTransport(broker.amqp_url, queue=broker_queue) as opened:
        assert isinstance(opened, AmqpTransport)
        yield opened


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- delivery ------------------------------------------------------------------------------


def test_every_message_arrives_in_order_with_its_properties(
    transport: AmqpTransport, broker_queue: str
) -> None:
    batch = mixed_batch()
    transport.send(batch)
    assert transport.delivered == len(batch)

    received = get_messages(broker_queue, wait=0.5)
    assert [
        (m.type, m.correlation_id, m.content_type, m.delivery_mode, m.body) for m in received
    ] == [(e.type, e.regression, "application/json", 2, e.body_bytes()) for e in batch]
    assert {(m.exchange, m.routing_key) for m in received} == {("", broker_queue)}
    assert received[3].json() == batch[3].body
    assert received[-1].json() is None


def test_content_encoding_is_utf8(transport: AmqpTransport, broker_queue: str) -> None:
    transport.send([job("x")])
    with amqp_channel() as channel:
        method, properties, body = channel.basic_get(queue=broker_queue, auto_ack=True)
    assert method is not None
    assert properties.content_encoding == "utf-8"
    assert body == job("x").body_bytes()


def test_a_large_batch_and_single_sends_keep_order(
    transport: AmqpTransport, broker_queue: str
) -> None:
    # More than the confirm window, so publishing pauses for acks at least twice.
    batch = [job(str(i)) for i in range(12_000)]
    transport.send(batch)
    assert transport.delivered == len(batch)
    for i in range(12_000, 12_050):
        transport.send([job(str(i))])
    transport.send([])

    received = get_messages(broker_queue, wait=0.5)
    assert [m.json()["uniqueid"] for m in received] == [str(i) for i in range(12_050)]


def test_name_masks_the_password(broker: BrokerInfo) -> None:
    transport = AmqpTransport(broker.amqp_url)
    assert transport.name == "amqp://guest:***@127.0.0.1:5672/%2F queue simscope-input"
    other = AmqpTransport(
        "amqps://me:s3cret@mq.example.com/sim", exchange="simscope", routing_key="in"
    )
    assert other.name == "amqps://me:***@mq.example.com:5671/sim exchange simscope key in"
    assert "s3cret" not in other.name


def test_connects_only_on_the_first_send() -> None:
    # Nothing listens there: construction must not notice.
    transport = AmqpTransport(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    transport.close()


def test_a_bad_url_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match=r"\*\*\*") as caught:
        AmqpTransport("amqp://me:s3cret@host:notaport/")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(SettingsError):
        AmqpTransport("http://host/")


def test_publishes_through_an_exchange(broker: BrokerInfo, broker_queue: str) -> None:
    exchange = f"simscope-test-{uuid.uuid4().hex[:8]}"
    declare_exchange(exchange, "topic")
    try:
        bind_queue(broker_queue, exchange, "simscope.#")
        with AmqpTransport(
            broker.amqp_url, exchange=exchange, routing_key="simscope.input"
        ) as transport:
            transport.send([job("1"), job("2")])
        with AmqpTransport(broker.amqp_url, exchange=exchange, routing_key="other") as lost:
            with pytest.raises(PermanentError, match="unroutable") as caught:
                lost.send([job("3")])
            assert lost.delivered == 0
            assert repr(exchange) in str(caught.value)
    finally:
        delete_exchange(exchange)
    received = get_messages(broker_queue, wait=0.2)
    assert [(m.exchange, m.routing_key, m.json()["uniqueid"]) for m in received] == [
        (exchange, "simscope.input", "1"),
        (exchange, "simscope.input", "2"),
    ]


# -- faults --------------------------------------------------------------------------------


def test_a_missing_queue_is_unroutable(broker: BrokerInfo) -> None:
    queue = f"simscope-missing-{uuid.uuid4().hex[:8]}"
    with AmqpTransport(broker.amqp_url, queue=queue) as transport:
        with pytest.raises(PermanentError, match=f"queue '{queue}' does not exist"):
            transport.send([job("1"), job("2"), job("3")])
        assert transport.delivered == 0
        # The connection stays usable; the queue is still missing.
        with pytest.raises(PermanentError, match="unroutable"):
            transport.send([job("4")])
    with amqp_channel() as channel, pytest.raises(Exception, match="NOT_FOUND"):
        channel.queue_declare(queue=queue, passive=True)


def test_a_queue_deleted_between_sends_is_unroutable(
    transport: AmqpTransport, broker_queue: str
) -> None:
    transport.send([job("1")])
    delete_queue(broker_queue)
    with pytest.raises(PermanentError, match="unroutable"):
        transport.send([job("2")])
    assert transport.delivered == 0


def test_a_regression_name_too_long_for_amqp_is_permanent(
    transport: AmqpTransport, broker_queue: str
) -> None:
    with pytest.raises(PermanentError, match="too long"):
        transport.send([job("1"), job("2", "r" * 256), job("3")])
    assert transport.delivered == 1
    transport.send([job("4", "é" * 127)])
    received = get_messages(broker_queue, wait=0.2)
    assert [m.json()["uniqueid"] for m in received] == ["1", "4"]


def test_a_missing_exchange_is_permanent(broker: BrokerInfo) -> None:
    with AmqpTransport(broker.amqp_url, exchange="simscope-no-such-exchange") as transport:
        for _ in range(2):
            with pytest.raises(PermanentError, match="404 NOT_FOUND - no exchange"):
                transport.send([job("1")])
            assert transport.delivered == 0


def test_wrong_password_is_permanent_and_secret(broker: BrokerInfo) -> None:
    password = "Wr0ng-pa55word-9f3"
    url = f"amqp://{broker.user}:{password}@127.0.0.1:5672/%2F"
    with AmqpTransport(url) as transport, pytest.raises(PermanentError) as caught:
        transport.send([job("1")])
    text = f"{caught.value} {caught.value!r} {transport.name}"
    assert password not in text
    assert "refused the login of user 'guest'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_user_without_access_to_the_vhost_is_permanent(broker: BrokerInfo) -> None:
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:5672", vhost="simscope-no-such-vhost")
    assert transport.vhost == "simscope-no-such-vhost"
    with transport, pytest.raises(PermanentError, match="virtual host 'simscope-no-such-vhost'"):
        transport.send([job("1")])


def test_user_without_write_permission_is_permanent(broker: BrokerInfo, broker_queue: str) -> None:
    user = f"simscope-ro-{uuid.uuid4().hex[:6]}"
    add_user(user, "ro-pass")
    try:
        # add_user grants everything; take write away through the API.
        httpx.put(
            f"{broker.api_url}/api/permissions/%2F/{user}",
            json={"configure": "", "write": "", "read": ".*"},
            auth=(broker.user, broker.password),
            timeout=10,
        ).raise_for_status()
        url = f"amqp://{user}:ro-pass@127.0.0.1:5672/%2F"
        with (
            AmqpTransport(url, queue=broker_queue) as transport,
            pytest.raises(PermanentError, match="403 ACCESS_REFUSED"),
        ):
            transport.send([job("1")])
    finally:
        delete_user(user)


def test_nothing_listening_is_transient() -> None:
    with AmqpTransport(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F") as transport:
        with pytest.raises(TransientError, match="Connection refused"):
            transport.send([job("1")])
        assert transport.delivered == 0


def test_a_silent_server_is_transient_after_the_connect_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        transport = AmqpTransport(f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TransientError):
            transport.send([job("1")])
        assert time.monotonic() - started < 5
        transport.close()


def test_a_full_queue_nacks_and_counts_what_was_confirmed(broker: BrokerInfo) -> None:
    queue = f"simscope-test-full-{uuid.uuid4().hex[:8]}"
    with amqp_channel() as channel:
        channel.queue_declare(
            queue=queue,
            durable=True,
            arguments={"x-max-length": 2, "x-overflow": "reject-publish"},
        )
    try:
        with AmqpTransport(broker.amqp_url, queue=queue) as transport:
            with pytest.raises(TransientError, match="refused"):
                transport.send([job("1"), job("2"), job("3"), job("4")])
            assert transport.delivered == 2
            get_messages(queue)
            # The connection survived the nack and the queue has room again.
            transport.send([job("3"), job("4")])
        assert [m.json()["uniqueid"] for m in get_messages(queue)] == ["3", "4"]
    finally:
        delete_queue(queue)


@disruptive
def test_connections_closed_by_the_broker_between_sends(
    transport: AmqpTransport, broker_queue: str
) -> None:
    transport.send([job("1")])
    close_all_connections()
    time.sleep(0.2)
    try:
        transport.send([job("2")])
    except TransientError:
        second_delivered = False
    else:
        second_delivered = True
    transport.send([job("3")])
    expected = ["1", "2", "3"] if second_delivered else ["1", "3"]
    assert [m.json()["uniqueid"] for m in get_messages(broker_queue, wait=0.2)] == expected


@disruptive
def test_connections_closed_during_a_big_batch(transport: AmqpTransport, broker_queue: str) -> None:
    transport.send([job("warm-up")])
    batch = [job(str(i)) for i in range(100_000)]
    # rabbitmqctl takes a second or two to act; the batch takes several.
    closer = threading.Timer(0.3, close_all_connections)
    closer.start()
    try:
        with pytest.raises(TransientError, match="CONNECTION_FORCED"):
            transport.send(batch)
    finally:
        closer.join()
    delivered = transport.delivered
    assert 0 <= delivered < len(batch)
    received = [m.json()["uniqueid"] for m in get_messages(broker_queue, wait=0.5)]
    # Everything counted as delivered is on the queue, in order, after the warm-up; what
    # was not counted may or may not have arrived.
    assert received[0] == "warm-up"
    assert received[1 : delivered + 1] == [str(i) for i in range(delivered)]
    transport.send([job("after")])
    assert [m.json()["uniqueid"] for m in get_messages(broker_queue, wait=0.2)] == ["after"]


def test_an_idle_connection_dropped_for_missed_heartbeats_is_replaced(
    broker: BrokerInfo, broker_queue: str
) -> None:
    # With a 1 s heartbeat and no I/O loop running between sends, the broker drops the
    # connection; the next send must notice before publishing and reconnect.
    with AmqpTransport(f"{broker.amqp_url}?heartbeat=1", queue=broker_queue) as transport:
        transport.send([job("1")])
        time.sleep(4)
        transport.send([job("2")])
    assert [m.json()["uniqueid"] for m in get_messages(broker_queue, wait=0.2)] == ["1", "2"]


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server with a self-signed certificate for 127.0.0.1 that says nothing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    # Short, so the thread notices the end of the test: close() does not wake accept().
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(8)  # the AMQP protocol header, then hang up
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], cert
    stop.set()
    server.close()
    thread.join(timeout=10)


def test_amqps_verifies_the_server_certificate(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    with (
        AmqpTransport(f"amqps://guest:guest@127.0.0.1:{port}/%2F") as transport,
        pytest.raises(PermanentError, match="certificate could not be verified"),
    ):
        transport.send([job("1")])


def test_amqps_with_the_ca_file_gets_past_tls(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    for transport in (
        AmqpTransport(f"amqps://guest:guest@127.0.0.1:{port}/%2F", ca_file=str(cert)),
        AmqpTransport(f"amqps://guest:guest@127.0.0.1:{port}/%2F", verify=False),
    ):
        # The handshake succeeds; the server then hangs up instead of speaking AMQP.
        with transport, pytest.raises(TransientError):
            transport.send([job("1")])


def test_amqps_with_a_missing_ca_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TLS files"):
        AmqpTransport("amqps://u:p@host/", ca_file=str(tmp_path / "missing.pem"))


# -- confirm bookkeeping -------------------------------------------------------------------


def bookkeeping(count: int, first_tag: int = 1) -> _Confirms:
    batch = [job(str(i)) for i in range(count)]
    confirms = _Confirms(first_tag, batch, [e.body_bytes() for e in batch])
    confirms.published = count
    return confirms


def test_confirms_multiple_and_single_acks() -> None:
    confirms = bookkeeping(5, first_tag=11)
    confirms.ack(12, multiple=True, ok=True)
    confirms.ack(15, multiple=False, ok=True)
    assert (confirms.resolved, confirms.delivered()) == (3, 2)
    confirms.ack(14, multiple=True, ok=True)
    assert (confirms.resolved, confirms.in_flight, confirms.delivered()) == (5, 0, 5)


def test_confirms_a_nack_ends_the_delivered_prefix() -> None:
    confirms = bookkeeping(4)
    confirms.ack(1, multiple=False, ok=True)
    confirms.ack(2, multiple=False, ok=False)
    confirms.ack(4, multiple=True, ok=True)
    assert (confirms.nacked, confirms.delivered()) == (1, 1)


def test_confirms_a_returned_message_is_never_delivered() -> None:
    confirms = bookkeeping(4)
    # RabbitMQ returns message 3 before acking it; an ack for all four follows.
    returned = confirms.batch[2]
    confirms.returned_message(returned.type, returned.regression, confirms.bodies[2])
    confirms.ack(4, multiple=True, ok=True)
    assert (confirms.returns, confirms.delivered()) == (1, 2)


def test_confirms_a_return_of_repeated_content_blames_the_earliest() -> None:
    batch = [job("same"), job("same"), job("same")]
    confirms = _Confirms(1, batch, [e.body_bytes() for e in batch])
    confirms.published = 3
    confirms.returned_message("job-finish", "regr-1", batch[0].body_bytes())
    confirms.ack(3, multiple=True, ok=True)
    assert confirms.delivered() == 0


def test_confirms_an_unknown_return_distrusts_everything_pending() -> None:
    confirms = bookkeeping(3)
    confirms.ack(1, multiple=False, ok=True)
    confirms.returned_message("job-finish", "another regression", b"{}")
    confirms.ack(3, multiple=True, ok=True)
    assert confirms.delivered() == 1
