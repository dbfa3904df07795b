#!/usr/bin/env bash
# Install everything and run the whole test suite: lint, types, then the tests against a
# real RabbitMQ broker. Works on a fresh Debian machine as root; CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

# The broker: installed and started when missing. In CI a broker that cannot be had fails
# the run; elsewhere the broker tests skip with the reason.
if ! bash scripts/broker.sh; then
    if [[ "${CI:-}" == "true" ]]; then
        echo "test.sh: the RabbitMQ broker could not be started" >&2
        exit 1
    fi
    echo "test.sh: no RabbitMQ broker; the broker tests will skip" >&2
fi

.venv/bin/ruff check .
.venv/bin/mypy

# Tests that act on the whole broker (closing every connection, stopping it) are marked
# serial and run alone; the rest run on two workers. pytest's exit status 5 (no tests
# collected) fails the run like any other failure.
.venv/bin/python -m pytest -n 2 -m "not serial" "$@"
.venv/bin/python -m pytest -m serial "$@"
