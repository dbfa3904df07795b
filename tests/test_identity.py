"""Identity rules, for every input: safe folder-name fragments, uniqueids, start times."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_simscope import identity
from pytest_simscope.identity import (
    MAX_UNIQUEID,
    SeenHashes,
    StartClock,
    job_slug,
    make_uniqueid,
    safe_slug,
)

SAFE = re.compile(r"[A-Za-z0-9._-]*")
RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(10)}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that hits the interesting cases often: separators, dots, reserved names, unicode,
# lone surrogates (undecodable file names), control characters and long runs.
PIECES = st.sampled_from(
    [
        "/", "::", "[", "]", "..", ".", " ", "-", "_", "@", "#", "%", "~", ":", "\\",
        "CON", "con", "Nul", "COM1", "lpt9", "AUX.txt", "prn.", "\x00", "\udcff", "é", "ß",
        "Ω", "日本", "\u200b", "test_a.py", "a" * 60,
    ]
)
NASTY_TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=12).map("".join),
)


def assert_safe_name(name: str, max_len: int) -> None:
    assert SAFE.fullmatch(name), name
    assert len(name) <= max_len
    assert name not in (".", "..")
    assert not name.endswith((".", " "))
    assert name.split(".")[0].upper() not in RESERVED, name


@FAST
@given(text=NASTY_TEXT, max_len=st.integers(min_value=2, max_value=80))
def test_safe_slug_is_safe(text: str, max_len: int) -> None:
    assert_safe_name(safe_slug(text, max_len), max_len)


@FAST
@given(nodeid=NASTY_TEXT)
def test_job_slug_is_safe_and_never_empty(nodeid: str) -> None:
    slug = job_slug(nodeid)
    assert slug
    assert_safe_name(slug, 48)


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("LPT1.tar.gz", "_LPT1.tar.gz"),
        ("COM¹", "_COM1"),  # Windows reserves the superscript digits too
        ("CONSOLE", "CONSOLE"),
        ("..", ""),
        ("../../etc/passwd", "etc-passwd"),
        ("a..b...c", "a.b.c"),
        ("Grüße aus Köln", "Grue-aus-Koln"),  # ß has no ASCII base: dropped
        ("trailing. ", "trailing"),
    ],
)
def test_safe_slug_examples(text: str, slug: str) -> None:
    assert safe_slug(text) == slug


@pytest.mark.parametrize(
    ("nodeid", "slug"),
    [
        ("tests/test_a.py::test_b[1-2]", "test_a-test_b-1-2"),
        ("tests/test_a.py::TestC::test_d", "test_a-TestC-test_d"),
        ("tests/CON.py", "_CON"),
        ("日本", "test"),
        ("", "test"),
    ],
)
def test_job_slug_examples(nodeid: str, slug: str) -> None:
    assert job_slug(nodeid) == slug


# --- uniqueid -----------------------------------------------------------------------------

NODEIDS = st.one_of(
    NASTY_TEXT,
    st.builds(
        lambda path, name, param: f"{path}.py::{name}{param}",
        st.text(min_size=1, max_size=30),
        st.text(min_size=1, max_size=20),
        st.one_of(st.just(""), st.text(max_size=300).map(lambda p: f"[{p}]")),
    ),
)
WORKERS = st.one_of(st.none(), st.sampled_from(["gw0", "gw1", "gw10"]), st.text(max_size=8))
SHARDS = st.one_of(st.none(), st.sampled_from(["s1", "s:2"]), st.text(max_size=8))
OCCURRENCES = st.integers(min_value=1, max_value=1000)
IDENTITIES = st.tuples(NODEIDS, WORKERS, SHARDS, OCCURRENCES)


def canonical(nodeid: str, worker: str | None, shard: str | None, occurrence: int) -> tuple[
    str, str, str, int
]:
    """Inputs that mean the same job: no worker/shard is the same as an empty one."""
    return nodeid, worker or "", shard or "", max(occurrence, 1)


def uid(identity: tuple[str, str | None, str | None, int]) -> str:
    nodeid, worker, shard, occurrence = identity
    return make_uniqueid(nodeid, worker=worker, shard=shard, occurrence=occurrence)


@FAST
@given(identity=IDENTITIES)
def test_uniqueid_is_deterministic_bounded_and_encodable(
    identity: tuple[str, str | None, str | None, int],
) -> None:
    first = uid(identity)
    assert first == uid(identity)
    assert first
    assert len(first) <= MAX_UNIQUEID
    first.encode("utf-8")  # a lone surrogate would make the message unsendable


@settings(max_examples=500, deadline=None)
@given(a=IDENTITIES, b=IDENTITIES)
def test_uniqueid_is_distinct_for_distinct_inputs(
    a: tuple[str, str | None, str | None, int], b: tuple[str, str | None, str | None, int]
) -> None:
    if canonical(*a) != canonical(*b):
        assert uid(a) != uid(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # Each pair would meet if the separators were not escaped.
        (("t@gw0", None, None, 1), ("t", "gw0", None, 1)),
        (("t#2", None, None, 1), ("t", None, None, 2)),
        (("t@gw0#2", None, None, 1), ("t", "gw0", None, 2)),
        (("s:t.py::x", None, None, 1), ("t.py::x", None, "s", 1)),
        (("a:b:t.py::x", None, None, 1), ("b:t.py::x", None, "a", 1)),
        (("::x", None, "s", 1), ("s:::x", None, None, 1)),
        (("x", None, "a:b", 1), ("b:x", None, "a", 1)),
        (("t", "gw0@1", None, 1), ("t@gw0", "1", None, 1)),
        (("\udcff", None, None, 1), ("\\udcff", None, None, 1)),
        (("", None, None, 1), ("%00", None, None, 1)),
        (("<unnamed>", None, None, 1), ("", None, None, 1)),
    ],
)
def test_uniqueid_separator_clashes(
    a: tuple[str, str | None, str | None, int], b: tuple[str, str | None, str | None, int]
) -> None:
    assert uid(a) != uid(b)


def test_uniqueid_of_ordinary_ids_is_readable() -> None:
    nodeid = "tests/test_a.py::TestB::test_c[1-x.y/z]"
    assert make_uniqueid(nodeid) == nodeid
    assert make_uniqueid(nodeid, worker="gw3") == f"{nodeid}@gw3"
    assert make_uniqueid(nodeid, occurrence=2) == f"{nodeid}#2"
    assert make_uniqueid(nodeid, shard="nightly", worker="gw1", occurrence=3) == (
        f"nightly:{nodeid}@gw1#3"
    )


@FAST
@given(
    nodeid=st.lists(
        st.sampled_from([":", "::", "a", "/", "%", "@", "#", "~", "[", "\ud800", "x" * 60]),
        max_size=12,
    ).map("".join)
)
def test_uniqueid_shortcut_agrees_with_the_escaping(nodeid: str) -> None:
    # make_uniqueid returns a node id that needs no escaping as it is: the same answer.
    slow = identity._bounded(identity._escape_nodeid(nodeid)) if nodeid else "%00"
    assert make_uniqueid(nodeid) == slow


@FAST
@given(
    prefix=st.text(min_size=MAX_UNIQUEID, max_size=MAX_UNIQUEID + 50),
    tails=st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=5, unique=True),
)
def test_long_uniqueids_are_hashed_and_stay_distinct(prefix: str, tails: list[str]) -> None:
    """Ids that share their first 240 characters still differ: the hash covers it all."""
    ids = [make_uniqueid(prefix + tail) for tail in tails]
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert len(value) <= MAX_UNIQUEID
        assert re.search(r"~[0-9a-f]{16}$", value)


# --- start times ------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    epochs=st.lists(
        st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False), min_size=1,
        max_size=200,
    )
)
def test_start_clock_never_repeats(epochs: list[float]) -> None:
    clock = StartClock()
    claimed = [clock.claim(epoch) for epoch in epochs]
    assert len(set(claimed)) == len(claimed)
    for moment, epoch in zip(claimed, epochs, strict=True):
        assert moment.tzinfo is not None and moment.utcoffset() is not None
        assert moment.timestamp() >= round(epoch * 1_000_000) / 1_000_000 - 1e-6


def test_start_clock_many_claims_of_one_instant() -> None:
    clock = StartClock()
    epoch = 1_767_225_600.123456  # 2026-01-01, with microseconds a float cannot hold exactly
    claimed = [clock.claim(epoch) for _ in range(20_000)]
    assert len(set(claimed)) == len(claimed)
    # The strings published are distinct too, and one microsecond apart.
    texts = {moment.isoformat(timespec="microseconds") for moment in claimed}
    assert len(texts) == len(claimed)
    steps = {b - a for a, b in itertools.pairwise(claimed)}
    assert steps == {dt.timedelta(microseconds=1)}


def test_start_clock_interleaved_instants() -> None:
    """A moved-on time never takes a microsecond that a later claim asks for itself."""
    clock = StartClock()
    base = 1_700_000_000.0
    claimed = [clock.claim(base + offset * 1e-6) for offset in (0, 0, 0, 1, 2, 1, 0, 5)]
    assert len(set(claimed)) == len(claimed)


def test_start_clock_threads() -> None:
    clock = StartClock()
    results: list[dt.datetime] = []
    lock = threading.Lock()

    def claim_many() -> None:
        mine = [clock.claim(1_700_000_000.5) for _ in range(2_000)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=claim_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 8_000


@settings(max_examples=200, deadline=None)
@given(offsets=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=300))
def test_start_clock_gives_the_first_free_microsecond(offsets: list[int]) -> None:
    """Claims that collide often, in any order: each gets the first microsecond at or
    after its own that no earlier claim took (a plain set is the reference)."""
    clock = StartClock()
    base = 1_700_000_000_000_000
    taken: set[int] = set()
    for offset in offsets:
        expected = base + offset
        while expected in taken:
            expected += 1
        taken.add(expected)
        assert clock.claim_micros((base + offset) / 1_000_000) == expected


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=12), max_size=300))
def test_seen_hashes_agrees_with_a_set(texts: list[str]) -> None:
    seen = SeenHashes()
    seen.MERGE_AT = 7  # merge often: both halves are searched
    plain: set[str] = set()
    for text in texts:
        assert seen.add(text) == (text in plain)
        plain.add(text)
    assert len(seen) == len(plain)
