"""The transaction assembler, driven by encoded and decoded pgoutput messages.

Messages are written by the test-side encoder (``tests/protocol/encoder.py``),
decoded by :class:`PgoutputDecoder` and fed to :class:`Assembler` with their payload
and WAL position, as the replication stream does; a recording consumer checks what
comes out: committed transactions only, in commit order, with the right LSN, time,
origin and gid, and every change resolvable against the relation cache when it
arrives.
"""

from __future__ import annotations

import logging
import random
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgferry.assembler import Assembler, Transaction
from pgferry.assembler.spool import DEFAULT_MEMORY_LIMIT
from pgferry.errors import ProtocolError
from pgferry.protocol import (
    Begin,
    BeginPrepare,
    Change,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Lsn,
    Message,
    Origin,
    PgoutputDecoder,
    Prepare,
    Relation,
    RelationCache,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    Truncate,
    Update,
)
from tests.protocol import encoder as enc

REL = 16384
REL2 = 16400
COLUMNS = [Column("id", 23, -1, True), Column("payload", 25, -1, False)]
ALTERED = [Column("id", 23, -1, True)]

TOP = 700
SUB = 701
SUB2 = 702
OTHER = 800


class Committed(NamedTuple):
    tx: Transaction
    changes: list[Change]
    end_lsn: Lsn


class Recorder:
    """A TransactionConsumer that records calls and checks their framing."""

    def __init__(self, relations: RelationCache) -> None:
        self.relations = relations
        self.items: list[Committed | LogicalMessage] = []
        self.calls = 0
        self.open: Committed | None = None
        #: for each change: the Relation(s) the cache resolved it to when it arrived
        #: (None where the relation was unknown).
        self.resolved: list[tuple[Relation | None, ...]] = []

    def begin(self, tx: Transaction) -> None:
        self.calls += 1
        assert self.open is None, "begin() inside a transaction"
        self.open = Committed(tx, [], Lsn(0))

    def change(self, tx: Transaction, change: Change) -> None:
        self.calls += 1
        assert self.open is not None, "change() outside begin()/commit()"
        assert tx is self.open.tx
        self.open.changes.append(change)
        if isinstance(change, Truncate):
            ids: tuple[int, ...] = change.relation_ids
        elif isinstance(change, LogicalMessage):
            ids = ()
        else:
            ids = (change.relation_id,)
        self.resolved.append(
            tuple(self.relations.relation(i) if i in self.relations else None for i in ids)
        )

    def commit(self, tx: Transaction, end_lsn: Lsn) -> None:
        self.calls += 1
        assert self.open is not None and tx is self.open.tx
        self.items.append(self.open._replace(end_lsn=end_lsn))
        self.open = None

    def message(self, message: LogicalMessage) -> None:
        self.calls += 1
        assert not message.transactional
        self.items.append(message)

    @property
    def committed(self) -> list[Committed]:
        return [i for i in self.items if isinstance(i, Committed)]


class Session:
    """Decoder + assembler + recorder, fed with encoded payloads."""

    def __init__(self, version: int = 4, memory_limit: int | None = None) -> None:
        self.relations = RelationCache()
        self.rec = Recorder(self.relations)
        self.asm = Assembler(
            self.rec,
            version,
            memory_limit=DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit,
            relations=self.relations,
        )
        self.decoder = PgoutputDecoder(version)
        self.lsn = 0x100_0000

    def send(self, *payloads: bytes, lsn: int | None = None) -> list[Message]:
        out = []
        for payload in payloads:
            if lsn is None:
                self.lsn += 0x100
                at = self.lsn
            else:
                at = lsn
            msg = self.decoder.decode(payload)
            self.asm.feed(msg, payload, Lsn(at))
            out.append(msg)
        return out

    def state(self) -> tuple[bool, bool, Lsn | None]:
        return self.asm.idle, self.asm.between_transactions, self.asm.restart_floor()


def rel(xid: int | None = None, columns: list[Column] = COLUMNS, relid: int = REL) -> bytes:
    return enc.relation(relid, "public", f"t{relid}", "d", columns, xid=xid)


