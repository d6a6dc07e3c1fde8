"""Running a captured DDL statement on the subscriber, at its place in the stream.

Contract (:class:`DdlApplier`, called by the applier for each insert into the
publisher's queue table, inside the local transaction that holds the changes
around it; the applier has applied everything before it):

* a statement not for one of the subscription's publications is ignored;
* one that :func:`~.classify.unsafe` refuses follows ``ddl_unsafe``: ``stop``
  raises an :class:`~pgferry.errors.ApplyError` with the statement, why, the
  transaction's finish LSN and the ``--skip`` hint; ``skip`` logs it and goes on;
* a ``DROP`` of objects none of which exists on the subscriber is ignored (they
  were never replicated here), and so is a statement on a table that is not here
  (:data:`_NEEDS_A_TABLE`: a table added to a publication and not refreshed yet,
  whose rows are not applied either);
* otherwise the statement runs (:func:`~.classify.runnable`: non-concurrently)
  in a savepoint with the publisher's ``search_path`` and date/time settings
  (see :data:`~.classify.SETTINGS`) and a bounded
  ``lock_timeout`` (:data:`LOCK_TIMEOUT`), retried :data:`RETRIES` times while
  it cannot get its locks; it runs as the role that ran it on the publisher
  (``SET LOCAL ROLE``: the same rights there as here, never the apply worker's,
  which may be a superuser's), which must exist on the subscriber. Its failure
  is an ``ApplyError`` naming the statement;
* before it runs, a table it alters or drops whose initial sync is under way
  starts that sync over (:mod:`.restart`): the apply worker owns every table's
  shape, the copy is taken again in the statement's shape;
* afterwards the subscription's tables follow it, in the same local transaction:
  a table the statement created that one of the subscription's publications
  lists is added ready (it was created empty: nothing to copy); a subscribed
  table renamed or moved to another schema is renamed in the catalog; a dropped
  one leaves it. ``tables_changed`` then receives the new table states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from pgferry.assembler import Transaction
from pgferry.catalog import handover, store
from pgferry.catalog.model import TableState
from pgferry.errors import ApplyError
from pgferry.hints import alter_command
from pgferry.protocol.messages import Relation, Value

from . import restart
from .capture import QUEUE_SCHEMA, QUEUE_TABLE
from .classify import DdlCommand, describe, runnable, unsafe

logger = logging.getLogger("pgferry.ddl")

#: The longest a replicated DDL waits for a lock on the subscriber, per attempt.
LOCK_TIMEOUT = "5s"
#: Attempts before a DDL that cannot get its locks fails the transaction.
RETRIES = 5
_LOCK_NOT_AVAILABLE = "55P03"

#: Object types whose existence the subscriber checks before a DROP, and how.
_EXISTS = {
    "table": "pg_catalog.to_regclass(%s)",
    "index": "pg_catalog.to_regclass(%s)",
    "sequence": "pg_catalog.to_regclass(%s)",
    "view": "pg_catalog.to_regclass(%s)",
    "materialized view": "pg_catalog.to_regclass(%s)",
    "type": "pg_catalog.to_regtype(%s)",
    "function": "pg_catalog.to_regprocedure(%s)",
    "schema": "pg_catalog.to_regnamespace(%s)",
}

#: Statements on an existing table: one whose table is not here is ignored (a
#: table added to a publication and not refreshed yet, as its rows are).
_NEEDS_A_TABLE = frozenset(
    {"ALTER TABLE", "CREATE INDEX", "ALTER INDEX", "CREATE TRIGGER", "CREATE POLICY"}
)

TablesChanged = Callable[[dict[tuple[str, str], handover.TableState]], None]


def is_queue(relation: Relation) -> bool:
    """Whether the relation is the publisher's DDL queue."""
    return relation.name == QUEUE_TABLE and relation.namespace == QUEUE_SCHEMA


