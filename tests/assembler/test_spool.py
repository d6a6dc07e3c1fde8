"""Spool: the bounded-memory record store of a pending transaction.

In-memory and spilled modes must replay identically, subtransaction aborts cut the
spool back to the subtransaction's first record in both modes, and memory stays
bounded once spilled.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgferry.assembler import Spool

TOP = 1000
S1 = 1001
S2 = 1002
S3 = 1003

Record = tuple[int, bytes]

#: memory limits: never spills, spills at the first record, spills part-way.
LIMITS = [1 << 30, 0, 300]
LIMIT_IDS = ["memory", "spilled", "spills-midway"]


def fill(spool: Spool, records: list[Record]) -> None:
    for subxid, payload in records:
        spool.append(subxid, payload)


def records(n: int, subxid: int = TOP, tag: bytes = b"r") -> list[Record]:
    return [(subxid, tag + str(i).encode() + b"-" + b"x" * (i % 7)) for i in range(n)]


class Model:
    """The specification: a list; aborting a subxid drops everything from its first
    record on (nothing if it has no record)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, subxid: int, payload: bytes) -> None:
        self.records.append((subxid, payload))

    def abort(self, subxid: int) -> None:
        for i, (x, _) in enumerate(self.records):
            if x == subxid:
                del self.records[i:]
                return


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_replay_in_order(limit: int) -> None:
    spool = Spool(memory_limit=limit)
    data = [*records(50), (S1, b""), (S2, b"\x00" * 1000), (TOP, bytes(range(256)))]
    fill(spool, data)
    assert list(spool) == data
    assert spool.count == len(data)
    assert spool.spilled is (limit < 1 << 30)


def test_memory_mode_does_not_spill() -> None:
    spool = Spool(memory_limit=10_000)
    fill(spool, [(TOP, b"x" * 100)] * 10)
    assert not spool.spilled


def test_spills_once_over_the_limit() -> None:
    spool = Spool(memory_limit=1000)
    fill(spool, [(TOP, b"x" * 100)] * 3)
    assert not spool.spilled
    fill(spool, [(TOP, b"x" * 1000)])
    assert spool.spilled
    assert [p for _, p in spool] == [b"x" * 100] * 3 + [b"x" * 1000]


def test_in_memory_list_empties_after_spill() -> None:
    spool = Spool(memory_limit=500)
    fill(spool, records(100))
    assert spool.spilled
    assert spool._records == []
    assert spool._memory == 0
    fill(spool, records(100, S1))
    assert spool._records == []  # later appends go straight to the file
    assert spool.count == 200
    assert list(spool) == records(100) + records(100, S1)


def test_memory_stays_bounded_when_spilled() -> None:
    spool = Spool(memory_limit=64 * 1024)
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(1500):
            spool.append(TOP + i % 3, os.urandom(4096))  # ~6 MB in all
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spool.spilled
    assert peak < 1024 * 1024, f"peak traced memory {peak} bytes"
    assert spool.count == 1500
    assert sum(len(p) for _, p in spool) == 1500 * 4096
    spool.close()


