"""Throughput of ``pytest-simscope drain`` to the local RabbitMQ broker.

Builds an offline queue of N job entries (default 5,000) with the real ``OfflineQueue``,
as a pytest run with the broker down would leave it: one regression entry (regr-start,
regr-update, regr-finish) and one entry per job (job-live, then job-finish).  Then drains
it to a fresh queue on the local broker and prints entries per second, for
``batch-job-finish`` batching on (the default, 100) and off (``--batch-size 1``), in
process (the drain itself) and through the console script (start-up included).

    python benchmarks/bench_drain.py [--entries 5000] [--no-live] [--repeat 3]

Target (issue 4): at least 2,000 entries a second.  Needs the broker of
``scripts/broker.sh`` (guest/guest on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import brokerlib  # noqa: E402

from pytest_simscope.drain import Drainer, DrainOptions  # noqa: E402
from pytest_simscope.models import Envelope, Job, Regression, rfc3339  # noqa: E402
from pytest_simscope.transports.amqp import AmqpTransport  # noqa: E402
from pytest_simscope.transports.queue import OfflineQueue  # noqa: E402

REGRESSION = "bench/drain"


def make_queue(root: Path, entries: int, *, live: bool) -> int:
    """Fill *root* like a run of *entries* tests that could not reach the broker."""
    queue = OfflineQueue(root)
    t0 = dt.datetime.now().astimezone()
    sent = [
        Envelope(
            type="regr-start",
            regression=REGRESSION,
            body=Regression(name=REGRESSION, starttime=rfc3339(t0), pending=True).body(),
        ),
        Envelope(
            type="regr-update",
            regression=REGRESSION,
            body=Regression(name=REGRESSION, submitted=entries).body(),
        ),
    ]
    for index in range(entries):
        uid = f"tests/test_bench.py::test_{index}"
        start = rfc3339(t0 + dt.timedelta(microseconds=index))
        if live:
            sent.append(
                Envelope(
                    type="job-live",
                    regression=REGRESSION,
                    body=Job(
                        category="pytest", uniqueid=uid, result="live", start_time=start, config=uid
                    ).body(),
                )
            )
        sent.append(
            Envelope(
                type="job-finish",
                regression=REGRESSION,
                body=Job(
                    category="pytest",
                    uniqueid=uid,
                    result="pass",
                    start_time=start,
                    finish_time=start,
                    compute_ms=1,
                    runtime_ms=1,
                    config=uid,
                    fail_message="",
                ).body(),
            )
        )
    sent.append(
        Envelope(
            type="regr-finish",
            regression=REGRESSION,
            body=Regression(name=REGRESSION, pending=False, submitted=entries).body(),
        )
    )
    for envelope in sent:
        queue.send([envelope])
    return len(sent)


def run_in_process(root: Path, queue_name: str, batch_size: int) -> float:
    transport = AmqpTransport(brokerlib.BROKER.amqp_url, queue=queue_name)
    try:
        drainer = Drainer(root, transport, DrainOptions(batch_size=batch_size))
        started = time.perf_counter()
        result = drainer.run_pass()
        elapsed = time.perf_counter() - started
    finally:
        transport.close()
    if not result.complete:
        raise SystemExit(f"drain left something: {result}")
    return elapsed


def run_cli(root: Path, queue_name: str, batch_size: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_simscope.cli",
            "drain",
            str(root),
            "--url",
            brokerlib.BROKER.amqp_url,
            "--amqp-queue",
            queue_name,
            "--batch-size",
            str(batch_size),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"drain exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    json.loads(proc.stdout)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        help="job entries hold only their job-finish",
    )
    args = parser.parse_args()
    brokerlib.ensure_broker()
    entries = args.entries + 1  # the jobs and the regression's own entry
    print(
        f"drain benchmark: {args.entries} job entries + 1 regression entry, "
        f"{'job-live + job-finish' if args.live else 'job-finish only'} per job, "
        f"best and median of {args.repeat}"
    )
    for mode, runner in (("in process", run_in_process), ("console script", run_cli)):
        for batch_size in (100, 1):
            times = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    root = Path(tmp) / "queue"
                    messages = make_queue(root, args.entries, live=args.live)
                    name = f"bench-drain-{uuid.uuid4().hex[:8]}"
                    brokerlib.declare_queue(name)
                    try:
                        times.append(runner(root, name, batch_size))
                        depth = brokerlib.queue_depth(name)
                    finally:
                        brokerlib.delete_queue(name)
                    archived = len(list((root / "archive").iterdir()))
                    if archived != entries:
                        raise SystemExit(f"{archived} of {entries} entries archived")
            best, median = min(times), statistics.median(times)
            print(
                f"  {mode:14} batch-size {batch_size:3}: {entries / best:7.0f} entries/s "
                f"best, {entries / median:7.0f} median ({median:.2f} s; {messages} "
                f"messages queued, {depth} AMQP messages)"
            )


if __name__ == "__main__":
    main()
