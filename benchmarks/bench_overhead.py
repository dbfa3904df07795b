"""How much longer a pytest run takes with pytest-simscope publishing it, against bare pytest.

Two generated suites (5,000 trivial parametrized tests; 500 tests that each sleep 2 ms) are
run in fresh ``python -m pytest`` subprocesses, every variant once per round, the variants'
order rotated from round to round so that a noisy neighbour hurts all of them alike:

* ``bare``      pytest without the plugin (``-p no:simscope``): the reference;
* ``disabled``  the plugin installed but not enabled (no regression name), for information;
* ``offline``   publishing to the offline queue (a fresh ``--simscope-queue-dir`` each run);
* ``amqp``      publishing over AMQP to the local broker, to a bench queue purged each run;
* ``http``      publishing through the RabbitMQ management API of the local broker;
* ``delay``     AMQP through a loopback proxy that holds every broker->client chunk
                50 ms, so every publisher confirm is 50 ms late, with
                ``--simscope-flush-timeout=F``.

Reported per suite and variant: median and minimum wall time of the whole process, median
CPU time (user+sys of the child), the ratio of medians against ``bare`` of the same run,
the ratio of minimums (the least disturbed run of each: a noisy neighbour only ever adds
time), the "paired" ratio (the median of each run's ratio to ``bare`` of its own round,
which cancels a shared machine's slow drift), the target and PASS/MISS.  PASS needs both
the ratio of minimums and the paired ratio within the target: on a shared virtual machine
the same command's wall time moves by 20 % from run to run, which the ratio of medians of
a handful of runs does not average away.
Every plugin run is also checked: each test has exactly one ``job-finish`` (elements of
``batch-job-finish`` counted) in what the broker holds plus what the offline queue holds,
with one ``regr-start`` and one ``regr-finish``.

Every child gets ``BENCH_LAYOUT_PAD`` in its environment, so long that its command line
and environment take the same number of bytes as every other variant's in the same round,
a number drawn at random for each round.  Their size moves where a process's stack
starts: on this machine two command lines a dozen bytes apart (bare's ``-p
no:simscope``) ran the same instructions 1.2 to 1.6 times apart, round after round.  So
the variants of a round share one layout, and the rounds spread over many.

Usage::

    python benchmarks/bench_overhead.py                   # 10 rounds, everything
    python benchmarks/bench_overhead.py --tests 500 --rounds 2 --only amqp
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from delay_proxy import DelayProxy  # noqa: E402

from pytest_simscope.courier import COURIER_ARG  # noqa: E402

HOST = "127.0.0.1"
AMQP_PORT = 5672
API_PORT = 15672
AMQP_URL = f"amqp://guest:guest@{HOST}:{AMQP_PORT}/%2F"
HTTP_URL = f"http://guest:guest@{HOST}:{API_PORT}"
PYTEST_ARGS = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
RUN_TIMEOUT = 900.0
# How long to wait for a broker that another test suite stopped, and how often to rerun a
# sample whose publishing was disturbed by that.
BROKER_WAIT = 180.0
RERUNS = 2

# Overhead targets from issue 3, as ratios of medians against bare pytest.
TARGETS = {"amqp": 1.05, "http": 1.10, "offline": 1.10}
AIMS = {"amqp": 1.03}
# The slow-broker variant: at most DELAY_FACTOR x bare + the flush deadline.
DELAY_FACTOR = 1.10

VARIANTS = ("bare", "disabled", "offline", "amqp", "http", "delay")


# -- running a child and measuring it ---------------------------------------------------


@dataclass
class Run:
    """One child process: wall seconds, CPU seconds, peak RSS in MiB, exit code, output.

    ``helpers_mb``: the peak RSS of pytest-simscope's delivery process, in MiB, sampled
    every 20 ms (``VmHWM``); ``cpu`` includes its CPU time as last sampled (it is not the
    child's child, so the child's rusage does not count it; up to 20 ms of it may be
    missed).
    """

    wall: float
    cpu: float
    maxrss_mb: float
    rc: int
    output: str
    helpers_mb: float = 0.0

    @property
    def total_mb(self) -> float:
        """The peak of the child plus the peaks of its helpers (an upper bound)."""
        return self.maxrss_mb + self.helpers_mb


def _helper_peaks(parent: int, peaks: dict[int, int], cpu: dict[int, float]) -> None:
    """Record the ``VmHWM`` (KiB) and the CPU time so far (s) of every delivery process
    that serves the pytest process *parent*.

    The courier is not pytest's child (the process pytest starts forks it and exits); its
    arguments name it and the pytest process it serves.
    """
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return
    wanted = [COURIER_ARG.encode(), str(parent).encode()]
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if COURIER_ARG.encode() not in args:
                continue
            at = args.index(COURIER_ARG.encode())
            if args[at : at + 2] != wanted:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except (OSError, ValueError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(parent) or "VmHWM" not in fields:
            continue  # its starter (pytest's child), which shows pytest's memory
        kib = int(fields["VmHWM"].split()[0])
        peaks[pid] = max(peaks.get(pid, 0), kib)
        # utime and stime, in clock ticks: fields 14 and 15, counted from after the name.
        after_name = stat.rpartition(b")")[2].split()
        with contextlib.suppress(IndexError, ValueError):
            ticks = int(after_name[11]) + int(after_name[12])
            cpu[pid] = max(cpu.get(pid, 0.0), ticks / os.sysconf("SC_CLK_TCK"))


# Children keep compiled modules here: with PYTHONDONTWRITEBYTECODE set (as on some CI
# machines), every run would compile the plugin (and pytest's rewritten plugins) afresh,
# which an installed package never does.  The warm-up runs fill it.
PYCACHE = Path(tempfile.gettempdir()) / "pytest-simscope-bench-pycache"


def clean_env() -> dict[str, str]:
    """The environment for children: none of our settings leak in from the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSCOPE_")}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


