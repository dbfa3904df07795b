"""The management-API transport: against the real broker, and with injected HTTP faults."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from brokerlib import (
    BrokerInfo,
    amqp_channel,
    bind_queue,
    declare_exchange,
    delete_exchange,
    get_messages,
)

from pytest_simscope.errors import PermanentError, SettingsError, TransientError
from pytest_simscope.models import Envelope
from pytest_simscope.transports.http import HttpTransport


def job(uniqueid: str, regression: str = "regr-1") -> Envelope:
    return Envelope(
        type="job-finish",
        regression=regression,
        body={"category": "pytest", "uniqueid": uniqueid, "result": "pass"},
    )


def mixed_batch() -> list[Envelope]:
    name = "nightly ü 2024-05-01 #7"
    return [
        Envelope(type="regr-start", regression=name, body={"name": name}),
        Envelope(
            type="job-live",
            regression=name,
            body={"category": "pytest", "uniqueid": "a", "result": "live"},
        ),
        Envelope(
            type="batch-job-finish",
            regression=name,
            body=[
                {"category": "pytest", "uniqueid": "a", "result": "fail", "fail_message": "é\n"},
                {"category": "pytest", "uniqueid": "b", "result": "pass"},
            ],
        ),
        Envelope(type="regr-finish", regression=name, body=None),
    ]


Handler = Callable[[httpx.Request], httpx.Response]


def mocked(handler: Handler, **kwargs: Any) -> HttpTransport:
    return HttpTransport(
        "http://ci:s3cret-pw@broker.example:15672",
        transport=httpx.MockTransport(handler),
        **kwargs,
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def routed(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"routed": True})


# -- against the broker --------------------------------------------------------------------


def test_every_message_arrives_in_order_with_its_properties(
    broker: BrokerInfo, broker_queue: str
) -> None:
    batch = mixed_batch()
    with HttpTransport(broker.http_publish_url, queue=broker_queue) as transport:
        transport.send(batch)
        assert transport.delivered == len(batch)
        transport.send([job("after")])

    received = get_messages(broker_queue, wait=0.5)
    assert [
        (m.type, m.correlation_id, m.content_type, m.delivery_mode, m.body) for m in received
    ] == [(e.type, e.regression, "application/json", 2, e.body_bytes()) for e in batch] + [
        ("job-finish", "regr-1", "application/json", 2, job("after").body_bytes())
    ]
    assert {(m.exchange, m.routing_key) for m in received} == {("", broker_queue)}
    assert received[2].json() == batch[2].body


def test_content_encoding_is_utf8(broker: BrokerInfo, broker_queue: str) -> None:
    with HttpTransport(broker.http_publish_url, queue=broker_queue) as transport:
        transport.send([job("x")])
    with amqp_channel() as channel:
        method, properties, _ = channel.basic_get(queue=broker_queue, auto_ack=True)
    assert method is not None
    assert properties.content_encoding == "utf-8"


def test_publishes_through_an_exchange(broker: BrokerInfo, broker_queue: str) -> None:
    exchange = f"simscope-test-{uuid.uuid4().hex[:8]}"
    declare_exchange(exchange, "topic")
    try:
        bind_queue(broker_queue, exchange, "simscope.#")
        with HttpTransport(
            broker.http_publish_url, exchange=exchange, routing_key="simscope.in"
        ) as transport:
            transport.send([job("1")])
            with pytest.raises(PermanentError, match="routes key 'other' to no queue"):
                HttpTransport(broker.http_publish_url, exchange=exchange, routing_key="other").send(
                    [job("2")]
                )
    finally:
        delete_exchange(exchange)
    received = get_messages(broker_queue, wait=0.2)
    assert [(m.exchange, m.routing_key, m.json()["uniqueid"]) for m in received] == [
        (exchange, "simscope.in", "1")
    ]


def test_a_missing_queue_is_unroutable(broker: BrokerInfo) -> None:
    queue = f"simscope-missing-{uuid.uuid4().hex[:8]}"
    with HttpTransport(broker.http_publish_url, queue=queue) as transport:
        with pytest.raises(PermanentError, match=f"queue '{queue}' does not exist"):
            transport.send([job("1"), job("2")])
        assert transport.delivered == 0


def test_a_missing_exchange_is_permanent(broker: BrokerInfo) -> None:
    with (
        HttpTransport(broker.http_publish_url, exchange="simscope-no-such-exchange") as t,
        pytest.raises(PermanentError, match="HTTP 400: 404 NOT_FOUND - no exchange"),
    ):
        t.send([job("1")])


def test_wrong_password_is_permanent_and_secret(broker: BrokerInfo) -> None:
    password = "Wr0ng-pa55word-9f3"
    url = f"http://{broker.user}:{password}@127.0.0.1:15672"
    with (
        HttpTransport(url) as transport,
        pytest.raises(PermanentError, match="refused the login of user 'guest'") as caught,
    ):
        transport.send([job("1")])
    assert password not in f"{caught.value} {caught.value!r} {transport.name}"


def test_a_missing_vhost_is_permanent(broker: BrokerInfo) -> None:
    with (
        HttpTransport(broker.http_publish_url, vhost="simscope-no-such-vhost") as transport,
        pytest.raises(PermanentError, match="virtual host 'simscope-no-such-vhost'"),
    ):
        transport.send([job("1")])


def test_a_wrong_path_prefix_is_permanent(broker: BrokerInfo) -> None:
    with (
        HttpTransport(f"{broker.http_publish_url}/not-here") as transport,
        pytest.raises(PermanentError, match="HTTP 405"),
    ):
        transport.send([job("1")])


def test_nothing_listening_is_transient() -> None:
    with (
        HttpTransport(f"http://u:p@127.0.0.1:{free_port()}/", timeout=2) as transport,
        pytest.raises(TransientError),
    ):
        transport.send([job("1")])


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []  # noqa: RUF012 - shared with the test, on purpose

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.seen.append((self.requestline, self.headers.get("Authorization", ""), body))
        answer = b'{"routed":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def local_proxy() -> Iterator[str]:
    """A stand-in HTTP proxy on 127.0.0.1 that records what it is asked to forward."""
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_proxies_come_from_the_environment(
    local_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", local_proxy)
    with HttpTransport("http://ci:pw@mq.invalid:15672/rabbit") as transport:
        transport.send([job("1"), job("2")])
    assert [line for line, _, _ in _Recorder.seen] == [
        "POST http://mq.invalid:15672/rabbit/api/exchanges/%2F/amq.default/publish HTTP/1.1"
    ] * 2
    assert _Recorder.seen[0][1] == basic("ci", "pw")


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS stand-in for the publish endpoint on 127.0.0.1, with a self-signed cert."""
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
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://ci:pw@127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_https_verifies_the_certificate(tls_api: tuple[str, Path]) -> None:
    url, cert = tls_api
    with (
        HttpTransport(url, timeout=5) as transport,
        pytest.raises(PermanentError, match="certificate could not be verified"),
    ):
        transport.send([job("1")])
    with HttpTransport(url, verify=str(cert), timeout=5) as trusting:
        trusting.send([job("1")])
    with HttpTransport(url, verify=False, timeout=5) as careless:
        careless.send([job("2")])
    assert len(_Recorder.seen) == 2