def ins(value: bytes, xid: int | None = None, relid: int = REL) -> bytes:
    return enc.insert(relid, [value, None], xid=xid)


def values(changes: list[Change]) -> list[bytes | None]:
    """The first column of each Insert (the test's row label)."""
    out: list[bytes | None] = []
    for change in changes:
        assert isinstance(change, Insert)
        first = change.new[0]
        assert first is None or isinstance(first, bytes)
        out.append(first)
    return out


IDLE = (True, True, None)


# -- plain transactions --------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_plain_transactions_pass_through_in_order(version: int) -> None:
    s = Session(version)
    assert s.state() == IDLE
    s.send(enc.begin(0x2000, 100, 500))
    assert s.state() == (False, False, None)
    s.send(enc.origin(0x99, "upstream"), rel())
    sent = s.send(
        ins(b"1"),
        enc.update(REL, [b"1", b"new"], old_kind="K", old=[b"1", None]),
        enc.delete(REL, "O", [b"1", b"new"]),
        enc.truncate(1, [REL]),
        enc.message(True, 0x1F00, "app", b"in-tx"),
    )
    # nothing is held back: begin() and every change went out already
    assert s.rec.open is not None and s.rec.open.changes == sent
    assert s.state() == (False, False, None)
    s.send(enc.commit(0, 0x2000, 0x2030, 100))
    assert s.state() == IDLE
    s.send(enc.begin(0x3000, 200, 501), ins(b"2"), enc.commit(0, 0x3000, 0x3030, 200))

    first, second = s.rec.committed
    assert first.tx == Transaction(500, Lsn(0x2000), 100, "upstream", Lsn(0x99), None, False)
    assert first.end_lsn == 0x2030
    assert first.changes == sent
    assert [type(c) for c in first.changes] == [Insert, Update, Delete, Truncate, LogicalMessage]
    assert second.tx == Transaction(501, Lsn(0x3000), 200, None, None, None, False)
    assert values(second.changes) == [b"2"]
    assert second.end_lsn == 0x3030
    assert all(r and all(x is not None for x in r) for r in s.rec.resolved[:4])


def test_empty_plain_transaction() -> None:
    s = Session(1)
    s.send(enc.begin(0x10, 1, 2), enc.commit(0, 0x10, 0x20, 1))
    tx = Transaction(2, Lsn(0x10), 1, None, None, None, False)
    assert s.rec.committed == [Committed(tx, [], Lsn(0x20))]


def test_origin_is_per_transaction() -> None:
    s = Session(1)
    s.send(enc.begin(0x10, 1, 2), enc.origin(5, "a"), rel(), ins(b"x"))
    s.send(enc.commit(0, 0x10, 0x20, 1))
    s.send(enc.begin(0x30, 1, 3), ins(b"y"), enc.commit(0, 0x30, 0x40, 1))
    assert [c.tx.origin for c in s.rec.committed] == ["a", None]
    assert [c.tx.origin_lsn for c in s.rec.committed] == [5, None]


def test_non_transactional_messages_pass_at_once() -> None:
    s = Session(4)
    s.send(enc.message(False, 1, "p", b"outside"))
    assert s.rec.items == [LogicalMessage(None, False, Lsn(1), "p", b"outside")]
    # inside a plain transaction: delivered at once, not as a change of it
    s.send(enc.begin(0x10, 1, 2), rel(), ins(b"a"), enc.message(False, 2, "p", b"during"))
    assert s.rec.items[-1] == LogicalMessage(None, False, Lsn(2), "p", b"during")
    assert s.rec.open is not None and values(s.rec.open.changes) == [b"a"]
    s.send(enc.commit(0, 0x10, 0x20, 1))
    # while a streamed transaction waits for its outcome
    s.send(enc.stream_start(TOP, True), ins(b"s", TOP), enc.stream_stop())
    s.send(enc.message(False, 3, "p", b"between"))
    assert s.rec.items[-1] == LogicalMessage(None, False, Lsn(3), "p", b"between")
    s.send(enc.stream_commit(TOP, 0, 0x50, 0x60, 9))
    kinds = [type(i).__name__ for i in s.rec.items]
    assert kinds == ["LogicalMessage", "LogicalMessage", "Committed", "LogicalMessage", "Committed"]