# The bytes every child's command line and environment take (see the module docstring):
# drawn again for each round by new_layout().
_LAYOUT = {"bytes": 16384}


def new_layout() -> None:
    """Draw the size the children's command lines and environments take from now on."""
    _LAYOUT["bytes"] = 16384 + random.randrange(0, 4096, 8)


def layout_env(argv: Sequence[str]) -> dict[str, str]:
    """clean_env() padded so that *argv* and it take the round's number of bytes."""
    env = clean_env()
    used = sum(len(os.fsencode(a)) + 1 for a in argv)
    used += sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 for k, v in env.items())
    name = "BENCH_LAYOUT_PAD"
    env[name] = "." * max(0, _LAYOUT["bytes"] - used - len(name) - 2)
    return env


def run_child(argv: Sequence[str], cwd: Path, timeout: float = RUN_TIMEOUT) -> Run:
    """Run *argv*, measuring wall time and the child's own rusage (``os.wait4``)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        env = layout_env(argv)
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        peaks: dict[int, int] = {}
        helper_cpu: dict[int, float] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                _helper_peaks(proc.pid, peaks, helper_cpu)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
            done.set()
            sampler.join()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    # ru_maxrss is in KiB on Linux.
    return Run(
        wall,
        usage.ru_utime + usage.ru_stime + sum(helper_cpu.values()),
        usage.ru_maxrss / 1024,
        proc.returncode,
        text,
        sum(peaks.values()) / 1024,
    )


def run_pytest(args: Sequence[str], cwd: Path) -> Run:
    return run_child([sys.executable, "-m", "pytest", *args], cwd)


def code_state() -> str:
    """The commit benchmarked, and whether the package had uncommitted changes."""
    root = HERE.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pytest_simscope"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or '?'}" + (f" + {len(dirty)} uncommitted package file(s)" if dirty else "")


def fs_probe(entries: int = 200) -> float:
    """Microseconds for one offline-queue-like entry (mkdir, write a file, rename) here, now.

    The offline queue's cost is a handful of file-system metadata operations per job, and on
    a shared virtual machine their price moves several-fold from minute to minute; printing
    this next to the figures tells a slow disk from a slow plugin.
    """
    root = Path(tempfile.mkdtemp(prefix="simscope-fsprobe-"))
    data = b"{" + b"x" * 500 + b"}"
    try:
        start = time.perf_counter()
        for i in range(entries):
            staging = root / f"s{i}"
            staging.mkdir()
            with open(staging / "job.json", "wb") as handle:
                handle.write(data)
            os.rename(staging, root / f"e{i}")
        return (time.perf_counter() - start) / entries * 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"


# -- the generated suites ---------------------------------------------------------------


def write_suite(root: Path, name: str, count: int, body: str) -> Path:
    """A folder holding one parametrized test file of *count* tests and an empty ini."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    # An ini of its own, so the repository's pytest settings never apply.
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / f"test_{name}.py").write_text(
        "import time\n\nimport pytest\n\n\n"
        f"@pytest.mark.parametrize('i', range({count}))\n"
        f"def test_{name}(i):\n    {body}\n"
    )
    return folder


