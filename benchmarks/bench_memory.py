"""Peak memory of a 100,000-test pytest run with pytest-simscope, against the same run without.

Each run is a fresh ``python -m pytest`` child whose peak resident set size is read from
its own rusage (``os.wait4``, ``ru_maxrss``), so runs never see each other's peaks.  The
plugin delivers from a process of its own; its peak (``VmHWM``, sampled every 20 ms) is
added to pytest's, as if both peaked at the same moment: the figure checked against the
target is that sum, an upper bound of what the run holds at once.
Variants: ``bare`` (``-p no:simscope``), ``offline`` (the offline queue, a fresh folder)
and ``amqp`` (the local broker, a bench queue).  Target: at most 30 MB above bare.

Usage::

    python benchmarks/bench_memory.py                      # 100,000 tests, 1 round
    python benchmarks/bench_memory.py --tests 20000 --rounds 2 --only offline
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_overhead import (  # noqa: E402
    AMQP_URL,
    PYTEST_ARGS,
    BenchQueue,
    Tally,
    broker_up,
    code_state,
    load_average,
    outbox_records,
    plugin_warnings,
    run_pytest,
    summary_counts,
    write_suite,
)

TARGET_MB = 30.0
MB = 1_000_000 / 1024 / 1024  # 1 MB (10^6 bytes) in MiB; ru_maxrss is reported in KiB


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pytest-simscope peak memory")
    parser.add_argument("--tests", type=int, default=100_000, help="trivial tests (100,000)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each variant (1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=("offline", "amqp"),
        help="run only this plugin variant (repeatable; bare always runs)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reading back the published messages"
    )
    args = parser.parse_args(argv)
    variants = ["bare", *(args.only or ["offline", "amqp"])]
    if "amqp" in variants and not broker_up():
        raise SystemExit("the broker does not answer on 127.0.0.1: run scripts/broker.sh")
    print(
        f"# peak RSS, {args.tests} trivial tests, {args.rounds} round(s); code {code_state()};"
        f" load average {load_average()}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="simscope-bench-mem-"))
    queue = BenchQueue(f"simscope-bench-memory-{os.getpid()}") if "amqp" in variants else None
    peaks: dict[str, list[float]] = {v: [] for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    ok = True
    try:
        folder = write_suite(workdir, "trivial", args.tests, "pass")
        for index in range(args.rounds):
            k = index % len(variants)
            for variant in variants[k:] + variants[:k]:
                queue_dir = workdir / f"queue-{variant}-{index}"
                extra: list[str] = []
                if variant != "bare":
                    extra = [
                        f"--simscope-regression=bench/memory-{variant}-{index}",
                        f"--simscope-queue-dir={queue_dir}",
                    ]
                else:
                    extra = ["-p", "no:simscope"]
                if variant == "amqp":
                    assert queue is not None
                    queue.purge()
                    extra += [f"--simscope-url={AMQP_URL}", f"--simscope-amqp-queue={queue.name}"]
                run = run_pytest([*PYTEST_ARGS, *extra], folder)
                peaks[variant].append(run.total_mb)
                walls[variant].append(run.wall)
                check = ""
                if run.rc != 0:
                    ok = False
                    check = f"exit {run.rc}: {run.output.strip().splitlines()[-1:]}"
                elif variant != "bare" and not args.no_verify:
                    tally = Tally()
                    if variant == "amqp":
                        assert queue is not None
                        tally.add((t, b) for t, _, b in queue.take_all())
                    if queue_dir.exists():
                        tally.add(outbox_records(queue_dir))
                    problems = tally.problems(args.tests, ordered=False)
                    delivered, queued = summary_counts(run.output)
                    check = (
                        f"{len(tally.finishes)}/{args.tests} jobs; summary delivered"
                        f" {delivered}, queued {queued}"
                    )
                    if problems:
                        ok = False
                        check += "; PROBLEM: " + "; ".join(problems)
                    for line in plugin_warnings(run.output):
                        check += f"\n    {line}"
                shutil.rmtree(queue_dir, ignore_errors=True)
                print(
                    f"round {index + 1} {variant:8} peak {run.total_mb:7.1f} MiB"
                    f" (pytest {run.maxrss_mb:.1f}, delivery process {run.helpers_mb:.1f})"
                    f"  wall {run.wall:7.2f} s  cpu {run.cpu:6.2f} s  {check}",
                    flush=True,
                )
    finally:
        if queue is not None:
            queue.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(peaks["bare"])
    print()
    print(
        f"{'variant':8} {'peak MiB':>9} {'peak MB':>8} {'above bare MB':>14}  target"
        f"            result"
    )
    for variant in variants:
        peak = statistics.median(peaks[variant])
        above = (peak - base) / MB
        if variant == "bare":
            print(f"{variant:8} {peak:9.1f} {peak / MB:8.1f} {'-':>14}  -")
            continue
        result = "PASS" if above <= TARGET_MB else "MISS"
        print(
            f"{variant:8} {peak:9.1f} {peak / MB:8.1f} {above:14.1f}  <= {TARGET_MB:g} MB"
            f"       {result}"
        )
    print(f"# load average at end: {load_average()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
