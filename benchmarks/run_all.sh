#!/usr/bin/env bash
# Run every pytest-simscope benchmark against the local RabbitMQ broker.
#
#   bash benchmarks/run_all.sh                 # the full set (about 25 minutes on 2 cores)
#   QUICK=1 bash benchmarks/run_all.sh         # scaled down, for a quick look
#
# ROUNDS overrides the overhead benchmark's rounds. Output goes to stdout; redirect it to
# keep it. Exits non-zero if a benchmark's delivery check failed (a missed speed target is
# reported in the tables, not in the exit status: timings on a shared machine are noisy).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

bash scripts/broker.sh || { echo "run_all.sh: the broker could not be started" >&2; exit 1; }

if [[ -n "${QUICK:-}" ]]; then
    overhead=(--tests 1000 --rounds "${ROUNDS:-2}")
    publisher=(--jobs 10000 --offline-jobs 2000)
    memory=(--tests 20000)
else
    overhead=(--rounds "${ROUNDS:-10}")
    publisher=()
    memory=()
fi

echo "== machine: $(nproc) CPUs, $(uptime)"
status=0
echo "== bench_overhead.py ${overhead[*]}"
"$PYTHON" benchmarks/bench_overhead.py "${overhead[@]}" || status=1
echo
echo "== bench_publisher.py ${publisher[*]}"
"$PYTHON" benchmarks/bench_publisher.py "${publisher[@]}" || status=1
echo
echo "== bench_memory.py ${memory[*]}"
"$PYTHON" benchmarks/bench_memory.py "${memory[@]}" || status=1
echo
echo "== done: $(uptime)"
exit $status