# -- the broker ---------------------------------------------------------------------------


def _connection(url: str = AMQP_URL, wait: float = BROKER_WAIT) -> Any:
    """A blocking connection; waits up to *wait* seconds for a broker that is down (other
    test suites on a shared machine stop and restart it)."""
    import pika
    import pika.exceptions

    params = pika.URLParameters(url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 30
    deadline = time.monotonic() + wait
    while True:
        try:
            return pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@contextlib.contextmanager
def channel() -> Iterator[Any]:
    conn = _connection()
    try:
        yield conn.channel()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


class BenchQueue:
    """A durable queue on the local broker that a benchmark publishes to and reads back."""

    def __init__(self, name: str) -> None:
        self.name = name
        with channel() as ch:
            ch.queue_declare(name, durable=True)
            ch.queue_purge(name)

    def purge(self) -> None:
        with channel() as ch:
            ch.queue_purge(self.name)

    def depth(self) -> int:
        with channel() as ch:
            return int(ch.queue_declare(self.name, passive=True).method.message_count)

    def take_all(self, idle: float = 5.0) -> list[tuple[str, str, Any]]:
        """Every message on the queue, in order, as (type, correlation_id, body); empties it."""
        found: list[tuple[str, str, Any]] = []
        with channel() as ch:
            expected = int(ch.queue_declare(self.name, passive=True).method.message_count)
            if not expected:
                return found
            ch.basic_qos(prefetch_count=2000)
            for method, props, body in ch.consume(
                self.name, auto_ack=True, inactivity_timeout=idle
            ):
                if method is None:
                    break
                found.append((props.type, props.correlation_id, json.loads(body)))
                if len(found) >= expected:
                    break
            ch.cancel()
        return found

    def delete(self) -> None:
        with contextlib.suppress(Exception), channel() as ch:
            ch.queue_delete(self.name)


def broker_up(wait: float = 0.0) -> bool:
    """Whether AMQP and the management API accept connections (waiting up to *wait* s)."""
    import socket

    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((HOST, AMQP_PORT), timeout=2):
                pass
            with socket.create_connection((HOST, API_PORT), timeout=2):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)


def plugin_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("simscope: warning:")]


# -- checking what a run published --------------------------------------------------------


