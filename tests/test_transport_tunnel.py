"""The tunnel-command transport, with a stand-in ``simscope-tunnel`` on PATH.

The choice of transport by URL scheme (``network_transport``) is tested here too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_simscope.errors import PermanentError, SettingsError, TransientError
from pytest_simscope.models import Envelope
from pytest_simscope.transports.amqp import AmqpTransport
from pytest_simscope.transports.http import HttpTransport
from pytest_simscope.transports.network import NetworkOptions, network_transport
from pytest_simscope.transports.tunnel import DEFAULT_COMMAND, TunnelTransport, config_from_url

# The stand-in records its arguments and the message file, then behaves as FAKE_TUNNEL_MODE
# says: "ok", "fail" (exit 3 with an error on stderr), "fail-on-3" (fail from the third
# call on), "hang", or "spawn-and-hang" (leaves a grandchild that would hold the pipes).
FAKE_TUNNEL = """\
#!{python}
import json, os, subprocess, sys, time

log = os.environ["FAKE_TUNNEL_LOG"]
mode = os.environ.get("FAKE_TUNNEL_MODE", "ok")
files = [arg for arg in sys.argv[1:] if arg.endswith(".json") and os.path.exists(arg)]
record = {{"argv": sys.argv[1:], "content": None, "file": None}}
if files:
    record["file"] = files[-1]
    with open(files[-1], "rb") as handle:
        record["content"] = handle.read().decode("utf-8")
with open(log, "a", encoding="utf-8") as handle:
    handle.write(json.dumps(record) + "\\n")
with open(log, encoding="utf-8") as handle:
    calls = sum(1 for _ in handle)
if mode == "fail" or (mode == "fail-on-3" and calls >= 3):
    sys.stdout.write("publishing...\\n")
    sys.stderr.write("\\n  error: cannot reach amqp://tunnel:hunter2@mq:5672/ (secret tok3n)\\n")
    sys.stderr.write("second line\\n")
    sys.exit(3)
if mode == "hang":
    time.sleep(60)
