"""Applying committed remote transactions to the subscriber, exactly once.

:class:`Applier` is a :class:`~pgferry.assembler.TransactionConsumer`: for each
remote transaction it opens one local transaction, applies the changes of the
tables it is responsible for, and commits with the replication origin's progress
set to the remote commit's end LSN (``pg_replication_origin_xact_setup``), so the
data and the progress land in the same commit record: after a crash the origin
says exactly which remote transactions are applied. This is native's algorithm
(see ``shared/notes/native-algorithms.md``).

The session runs with ``session_replication_role = replica`` (only ENABLE REPLICA
and ENABLE ALWAYS triggers fire, foreign keys are not checked), ``search_path = ''``
(every name is qualified) and the subscription's ``synchronous_commit``.

Behaviour per change, as native:

* INSERT inserts (a duplicate key is an error);
* UPDATE and DELETE of a row that is not there are skipped and counted
  (``update_missing`` / ``delete_missing``);
* TRUNCATE truncates every listed table it applies, in one statement, with
  RESTART IDENTITY when the publisher used it and without CASCADE (native does not
  cascade on the subscriber);
* logical messages are not applied.

A failing change raises :class:`~pgferry.errors.ApplyError` naming the
subscription, table, remote xid and the transaction's finish LSN; the local
transaction is rolled back, so nothing of it is applied and the origin does not
move.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgferry.assembler import Transaction
from pgferry.catalog import store
from pgferry.errors import ApplyError
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import (
    Change,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    Update,
)
from pgferry.protocol.relations import RelationCache
from pgferry.protocol.timestamps import to_datetime

from .mapping import MappingError, TableMap, build_map

#: Decides whether this worker applies a table's change in a given transaction
#: (the table sync handover uses it); default: every table.
TableFilter = Callable[[Relation, Transaction], bool]


def _all_tables(relation: Relation, tx: Transaction) -> bool:
    return True


def commit_with_origin(remote_lsn: Lsn, remote_time: datetime) -> sql.Composed:
    """``SELECT pg_replication_origin_xact_setup(...); COMMIT`` as ONE message.

    PostgreSQL advances the session's replication origin to the LSN given to
    ``pg_replication_origin_xact_setup`` at the end of the transaction *whether it
    commits or aborts* (``RecordTransactionAbort`` moves it too). Sent as two
    round trips, a worker killed between them leaves a backend that aborts the
    transaction yet records it as replayed: that remote transaction would be lost.
    In one simple-query message the server receives both or neither.
    """
    return sql.SQL(
        "SELECT pg_catalog.pg_replication_origin_xact_setup({}::pg_lsn, {}); COMMIT"
    ).format(sql.Literal(str(remote_lsn)), sql.Literal(remote_time))


class Applier:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        subscription: str,
        origin: str,
        relations: RelationCache,
        *,
        applies: TableFilter = _all_tables,
        skip_lsn: Lsn | None = None,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("the applier manages its transactions: pass an autocommit connection")
        self.conn = conn
        self.subscription = subscription
        self.origin = origin
        self.relations = relations
        self.applies = applies
        self.skip_lsn = skip_lsn
        #: End LSN and local commit order of the last applied remote transaction.
        self.applied_lsn: Lsn | None = None
        self.applied_count = 0
        self._maps: dict[int, TableMap] = {}
        self._skipping = False
        self._update_missing = 0
        self._delete_missing = 0
        self._in_tx = False

    # -- session ------------------------------------------------------------------

    @staticmethod
    def prepare_session(conn: psycopg.Connection[Any], origin: str, synchronous_commit: str) -> Lsn:
        """Set up the apply session; returns the origin's flushed progress.

        Creates the replication origin if missing and binds the session to it.
        """
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET search_path = ''")
        conn.execute(sql.SQL("SET synchronous_commit = {}").format(sql.Literal(synchronous_commit)))
        row = conn.execute("SELECT pg_catalog.pg_replication_origin_oid(%s)", (origin,)).fetchone()
        if row is None or row[0] is None:
            conn.execute("SELECT pg_catalog.pg_replication_origin_create(%s)", (origin,))
        conn.execute("SELECT pg_catalog.pg_replication_origin_session_setup(%s)", (origin,))
        progress = conn.execute(
            "SELECT pg_catalog.pg_replication_origin_progress(%s, false)::text", (origin,)
        ).fetchone()
        return Lsn.parse(progress[0]) if progress and progress[0] else Lsn(0)

    # -- TransactionConsumer --------------------------------------------------------

    def begin(self, tx: Transaction) -> None:
        self._skipping = self.skip_lsn is not None and tx.commit_lsn == self.skip_lsn
        self._update_missing = self._delete_missing = 0
        self.conn.execute("BEGIN")
        self._in_tx = True

    def change(self, tx: Transaction, change: Change) -> None:
        if self._skipping or isinstance(change, LogicalMessage):
            return
        if isinstance(change, Truncate):
            self._truncate(tx, change)
            return
        table = self._map(tx, change.relation_id, type(change).__name__.upper())
        if table is None:
            return
        try:
            if isinstance(change, Insert):
                query, params = table.insert(change.new)
                self.conn.execute(query, params)
            elif isinstance(change, Update):
                query, params = table.update(change.old, change.new)
                if self.conn.execute(query, params).rowcount == 0:
                    self._update_missing += 1
            else:
                assert isinstance(change, Delete)
                query, params = table.delete(change.old)
                if self.conn.execute(query, params).rowcount == 0:
                    self._delete_missing += 1
        except psycopg.Error as exc:
            column = None
            if (exc.sqlstate or "").startswith("22") and not isinstance(change, Delete):
                # A data exception (bad input for the local type...): find the
                # column, which PostgreSQL does not name for input conversions.
                self.conn.execute("ROLLBACK")
                self._in_tx = False
                column = table.failing_column(self.conn, change.new)
            raise self._error(
                exc, tx, table.display, type(change).__name__.upper(), column=column
            ) from None

    def commit(self, tx: Transaction, end_lsn: Lsn) -> None:
        conn = self.conn
        try:
            store.add_missing_counts(
                conn, self.subscription, self._update_missing, self._delete_missing
            )
            if self._skipping:
                # ALTER SUBSCRIPTION ... SKIP: the transaction is consumed, not applied,
                # and the skip is cleared in the same commit.
                store.set_skip_lsn(conn, self.subscription, None)
                self.skip_lsn = None
            conn.execute(commit_with_origin(end_lsn, to_datetime(tx.commit_time)))
        except psycopg.Error as exc:
            raise self._error(exc, tx, None, "COMMIT") from None
        self._in_tx = False
        self.applied_lsn = end_lsn
        self.applied_count += 1

    def message(self, message: LogicalMessage) -> None:
        """Non-transactional messages are not applied."""

    @property
    def in_transaction(self) -> bool:
        """A local transaction is open (a remote one is being applied)."""
        return self._in_tx

    def abort(self) -> None:
        """Roll back the local transaction in progress, if any (after an error)."""
        if self._in_tx and not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("ROLLBACK")
        self._in_tx = False

    # -- helpers ----------------------------------------------------------------------

    def _map(self, tx: Transaction, relation_id: int, op: str) -> TableMap | None:
        relation = self.relations.relation(relation_id)
        if not self.applies(relation, tx):
            return None
        table = self._maps.get(relation_id)
        if table is None or table.relation is not relation:
            try:
                table = build_map(self.conn, relation)
            except MappingError as exc:
                raise ApplyError(
                    f"subscription {self.subscription!r}: {exc} (remote transaction {tx.xid}"
                    f" finished at {tx.commit_lsn}, applying {op})",
                    subscription=self.subscription,
                    table=f"{relation.namespace}.{relation.name}",
                    xid=tx.xid,
                    finish_lsn=str(tx.commit_lsn),
                    hint="create the table or column on the subscriber; replication"
                    " resumes on the next retry",
                ) from None
            self._maps[relation_id] = table
        return table

    def _truncate(self, tx: Transaction, change: Truncate) -> None:
        targets = []
        for relid in change.relation_ids:
            table = self._map(tx, relid, "TRUNCATE")
            if table is not None:
                targets.append(table)
        if not targets:
            return
        query = sql.SQL("TRUNCATE {}{}").format(
            sql.SQL(", ").join(t.target for t in targets),
            sql.SQL(" RESTART IDENTITY" if change.restart_identity else ""),
        )
        try:
            self.conn.execute(query)
        except psycopg.Error as exc:
            names = ", ".join(t.display for t in targets)
            raise self._error(exc, tx, names, "TRUNCATE") from None

    def _error(
        self,
        exc: psycopg.Error,
        tx: Transaction,
        table: str | None,
        op: str,
        *,
        column: str | None = None,
    ) -> ApplyError:
        diag = exc.diag
        text = (diag.message_primary or str(exc)).strip()
        where = []
        if table:
            where.append(f"table {table}")
        if diag.column_name or column:
            where.append(f"column {diag.column_name or column}")
        if diag.constraint_name:
            where.append(f"constraint {diag.constraint_name}")
        detail = f" ({diag.message_detail})" if diag.message_detail else ""
        return ApplyError(
            f"subscription {self.subscription!r}: {text}{detail}; applying {op}"
            f"{' on ' + ', '.join(where) if where else ''} in remote transaction {tx.xid}"
            f" finished at {tx.commit_lsn}",
            subscription=self.subscription,
            table=table,
            xid=tx.xid,
            finish_lsn=str(tx.commit_lsn),
            sqlstate=diag.sqlstate,
            hint=f"fix the data on the subscriber, or skip the transaction with"
            f" pgferry subscription alter {self.subscription} --skip {tx.commit_lsn}",
        )