@dataclass
class Tally:
    """What one run left on the broker and in the offline queue."""

    wire: int = 0  # messages on the wire (a batch counts once)
    elements: Counter[str] = field(default_factory=Counter)  # batch elements counted singly
    finishes: Counter[str] = field(default_factory=Counter)  # uniqueid -> job-finish count
    first: str = ""
    last: str = ""

    def add(self, records: Iterable[tuple[str, Any]]) -> None:
        for kind, body in records:
            self.wire += 1
            if not self.first:
                self.first = kind
            self.last = kind
            if kind == "batch-job-finish" and isinstance(body, list):
                for element in body:
                    self.elements["job-finish"] += 1
                    self.finishes[str(element.get("uniqueid"))] += 1
            else:
                self.elements[kind] += 1
                if kind == "job-finish" and isinstance(body, dict):
                    self.finishes[str(body.get("uniqueid"))] += 1

    @property
    def messages(self) -> int:
        return sum(self.elements.values())

    def problems(self, jobs: int, *, ordered: bool = True) -> list[str]:
        found = []
        if len(self.finishes) != jobs:
            found.append(f"{len(self.finishes)} distinct finished jobs, expected {jobs}")
        twice = sum(1 for n in self.finishes.values() if n != 1)
        if twice:
            found.append(f"{twice} jobs finished more than once")
        for kind in ("regr-start", "regr-finish"):
            if self.elements[kind] != 1:
                found.append(f"{self.elements[kind]} {kind}")
        if ordered and (self.first, self.last) != ("regr-start", "regr-finish"):
            found.append(f"first {self.first or '-'}, last {self.last or '-'}")
        return found


def outbox_records(queue_dir: Path) -> list[tuple[str, Any]]:
    from pytest_simscope.transports.queue import read_outbox

    return [(r["type"], r["body"]) for r in read_outbox(queue_dir)]


_DELIVERED = re.compile(r"(\d+) messages delivered")
_QUEUED = re.compile(r", (\d+) queued in|\((\d+) messages\); deliver")


def summary_counts(output: str) -> tuple[int, int]:
    """Delivered and queued message counts from the plugin's summary line."""
    delivered = _DELIVERED.search(output)
    queued = _QUEUED.search(output)
    q = 0
    if queued:
        q = int(queued.group(1) or queued.group(2))
    return (int(delivered.group(1)) if delivered else 0, q)


# -- the benchmark ------------------------------------------------------------------------


@dataclass
class Sample:
    suite: str
    variant: str
    run: Run
    check: str = ""
    ok: bool = True
    # Why the sample does not count: publishing fell back to the offline queue because the
    # broker went away (another suite on this machine restarts it).
    disturbed: str = ""
    # Which round it belongs to (warm-up runs: -1).
    round: int = -1


