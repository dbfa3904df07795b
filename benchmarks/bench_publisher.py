"""Throughput of the publisher alone: finished jobs per second to the local broker.

Builds ``pytest_simscope.publisher.Publisher`` the way the plugin does (the offline queue as
spool, a journal, batches of 100 ``job-finish``) around an ``AmqpTransport`` to a fresh
queue on the local broker, then publishes ``regr-start``, N ``job-finish`` envelopes with
realistic bodies and ``regr-finish``.  Timed from the first ``publish()`` to ``close()``
returning; also reported: the time spent in the ``publish()`` calls themselves (what the
tests' thread pays) and the producer's cost per message.  Afterwards every message is read
back from the broker and every job counted (``batch-job-finish`` elements singly).

The same is then done with the offline queue as the transport (entries written per second),
for information: there the sender writes one queue entry per job.

Usage::

    python benchmarks/bench_publisher.py                  # 50,000 jobs
    python benchmarks/bench_publisher.py --jobs 5000 --offline-jobs 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_overhead import (  # noqa: E402
    AMQP_URL,
    BenchQueue,
    Tally,
    broker_up,
    code_state,
    fs_probe,
    load_average,
    outbox_records,
)

from pytest_simscope.journal import Journal  # noqa: E402
from pytest_simscope.models import Envelope  # noqa: E402
from pytest_simscope.publisher import Publisher  # noqa: E402
from pytest_simscope.transports.amqp import AmqpTransport  # noqa: E402
from pytest_simscope.transports.queue import JOURNAL, OfflineQueue  # noqa: E402

TARGET_JOBS_PER_S = 10_000


def job_bodies(count: int, regression: str) -> list[Envelope]:
    """*count* ``job-finish`` envelopes shaped like the plugin's (one in ten fails)."""
    host = os.uname().nodename
    envelopes = []
    base = time.time()
    for i in range(count):
        failed = i % 10 == 7
        module = f"tests/unit/test_module_{i // 500:03d}.py"
        nodeid = f"{module}::TestThing::test_case[{i}-param-{i % 13}]"
        start = base + i * 0.001
        body: dict[str, Any] = {
            "category": "pytest",
            "uniqueid": f"{uuid.uuid5(uuid.NAMESPACE_URL, nodeid).hex[:16]}-{i}",
            "result": "fail" if failed else "pass",
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start))
            + f".{i % 1000:03d}000+00:00",
            "config": nodeid,
            "compute_ms": 3 + i % 50,
            "runtime_ms": 4 + i % 50,
            "finish_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start + 0.004))
            + f".{(i + 4) % 1000:03d}000+00:00",
            "host": host,
            "testgroup": module,
        }
        if failed:
            body["fail_message"] = (
                f"AssertionError: assert {i} == {i + 1}\n  where {i} = compute(x={i})\n"
                f"{module}:{40 + i % 200}: AssertionError"
            )
        envelopes.append(Envelope(type="job-finish", regression=regression, body=body))
    return envelopes


def regression_body(regression: str, **extra: Any) -> dict[str, Any]:
    return {"name": regression, "host": os.uname().nodename, **extra}


def drive(publisher: Publisher, regression: str, jobs: list[Envelope]) -> tuple[float, float]:
    """Publish the run; (seconds in publish() calls, seconds from first publish to close)."""
    start = time.perf_counter()
    publisher.publish(
        Envelope(
            type="regr-start",
            regression=regression,
            body=regression_body(regression, starttime="2024-01-01T00:00:00+00:00", pending=True),
        )
    )
    for envelope in jobs:
        publisher.publish(envelope)
    publisher.publish(
        Envelope(type="regr-finish", regression=regression, body=regression_body(regression))
    )
    produced = time.perf_counter() - start
    publisher.close(timeout=600.0)
    return produced, time.perf_counter() - start


