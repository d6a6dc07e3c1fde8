"""Row-by-row changes and their conflicts: how the applier applies one change
when it is not staged (see :mod:`.staging`), as native does by default and as
the conflict policies say (see :mod:`pgferry.conflict`).

:class:`RowChanges` is the applier's component that detects each conflict type
with the statements of :class:`~.mapping.TableMap`, decides it by policy, logs it
in the same local transaction and applies the resolution; a conflict the policy
stops on is rolled back, logged in a transaction of its own and raised as
:class:`~pgferry.errors.ConflictError`. It works on the connection as the applier
hands it out (:attr:`~pgferry.apply.applier.Applier.conn`: writers waited for,
the batch begun) and rolls back through the applier (the whole batch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from pgferry.assembler import Transaction
from pgferry.catalog.conflict_log import ConflictRecord
from pgferry.conflict import ConflictType, Outcome, Policy, decide
from pgferry.errors import ConflictError
from pgferry.hints import failed_transaction
from pgferry.protocol.messages import UNCHANGED_TOAST, Value
from pgferry.sqltext import ident

from .conflict_context import ConflictContext, LocalRow
from .mapping import Stamps, TableMap


def _unique_conflict(rows: list[LocalRow], single: ConflictType) -> ConflictType:
    """``single`` for one index collision; more (even of one row, as PG 18 counts
    them) make multiple_unique_conflicts."""
    collisions = sum(len(r.indexes) for r in rows)
    return ConflictType.MULTIPLE_UNIQUE_CONFLICTS if collisions > 1 else single


def _collision_key(
    table: TableMap, rows: list[LocalRow], values: tuple[Value, ...]
) -> dict[str, Any] | None:
    """What a unique conflict is about: the key columns, with the remote values, of
    the indexes the local ``rows`` collide on (not the replica identity: a row may
    collide on another unique index)."""
    key: dict[str, Any] = {}
    for _, columns in table.index_keys({n for r in rows for n in r.indexes}, values):
        key.update(columns)
    return key or None


def _pg_key(key: dict[str, Any]) -> str:
    """``(a, b)=(1, x)``, as PostgreSQL writes a key in its messages."""
    names = ", ".join(ident(name) for name in key)
    values = ", ".join("null" if v is None else str(v) for v in key.values())
    text = f"({names})=({values})"
    return text if len(text) <= 200 else text[:197] + "..."


class Provisional(Exception):
    """A change of a transaction applied before its commit was known (see
    :mod:`.live`) met a conflict. What it is logged with and how a commit-time
    policy decides it depend on that commit: the transaction is applied again,
    whole, once it has arrived."""


class RowChanges:
    """One change, one statement (or a few, to detect and resolve a conflict)."""

    def __init__(
        self,
        subscription: str,
        conflicts: ConflictContext,
        connection: Callable[[], psycopg.Connection[Any]],
        rollback: Callable[[], None],
        *,
        provisional: bool = False,
    ) -> None:
        """``connection()``: the connection, ready for a statement of the batch;
        ``rollback()``: roll back the whole batch. ``provisional``: the
        transactions' commits are not known yet: a conflict raises Provisional."""
        self.subscription = subscription
        self.conflicts = conflicts
        self._connection = connection
        self._rollback = rollback
        self.provisional = provisional

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self._connection()

    def _rows(self, query: Any, params: Any) -> list[LocalRow]:
        return [LocalRow.from_row(r) for r in self.conn.execute(query, params).fetchall()]

    def insert(self, tx: Transaction, table: TableMap, new: tuple[Value, ...]) -> None:
        if not table.uniques or not table.on_conflict_ok:
            # Nothing to collide with, or collisions we cannot resolve (a deferrable
            # or expression index): they surface as errors, as in native.
            self.conn.execute(*table.insert(new))
            return
        if self.conn.execute(*table.insert(new, skip_conflicts=True)).rowcount == 1:
            return
        located = table.find_conflicts(new)
        rows = self._rows(*located) if located else []
        if not rows:
            # The colliding row is gone (not possible while we hold the locks of
            # this transaction, but then the plain INSERT says what is wrong).
            self.conn.execute(*table.insert(new))
            return
        ctype = _unique_conflict(rows, ConflictType.INSERT_EXISTS)
        key = _collision_key(table, rows, new)
        if not self.resolve(tx, table, ctype, rows, key=key, remote=new):
            return
        present = {i for i, v in enumerate(new) if v is not UNCHANGED_TOAST}
        if len(rows) == 1 and not table.identity_always.intersection(present):
            # The remote row replaces the local one in place (an UPDATE, which
            # keeps what references it).
            self.conn.execute(*table.update_row(new, rows[0].address))
            return
        for row in rows:
            self.conn.execute(*table.delete_row(row.address))
        self.conn.execute(*table.insert(new))

    def update(
        self,
        tx: Transaction,
        table: TableMap,
        old: tuple[Value, ...] | None,
        new: tuple[Value, ...],
    ) -> None:
        conflicts = self.conflicts
        relation = table.relation
        identity = old if old is not None else new
        key = table.row_json(identity, key_only=True)
        # update_exists is possible on an index other than the replica identity's,
        # or on any when the identity (hence maybe the key) changed.
        check_unique = table.other_uniques or (old is not None and bool(table.uniques))
        policy = conflicts.policy(relation, ConflictType.UPDATE_ORIGIN_DIFFERS)
        if not check_unique and (table.stamps is Stamps.NONE or policy is Policy.APPLY_REMOTE):
            # One statement: the outcome does not depend on the local row.
            if table.stamps is Stamps.NONE:
                found = self.conn.execute(*table.update(old, new)).rowcount > 0
                rows: list[LocalRow] = []
            else:
                rows = self._rows(*table.update_returning(old, new))
                found = bool(rows)
                if rows and conflicts.origin_differs(self.conn, rows[0]):
                    self._applied(
                        tx, table, ConflictType.UPDATE_ORIGIN_DIFFERS, rows, key=key, remote=new
                    )
            if not found:
                self._update_missing(tx, table, key, new)
            return
        located = self._rows(*table.locate_row(identity))
        if not located:
            self._update_missing(tx, table, key, new)
            return
        row = located[0]
        if conflicts.origin_differs(self.conn, row) and not self.resolve(
            tx, table, ConflictType.UPDATE_ORIGIN_DIFFERS, [row], key=key, remote=new
        ):
            return
        if check_unique:
            query = table.find_conflicts(new, exclude=row.address)
            others = self._rows(*query) if query else []
            if others:
                ctype = _unique_conflict(others, ConflictType.UPDATE_EXISTS)
                collision = _collision_key(table, others, new)
                if not self.resolve(
                    tx, table, ctype, others, key=collision, remote=new, identity=key
                ):
                    return
                for other in others:
                    self.conn.execute(*table.delete_row(other.address))
        self.conn.execute(*table.update_row(new, row.address, key_unchanged=old is None))

    def _update_missing(
        self,
        tx: Transaction,
        table: TableMap,
        key: dict[str, Any] | None,
        new: tuple[Value, ...],
    ) -> None:
        if not self.resolve(tx, table, ConflictType.UPDATE_MISSING, [], key=key, remote=new):
            return
        # apply_remote: the new version is the row, if all of it was sent.
        if all(v is not UNCHANGED_TOAST for v in new):
            self.insert(tx, table, new)

    def delete(self, tx: Transaction, table: TableMap, old: tuple[Value, ...]) -> None:
        conflicts = self.conflicts
        relation = table.relation
        key = table.row_json(old, key_only=True)
        policy = conflicts.policy(relation, ConflictType.DELETE_ORIGIN_DIFFERS)
        if table.stamps is Stamps.NONE:
            if self.conn.execute(*table.delete(old)).rowcount == 0:
                self.resolve(tx, table, ConflictType.DELETE_MISSING, [], key=key, remote=None)
            return
        if policy is Policy.APPLY_REMOTE:
            rows = self._rows(*table.delete_returning(old))
            if not rows:
                self.resolve(tx, table, ConflictType.DELETE_MISSING, [], key=key, remote=None)
            elif conflicts.origin_differs(self.conn, rows[0]):
                self._applied(
                    tx, table, ConflictType.DELETE_ORIGIN_DIFFERS, rows, key=key, remote=None
                )
            return
        located = self._rows(*table.locate_row(old))
        if not located:
            self.resolve(tx, table, ConflictType.DELETE_MISSING, [], key=key, remote=None)
            return
        row = located[0]
        if conflicts.origin_differs(self.conn, row) and not self.resolve(
            tx, table, ConflictType.DELETE_ORIGIN_DIFFERS, [row], key=key, remote=None
        ):
            return
        self.conn.execute(*table.delete_row(row.address))

    def _applied(
        self,
        tx: Transaction,
        table: TableMap,
        ctype: ConflictType,
        local: list[LocalRow],
        *,
        key: dict[str, Any] | None,
        remote: tuple[Value, ...] | None,
    ) -> None:
        """Log an ``*_origin_differs`` conflict that the change's one statement has
        already resolved by applying it (the policy is apply_remote, so the local
        row could not change the outcome).

        Raises :class:`Provisional`, as :meth:`resolve` does, when the
        transaction's commit is not known yet: its caller rolls the change back.
        """
        if self.provisional:
            raise Provisional(f"{ctype} on {table.display}")
        self._log(tx, table, ctype, Policy.APPLY_REMOTE, True, local, key=key, remote=remote)

    def _log(
        self,
        tx: Transaction,
        table: TableMap,
        ctype: ConflictType,
        policy: Policy,
        applied: bool,
        local: list[LocalRow],
        *,
        key: dict[str, Any] | None,
        remote: tuple[Value, ...] | None,
    ) -> ConflictRecord:
        """Record the conflict in the transaction being applied; the record."""
        return self.conflicts.record(
            self.conn,
            tx,
            table.relation,
            ctype,
            policy,
            applied,
            key=key,
            local=local,
            remote_row=table.row_json(remote),
        )

    def resolve(
        self,
        tx: Transaction,
        table: TableMap,
        ctype: ConflictType,
        local: list[LocalRow],
        *,
        key: dict[str, Any] | None,
        remote: tuple[Value, ...] | None,
        identity: dict[str, Any] | None = None,
    ) -> bool:
        """Decide a conflict and log it; True when the remote change is to be applied.

        ``key``: what the conflict is about, as logged (the colliding indexes' key
        for a unique conflict, else the replica identity); ``identity``: the
        replica identity of an UPDATE whose ``key`` is another index's.

        Raises :class:`ConflictError` (after rolling back and logging the conflict
        in a transaction of its own, unless an attempt before logged it) when the
        policy says stop.
        """
        if self.provisional:
            raise Provisional(f"{ctype} on {table.display}")
        conflicts = self.conflicts
        policy = conflicts.policy(table.relation, ctype)
        stamps = [conflicts.local_stamp(self.conn, r) for r in local]
        outcome = decide(ctype, policy, conflicts.remote_stamp(tx), stamps)
        if key is None:
            key = table.row_json(remote, key_only=True)
        record = self._log(
            tx, table, ctype, policy, outcome is Outcome.APPLY, local, key=key, remote=remote
        )
        if outcome is not Outcome.ERROR:
            return outcome is Outcome.APPLY
        self._rollback()
        with self.conn.transaction():
            conflicts.flush_only(self.conn, record)
        raise self._conflict_error(tx, table, ctype, record, local, remote, identity)

    def _conflict_error(
        self,
        tx: Transaction,
        table: TableMap,
        ctype: ConflictType,
        record: Any,
        local: list[LocalRow],
        remote: tuple[Value, ...] | None,
        identity: dict[str, Any] | None,
    ) -> ConflictError:
        def show(value: Any) -> str:
            text = json.dumps(value, default=str)
            return text if len(text) <= 200 else text[:197] + "..."

        parts = []
        indexes = {name for row in local for name in row.indexes}
        if indexes and remote is not None:
            # Each index the remote row collides on, with its key (as PostgreSQL
            # reports a unique violation: Key (email)=(...)).
            for name, key in table.index_keys(indexes, remote):
                parts.append(f'Key {_pg_key(key)} in unique index "{name}"')
            if identity:
                parts.append(f"replica identity {_pg_key(identity)}")
        elif record.key:
            parts.append(f"replica identity {_pg_key(record.key)}")
        if record.local_row is not None:
            who = (
                f"origin {record.local_origin!r}"
                if record.local_origin
                else "locally"
                if record.local_commit_time
                else "by an unknown writer"
            )
            when = f" at {record.local_commit_time}" if record.local_commit_time else ""
            parts.append(f"existing local row {show(record.local_row)} (written {who}{when})")
        if record.remote_row is not None:
            parts.append(f"remote row {show(record.remote_row)}")
        return ConflictError(
            f"subscription {self.subscription!r}: conflict detected on relation"
            f' "{table.display}": conflict={ctype} ({"; ".join(parts)}) in remote'
            f" transaction {tx.xid} finished at {tx.commit_lsn}",
            conflict_type=str(ctype),
            subscription=self.subscription,
            table=table.display,
            xid=tx.xid,
            finish_lsn=str(tx.commit_lsn),
            hint=failed_transaction(self.subscription, tx.commit_lsn, conflict=True),
        )
