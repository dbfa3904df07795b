#!/usr/bin/env bash
# Bring up a local RabbitMQ broker (AMQP on 127.0.0.1:5672, management API on
# 127.0.0.1:15672, guest/guest) for the integration tests. Idempotent: when the
# broker already answers it returns at once. Installs Debian's rabbitmq-server if
# it is missing. Every wait is bounded; the total budget is BROKER_TIMEOUT seconds.
set -euo pipefail

BROKER_TIMEOUT="${BROKER_TIMEOUT:-90}"
AMQP_PORT=5672
HTTP_PORT=15672
ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf
PLUGINS_FILE=/etc/rabbitmq/enabled_plugins

start_s=$SECONDS
deadline=$((SECONDS + BROKER_TIMEOUT))

say() { echo "broker.sh: $*"; }
die() {
    echo "broker.sh: error: $*" >&2
    for log in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log; do
        if [[ -s $log ]]; then
            echo "--- tail of $log ---" >&2
            tail -n 20 "$log" >&2 || true
        fi
    done
    exit 1
}
remaining() {
    local r=$((deadline - SECONDS))
    ((r > 1)) || r=1
    echo "$r"
}

# The Debian wrappers in /usr/sbin only run as root or rabbitmq; elsewhere use sudo.
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (or with sudo available)"
    SUDO=(sudo -n)
fi
ctl() { timeout "$(remaining)" "${SUDO[@]}" rabbitmqctl "$@"; }

amqp_up() {
    # The broker speaks first only after a protocol header, so a TCP connect is the test.
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$AMQP_PORT" 2>/dev/null
}
http_up() {
    # A raw HTTP/1.0 request keeps the script free of curl, which fresh images lack.
    # "Z3Vlc3Q6Z3Vlc3Q=" is base64("guest:guest").
    local status
    status=$(timeout 5 bash -c "
        exec 3<>/dev/tcp/127.0.0.1/$HTTP_PORT || exit 1
        printf 'GET /api/overview HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n' >&3
        head -n 1 <&3" 2>/dev/null) || return 1
    [[ $status == *" 200"* ]]
}
ready() { amqp_up && http_up; }

already_running() {
    if ready; then
        say "broker already running (amqp 127.0.0.1:$AMQP_PORT, http 127.0.0.1:$HTTP_PORT)"
        exit 0
    fi
}
already_running

# xdist workers (and parallel CI jobs) may all call this at once: one starts the
# broker, the others wait for the lock and then find it running.
exec 9>"${TMPDIR:-/tmp}/simscope-broker.$(id -u).lock"
flock -w "$(remaining)" 9 || die "timed out waiting for another broker.sh to finish"
already_running

# 1. Install.
if ! command -v rabbitmqctl >/dev/null 2>&1 && [[ ! -x /usr/sbin/rabbitmqctl ]]; then
    say "installing rabbitmq-server"
    timeout 300 "${SUDO[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
    timeout 600 "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq rabbitmq-server >/dev/null || die "apt-get install rabbitmq-server failed"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# 2. Node name. The default node is rabbit@<short hostname>; when that name does not
# resolve (some containers), Erlang distribution fails and neither the server nor
# rabbitmqctl can work. Pin the node to localhost in the env file, which the server and
# every CLI tool read, so the Python helpers need no extra flags either.
short_host=$(hostname -s 2>/dev/null || hostname)
if ! getent hosts "$short_host" >/dev/null 2>&1; then
    if ! grep -Eq '^[[:space:]]*(RABBITMQ_)?NODENAME=' "$ENV_CONF" 2>/dev/null; then
        say "hostname '$short_host' does not resolve; using node rabbit@localhost"
        echo "NODENAME=rabbit@localhost" | "${SUDO[@]}" tee -a "$ENV_CONF" >/dev/null
    fi
fi

node_up() { timeout 15 "${SUDO[@]}" rabbitmqctl ping >/dev/null 2>&1; }

# 3. Management plugin.
if ! grep -q rabbitmq_management "$PLUGINS_FILE" 2>/dev/null; then
    if node_up; then
        mode=()
    else
        mode=(--offline)
    fi
    timeout 60 "${SUDO[@]}" rabbitmq-plugins enable "${mode[@]}" rabbitmq_management >/dev/null \
        || die "could not enable rabbitmq_management"
fi

# 4. Start. A node left with its app stopped (rabbitmqctl stop_app) only needs start_app.
if node_up; then
    ctl start_app >/dev/null 2>&1 || die "rabbitmqctl start_app failed"
else
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        timeout "$(remaining)" "${SUDO[@]}" systemctl start rabbitmq-server >/dev/null 2>&1 || true
    fi
    if ! node_up && [[ -x /etc/init.d/rabbitmq-server ]]; then
        # Without systemd (containers), the SysV script starts the node as the rabbitmq
        # user and waits for it; it returns non-zero if it failed.
        timeout "$(remaining)" "${SUDO[@]}" /etc/init.d/rabbitmq-server start >/dev/null 2>&1 || true
    fi
    if ! node_up; then
        timeout "$(remaining)" "${SUDO[@]}" rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
fi

# 5. Wait until both listeners answer.
ctl await_startup --timeout "$(remaining)" >/dev/null 2>&1 || true
until ready; do
    ((SECONDS < deadline)) || die "broker did not answer on 127.0.0.1:$AMQP_PORT and :$HTTP_PORT within ${BROKER_TIMEOUT}s"
    sleep 1
done
say "broker ready in $((SECONDS - start_s))s (amqp 127.0.0.1:$AMQP_PORT, http 127.0.0.1:$HTTP_PORT)"