# -- injected faults -----------------------------------------------------------------------


def test_request_shape() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"routed": True})

    envelope = Envelope(type="regr-start", regression="r ü/1", body={"name": "r ü/1"})
    with mocked(handler, queue="in-q", vhost="sim/scope") as transport:
        transport.send([envelope])
    (request,) = requests
    assert request.method == "POST"
    assert str(request.url) == (
        "http://broker.example:15672/api/exchanges/sim%2Fscope/amq.default/publish"
    )
    assert request.headers["Authorization"] == basic("ci", "s3cret-pw")
    assert json.loads(request.content) == {
        "properties": {
            "type": "regr-start",
            "correlation_id": "r ü/1",
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "delivery_mode": 2,
        },
        "routing_key": "in-q",
        "payload": '{"name":"r ü/1"}',
        "payload_encoding": "string",
    }


def test_name_and_endpoint_keep_the_password_out() -> None:
    transport = mocked(routed, exchange="simscope", routing_key="in")
    assert transport.name == ("http://ci:***@broker.example:15672 vhost / exchange simscope key in")
    assert transport.endpoint == "http://broker.example:15672/api/exchanges/%2F/simscope/publish"
    assert transport.base_url == "http://broker.example:15672"


def test_a_path_prefix_is_kept() -> None:
    transport = HttpTransport(
        "https://u:p@gw.example/rabbitmq/", transport=httpx.MockTransport(routed)
    )
    assert transport.endpoint == "https://gw.example/rabbitmq/api/exchanges/%2F/amq.default/publish"


@pytest.mark.parametrize("url", ["ftp://h/", "amqp://u:secret@h/", "http://", "not a url"])
def test_a_bad_url_is_a_settings_error(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        HttpTransport(url)
    assert "secret" not in str(caught.value)


def test_unrouted_after_two_routed_counts_two() -> None:
    answers = iter([True, True, False])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"routed": next(answers)})

    with mocked(handler) as transport:
        with pytest.raises(PermanentError, match="unroutable"):
            transport.send([job("1"), job("2"), job("3"), job("4")])
        assert transport.delivered == 2


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_errors_are_transient(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "oops", "reason": "try later ci:s3cret-pw"})

    with (
        mocked(handler) as transport,
        pytest.raises(TransientError, match=f"HTTP {status}: try later") as caught,
    ):
        transport.send([job("1")])
    assert "s3cret-pw" not in str(caught.value)
    assert transport.delivered == 0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_timeouts_and_network_errors_are_transient(error: httpx.HTTPError) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 2:
            raise error  # the endpoint hangs, or the connection breaks
        return httpx.Response(200, json={"routed": True})

    with mocked(handler) as transport:
        with pytest.raises(TransientError):
            transport.send([job("1"), job("2"), job("3")])
        assert transport.delivered == 1
        transport.send([job("2"), job("3")])
        assert transport.delivered == 2


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (401, {"error": "not_authorized", "reason": "Login failed"}, "refused the login"),
        (401, {"error": "not_authorised", "reason": "Access refused."}, "not allowed here"),
        (403, {"error": "forbidden", "reason": "nope"}, "HTTP 403"),
        (404, {"error": "Object Not Found", "reason": "Not Found"}, "HTTP 404"),
        (400, {"error": "bad_request", "reason": "403 ACCESS_REFUSED - x"}, "ACCESS_REFUSED"),
        (200, "<html>proxy login</html>", "not the RabbitMQ management API"),
        (200, {"routed": "yes"}, "unexpected answer"),
    ],
)
def test_client_errors_and_odd_answers_are_permanent(status: int, body: Any, match: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with mocked(handler) as transport, pytest.raises(PermanentError, match=match) as caught:
        transport.send([job("1")])
    assert "s3cret-pw" not in str(caught.value)


def test_an_unverifiable_certificate_is_permanent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as exc:
            raise httpx.ConnectError("certificate verify failed") from exc

    with (
        mocked(handler) as transport,
        pytest.raises(PermanentError, match="certificate could not be verified"),
    ):
        transport.send([job("1")])


def test_a_missing_ca_bundle_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="TLS files"):
        HttpTransport("https://u:p@h/", verify="/nonexistent/ca.pem")