def bench_amqp(args: argparse.Namespace, workdir: Path) -> bool:
    regression = f"bench/publisher-{os.getpid()}"
    queue = BenchQueue(f"simscope-bench-publisher-{os.getpid()}")
    try:
        jobs = job_bodies(args.jobs, regression)
        root = workdir / "amqp-spool"
        spool = OfflineQueue(root)
        transport = AmqpTransport(AMQP_URL, queue=queue.name)
        journal = None if args.no_journal else Journal(root / JOURNAL, "bench-amqp")
        publisher = Publisher(
            transport,
            spool=spool,
            journal=journal,
            batch_size=args.batch_size,
            max_pending=args.jobs + 10,
        )
        publisher.start()
        produced, total = drive(publisher, regression, jobs)
        stats = publisher.stats
        records = [(t, b) for t, _, b in queue.take_all()]
        tally = Tally()
        tally.add(records)
        problems = tally.problems(args.jobs)
        if stats.queued:
            problems.append(f"{stats.queued} messages fell back to the offline queue")
        rate = args.jobs / total
        print(
            f"AMQP publisher, {args.jobs} jobs, batch size {args.batch_size},"
            f" journal {'off' if args.no_journal else 'on'}"
        )
        print(
            f"  publish() calls       {produced:8.3f} s  ({produced / (args.jobs + 2) * 1e6:.1f}"
            " us per message, on the caller's thread)"
        )
        print(f"  first publish->close  {total:8.3f} s")
        print(
            f"  finished jobs/s       {rate:8.0f}    target >= {TARGET_JOBS_PER_S}:"
            f" {'PASS' if rate >= TARGET_JOBS_PER_S else 'MISS'}"
        )
        print(
            f"  publisher stats       delivered {stats.delivered}, queued {stats.queued},"
            f" lost {stats.lost}"
        )
        print(
            f"  broker holds          {tally.wire} messages, {len(tally.finishes)} distinct"
            f" finished jobs: {'ok' if not problems else 'PROBLEM: ' + '; '.join(problems)}"
        )
        return not problems
    finally:
        queue.delete()


def bench_offline(args: argparse.Namespace, workdir: Path) -> bool:
    regression = f"bench/offline-{os.getpid()}"
    jobs = job_bodies(args.offline_jobs, regression)
    root = workdir / "offline"
    spool = OfflineQueue(root)
    journal = None if args.no_journal else Journal(root / JOURNAL, "bench-offline")
    publisher = Publisher(spool, spool=spool, journal=journal, max_pending=args.offline_jobs + 10)
    publisher.start()
    produced, total = drive(publisher, regression, jobs)
    tally = Tally()
    tally.add(outbox_records(root))
    problems = tally.problems(args.offline_jobs)
    entries = sum(1 for _ in (root / "outbox").iterdir())
    print(
        f"offline-queue publisher, {args.offline_jobs} jobs (for information; file-system"
        f" probe {fs_probe():.0f} us per entry)"
    )
    print(
        f"  publish() calls       {produced:8.3f} s"
        f"  ({produced / (args.offline_jobs + 2) * 1e6:.1f} us per message)"
    )
    print(f"  first publish->close  {total:8.3f} s")
    print(
        f"  entries/s             {entries / total:8.0f}    ({entries} entries, jobs/s"
        f" {args.offline_jobs / total:.0f})"
    )
    print(
        f"  outbox holds          {tally.messages} messages, {len(tally.finishes)} distinct"
        f" finished jobs: {'ok' if not problems else 'PROBLEM: ' + '; '.join(problems)}"
    )
    return not problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pytest-simscope publisher throughput")
    parser.add_argument("--jobs", type=int, default=50_000, help="job-finish messages (50,000)")
    parser.add_argument(
        "--offline-jobs",
        type=int,
        default=None,
        help="jobs for the offline-queue run (default: --jobs; 0 skips it)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="job-finish per batch-job-finish (the plugin's default, 100)",
    )
    parser.add_argument("--no-journal", action="store_true", help="run without the journal")
    parser.add_argument("--skip-amqp", action="store_true", help="only the offline queue")
    args = parser.parse_args(argv)
    if args.offline_jobs is None:
        args.offline_jobs = args.jobs
    print(
        f"# code: {code_state()}; load average at start: {load_average()}; {os.cpu_count()} CPUs",
        flush=True,
    )
    ok = True
    workdir = Path(tempfile.mkdtemp(prefix="simscope-bench-pub-"))
    try:
        if not args.skip_amqp:
            if not broker_up():
                raise SystemExit("the broker does not answer on 127.0.0.1: run scripts/broker.sh")
            ok = bench_amqp(args, workdir) and ok
        if args.offline_jobs:
            ok = bench_offline(args, workdir) and ok
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"# load average at end: {load_average()}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