# -- streamed transactions -----------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("memory_limit", [None, 0], ids=["memory", "spilled"])
def test_streamed_transaction_replays_at_stream_commit(
    version: int, memory_limit: int | None
) -> None:
    s = Session(version, memory_limit)
    s.send(enc.stream_start(TOP, True), lsn=0x5000)
    assert s.state() == (False, False, Lsn(0x5000))
    s.send(rel(TOP), ins(b"a", TOP), ins(b"b", SUB))
    s.send(enc.stream_stop())
    assert s.rec.calls == 0
    assert REL not in s.relations  # the streamed Relation waits for the replay
    assert s.state() == (False, True, Lsn(0x5000))
    s.send(enc.stream_start(TOP, False), lsn=0x6000)
    s.send(ins(b"c", TOP), enc.stream_stop())
    assert s.state() == (False, True, Lsn(0x5000))  # the floor is the first block's
    assert s.rec.calls == 0
    s.send(enc.stream_commit(TOP, 0, 0x7000, 0x7030, 300))
    assert s.state() == IDLE

    (done,) = s.rec.committed
    assert done.tx == Transaction(TOP, Lsn(0x7000), 300, None, None, None, True)
    assert done.end_lsn == 0x7030
    assert values(done.changes) == [b"a", b"b", b"c"]
    assert [c.xid for c in done.changes if isinstance(c, Insert)] == [TOP, SUB, TOP]
    # the Relation took effect at replay, before the first change
    assert all(r[0] is not None and r[0].name == f"t{REL}" for r in s.rec.resolved)
    assert REL in s.relations


def test_streamed_relation_change_takes_effect_only_at_replay() -> None:
    s = Session(2)
    s.send(enc.begin(0x10, 1, 2), rel(), ins(b"old"), enc.commit(0, 0x10, 0x20, 1))
    s.send(enc.stream_start(TOP, True), rel(TOP, ALTERED), enc.insert(REL, [b"new"], xid=TOP))
    s.send(enc.stream_stop())
    assert s.relations.relation(REL).columns == tuple(COLUMNS)  # not yet
    # a plain transaction committing meanwhile still sees the old definition
    s.send(enc.begin(0x30, 1, 3), ins(b"plain"), enc.commit(0, 0x30, 0x40, 1))
    s.send(enc.stream_commit(TOP, 0, 0x50, 0x60, 1))
    assert s.relations.relation(REL).columns == tuple(ALTERED)
    seen = [r[0].columns if r[0] else None for r in s.rec.resolved]
    assert seen == [tuple(COLUMNS), tuple(COLUMNS), tuple(ALTERED)]


def test_streamed_transaction_origin() -> None:
    s = Session(2)
    s.send(enc.stream_start(TOP, True), enc.origin(0x77, "node_b"), rel(TOP), ins(b"a", TOP))
    s.send(enc.stream_stop(), enc.stream_commit(TOP, 0, 0x50, 0x60, 1))
    (done,) = s.rec.committed
    assert (done.tx.origin, done.tx.origin_lsn) == ("node_b", 0x77)


@pytest.mark.parametrize("memory_limit", [None, 0], ids=["memory", "spilled"])
@pytest.mark.parametrize("parallel_form", [False, True])
def test_stream_abort_drops_the_transaction(memory_limit: int | None, parallel_form: bool) -> None:
    s = Session(4, memory_limit)
    s.send(enc.stream_start(TOP, True), rel(TOP), ins(b"a", TOP), ins(b"b", SUB))
    s.send(enc.stream_stop())
    assert not s.asm.idle
    if parallel_form:
        s.send(enc.stream_abort(TOP, TOP, 0x9000, 55))
    else:
        s.send(enc.stream_abort(TOP, TOP))
    assert s.state() == IDLE
    assert s.rec.calls == 0
    assert REL not in s.relations
    # the xid is forgotten: a commit of it now is an error
    with pytest.raises(ProtocolError):
        s.send(enc.stream_commit(TOP, 0, 0x50, 0x60, 1))