if mode == "spawn-and-hang":
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(60)
"""


@pytest.fixture
def fake_tunnel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a stand-in simscope-tunnel first on PATH; returns the log it writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "simscope-tunnel"
    script.write_text(FAKE_TUNNEL.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TUNNEL_LOG", str(log))
    monkeypatch.setenv("FAKE_TUNNEL_MODE", "ok")
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def job(uniqueid: str, regression: str = "regr-1") -> Envelope:
    return Envelope(
        type="job-finish",
        regression=regression,
        body={"category": "pytest", "uniqueid": uniqueid, "result": "pass"},
    )


# -- running the command ---------------------------------------------------------------


def test_runs_the_default_command_per_message_in_order(fake_tunnel: Path) -> None:
    name = "nightly ü 2024-05-01"
    batch = [
        Envelope(type="regr-start", regression=name, body={"name": name}),
        job("a", name),
        Envelope(type="regr-finish", regression=name, body=None),
    ]
    with TunnelTransport("tunnel:") as transport:
        transport.send(batch)
        assert transport.delivered == 3
    recorded = calls(fake_tunnel)
    assert [call["argv"][:-1] for call in recorded] == [
        ["--config=simscope-tunnel.conf", "--publish", e.type, f"--regression={name}"]
        for e in batch
    ]
    assert [call["content"] for call in recorded] == [e.body_bytes().decode() for e in batch]
    for call in recorded:
        assert call["argv"][-1] == call["file"]
        assert not os.path.exists(call["file"]), "the message file is removed"


def test_the_config_path_comes_from_the_url(fake_tunnel: Path, tmp_path: Path) -> None:
    config = tmp_path / "my tunnel.conf"
    with TunnelTransport(f"tunnel:{config}") as transport:
        transport.send([job("1")])
    assert calls(fake_tunnel)[0]["argv"][0] == f"--config={config}"
    assert transport.name == f"tunnel command simscope-tunnel (config {config})"


def test_arguments_are_never_seen_by_a_shell(fake_tunnel: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = f'it\'s "odd" $(touch {marker}) `x` ; {{file}} * {{type}}'
    with TunnelTransport(
        command="simscope-tunnel publish --kind={type} -n '{regression}' --in {file} {config}"
    ) as transport:
        transport.send([job("1", name)])
    (call,) = calls(fake_tunnel)
    assert call["argv"] == [
        "publish",
        "--kind=job-finish",
        "-n",
        name,
        "--in",
        call["file"],
        "simscope-tunnel.conf",
    ]
    assert not marker.exists()


def test_a_failing_command_is_transient_with_its_first_error_line(
    fake_tunnel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TUNNEL_MODE", "fail-on-3")
    with TunnelTransport(secrets=["tok3n"]) as transport:
        with pytest.raises(TransientError) as caught:
            transport.send([job("1"), job("2"), job("3"), job("4")])
        assert transport.delivered == 2
    assert str(caught.value) == (
        "tunnel command simscope-tunnel (config simscope-tunnel.conf): exited with status 3:"
        " error: cannot reach amqp://tunnel:***@mq:5672/ (secret ***)"
    )
    assert len(calls(fake_tunnel)) == 3


def test_a_hanging_command_is_killed_after_the_timeout(
    fake_tunnel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TUNNEL_MODE", "spawn-and-hang")
    with TunnelTransport(timeout=0.5) as transport:
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"no result within 0\.5 s"):
            transport.send([job("1")])
        assert time.monotonic() - started < 10
        assert transport.delivered == 0
    (call,) = calls(fake_tunnel)
    assert not os.path.exists(call["file"])


def test_a_missing_command_is_permanent(fake_tunnel: Path) -> None:
    with TunnelTransport(command="simscope-tunnel-not-installed {file}") as transport:
        with pytest.raises(PermanentError, match="'simscope-tunnel-not-installed' not found"):
            transport.send([job("1")])
        assert transport.delivered == 0


def test_a_command_that_is_not_executable_is_permanent(tmp_path: Path) -> None:
    script = tmp_path / "tunnel"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    script.chmod(0o644)
    transport = TunnelTransport(command=f"{script} {{file}}")
    with transport, pytest.raises(PermanentError, match="not executable"):
        transport.send([job("1")])


def test_close_removes_the_temporary_directory(fake_tunnel: Path) -> None:
    transport = TunnelTransport()
    transport.send([job("1")])
    directory = Path(calls(fake_tunnel)[0]["file"]).parent
    assert directory.is_dir()
    transport.close()
    assert not directory.exists()


@pytest.mark.parametrize(
    ("command", "match"),
    [
        ("simscope-tunnel 'unbalanced {file}", "bad tunnel command"),
        ("", "empty"),
        ("simscope-tunnel --regression={regresion} {file}", r"unknown placeholder \{regresion\}"),
        ("simscope-tunnel --publish {type}", r"add \{file\}"),
    ],
)
def test_a_bad_command_template_is_a_settings_error(command: str, match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        TunnelTransport(command=command)


def test_other_braces_in_the_template_are_left_alone() -> None:
    transport = TunnelTransport(command="""tool '--json={"a":1}' {file} {}""")
    assert transport.command_for(job("1"), "/tmp/m.json") == [
        "tool",
        '--json={"a":1}',
        "/tmp/m.json",
        "{}",
    ]


@pytest.mark.parametrize(
    ("url", "config"),
    [
        ("tunnel:", "simscope-tunnel.conf"),
        ("tunnel:/etc/simscope/tunnel.conf", "/etc/simscope/tunnel.conf"),
        ("TUNNEL:relative.conf", "relative.conf"),
        ("tunnel:///etc/t.conf", "/etc/t.conf"),
        ("tunnel:~/t.conf", os.path.expanduser("~/t.conf")),
    ],
)
def test_config_from_url(url: str, config: str) -> None:
    assert config_from_url(url) == config


def test_default_command() -> None:
    assert DEFAULT_COMMAND == (
        "simscope-tunnel --config={config} --publish {type} --regression={regression} {file}"
    )


# -- choosing a transport by URL -------------------------------------------------------


def test_network_transport_by_scheme(tmp_path: Path) -> None:
    options = NetworkOptions(
        queue="in", vhost="sim", timeout=3.0, tunnel_command="t {file}", tunnel_timeout=7.0
    )
    amqp = network_transport("amqp://u:p@127.0.0.1:5672", options)
    assert isinstance(amqp, AmqpTransport)
    assert (amqp.routing_key, amqp.vhost, amqp.connect_timeout) == ("in", "sim", 3.0)
    amqp_vhost = network_transport("AMQP://u:p@127.0.0.1:5672/other", options)
    assert isinstance(amqp_vhost, AmqpTransport)
    assert amqp_vhost.vhost == "other"
    assert isinstance(network_transport("amqps://u:p@127.0.0.1/", options), AmqpTransport)

    http = network_transport("https://u:p@127.0.0.1:15671/prefix", options)
    assert isinstance(http, HttpTransport)
    assert http.endpoint == "https://127.0.0.1:15671/prefix/api/exchanges/sim/amq.default/publish"
    http.close()
    assert isinstance(network_transport("http://127.0.0.1:15672", options), HttpTransport)

    tunnel = network_transport(f"tunnel:{tmp_path}/t.conf", options)
    assert isinstance(tunnel, TunnelTransport)
    assert (tunnel.config, tunnel.template, tunnel.timeout) == (
        f"{tmp_path}/t.conf",
        ["t", "{file}"],
        7.0,
    )


def test_network_transport_passes_tls_files_to_https(tmp_path: Path) -> None:
    options = NetworkOptions(ca_file=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(SettingsError, match="TLS files"):
        network_transport("https://u:p@127.0.0.1/", options)
    # Verification off: the CA file is not needed.
    off = network_transport("https://u:p@127.0.0.1/", NetworkOptions(verify=False))
    assert isinstance(off, HttpTransport)
    off.close()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://u:s3cret@host/",
        "u:s3cret@host:5672",
        "mqtt://u:s3cret@h",
        "://u:s3cret@h",
        "http://[::1",
    ],
)
def test_network_transport_rejects_other_urls_without_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        network_transport(url, NetworkOptions())
    assert "s3cret" not in str(caught.value)
