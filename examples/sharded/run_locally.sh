#!/usr/bin/env bash
# The pipeline of .github/workflows/simscope.yml and .gitlab-ci.yml, run on this machine
# with the same commands: start the regression, run four shards at once (each as if on a
# machine of its own, with its own offline queue), collect those queues as the CI jobs'
# artifacts would be, deliver what they hold, and finish the regression.
#
#   SIMSCOPE_URL=amqp://guest:guest@127.0.0.1:5672/%2F SIMSCOPE_AMQP_QUEUE=simscope-input \
#       bash run_locally.sh              # live: every message goes to the broker
#   bash run_locally.sh                  # offline: everything ends up in .pipeline/queue,
#                                        # delivered later with pytest-simscope drain
#
# Settings come from the environment, as in CI: SIMSCOPE_REGRESSION (default
# sharded/local-<date>), SIMSCOPE_PROJECT and SIMSCOPE_COMPONENT (alpha, alpha_soc),
# SIMSCOPE_URL, SIMSCOPE_AMQP_QUEUE and any other SIMSCOPE_*
# variable; SHARDS (default 4); PIPELINE_DIR (default .pipeline) for the "machines'"
# queues. The exit status is the worst of the shards' pytest exit statuses.
set -euo pipefail
cd "$(dirname "$0")"

export SIMSCOPE_REGRESSION="${SIMSCOPE_REGRESSION:-sharded/local-$(date +%Y%m%d-%H%M%S)}"
export SIMSCOPE_PROJECT="${SIMSCOPE_PROJECT:-alpha}"
export SIMSCOPE_COMPONENT="${SIMSCOPE_COMPONENT:-alpha_soc}"
shards="${SHARDS:-4}"
work="${PIPELINE_DIR:-.pipeline}"
rm -rf "$work"
mkdir -p "$work"

echo "== start: $SIMSCOPE_REGRESSION"
# Exit status 1 means "not delivered, queued in the offline queue": the pipeline goes on
# and the finish step delivers it. 2 (a usage error) stops it.
SIMSCOPE_QUEUE_DIR="$work/start" \
    pytest-simscope regr-start "$SIMSCOPE_REGRESSION" --submitted "$(pytest-simscope count)" \
    || [ $? -eq 1 ]

echo "== $shards shards"
pids=()
for i in $(seq 1 "$shards"); do
    SIMSCOPE_QUEUE_DIR="$work/shard-$i" \
        pytest -p no:cacheprovider --simscope-shard="shard-$i" --split="$i/$shards" \
        >"$work/shard-$i.log" 2>&1 &
    pids+=("$!")
done
status=0
for i in $(seq 1 "$shards"); do
    shard_status=0
    wait "${pids[$((i - 1))]}" || shard_status=$?
    echo "shard-$i: exit $shard_status: $(grep -E '^simscope: ' "$work/shard-$i.log" | tail -n 1)"
    if [ "$shard_status" -ne 0 ]; then
        tail -n 20 "$work/shard-$i.log"
    fi
    if [ "$shard_status" -gt "$status" ]; then
        status=$shard_status
    fi
done

echo "== finish"
# The CI jobs' queues, merged into one folder as the finish job downloads them.
mkdir -p "$work/queue"
for machine in "$work"/start "$work"/shard-*/; do
    if [ -d "$machine" ]; then
        cp -R "$machine"/. "$work/queue"/
    fi
done
# Whatever the start and the shards could not deliver goes first, so that the jobs are in
# before the regression closes.
if [ -n "${SIMSCOPE_URL:-}" ]; then
    pytest-simscope drain "$work/queue"
fi
SIMSCOPE_QUEUE_DIR="$work/queue" pytest-simscope regr-finish "$SIMSCOPE_REGRESSION" \
    || [ $? -eq 1 ]

if [ -z "${SIMSCOPE_URL:-}" ]; then
    echo "offline: the whole regression is in $work/queue; deliver it with:"
    echo "    pytest-simscope drain $work/queue --url URL"
fi
exit "$status"