def test_stream_abort_of_unknown_transaction_is_ignored() -> None:
    s = Session(2)
    s.send(enc.stream_abort(12345, 12345), enc.stream_abort(12345, 12346))
    assert s.state() == IDLE
    assert s.rec.calls == 0


@pytest.mark.parametrize("memory_limit", [None, 0, 200], ids=["memory", "spilled", "midway"])
def test_subtransaction_abort_loses_only_its_changes(memory_limit: int | None) -> None:
    s = Session(2, memory_limit)
    # BEGIN; a; SAVEPOINT s1; b; SAVEPOINT s2; c; ROLLBACK TO s1; d; COMMIT
    s.send(enc.stream_start(TOP, True), rel(TOP), ins(b"a", TOP), ins(b"b" * 100, SUB))
    s.send(ins(b"c", SUB2), enc.stream_stop())
    s.send(enc.stream_abort(TOP, SUB2), enc.stream_abort(TOP, SUB))
    assert not s.asm.idle and s.rec.calls == 0
    s.send(enc.stream_start(TOP, False), ins(b"d", TOP), enc.stream_stop())
    s.send(enc.stream_abort(TOP, 9999))  # a subtransaction that wrote nothing
    s.send(enc.stream_commit(TOP, 0, 0x50, 0x60, 1))
    (done,) = s.rec.committed
    assert values(done.changes) == [b"a", b"d"]


def test_inner_subtransaction_abort_keeps_the_outer_one() -> None:
    s = Session(2)
    # BEGIN; SAVEPOINT s1; b; SAVEPOINT s2; c; ROLLBACK TO s2; e; COMMIT
    s.send(enc.stream_start(TOP, True), rel(SUB), ins(b"b", SUB), ins(b"c", SUB2))
    s.send(enc.stream_stop(), enc.stream_abort(TOP, SUB2))
    s.send(enc.stream_start(TOP, False), ins(b"e", SUB), enc.stream_stop())
    s.send(enc.stream_commit(TOP, 0, 0x50, 0x60, 1))
    (done,) = s.rec.committed
    assert values(done.changes) == [b"b", b"e"]
    assert REL in s.relations


def test_interleaved_streamed_transactions() -> None:
    s = Session(2)
    s.send(enc.stream_start(TOP, True), lsn=0x5000)
    s.send(rel(TOP), ins(b"a1", TOP), enc.stream_stop())
    s.send(enc.stream_start(OTHER, True), lsn=0x5100)
    s.send(rel(OTHER), ins(b"b1", OTHER), enc.stream_stop())
    # a small plain transaction commits in between and passes through at once
    s.send(enc.begin(0x5180, 1, 650), rel(), ins(b"p"), enc.commit(0, 0x5180, 0x5190, 1))
    assert [c.tx.xid for c in s.rec.committed] == [650]
    s.send(enc.stream_start(TOP, False), lsn=0x5200)
    s.send(ins(b"a2", TOP), enc.stream_stop())
    assert s.state() == (False, True, Lsn(0x5000))
    s.send(enc.stream_commit(OTHER, 0, 0x6000, 0x6010, 2))
    assert s.state() == (False, True, Lsn(0x5000))
    s.send(enc.stream_commit(TOP, 0, 0x6100, 0x6110, 3))
    assert s.state() == IDLE
    assert [(c.tx.xid, values(c.changes)) for c in s.rec.committed] == [
        (650, [b"p"]),
        (OTHER, [b"b1"]),
        (TOP, [b"a1", b"a2"]),
    ]
    assert [c.tx.commit_lsn for c in s.rec.committed] == [0x5180, 0x6000, 0x6100]