def command_of(relation: Relation, values: Sequence[Value]) -> DdlCommand:
    """The queue row an insert carries (text columns: the same bytes in text
    and binary format)."""
    row: dict[str, str | None] = {}
    for column, value in zip(relation.columns, values, strict=False):
        row[column.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else None
    return DdlCommand.from_values(row)


class DdlApplier:
    def __init__(
        self,
        subscription: str,
        publications: Sequence[str],
        policy: str = "stop",
        tables_changed: TablesChanged | None = None,
        *,
        conninfo: str = "",
    ) -> None:
        """``conninfo``: the publisher's (a restarted sync's slot is dropped
        there, see :mod:`.restart`)."""
        self.subscription = subscription
        self.publications = tuple(publications)
        self.policy = policy
        self.tables_changed = tables_changed
        self.conninfo = conninfo
        #: Statements run, and skipped as unsafe (this worker).
        self.applied = 0
        self.skipped = 0

    def apply(
        self,
        conn: psycopg.Connection[Any],
        tx: Transaction,
        relation: Relation,
        values: Sequence[Value],
    ) -> bool:
        """Apply one queue insert (see the module docstring); True when a
        statement ran (the applier then commits at this transaction's end)."""
        command = command_of(relation, values)
        if not command.concerns(self.publications):
            return False
        reason = unsafe(command, self.publications)
        if reason is not None:
            if self.policy == "skip":
                self.skipped += 1
                logger.warning(
                    "subscription %s: DDL not replicated (%s; ddl_unsafe = skip): %s",
                    self.subscription,
                    reason,
                    describe(command.command),
                    extra={"lsn": str(tx.commit_lsn)},
                )
                return False
            raise self._error(tx, f"DDL not replicated: {reason}", command, None)
        if self._nothing_to_drop(conn, command):
            logger.debug(
                "subscription %s: nothing here to drop: %s",
                self.subscription,
                describe(command.command),
            )
            return False
        if command.command_tag.upper() in _NEEDS_A_TABLE and not restart.local_tables(
            conn, command
        ):
            logger.info(
                "subscription %s: DDL not replicated (its table is not here: not in the"
                " subscription yet, a refresh copies it): %s",
                self.subscription,
                describe(command.command),
                extra={"lsn": str(tx.commit_lsn)},
            )
            return False
        before = _subscribed(conn, self.subscription)
        syncing = restart.syncing_tables(conn, self.subscription, command, tx.commit_lsn)
        if syncing:
            restart.restart(conn, self.subscription, self.conninfo, syncing, command)
        self._run(conn, tx, command)
        self._follow(conn, tx, command, before, restarted=bool(syncing))
        self.applied += 1
        logger.info(
            "subscription %s: applied DDL %s",
            self.subscription,
            describe(command.command),
            extra={"lsn": str(tx.commit_lsn)},
        )
        return True

    def _nothing_to_drop(self, conn: psycopg.Connection[Any], command: DdlCommand) -> bool:
        dropped = [o for o in command.objects if o.dropped]
        if not dropped or len(dropped) != len(command.objects):
            return False
        checked = [o for o in dropped if o.type in _EXISTS and o.identity is not None]
        if len(checked) != len(dropped):
            return False
        for obj in checked:
            row = conn.execute(
                f"SELECT {_EXISTS[obj.type]} IS NOT NULL", (obj.identity,)
            ).fetchone()
            if row is not None and row[0]:
                return False
        return True

    def _run(self, conn: psycopg.Connection[Any], tx: Transaction, command: DdlCommand) -> None:
        statement = runnable(command)
        role = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (command.role,)
        ).fetchone()
        if role is None:
            error = self._error(
                tx, f"role {command.role!r} does not exist on the subscriber", command, None
            )
            error.hint = (
                f"create the role {command.role!r} on the subscriber with the rights it has"
                " on the publisher (replicated DDL runs as the role that ran it there), or"
                " run what is wanted of it yourself and skip the transaction with "
                + alter_command(self.subscription, "--skip", str(tx.commit_lsn))
            )
            raise error
        for attempt in range(1, RETRIES + 1):
            conn.execute("SAVEPOINT pgferry_ddl")
            try:
                previous = conn.execute(
                    "SELECT pg_catalog.current_setting('lock_timeout'),"
                    " pg_catalog.set_config('search_path', %s, true),"
                    " pg_catalog.set_config('lock_timeout', %s, true)",
                    (command.search_path, LOCK_TIMEOUT),
                ).fetchone()
                names, values = list(command.settings), list(command.settings.values())
                if names:
                    values = [
                        str(r[0])
                        for r in conn.execute(
                            "SELECT pg_catalog.current_setting(s.name),"
                            " pg_catalog.set_config(s.name, s.value, true)"
                            " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY"
                            " AS s(name, value, n) ORDER BY s.n",
                            (names, values),
                        ).fetchall()
                    ]
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(command.role)))
                conn.execute(statement.encode())
                conn.execute("SET LOCAL ROLE NONE")
                if names:
                    conn.execute(
                        "SELECT pg_catalog.set_config(s.name, s.value, true)"
                        " FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
                        (names, values),
                    )
                conn.execute(
                    "SELECT pg_catalog.set_config('search_path', '', true),"
                    " pg_catalog.set_config('lock_timeout', %s, true)",
                    (previous[0] if previous else "0",),
                )
                conn.execute("RELEASE SAVEPOINT pgferry_ddl")
                return
            except psycopg.Error as exc:
                if exc.sqlstate == _LOCK_NOT_AVAILABLE and attempt < RETRIES:
                    conn.execute("ROLLBACK TO SAVEPOINT pgferry_ddl")
                    logger.info(
                        "subscription %s: DDL waiting for a lock (attempt %d): %s",
                        self.subscription,
                        attempt,
                        describe(statement),
                    )
                    time.sleep(0.2 * attempt)
                    continue
                raise self._error(tx, _primary(exc), command, exc) from None

    def _follow(
        self,
        conn: psycopg.Connection[Any],
        tx: Transaction,
        command: DdlCommand,
        before: dict[int, tuple[str, str, str, str]],
        *,
        restarted: bool = False,
    ) -> None:
        """The subscription's tables after the statement (see the module docstring)."""
        changed = restarted
        after = _subscribed(conn, self.subscription)
        for oid, (rschema, rname, lschema, lname) in before.items():
            now = _name_of(conn, oid)
            if now is None:
                store.delete_table(conn, self.subscription, rschema, rname)
                changed = True
            elif now != (lschema, lname):
                same = (rschema, rname) == (lschema, lname)
                conn.execute(
                    "UPDATE pgferry.subscription_table SET local_schema = %s, local_name = %s,"
                    " remote_schema = %s, remote_name = %s"
                    " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
                    (*now, *(now if same else (rschema, rname)), self.subscription, rschema, rname),
                )
                changed = True
        ours = set(self.publications)
        for obj in command.objects:
            if obj.dropped or obj.type != "table" or not ours.intersection(obj.listed):
                continue
            if command.command_tag.upper() != "CREATE TABLE" or obj.identity is None:
                continue
            row = conn.execute(
                "SELECT c.oid::int8 FROM pg_catalog.pg_class c"
                " WHERE c.oid = pg_catalog.to_regclass(%s)",
                (obj.identity,),
            ).fetchone()
            if row is None or int(row[0]) in after:
                continue
            name = _name_of(conn, int(row[0]))
            assert name is not None
            store.upsert_table(
                conn,
                store.SubscriptionTable(
                    self.subscription, *name, *name, TableState.READY, tx.commit_lsn
                ),
            )
            changed = True
        if changed and self.tables_changed is not None:
            self.tables_changed(handover.states(conn, self.subscription))

    def _error(
        self, tx: Transaction, why: str, command: DdlCommand, exc: psycopg.Error | None
    ) -> ApplyError:
        skip = alter_command(self.subscription, "--skip", str(tx.commit_lsn))
        if exc is None:
            policy = alter_command(self.subscription, "--with", "ddl_unsafe=skip")
            hint = (
                f"run what is wanted of it on the subscriber yourself, then skip the"
                f" transaction with {skip}; or leave such statements out from now on"
                f" with {policy}"
            )
        else:
            hint = (
                "make the subscriber's schema what the statement expects (replication"
                f" resumes on the next retry), or run what is wanted of it yourself and"
                f" skip the transaction with {skip}"
            )
        return ApplyError(
            f"subscription {self.subscription!r}: {why}; applying DDL"
            f" {describe(command.command)!r} in remote transaction {tx.xid}"
            f" finished at {tx.commit_lsn}",
            subscription=self.subscription,
            table=None,
            xid=tx.xid,
            finish_lsn=str(tx.commit_lsn),
            sqlstate=None if exc is None else exc.sqlstate,
            hint=hint,
        )


def _primary(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = " ".join((diag.message_primary or str(exc)).split())
    return text + (f" ({diag.message_detail})" if diag.message_detail else "")


def _subscribed(
    conn: psycopg.Connection[Any], subscription: str
) -> dict[int, tuple[str, str, str, str]]:
    """The subscription's tables that exist here, by local OID."""
    rows = conn.execute(
        "SELECT c.oid::int8, t.remote_schema, t.remote_name, t.local_schema, t.local_name"
        " FROM pgferry.subscription_table t"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = t.local_schema"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.local_name"
        " WHERE t.subscription = %s",
        (subscription,),
    ).fetchall()
    return {int(r[0]): (str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows}


def _name_of(conn: psycopg.Connection[Any], oid: int) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::oid",
        (oid,),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))
