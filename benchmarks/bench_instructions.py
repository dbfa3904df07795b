"""The plugin's CPU overhead as instruction counts (valgrind's callgrind), against bare pytest.

Wall-clock ratios on a shared virtual machine move by ±20 % from run to run; the number of
instructions a run executes barely moves, so it tells the work the plugin adds apart from
the waiting the machine imposes.  Every variant is a fresh ``python -m pytest`` child run
under ``valgrind --tool=callgrind --callgrind-out-file=/dev/null``, which prints
``==PID== Collected : N`` on stderr when the child exits.  Callgrind serializes threads, so
the sender thread's work is counted but not any overlap with the tests; a run is 50-100
times slower than native (1,000 trivial tests: 40-50 s here).

The suite, the children's arguments and environment are those of ``bench_overhead.py``:

* ``bare``      pytest without the plugin (``-p no:simscope``): the reference;
* ``disabled``  the plugin installed but not enabled (no regression name);
* ``offline``   publishing to the offline queue (a fresh ``--simscope-queue-dir`` each run);
* ``amqp``      publishing over AMQP to the local broker, to a bench queue purged each run;
* ``http``      publishing through the RabbitMQ management API of the local broker.

Each variant runs at two suite sizes (by default ``--tests`` / 5 and ``--tests``: 200 and
1,000 trivial tests); a straight line through the two counts splits a variant's cost into a
fixed part (imports, start-up, connecting, the flush at the end) and a marginal part per
test.  Reported per variant: millions of instructions at each size, the ratio against bare
at the same size, instructions per test and fixed instructions, and both as extra over bare.
Each plugin run is checked in a simple form: exit status 0 and the plugin's summary line
counting every test (all delivered for ``amqp``/``http``, all queued for ``offline``).

The children get ``PYTHONHASHSEED=0`` so that set and dict orders, and with them the
counts, are the same from run to run, and a bytecode cache of the benchmark's own
(``PYTHONPYCACHEPREFIX``, with ``PYTHONDONTWRITEBYTECODE`` removed) that one native run of
every variant and size fills before anything is counted, so that no counted run compiles
the plugin or rewrites the test file.  The repository is shared and its package may change
while a run lasts: ``--snapshot HEAD`` measures the package as committed (exported with
``git archive`` and put first on the children's ``PYTHONPATH``); without it the working tree
is measured and a change of the code during the run is reported.

Usage::

    python benchmarks/bench_instructions.py                       # 200 and 1,000 tests
    python benchmarks/bench_instructions.py --tests 500 --only amqp --jobs 2
    python benchmarks/bench_instructions.py --sizes 1000          # one size: no split
    python benchmarks/bench_instructions.py --snapshot HEAD       # the committed package
    python benchmarks/bench_instructions.py --no-gc               # without the cyclic GC
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_overhead import (  # noqa: E402
    AMQP_URL,
    BROKER_WAIT,
    HTTP_URL,
    PYTEST_ARGS,
    BenchQueue,
    broker_up,
    clean_env,
    code_state,
    load_average,
    plugin_warnings,
    summary_counts,
    write_suite,
)

VARIANTS = ("bare", "disabled", "offline", "amqp", "http")
NETWORK = ("amqp", "http")
VALGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]

_COLLECTED = re.compile(r"^==\d+== Collected : (\d+)\s*$", re.MULTILINE)
_PASSED = re.compile(r"\b(\d+) passed\b")
_JOBS = re.compile(r"^simscope: (\d+) jobs? \((\d+) pass, (\d+) fail, (\d+) skip\)", re.MULTILINE)


# -- one child under callgrind ------------------------------------------------------------


@dataclass
class Count:
    """One child run under callgrind: what it executed and whether it did its job."""

    variant: str
    tests: int
    instructions: int
    wall: float
    rc: int
    ok: bool
    check: str


def child_env(
    pycache: Path, snapshot: Path | None = None, no_gc: Path | None = None
) -> dict[str, str]:
    """bench_overhead's clean environment, with a fixed hash seed for repeatable counts, a
    bytecode cache of our own, and the *snapshot* of the package first on the path when
    there is one.

    Children may write bytecode, but only under *pycache* (``PYTHONPYCACHEPREFIX``): with
    ``PYTHONDONTWRITEBYTECODE`` set, every run would compile again the modules that pytest's
    assertion rewriter loads (those of installed pytest plugins: hypothesis's take 4.5 G
    instructions) and a working tree's modules that have no bytecode, a cost of the machine.
    """
    env = clean_env()
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    first = [str(p) for p in (snapshot, no_gc) if p is not None]
    if first:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*first, env.get("PYTHONPATH", "")) if p)
    return env


def write_no_gc(folder: Path) -> Path:
    """A folder whose ``sitecustomize`` turns the cyclic garbage collector off.

    A full collection walks every object pytest holds (tens of millions of instructions by
    the end of a run); whether one falls in the run of one size or the other moves the
    per-test slope by tens of thousands of instructions.  Without the collector the counts
    are the work itself.
    """
    folder.mkdir(parents=True)
    (folder / "sitecustomize.py").write_text("import gc\n\ngc.disable()\n", encoding="utf-8")
    return folder


def export_snapshot(rev: str, dest: Path) -> str:
    """Write the package as committed at *rev* into *dest* (``git archive``); its short id.

    The repository is shared: other sessions edit and commit the package while a run lasts
    (minutes), and a line through two sizes measured on different code means
    nothing.  The editable install's import hook comes after ``PYTHONPATH`` on the path, so
    the children import this copy.
    """
    root = HERE.parent
    short = subprocess.run(
        ["git", "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", short, "pytest_simscope"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return short


def run_child(
    argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float, *, callgrind: bool
) -> tuple[int, float, str, str]:
    """Run *argv*, under callgrind or natively: exit code, wall seconds, stdout, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*VALGRIND, *argv] if callgrind else list(argv),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
        )
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            rc = proc.wait()
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return (
            rc,
            wall,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def check_output(variant: str, tests: int, rc: int, output: str) -> list[str]:
    """What is wrong with a finished run, judged from its exit code and its output."""
    problems: list[str] = []
    if rc != 0:
        problems.append(f"exit {rc}")
    passed = _PASSED.search(output)
    if not passed or int(passed.group(1)) != tests:
        problems.append(f"{passed.group(1) if passed else 'no'} tests passed, expected {tests}")
    if variant in ("bare", "disabled"):
        return problems
    jobs = _JOBS.search(output)
    if not jobs:
        problems.append("no simscope summary line")
        return problems
    if int(jobs.group(1)) != tests:
        problems.append(f"summary counts {jobs.group(1)} jobs, expected {tests}")
    delivered, queued = summary_counts(output)
    if variant == "offline":
        if not queued or delivered:
            problems.append(f"expected everything queued: delivered {delivered}, queued {queued}")
    elif not delivered or queued or "published:" not in output:
        problems.append(f"expected everything delivered: delivered {delivered}, queued {queued}")
    return problems


# -- the benchmark ------------------------------------------------------------------------


class Instructions:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.variants = [v for v in VARIANTS if v in args.only]
        self.sizes: list[int] = args.sizes
        self.suites = {n: write_suite(workdir / f"n{n}", "trivial", n, "pass") for n in self.sizes}
        self.queues: dict[tuple[str, int], BenchQueue] = {}
        self.counts: list[Count] = []
        self.snapshot: Path | None = None
        self.code = code_state()
        if args.snapshot:
            self.snapshot = workdir / "snapshot"
            rev = export_snapshot(args.snapshot, self.snapshot)
            self.code = f"{rev} (pytest_simscope exported with git archive)"
        no_gc = write_no_gc(workdir / "no_gc") if args.no_gc else None
        self.env = child_env(workdir / "pycache", self.snapshot, no_gc)
        self._lock = threading.Lock()
        self._serial = 0

    def __enter__(self) -> Instructions:
        network = [v for v in self.variants if v in NETWORK]
        if network and not broker_up():
            raise SystemExit(
                "the broker does not answer on 127.0.0.1:5672/15672: run scripts/broker.sh"
            )
        pid = os.getpid()
        for variant in network:
            for n in self.sizes:
                # A queue per run, so that two runs at once (--jobs 2) never purge each other.
                self.queues[variant, n] = BenchQueue(f"simscope-bench-instr-{variant}-{n}-{pid}")
        return self

    def __exit__(self, *exc: object) -> None:
        for queue in self.queues.values():
            queue.delete()

    def variant_args(self, variant: str, tests: int, queue_dir: Path) -> list[str]:
        if variant == "bare":
            return [*PYTEST_ARGS, "-p", "no:simscope"]
        if variant == "disabled":
            return list(PYTEST_ARGS)
        with self._lock:
            self._serial += 1
            serial = self._serial
        args = [
            *PYTEST_ARGS,
            f"--simscope-regression=bench/{serial}",
            f"--simscope-queue-dir={queue_dir}",
        ]
        if variant == "amqp":
            args.append(f"--simscope-url={AMQP_URL}")
        elif variant == "http":
            args.append(f"--simscope-url={HTTP_URL}")
        if (variant, tests) in self.queues:
            args.append(f"--simscope-amqp-queue={self.queues[variant, tests].name}")
        return args

    def run_one(self, variant: str, tests: int, *, callgrind: bool = True) -> Count:
        queue_dir = self.workdir / "queues" / f"{variant}-{tests}"
        shutil.rmtree(queue_dir, ignore_errors=True)
        queue = self.queues.get((variant, tests))
        if queue is not None:
            broker_up(wait=BROKER_WAIT)
            queue.purge()
        argv = [sys.executable, "-m", "pytest", *self.variant_args(variant, tests, queue_dir)]
        rc, wall, out, err = run_child(
            argv, self.suites[tests], self.env, self.args.timeout, callgrind=callgrind
        )
        collected = _COLLECTED.findall(err)
        output = out + err
        problems = check_output(variant, tests, rc, output)
        if callgrind and not collected:
            problems.append("no 'Collected' line from callgrind")
        problems += [w.removeprefix("simscope: ") for w in plugin_warnings(output)]
        if problems and rc != 0:
            tail = [line for line in output.strip().splitlines() if not line.startswith("==")]
            problems.append(" | ".join(tail[-3:]))
        if queue is not None:
            queue.purge()
        shutil.rmtree(queue_dir, ignore_errors=True)
        delivered, queued = summary_counts(output)
        check = "; ".join(problems) if problems else "ok"
        if variant not in ("bare", "disabled"):
            check = f"d={delivered} q={queued}; {check}"
        return Count(
            variant=variant,
            tests=tests,
            instructions=int(collected[-1]) if collected else 0,
            wall=wall,
            rc=rc,
            ok=not problems,
            check=check,
        )

    def warm_up(self) -> None:
        """Every run once natively, unmeasured: bytecode written, the test files rewritten."""
        start = time.perf_counter()
        for n in self.sizes:
            for variant in self.variants:
                count = self.run_one(variant, n, callgrind=False)
                if not count.ok:
                    print(f"# warm-up {n} tests {variant}: {count.check}", flush=True)
        took = time.perf_counter() - start
        print(f"# warm-up: every run once natively, {took:.1f} s", flush=True)

    def run(self) -> None:
        self.warm_up()
        tasks = [(v, n) for n in self.sizes for v in self.variants]

        def one(task: tuple[str, int]) -> Count:
            count = self.run_one(*task)
            flag = "" if count.ok else "  <-- FAILED CHECK"
            with self._lock:
                self.counts.append(count)
                print(
                    f"{count.tests:>6} tests {count.variant:9}"
                    f" {count.instructions / 1e6:10.1f} M instructions"
                    f" {count.wall:7.1f} s  {count.check}{flag}",
                    flush=True,
                )
            return count

        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            list(pool.map(one, tasks))

    def table(self) -> list[dict[str, Any]]:
        found = {(c.variant, c.tests): c for c in self.counts}
        small, large = self.sizes[0], self.sizes[-1]

        def line(variant: str) -> tuple[float, float] | None:
            """Instructions per test and fixed instructions, from the two sizes."""
            a, b = found.get((variant, small)), found.get((variant, large))
            if len(self.sizes) < 2 or a is None or b is None or not (a.ok and b.ok):
                return None
            slope = (b.instructions - a.instructions) / (large - small)
            return slope, a.instructions - slope * small

        bare_line = line("bare")
        rows: list[dict[str, Any]] = []
        for variant in self.variants:
            row: dict[str, Any] = {"variant": variant, "checks_ok": True}
            for n in self.sizes:
                mine, bare = found.get((variant, n)), found.get(("bare", n))
                row[f"minstr_{n}"] = round(mine.instructions / 1e6, 1) if mine else None
                row[f"ratio_{n}"] = (
                    round(mine.instructions / bare.instructions, 3)
                    if mine and bare and mine.instructions and bare.instructions
                    else None
                )
                row["checks_ok"] = row["checks_ok"] and bool(mine and mine.ok)
            own = line(variant)
            row["per_test"] = round(own[0]) if own else None
            row["fixed_m"] = round(own[1] / 1e6, 1) if own else None
            row["extra_per_test"] = row["extra_fixed_m"] = None
            if own is not None and bare_line is not None:
                row["extra_per_test"] = round(own[0] - bare_line[0])
                row["extra_fixed_m"] = round((own[1] - bare_line[1]) / 1e6, 1)
            rows.append(row)
        return rows


def _cell(value: Any, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def print_table(rows: list[dict[str, Any]], sizes: Sequence[int]) -> None:
    header = f"{'variant':9}"
    for n in sizes:
        header += f" {f'M instr @{n}':>14} {'ratio':>6}"
    header += f" {'instr/test':>10} {'extra/test':>10} {'fixed M':>8} {'extra fixed M':>13}  checks"
    print(header)
    print("-" * len(header))
    for r in rows:
        text = f"{r['variant']:9}"
        for n in sizes:
            text += f" {_cell(r[f'minstr_{n}'], ',.1f', 14)} {_cell(r[f'ratio_{n}'], '.3f', 6)}"
        text += (
            f" {_cell(r['per_test'], ',', 10)} {_cell(r['extra_per_test'], ',', 10)}"
            f" {_cell(r['fixed_m'], ',.1f', 8)} {_cell(r['extra_fixed_m'], ',.1f', 13)}"
            f"  {'ok' if r['checks_ok'] else 'FAILED'}"
        )
        print(text)


def valgrind_version() -> str | None:
    if shutil.which("valgrind") is None:
        return None
    try:
        return subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pytest-simscope CPU overhead as instruction counts (callgrind)"
    )
    parser.add_argument(
        "--tests",
        type=int,
        default=1000,
        help="trivial tests in the larger suite (default 1000); the smaller gets a fifth",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="N",
        help="suite sizes instead of --tests/5 and --tests: two for the fixed/per-test split,"
        " one for the counts alone",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=VARIANTS,
        metavar="VARIANT",
        help=f"run only this variant (repeatable): {', '.join(VARIANTS)}; the ratios and"
        " extras need bare",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        choices=(1, 2),
        help="children under callgrind at once (default 1; 2 on a 2-core machine)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="kill a child after this many seconds (default 1800)",
    )
    parser.add_argument(
        "--snapshot",
        metavar="REV",
        help="measure the package as committed at REV (e.g. HEAD), exported with git archive,"
        " instead of the working tree that others may be editing",
    )
    parser.add_argument("--json", type=Path, help="also write the table and the counts here")
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="children run with the cyclic garbage collector off (a steadier per-test slope)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.only = args.only or list(VARIANTS)
    sizes = args.sizes or [max(1, args.tests // 5), args.tests]
    if len(set(sizes)) != len(sizes) or len(sizes) > 2 or min(sizes) < 1:
        parser.error("--sizes takes one or two different positive sizes")
    args.sizes = sorted(sizes)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    version = valgrind_version()
    if version is None:
        print(
            "bench_instructions.py: valgrind is not installed; install it with"
            " `apt-get install valgrind` (Debian/Ubuntu) and run again",
            file=sys.stderr,
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="simscope-bench-instr-"))
    try:
        with Instructions(args, workdir) as bench:
            sizes = " and ".join(str(n) for n in args.sizes)
            print(f"# code: {bench.code}", flush=True)
            if args.no_gc:
                print("# garbage collector: off in the children (--no-gc)", flush=True)
            print(
                f"# pytest-simscope instructions: {sizes} trivial tests;"
                f" {', '.join(bench.variants)}; {version} (callgrind);"
                f" jobs {args.jobs}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}",
                flush=True,
            )
            print(f"# load average at start: {load_average()}", flush=True)
            bench.run()
            print(f"# load average at end: {load_average()}", flush=True)
            if bench.snapshot is None and code_state() != bench.code:
                print(
                    f"# WARNING: the code changed during the run (now {code_state()});"
                    " the counts may mix versions: --snapshot HEAD measures one commit",
                    flush=True,
                )
            rows = bench.table()
        print()
        print_table(rows, args.sizes)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "code": bench.code,
                        "python": sys.version.split()[0],
                        "sizes": args.sizes,
                        "rows": rows,
                        "counts": [asdict(c) for c in bench.counts],
                    },
                    indent=2,
                )
            )
        return 0 if all(r["checks_ok"] for r in rows) else 1
    finally:
        if args.keep:
            print(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
