#!/usr/bin/env bash
# Install the plugin and run the demo suite on the plugin's built-in default: the offline
# queue. Prints where the results went.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e .
cd examples/demo
rm -rf .simscope
status=0
../../.venv/bin/python -m pytest -p no:cacheprovider || status=$?
echo
echo "The offline queue (one folder per job, SYS_19 layout):"
ls "$PWD/.simscope/queue/outbox" | head -n 5
echo "..."
echo "One entry's job.json:"
first=$(ls -d "$PWD"/.simscope/queue/outbox/*test_adds* | head -n 1)
cat "$first/job.json"
echo
exit "$status"