class Overhead:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.samples: list[Sample] = []
        self.queues: dict[str, BenchQueue] = {}
        self.proxy: DelayProxy | None = None
        self.counter = 0
        self.runs = 0
        self.suites: dict[str, tuple[Path, int]] = {}
        if "trivial" in args.suites:
            self.suites["trivial"] = (
                write_suite(workdir, "trivial", args.tests, "pass"),
                args.tests,
            )
        if "sleep" in args.suites:
            self.suites["sleep"] = (
                write_suite(workdir, "sleep", args.sleep_tests, "time.sleep(0.002)"),
                args.sleep_tests,
            )
        self.variants = ["bare", *[v for v in VARIANTS[1:] if v in args.only]]

    def __enter__(self) -> Overhead:
        pid = os.getpid()
        network = [v for v in self.variants if v in ("amqp", "http", "delay")]
        if network and not broker_up():
            raise SystemExit(
                "the broker does not answer on 127.0.0.1:5672/15672: run scripts/broker.sh"
            )
        for variant in network:
            self.queues[variant] = BenchQueue(f"simscope-bench-{variant}-{pid}")
        if "delay" in self.variants:
            self.proxy = DelayProxy(
                HOST,
                AMQP_PORT,
                down_delay=self.args.delay,
                lifetime=self.args.proxy_lifetime,
            )
            self.proxy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for queue in self.queues.values():
            queue.delete()

    def variant_args(self, variant: str, queue_dir: Path) -> list[str]:
        common = [*PYTEST_ARGS, *(["-n", str(self.args.workers)] if self.args.workers else [])]
        if variant == "bare":
            return [*common, "-p", "no:simscope"]
        if variant == "disabled":
            return common
        self.counter += 1
        args = [
            *common,
            f"--simscope-regression=bench/{self.counter}",
            f"--simscope-queue-dir={queue_dir}",
        ]
        if variant == "amqp":
            args += [f"--simscope-url={AMQP_URL}"]
        elif variant == "http":
            args += [f"--simscope-url={HTTP_URL}"]
        elif variant == "delay":
            assert self.proxy is not None
            url = f"amqp://guest:guest@{HOST}:{self.proxy.port}/%2F"
            args += [
                f"--simscope-url={url}",
                f"--simscope-flush-timeout={self.args.flush_timeout:g}",
            ]
        if variant in self.queues:
            args += [f"--simscope-amqp-queue={self.queues[variant].name}"]
        return args

    def run_one(self, suite: str, variant: str) -> Sample:
        folder, jobs = self.suites[suite]
        self.runs += 1
        queue_dir = self.workdir / "queues" / f"{variant}-{self.runs}"
        if variant in self.queues:
            broker_up(wait=BROKER_WAIT)
            self.queues[variant].purge()
        run = run_pytest(self.variant_args(variant, queue_dir), folder)
        sample = Sample(suite, variant, run)
        if run.rc != 0:
            sample.ok = False
            tail = " | ".join(run.output.strip().splitlines()[-3:])
            sample.check = f"exit {run.rc}: {tail}"
        elif variant not in ("bare", "disabled"):
            self.verify(sample, jobs, queue_dir)
            if variant in self.queues:
                sample.disturbed = self.disturbance(sample)
            warnings = plugin_warnings(run.output)
            if warnings:
                sample.check += " | " + " | ".join(w.removeprefix("simscope: ") for w in warnings)
        shutil.rmtree(queue_dir, ignore_errors=True)
        # Untimed: the file system's journal commits what this run and its clean-up
        # changed now, not during the next run (thousands of folders made and removed
        # are seconds of kernel time on this machine's virtual disk, charged to whoever
        # touches the file system next).
        os.sync()
        return sample

    def disturbance(self, sample: Sample) -> str:
        """Why a network sample fell back to the offline queue, if the broker was to blame.

        A fallback at the flush deadline of the delay variant is the behaviour measured, not
        a disturbance; any other fallback is one when the broker was unreachable or closed
        the connection, which is what another suite restarting the broker looks like.
        """
        _, queued = summary_counts(sample.run.output)
        if not queued:
            return ""
        warnings = " ".join(plugin_warnings(sample.run.output))
        if "flush timeout" in warnings and sample.variant == "delay":
            return ""
        external = ("connection", "closed", "refused", "reach", "CONNECTION_FORCED", "HTTP 5")
        if any(word in warnings for word in external) or not broker_up():
            return warnings or "fell back to the offline queue while the broker was down"
        return ""

    def verify(self, sample: Sample, jobs: int, queue_dir: Path) -> None:
        tally = Tally()
        delivered, queued = summary_counts(sample.run.output)
        broker_records: list[tuple[str, Any]] = []
        if sample.variant in self.queues:
            broker_records = [(t, b) for t, _, b in self.queues[sample.variant].take_all()]
        spooled = outbox_records(queue_dir) if queue_dir.exists() else []
        if broker_records and spooled:
            # Split between broker and offline queue: check each part's order separately
            # (the broker got the head of the run, the offline queue the tail).
            tally.add(broker_records)
            ordered_ok = tally.first == "regr-start"
            tally.add(spooled)
            ordered_ok = ordered_ok and tally.last == "regr-finish"
            problems = tally.problems(jobs, ordered=False)
            if not ordered_ok:
                problems.append("order: broker part must start, queued part must end the run")
        else:
            tally.add(broker_records or spooled)
            problems = tally.problems(jobs)
        sample.ok = not problems
        where = f"{len(broker_records)} on broker, {len(spooled)} queued"
        sample.check = (
            f"{len(tally.finishes)}/{jobs} jobs, {tally.messages} msgs ({where});"
            f" summary d={delivered} q={queued}"
        )
        if problems:
            sample.check += "; PROBLEM: " + "; ".join(problems)

    def run(self) -> None:
        rounds = self.args.rounds
        print(f"# code: {code_state()}", flush=True)
        print(f"# load average at start: {load_average()}", flush=True)
        print(f"# file-system probe at start: {fs_probe():.0f} us per entry", flush=True)
        for suite in self.suites:
            for _ in range(self.args.warmup):
                # Every variant once: each imports (and so compiles) different modules.
                for variant in self.variants:
                    warm = self.run_one(suite, variant)
                    print(f"warm-up {suite:8} {variant:8} {warm.run.wall:7.3f} s", flush=True)
        for index in range(rounds):
            new_layout()
            for suite in self.suites:
                k = index % len(self.variants)
                order = self.variants[k:] + self.variants[:k]
                for variant in order:
                    for attempt in range(RERUNS + 1):
                        sample = self.run_one(suite, variant)
                        sample.round = index
                        self.samples.append(sample)
                        flag = "" if sample.ok else "  <-- FAILED CHECK"
                        if sample.disturbed:
                            flag += f"  <-- DISTURBED, not counted: {sample.disturbed[:200]}"
                        print(
                            f"round {index + 1}/{rounds} {suite:8} {variant:9}"
                            f" {sample.run.wall:7.3f} s  cpu {sample.run.cpu:6.2f} s"
                            f"  {sample.check}{flag}",
                            flush=True,
                        )
                        if not sample.disturbed or attempt == RERUNS:
                            break
        print(f"# load average at end: {load_average()}", flush=True)
        print(f"# file-system probe at end: {fs_probe():.0f} us per entry", flush=True)

    def table(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for suite in self.suites:
            counted = [s for s in self.samples if not s.disturbed]
            bare = [s.run for s in counted if s.suite == suite and s.variant == "bare"]
            bare_median = statistics.median(r.wall for r in bare)
            bare_min = min(r.wall for r in bare)
            bare_cpu = statistics.median(r.cpu for r in bare)
            for variant in self.variants:
                mine = [s for s in counted if s.suite == suite and s.variant == variant]
                if not mine:
                    continue
                walls = [s.run.wall for s in mine]
                median = statistics.median(walls)
                ratio = median / bare_median
                cpu = statistics.median(s.run.cpu for s in mine)
                # Each run against bare pytest of its own round (run minutes apart at most):
                # slow drift of a shared machine cancels out.
                bare_of = {
                    s.round: s.run.wall for s in counted if s.suite == suite and s.variant == "bare"
                }
                pairs = [s.run.wall / bare_of[s.round] for s in mine if s.round in bare_of]
                paired = statistics.median(pairs) if pairs else ratio
                # The least disturbed run of each: a neighbour only ever adds time.
                min_ratio = min(walls) / bare_min
                row: dict[str, Any] = {
                    "suite": suite,
                    "variant": variant,
                    "runs": len(walls),
                    "median_s": round(median, 3),
                    "min_s": round(min(walls), 3),
                    "cpu_median_s": round(cpu, 3),
                    "ratio": round(ratio, 3),
                    "min_ratio": round(min_ratio, 3),
                    "paired_ratio": round(paired, 3) if pairs else None,
                    "cpu_ratio": round(cpu / bare_cpu, 3),
                    "target": "",
                    "result": "",
                    "checks_ok": all(s.ok for s in mine),
                    "disturbed": sum(
                        1
                        for s in self.samples
                        if s.disturbed and s.suite == suite and s.variant == variant
                    ),
                }
                if variant in TARGETS:
                    aim = f" (aim {AIMS[variant]:.2f})" if variant in AIMS else ""
                    row["target"] = f"<= {TARGETS[variant]:.2f}{aim}"
                    judged = max(min_ratio, paired)
                    row["result"] = "PASS" if judged <= TARGETS[variant] else "MISS"
                elif variant == "delay":
                    limit = DELAY_FACTOR * bare_median + self.args.flush_timeout
                    row["target"] = (
                        f"<= {limit:.2f} s (1.10x{bare_median:.2f}+{self.args.flush_timeout:g})"
                    )
                    row["result"] = "PASS" if median <= limit else "MISS"
                if not row["checks_ok"]:
                    row["result"] = (row["result"] + " (check failed)").strip()
                if row["disturbed"]:
                    row["result"] = (row["result"] + f" ({row['disturbed']} disturbed)").strip()
                rows.append(row)
        return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'suite':8} {'variant':9} {'runs':>4} {'median s':>9} {'min s':>8} {'ratio':>6}"
        f" {'min':>6} {'paired':>6} {'cpu s':>7} {'cpu ratio':>9}  {'target':34} result"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['suite']:8} {r['variant']:9} {r['runs']:>4} {r['median_s']:>9.3f}"
            f" {r['min_s']:>8.3f} {r['ratio']:>6.3f} {r['min_ratio']:>6.3f}"
            f" {format(r['paired_ratio'], '.3f') if r['paired_ratio'] is not None else '-':>6}"
            f" {r['cpu_median_s']:>7.2f}"
            f" {r['cpu_ratio']:>9.3f}"
            f"  {r['target'] or '-':34} {r['result'] or '-'}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="pytest-simscope overhead against bare pytest")
    parser.add_argument("--rounds", type=int, default=10, help="runs of each variant (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs of every variant per suite first"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=VARIANTS[1:],
        metavar="VARIANT",
        help=f"run only this variant (repeatable; bare always runs): {', '.join(VARIANTS[1:])}",
    )
    parser.add_argument(
        "--suite",
        dest="suites",
        action="append",
        choices=("trivial", "sleep"),
        help="run only this suite (repeatable)",
    )
    parser.add_argument(
        "--tests",
        type=int,
        default=5000,
        help="trivial tests (default 5000); the sleep suite gets a tenth",
    )
    parser.add_argument(
        "--sleep-tests",
        type=int,
        default=None,
        help="tests in the sleep suite (default: --tests / 10)",
    )
    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=5.0,
        help="--simscope-flush-timeout for the delay variant (default 5)",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.05,
        help="seconds the proxy holds each broker->client chunk (default 0.05)",
    )
    parser.add_argument(
        "--proxy-lifetime",
        type=float,
        default=3600.0,
        help="the delay proxy stops by itself after this long (default 3600 s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run every variant under pytest-xdist with N workers (-n N; default: none)",
    )
    parser.add_argument("--json", type=Path, help="also write the table and samples here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.only = args.only or list(VARIANTS[1:])
    args.suites = args.suites or ["trivial", "sleep"]
    if args.sleep_tests is None:
        args.sleep_tests = max(1, args.tests // 10)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="simscope-bench-"))
    try:
        with Overhead(args, workdir) as bench:
            print(
                f"# pytest-simscope overhead: {args.tests} trivial tests, {args.sleep_tests}"
                f" tests sleeping 2 ms; {args.rounds} rounds; {os.cpu_count()} CPUs;"
                f"{f' -n {args.workers};' if args.workers else ''}"
                f" python {sys.version.split()[0]}",
                flush=True,
            )
            bench.run()
            rows = bench.table()
        print()
        print_table(rows)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "rows": rows,
                        "samples": [
                            {
                                "suite": s.suite,
                                "variant": s.variant,
                                "wall": s.run.wall,
                                "cpu": s.run.cpu,
                                "ok": s.ok,
                                "check": s.check,
                                "disturbed": s.disturbed,
                            }
                            for s in bench.samples
                        ],
                    },
                    indent=2,
                )
            )
        failed = [r for r in rows if "check failed" in r["result"]]
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