def test_restart_floor_follows_the_oldest_pending_stream() -> None:
    s = Session(2)
    s.send(enc.stream_start(OTHER, True), lsn=0x9000)
    s.send(ins(b"x", OTHER), enc.stream_stop())
    s.send(enc.stream_start(TOP, True), lsn=0x8000)  # floors are compared, not ordered
    s.send(ins(b"y", TOP), enc.stream_stop())
    assert s.asm.restart_floor() == 0x8000
    s.send(enc.stream_abort(TOP, TOP))
    assert s.asm.restart_floor() == 0x9000
    s.send(enc.stream_commit(OTHER, 0, 0x9100, 0x9110, 1))
    assert s.asm.restart_floor() is None


# -- two-phase transactions ----------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("memory_limit", [None, 0], ids=["memory", "spilled"])
def test_prepared_transaction_replays_at_commit_prepared(
    version: int, memory_limit: int | None
) -> None:
    s = Session(version, memory_limit)
    s.send(enc.begin_prepare(0x8000, 0x8030, 400, 900, "g1"))
    assert s.state() == (False, False, Lsn(0x8000))
    s.send(enc.origin(0x44, "node_c"), ins(b"a"), ins(b"b"))
    s.send(enc.prepare(0, 0x8000, 0x8030, 400, 900, "g1"))
    assert s.rec.calls == 0
    assert s.asm.pending_prepared == ["g1"]
    assert s.state() == (False, True, Lsn(0x8000))
    # other transactions go on meanwhile
    s.send(enc.begin(0x8100, 1, 901), ins(b"p"), enc.commit(0, 0x8100, 0x8110, 1))
    assert [c.tx.xid for c in s.rec.committed] == [901]
    s.send(enc.commit_prepared(0, 0x9000, 0x9030, 500, 900, "g1"))
    assert s.state() == IDLE
    assert s.asm.pending_prepared == []
    done = s.rec.committed[-1]
    assert done.tx == Transaction(900, Lsn(0x9000), 500, "node_c", Lsn(0x44), "g1", False)
    assert done.end_lsn == 0x9030
    assert values(done.changes) == [b"a", b"b"]
    assert [c.xid for c in done.changes if isinstance(c, Insert)] == [None, None]


def test_rollback_prepared_drops() -> None:
    s = Session(3)
    s.send(enc.begin_prepare(0x8000, 0x8030, 400, 900, "g1"), ins(b"a"))
    s.send(enc.prepare(0, 0x8000, 0x8030, 400, 900, "g1"))
    s.send(enc.rollback_prepared(0, 0x8030, 0x9030, 400, 500, 900, "g1"))
    assert s.state() == IDLE
    assert s.rec.calls == 0
    assert s.asm.pending_prepared == []


def test_several_prepared_transactions_resolve_by_gid() -> None:
    s = Session(3)
    for n, gid in enumerate(["g1", "g2", "g3"]):
        base = 0x8000 + n * 0x100
        s.send(enc.begin_prepare(base, base + 0x30, n, 900 + n, gid), ins(gid.encode()))
        s.send(enc.prepare(0, base, base + 0x30, n, 900 + n, gid))
    assert s.asm.pending_prepared == ["g1", "g2", "g3"]
    assert s.asm.restart_floor() == 0x8000
    s.send(enc.commit_prepared(0, 0xA000, 0xA030, 7, 902, "g3"))
    s.send(enc.rollback_prepared(0, 0x8030, 0xA100, 0, 8, 900, "g1"))
    assert s.asm.restart_floor() == 0x8100
    s.send(enc.commit_prepared(0, 0xA200, 0xA230, 9, 901, "g2"))
    assert [(c.tx.gid, values(c.changes)) for c in s.rec.committed] == [
        ("g3", [b"g3"]),
        ("g2", [b"g2"]),
    ]
    assert s.state() == IDLE