def test_in_memory_spool_holds_its_payloads() -> None:
    # The other side of the previous test: without spilling the payloads stay in
    # memory (so the bound above is the spill's doing, not the measurement's).
    spool = Spool(memory_limit=1 << 30)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(300):
            spool.append(TOP, os.urandom(4096))
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current > 300 * 4096


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_abort_subtransaction(limit: int) -> None:
    spool = Spool(memory_limit=limit)
    head = records(3, TOP, b"top")
    fill(spool, head)
    fill(spool, records(4, S1, b"s1"))
    spool.abort_subtransaction(S1)
    assert list(spool) == head
    assert spool.count == 3
    # the transaction goes on after the rollback
    tail = records(2, TOP, b"after")
    fill(spool, tail)
    assert list(spool) == head + tail
    assert spool.count == 5


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_nested_savepoints(limit: int) -> None:
    # BEGIN; top; SAVEPOINT s1; s1; SAVEPOINT s2; s2; SAVEPOINT s3; s3;
    # ROLLBACK TO s2 (aborts s2 and s3); s1 again; ROLLBACK TO s1; top again.
    spool = Spool(memory_limit=limit)
    fill(spool, [(TOP, b"t1"), (S1, b"a1"), (S1, b"a2"), (S2, b"b1"), (S3, b"c1"), (S3, b"c2")])
    spool.abort_subtransaction(S3)
    spool.abort_subtransaction(S2)
    assert list(spool) == [(TOP, b"t1"), (S1, b"a1"), (S1, b"a2")]
    fill(spool, [(S1, b"a3")])
    assert spool.count == 4
    spool.abort_subtransaction(S1)
    assert list(spool) == [(TOP, b"t1")]
    fill(spool, [(TOP, b"t2")])
    assert list(spool) == [(TOP, b"t1"), (TOP, b"t2")]
    assert spool.count == 2


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_abort_parent_drops_nested_children(limit: int) -> None:
    spool = Spool(memory_limit=limit)
    fill(spool, [(TOP, b"t"), (S1, b"a"), (S2, b"b"), (S2, b"b2")])
    spool.abort_subtransaction(S1)  # the children follow the parent's first record
    assert list(spool) == [(TOP, b"t")]
    assert spool.count == 1


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_abort_subtransaction_that_wrote_nothing(limit: int) -> None:
    spool = Spool(memory_limit=limit)
    data = [(TOP, b"t"), (S1, b"a")]
    fill(spool, data)
    spool.abort_subtransaction(S2)
    spool.abort_subtransaction(12345)
    assert list(spool) == data
    assert spool.count == 2


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_abort_twice_and_rewrite(limit: int) -> None:
    spool = Spool(memory_limit=limit)
    fill(spool, [(TOP, b"t"), (S1, b"a")])
    spool.abort_subtransaction(S1)
    spool.abort_subtransaction(S1)  # nothing left of it: no-op
    fill(spool, [(TOP, b"u"), (S1, b"again")])  # a reused id starts afresh
    spool.abort_subtransaction(S1)
    assert list(spool) == [(TOP, b"t"), (TOP, b"u")]


def test_abort_after_spilling_records_written_in_memory() -> None:
    # The subtransaction's first record was written before the spill, the abort
    # comes after it: the offset must have been translated to the file.
    spool = Spool(memory_limit=200)
    fill(spool, [(TOP, b"t" * 10), (S1, b"a" * 10)])
    assert not spool.spilled
    fill(spool, [(S1, b"b" * 300)])
    assert spool.spilled
    fill(spool, [(S2, b"c" * 10)])
    spool.abort_subtransaction(S2)
    assert list(spool) == [(TOP, b"t" * 10), (S1, b"a" * 10), (S1, b"b" * 300)]
    spool.abort_subtransaction(S1)
    assert list(spool) == [(TOP, b"t" * 10)]
    assert spool.count == 1
    fill(spool, [(TOP, b"z")])
    assert list(spool) == [(TOP, b"t" * 10), (TOP, b"z")]


def test_abort_top_level_empties() -> None:
    for limit in LIMITS:
        spool = Spool(memory_limit=limit)
        fill(spool, records(5) + records(5, S1))
        spool.abort_subtransaction(TOP)
        assert list(spool) == []
        assert spool.count == 0


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_close(limit: int) -> None:
    spool = Spool(memory_limit=limit)
    fill(spool, records(20))
    spool.close()
    assert spool.count == 0
    assert not spool.spilled
    assert list(spool) == []


# -- model-based: random appends and aborts, three memory limits ---------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from([TOP, S1, S2, S3]), st.binary(max_size=40)),
        st.tuples(st.just("abort"), st.sampled_from([S1, S2, S3, 4242]), st.just(b"")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, limit=st.sampled_from([0, 100, 400, 1 << 30]))
def test_matches_the_model(ops: list[tuple[str, int, bytes]], limit: int) -> None:
    spool = Spool(memory_limit=limit)
    model = Model()
    for op, subxid, payload in ops:
        if op == "append":
            spool.append(subxid, payload)
            model.append(subxid, payload)
        else:
            spool.abort_subtransaction(subxid)
            model.abort(subxid)
        assert spool.count == len(model.records)
    assert list(spool) == model.records
    spool.close()
