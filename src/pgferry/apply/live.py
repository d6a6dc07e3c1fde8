"""Streamed transactions applied while they arrive, on a second session.

Contract (:class:`LiveStreams` is the assembler's
:class:`~pgferry.assembler.StreamConsumer`):

* A large transaction that the publisher streams while it is in progress
  (protocol 2, ``streaming = on``) is applied chunk by chunk, as it arrives, in a
  local transaction of its own on a second connection (the *side* session). The
  main applier goes on meanwhile with the transactions that commit before it.
* At its Stream Commit the main batch commits first; then the replication origin
  is moved to the side session, which commits with the origin advanced to the
  transaction's end, and moved back. Local commits stay in remote commit order and
  each one moves the origin with it, so a crash neither loses nor repeats a
  transaction: a side transaction that did not commit is rolled back, and the
  publisher streams it again from its start after the restart.
* Subtransactions: a savepoint is taken before a subtransaction's first change
  (what was staged before it is applied first); its abort (ROLLBACK TO SAVEPOINT
  on the publisher) rolls back to it, as native drops its spooled changes.
* Locks: before each chunk the main batch commits, so the side session never
  waits for a lock of the main session. The main session could wait for the side
  session only where the subscriber differs from the publisher (there, the two
  transactions held no common row lock, or the later one would have waited for
  the streamed one's commit). While a side transaction is open the main session
  waits at most :data:`LOCK_WAIT` for a lock; past that the transaction is applied
  at its commit instead (below).
* One transaction at a time. Others, and any that does not qualify (the worker
  decides: batch mode, no table being synchronised, no skip or retry pending),
  are spooled and applied at their commit, as before.
* Anything unsure makes the worker start again from the origin and apply that
  transaction at its commit, from the spool (:class:`RetrySerial`), as native
  does after a parallel apply worker failed: a conflict (it is logged with the
  commit's LSN and time, and commit-time policies decide by them), an error (it is
  reported with the commit LSN), a table whose sync state decides differently once
  the commit LSN is known, a lock wait past :data:`LOCK_WAIT`, a replicated DDL
  statement (see :mod:`pgferry.ddl.execute`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import psycopg
from psycopg import sql

from pgferry import origins
from pgferry.assembler import Transaction
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import (
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
)
from pgferry.protocol.relations import RelationCache

from . import session as apply_session
from .applier import IDLE, Applier
from .routing import TableFilter

logger = logging.getLogger("pgferry.apply")

#: The longest the main session waits for a lock while a side transaction is open.
LOCK_WAIT = "1s"
#: The commit LSN of a transaction still streaming: past any it can have.
UNKNOWN_COMMIT = Lsn((1 << 64) - 1)

_T = TypeVar("_T")


class RetrySerial(Exception):
    """Start again from the origin and apply streamed transaction ``xid`` at its
    commit (spooled), not as it arrives."""

    def __init__(self, xid: int, why: str) -> None:
        super().__init__(f"streamed transaction {xid} is applied at its commit instead: {why}")
        self.xid = xid


class _StreamRelations(RelationCache):
    """The streamed transaction's own Relation and Type messages first, then the
    session's (pgoutput describes every relation again inside each streamed
    transaction, before its first change to it)."""

    def __init__(self, base: RelationCache) -> None:
        super().__init__()
        self.base = base

    def relation(self, relation_id: int) -> Relation:
        own = self._relations.get(relation_id)
        return own if own is not None else self.base.relation(relation_id)

    def type(self, type_oid: int) -> Type | None:
        own = self._types.get(type_oid)
        return own if own is not None else self.base.type(type_oid)


def _savepoint(subxid: int) -> sql.Identifier:
    return sql.Identifier(f"pgferry_sub_{subxid}")


class LiveStreams:
    """See the module docstring. ``eligible(xid, first_lsn)`` says whether a
    streamed transaction may be applied as it arrives; ``applies`` is the main
    applier's table filter."""

    def __init__(
        self,
        main: Applier,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        synchronous_commit: str,
        applies: TableFilter,
        eligible: Callable[[int, Lsn], bool],
    ) -> None:
        self.main = main
        self._connect = connect
        self.synchronous_commit = synchronous_commit
        self._applies = applies
        self._eligible = eligible
        self._conn: psycopg.Connection[Any] | None = None
        self._applier: Applier | None = None
        self._relations: _StreamRelations | None = None
        self._xid: int | None = None
        self._tx: Transaction | None = None
        self._savepoints: list[int] = []
        # relation id -> (relation, whether its changes were applied)
        self._decided: dict[int, tuple[Relation, bool]] = {}
        #: Transactions applied as they arrived (this worker run).
        self.applied = 0

    def _forget(self) -> None:
        """No transaction is open on the side session any more."""
        self._applier = None
        self._relations = None
        self._xid = None
        self._tx = None
        self._savepoints = []
        self._decided = {}

    @property
    def current(self) -> int | None:
        """The xid of the transaction open on the side session, if any."""
        return self._xid

    # -- StreamConsumer -------------------------------------------------------------

    def stream_open(self, xid: int, lsn: Lsn) -> bool:
        if self._xid is not None or not self._eligible(xid, lsn):
            return False
        main = self.main
        try:
            side = self._side()
        except psycopg.Error as exc:
            logger.warning(
                "subscription %s: no second session to apply xid %d as it streams (%s);"
                " it is applied at its commit",
                main.subscription,
                xid,
                exc,
            )
            return False
        self._xid = xid
        self._tx = Transaction(xid, UNKNOWN_COMMIT, 0, None, None, None, True)
        self._relations = _StreamRelations(main.relations)
        applier = self._applier = Applier(
            side,
            main.subscription,
            main.origin,
            self._relations,
            applies=self._decide,
            conflicts=dataclasses.replace(main.conflicts, records=[], counts=collections.Counter()),
            batching=main.batching,
            background=True,
            keepalive=main.keepalive,
            provisional=True,
            ddl=main.ddl,
        )
        self._main_lock_wait(LOCK_WAIT)
        self._guard(applier.begin, self._tx)
        logger.debug("subscription %s: applying xid %d as it streams", main.subscription, xid)
        return True

    def stream_resume(self, xid: int) -> None:
        # The side session must not meet a lock of the main one: commit its batch.
        self.main.flush()

    def stream_message(self, xid: int, msg: Message) -> None:
        assert xid == self._xid and self._tx is not None and self._applier is not None
        if isinstance(msg, Origin):
            self._tx = self._tx._replace(origin=msg.name, origin_lsn=msg.origin_lsn)
            return
        if isinstance(msg, (Relation, Type)):
            assert self._relations is not None
            self._relations.update(msg)
            return
        assert isinstance(msg, (Insert, Update, Delete, Truncate, LogicalMessage))
        subxid = msg.xid
        if subxid != xid and subxid is not None and subxid not in self._savepoints:
            self._guard(self._applier.checkpoint, self._tx)
            savepoint = sql.SQL("SAVEPOINT {}").format(_savepoint(subxid))
            self._guard(lambda: self._applier_conn().execute(savepoint))
            self._savepoints.append(subxid)
        self._guard(self._applier.change, self._tx, msg)

    def stream_abort(self, xid: int, subxid: int) -> None:
        assert xid == self._xid and self._tx is not None and self._applier is not None
        if subxid == xid:
            self._end()
            return
        if subxid in self._savepoints:
            at = self._savepoints.index(subxid)
            self._guard(self._applier.rollback_to, self._tx, _savepoint(subxid))
            del self._savepoints[at:]

    def stream_commit(self, tx: Transaction, end_lsn: Lsn) -> None:
        assert tx.xid == self._xid and self._tx is not None and self._applier is not None
        applier, side, main = self._applier, self._side(), self.main
        self._guard(applier.checkpoint, self._tx)
        for relation, decided in self._decided.values():
            if bool(self._applies(relation, tx)) != decided:
                self._fail(f"the sync state of {relation.namespace}.{relation.name} changed")
        # Local commits in remote commit order: the main batch (commits before
        # this one) first, then this one, each with the origin.
        main.flush()
        origins.release(main.conn)
        try:
            origins.bind(side, main.origin)
            applier.commit(tx, end_lsn)
            applier.flush()
        except Exception as exc:
            self._abandon()
            self._rebind_main()
            raise RetrySerial(tx.xid, str(exc)) from exc
        self._rebind_main()
        main.settle(end_lsn, applier.rows_applied)
        self.applied += 1
        logger.debug("subscription %s: xid %d committed at %s", main.subscription, tx.xid, end_lsn)
        self._end(rolled_back=False)

    # -- session --------------------------------------------------------------------

    def close(self) -> None:
        """Roll back what is open (the worker stops) and close the side session."""
        self._abandon()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _side(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            apply_session.prepare(conn, self.main.origin, self.synchronous_commit, bind=False)
            self._conn = conn
        return self._conn

    def _applier_conn(self) -> psycopg.Connection[Any]:
        assert self._applier is not None
        return self._applier.conn  # in the side transaction, the writer done

    def _decide(self, relation: Relation, tx: Transaction) -> bool:
        # (Not Applies.ALWAYS: it is asked again at the commit, above.)
        decided = bool(self._applies(relation, tx))
        self._decided[relation.relation_id] = (relation, decided)
        return decided

    def _main_lock_wait(self, value: str | None) -> None:
        # Between transactions, with the batch committed: a SET in a batch that
        # then rolls back would be undone.
        main = self.main
        main.flush()
        if value is None:
            main.conn.execute("RESET lock_timeout")
        else:
            main.conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(value)))

    def _rebind_main(self) -> None:
        with contextlib.suppress(psycopg.Error):
            origins.release(self._side())
        origins.bind(self.main.conn, self.main.origin)

    def _guard(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except RetrySerial:
            raise
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}", exc)

    def _fail(self, why: str, cause: BaseException | None = None) -> NoReturn:
        xid = self._xid
        assert xid is not None
        logger.info(
            "subscription %s: streamed transaction %d will be applied at its commit: %s",
            self.main.subscription,
            xid,
            why,
        )
        self._abandon()
        raise RetrySerial(xid, why) from cause

    def _end(self, *, rolled_back: bool = True) -> None:
        if rolled_back and self._applier is not None:
            self._applier.abort()
        self._forget()
        self._main_lock_wait(None)

    def _abandon(self) -> None:
        """Roll the side transaction back, whatever state things are in."""
        if self._applier is not None:
            self._applier.abort()
        conn = self._conn
        if conn is not None and not conn.closed and conn.info.transaction_status != IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        self._forget()
        with contextlib.suppress(psycopg.Error):
            if not self.main.conn.closed and not self.main.in_transaction:
                self.main.conn.execute("RESET lock_timeout")