@pytest.mark.parametrize("memory_limit", [None, 0], ids=["memory", "spilled"])
def test_stream_prepare_then_commit_prepared(memory_limit: int | None) -> None:
    s = Session(3, memory_limit)
    s.send(enc.stream_start(TOP, True), lsn=0x5000)
    s.send(rel(TOP), ins(b"a", TOP), ins(b"b", SUB), enc.stream_stop())
    s.send(enc.stream_abort(TOP, SUB))
    s.send(enc.stream_start(TOP, False), ins(b"c", TOP), enc.stream_stop())
    assert REL not in s.relations
    s.send(enc.stream_prepare(0, 0x6000, 0x6030, 450, TOP, "sg"))
    assert s.rec.calls == 0
    assert s.asm.pending_prepared == ["sg"]
    assert s.state() == (False, True, Lsn(0x5000))
    # pgoutput does not count relations streamed in a prepared transaction as
    # sent: they take effect when the transaction is replayed.
    assert REL not in s.relations
    s.send(enc.commit_prepared(0, 0x7000, 0x7030, 460, TOP, "sg"))
    assert s.state() == IDLE
    (done,) = s.rec.committed
    assert done.tx == Transaction(TOP, Lsn(0x7000), 460, None, None, "sg", True)
    assert done.end_lsn == 0x7030
    assert values(done.changes) == [b"a", b"c"]
    assert REL in s.relations


def test_stream_prepare_then_rollback_prepared() -> None:
    s = Session(4)
    s.send(enc.stream_start(TOP, True), rel(TOP), ins(b"a", TOP), enc.stream_stop())
    s.send(enc.stream_prepare(0, 0x6000, 0x6030, 450, TOP, "sg"))
    s.send(enc.rollback_prepared(0, 0x6030, 0x7030, 450, 470, TOP, "sg"))
    assert s.state() == IDLE
    assert s.rec.calls == 0
    assert REL not in s.relations  # later transactions get their own Relation


def test_restart_floor_with_streams_and_prepared_pending() -> None:
    s = Session(3)
    s.send(enc.begin_prepare(0x8000, 0x8030, 1, 900, "g"), ins(b"a"))
    assert s.state() == (False, False, Lsn(0x8000))
    s.send(enc.prepare(0, 0x8000, 0x8030, 1, 900, "g"))
    s.send(enc.stream_start(TOP, True), lsn=0x8100)
    assert s.state() == (False, False, Lsn(0x8000))
    s.send(ins(b"s", TOP), enc.stream_stop())
    assert s.state() == (False, True, Lsn(0x8000))
    s.send(enc.commit_prepared(0, 0x8200, 0x8230, 2, 900, "g"))
    assert s.state() == (False, True, Lsn(0x8100))
    s.send(enc.stream_commit(TOP, 0, 0x8300, 0x8330, 3))
    assert s.state() == IDLE


def test_commit_prepared_of_unknown_gid_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Session(3)
    with caplog.at_level(logging.WARNING, logger="pgferry.assembler"):
        s.send(enc.commit_prepared(0, 0x9000, 0x9030, 5, 900, "lost"))
    assert s.rec.calls == 0
    assert s.state() == IDLE
    assert any("lost" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("outcome", ["pending", "commit", "rollback"])
def test_relation_sent_in_a_prepared_transaction_serves_later_transactions(outcome: str) -> None:
    # pgoutput marks a relation's schema as sent as soon as it writes the Relation
    # message of a non-streamed transaction - prepared ones included (only streamed
    # blocks are tracked apart). A transaction committed after the PREPARE gets no
    # Relation message of its own, so its changes must resolve against the one that
    # came inside Begin Prepare .. Prepare.
    s = Session(3)
    s.send(enc.begin_prepare(0x8000, 0x8030, 1, 900, "g"), rel(), ins(b"prepared"))
    s.send(enc.prepare(0, 0x8000, 0x8030, 1, 900, "g"))
    if outcome == "commit":
        s.send(enc.commit_prepared(0, 0x8100, 0x8130, 2, 900, "g"))
    elif outcome == "rollback":
        s.send(enc.rollback_prepared(0, 0x8030, 0x8130, 1, 2, 900, "g"))
    s.send(enc.begin(0x8200, 3, 901), ins(b"later"), enc.commit(0, 0x8200, 0x8230, 3))
    later = s.rec.committed[-1]
    assert values(later.changes) == [b"later"]
    assert REL in s.relations
    assert s.rec.resolved[-1][0] is not None


# -- spilled replay is identical -----------------------------------------------------------


def scenario(memory_limit: int | None) -> list[Committed | LogicalMessage]:
    s = Session(4, memory_limit)
    big = b"x" * 3000
    s.send(enc.stream_start(TOP, True), rel(TOP), rel(TOP, relid=REL2))
    for i in range(40):
        s.send(ins(b"%d" % i + big, TOP if i % 3 else SUB))
        if i == 20:
            s.send(enc.stream_stop(), enc.stream_start(OTHER, True), rel(OTHER))
            s.send(ins(b"other", OTHER), enc.truncate(0, [REL, REL2], xid=OTHER))
            s.send(enc.stream_stop(), enc.stream_start(TOP, False))
    s.send(enc.message(True, 0x42, "m", big, xid=SUB2), ins(b"sub2", SUB2))
    s.send(enc.stream_stop(), enc.stream_abort(TOP, SUB2))
    s.send(enc.stream_prepare(0, 0x9000, 0x9030, 1, TOP, "g"))
    s.send(enc.begin_prepare(0x9100, 0x9130, 2, 950, "h"))
    s.send(*(ins(b"p%d" % i + big) for i in range(10)), enc.prepare(0, 0x9100, 0x9130, 2, 950, "h"))
    s.send(enc.stream_commit(OTHER, 0, 0x9200, 0x9230, 3))
    s.send(enc.commit_prepared(0, 0x9300, 0x9330, 4, 950, "h"))
    s.send(enc.commit_prepared(0, 0x9400, 0x9430, 5, TOP, "g"))
    assert s.state() == IDLE
    return s.rec.items


def test_spilled_replay_is_identical() -> None:
    reference = scenario(None)
    assert [c.tx.xid for c in reference if isinstance(c, Committed)] == [OTHER, 950, TOP]
    assert sum(len(c.changes) for c in reference if isinstance(c, Committed)) == 2 + 10 + 40
    for limit in (0, 1000, 50_000):
        assert scenario(limit) == reference


# -- protocol violations -------------------------------------------------------------------


def feed(asm: Assembler, *messages: Message, lsn: int = 0x100) -> None:
    for msg in messages:
        asm.feed(msg, enc.encode(msg), Lsn(lsn))


def fresh(version: int = 4) -> Assembler:
    return Assembler(Recorder(RelationCache()), version)


BEGIN = Begin(Lsn(0x10), 1, 2)
INSERT = Insert(None, REL, (b"1",))


@pytest.mark.parametrize(
    "messages",
    [
        [INSERT],
        [LogicalMessage(None, True, Lsn(1), "p", b"")],
        [Commit(0, Lsn(1), Lsn(2), 3)],
        [Origin(Lsn(1), "x")],
        [BEGIN, INSERT, Origin(Lsn(1), "late")],
        [BEGIN, BEGIN],
        [BEGIN, StreamStart(TOP, True)],
        [BEGIN, Prepare(0, Lsn(1), Lsn(2), 3, 4, "g")],
        [BEGIN, BeginPrepare(Lsn(1), Lsn(2), 3, 4, "g")],
        [BeginPrepare(Lsn(1), Lsn(2), 3, 4, "g"), BEGIN],
        [BeginPrepare(Lsn(1), Lsn(2), 3, 4, "g"), StreamStart(TOP, True)],
        [StreamCommit(TOP, 0, Lsn(1), Lsn(2), 3)],
        [StreamPrepare(0, Lsn(1), Lsn(2), 3, TOP, "g")],
        [Prepare(0, Lsn(1), Lsn(2), 3, 4, "g")],
        [StreamStart(TOP, True), BEGIN],
        [StreamStart(TOP, True), Insert(None, REL, ())],  # a change without its xid
    ],
    ids=lambda ms: "+".join(type(m).__name__ for m in ms),
)
def test_protocol_violations(messages: list[Message]) -> None:
    asm = fresh()
    with pytest.raises(ProtocolError):
        feed(asm, *messages)


def test_prepare_must_match_its_begin_prepare() -> None:
    s = Session(3)
    s.send(enc.begin_prepare(0x10, 0x20, 1, 5, "a"))
    with pytest.raises(ProtocolError):
        s.send(enc.prepare(0, 0x10, 0x20, 1, 5, "b"))


# -- model-based: random streamed transactions, interleaved --------------------------------


class StreamedTx(NamedTuple):
    xid: int
    #: blocks of (subxid index, row) writes; after each block, the subxids aborted
    blocks: list[tuple[list[tuple[int, int]], list[int]]]
    outcome: str  # "commit", "abort", "prepare-commit", "prepare-rollback"


@st.composite
def streamed_transactions(draw: st.DrawFn) -> list[StreamedTx]:
    n = draw(st.integers(min_value=1, max_value=3))
    out = []
    for t in range(n):
        xid = 1000 + t * 100
        blocks = draw(
            st.lists(
                st.tuples(
                    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 99)), max_size=5),
                    st.lists(st.integers(1, 3), max_size=2),
                ),
                min_size=1,
                max_size=3,
            )
        )
        outcome = draw(st.sampled_from(["commit", "abort", "prepare-commit", "prepare-rollback"]))
        out.append(StreamedTx(xid, blocks, outcome))
    return out


def expected_rows(tx: StreamedTx) -> list[bytes]:
    """Rows surviving the subtransaction aborts (the model: an abort drops every row
    from the aborted subtransaction's first surviving row on)."""
    rows: list[tuple[int, bytes]] = []
    for writes, aborts in tx.blocks:
        rows += [(sub, f"{tx.xid}:{row}".encode()) for sub, row in writes]
        for sub in aborts:
            first = next((i for i, (s, _) in enumerate(rows) if s == sub), None)
            if first is not None:
                del rows[first:]
    return [r for _, r in rows]


@settings(max_examples=150, deadline=None)
@given(
    txs=streamed_transactions(),
    order=st.randoms(use_true_random=False),
    memory_limit=st.sampled_from([None, 0, 300]),
)
def test_random_interleavings_match_the_model(
    txs: list[StreamedTx], order: random.Random, memory_limit: int | None
) -> None:
    s = Session(4, memory_limit)
    # Interleave whole blocks of the transactions in a random order, keeping each
    # transaction's blocks in sequence; outcomes come in a random order at the end.
    cursors = {tx.xid: 0 for tx in txs}
    remaining = [tx for tx in txs for _ in tx.blocks]
    order.shuffle(remaining)
    for tx in remaining:
        i = cursors[tx.xid]
        cursors[tx.xid] += 1
        writes, aborts = tx.blocks[i]
        s.send(enc.stream_start(tx.xid, i == 0), rel(tx.xid))
        for sub, row in writes:
            s.send(ins(f"{tx.xid}:{row}".encode(), tx.xid + sub))
        s.send(enc.stream_stop())
        for sub in aborts:
            s.send(enc.stream_abort(tx.xid, tx.xid + sub))
        assert s.rec.calls == 0
    finished = list(txs)
    order.shuffle(finished)
    expected: list[tuple[int, list[bytes]]] = []
    for n, tx in enumerate(finished):
        lsn = 0x10_0000 + n * 0x100
        gid = f"gid-{tx.xid}"
        if tx.outcome == "commit":
            s.send(enc.stream_commit(tx.xid, 0, lsn, lsn + 0x10, n))
            expected.append((tx.xid, expected_rows(tx)))
        elif tx.outcome == "abort":
            s.send(enc.stream_abort(tx.xid, tx.xid))
        else:
            s.send(enc.stream_prepare(0, lsn, lsn + 0x10, n, tx.xid, gid))
    for n, tx in enumerate(finished):
        lsn = 0x20_0000 + n * 0x100
        gid = f"gid-{tx.xid}"
        if tx.outcome == "prepare-commit":
            s.send(enc.commit_prepared(0, lsn, lsn + 0x10, n, tx.xid, gid))
            expected.append((tx.xid, expected_rows(tx)))
        elif tx.outcome == "prepare-rollback":
            s.send(enc.rollback_prepared(0, lsn, lsn + 0x10, n, n, tx.xid, gid))
    assert s.state() == IDLE
    got = [(c.tx.xid, values(c.changes)) for c in s.rec.committed]
    assert got == expected
