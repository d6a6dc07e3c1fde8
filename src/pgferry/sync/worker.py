"""The table sync worker: initial copy of one table, then the handover.

For one table of a subscription, as native's tablesync (see
``docs/design.md`` and :mod:`pgferry.catalog.handover`):

1. state ``d``;
2. creates its own slot on the publisher, exporting a snapshot; the slot's
   consistent point C splits the table's history: the snapshot holds exactly the
   transactions committed before C, the slot delivers exactly those after;
3. COPYs the table's published columns and rows (column lists and row filters of
   the subscription's publications, combined as native does) in that snapshot into
   the subscriber table, and commits the copy with state ``f`` and its own
   replication origin's progress at C, atomically: a crash before that commit
   leaves nothing copied (state ``d``: the copy starts over with a new slot), a
   crash after it resumes the catch-up from the origin;
4. runs the schema copy's steps that follow this table's data, if any (its
   indexes and constraints: see :mod:`pgferry.schema.copy`);
5. waits for the apply worker's position A (``catchup_lsn``);
6. if A > C, streams its slot from its origin's progress and applies this table's
   changes of the transactions that end up to A;
7. commits state ``s`` with H = max(C, A), drops its slot and origin, and exits.

Existing subscriber rows are not deleted before the copy (native does not either):
a duplicate key is an error, reported like any apply error.

Deliberate difference: the sync slot is permanent (as in native since 14, not the
temporary slot of older releases), so a crash during the catch-up resumes instead
of copying again; it is dropped at the handover, and by ``subscription drop``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from pgferry import connect, origins
from pgferry.apply import columns as missing_columns
from pgferry.apply import session as apply_session
from pgferry.apply.applier import Applier
from pgferry.apply.conflict_context import session_context
from pgferry.apply.origin_filter import origin_filter
from pgferry.assembler import Assembler, Transaction
from pgferry.catalog import TableState, handover, store
from pgferry.errors import ApplyError, PgferryError
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import Relation
from pgferry.protocol.relations import RelationCache
from pgferry.publisher import shape
from pgferry.pump import Bound, Pump
from pgferry.schema import steps as schema_steps
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.sync.relay import relay

logger = logging.getLogger("pgferry.sync")


# A column's type, and whether COPY can carry it in binary between two servers:
# a base type (or an array of one) with binary send and receive functions, built
# in (OID below FirstGenbkiObjectId, 10000: those OIDs are fixed in PostgreSQL's
# sources, so they name the same type in every cluster and major; an array's
# binary form carries its element type's OID, checked by array_recv).
_COLUMN_TYPES = """
SELECT a.attname, a.atttypid::int8,
       a.atttypid < 10000 AND t.typtype = 'b'
       AND t.typsend::oid <> 0 AND t.typreceive::oid <> 0
       AND (t.typelem = 0 OR EXISTS (
           SELECT FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typtype = 'b'
           AND e.typsend::oid <> 0 AND e.typreceive::oid <> 0))
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = (SELECT c.oid FROM pg_catalog.pg_class c
                    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %s AND c.relname = %s)
  AND a.attnum > 0 AND NOT a.attisdropped
"""


def copy_in_binary(
    remote: psycopg.Connection[Any],
    local: psycopg.Connection[Any],
    schema: str,
    name: str,
    columns: list[str],
) -> bool:
    """Whether the initial copy of ``columns`` can use COPY's binary format.

    Only when every column has the same built-in, binary-capable type on both
    sides (:data:`_COLUMN_TYPES`); the typmods may differ, as the receive
    functions apply the local one as the text input functions do. Binary saves the
    subscriber's text parsing, the copy's bottleneck (about a fifth of COPY FROM's
    time for pgbench_accounts). Any other column (an enum, a domain, an extension's
    type, a different type on each side, a column missing locally) keeps the text
    format, where the text input converts or reports it, as native's copy does.
    Deliberate difference: native copies in binary only with ``binary = true``.
    """

    def types(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, bool]]:
        rows = conn.execute(_COLUMN_TYPES, (schema, name)).fetchall()
        return {str(n): (int(oid), bool(ok)) for n, oid, ok in rows}

    theirs, ours = types(remote), types(local)
    return bool(columns) and all(
        c in theirs and theirs[c][1] and theirs[c] == ours.get(c) for c in columns
    )


class TableSyncWorker:
    def __init__(
        self,
        subscriber_dsn: str,
        subscription: str,
        schema: str,
        name: str,
        *,
        status_interval: float = 10.0,
    ) -> None:
        self.subscriber_dsn = subscriber_dsn
        self.subscription = subscription
        self.schema = schema
        self.name = name
        self.status_interval = status_interval
        self.slot = origins.sync_origin(subscription, schema, name)
        self._stop = False

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        # Named like its slot and origin, so that ``status`` finds this session.
        local = connect.session(self.subscriber_dsn, application_name=self.slot)
        try:
            self._run(local)
        except ApplyError as exc:
            # (Logged once, with its hint, by the worker process: pgferry.runner.child.)
            if not local.closed:
                local.execute("ROLLBACK")
                if store.record_failure(local, self.subscription, exc.message, sync=True):
                    logger.error("subscription %s disabled because of the error", self.subscription)
            raise
        finally:
            local.close()

    # -- the steps ---------------------------------------------------------------------

    def _run(self, local: psycopg.Connection[Any]) -> None:
        sub = store.get_subscription(local, self.subscription)
        state = handover.table_state(local, self.subscription, self.schema, self.name)
        if state is None or state.state in (TableState.SYNCDONE, TableState.READY):
            return
        synchronous_commit = sub.options.synchronous_commit
        if state.state in (TableState.INIT, TableState.DATA):
            if not store.set_table_state(
                local, self.subscription, self.schema, self.name, TableState.DATA, None
            ):
                # A replicated DDL renamed or dropped it meanwhile (ddl.restart).
                logger.info("table %s: no longer in the subscription", self.display)
                return
            self._forget_previous_attempt(local, sub.conninfo)
            consistent = self._copy(local, sub, synchronous_commit)
        else:
            assert state.state == TableState.FINISHED and state.state_lsn is not None
            consistent = state.state_lsn
        # The table's indexes and constraints (a schema copy's), built after its data.
        built = schema_steps.run_table_steps(
            self.subscriber_dsn, self.subscription, (self.schema, self.name)
        )
        if built:
            logger.info("table %s: %d schema steps after the copy done", self.display, built)
        catchup = self._wait_for_catchup(local)
        if catchup is None:
            return  # asked to stop
        if catchup > consistent:
            self._catch_up(local, sub, catchup, synchronous_commit)
        handover_lsn = max(consistent, catchup)
        store.set_table_state(
            local, self.subscription, self.schema, self.name, TableState.SYNCDONE, handover_lsn
        )
        logger.info(
            "table %s: synchronized, handed over at %s",
            self.display,
            handover_lsn,
            extra={"lsn": str(handover_lsn)},
        )
        self._forget_previous_attempt(local, sub.conninfo)

    def _forget_previous_attempt(self, local: psycopg.Connection[Any], conninfo: str) -> None:
        """Drop this table's sync slot and origin if they exist."""
        with ReplicationConnection.connect(conninfo) as repl:
            if repl.slot_exists(self.slot):
                repl.drop_slot(self.slot, wait=True)
        origins.drop(local, [self.slot])

    def _remote_shape(
        self, remote: psycopg.Connection[Any], publications: tuple[str, ...]
    ) -> tuple[list[str], str | None]:
        """Published columns and the combined row filter (None: all rows), read in
        the copy's snapshot (see :mod:`pgferry.publisher.shape`)."""

        def run(query: str) -> list[tuple[str | None, ...]]:
            return list(remote.execute(query).fetchall())

        major = remote.info.server_version // 10000
        found = shape.published_tables(run, major, publications, table=(self.schema, self.name))
        if not found:
            raise PgferryError(
                f"table {self.display} is not in the publications {', '.join(publications)}"
                " on the publisher",
                hint="refresh the subscription (pgferry subscription alter"
                f" {self.subscription} --refresh-publication)",
            )
        return list(found[0].columns), found[0].row_filter

    def _copy(
        self, local: psycopg.Connection[Any], sub: store.Subscription, synchronous_commit: str
    ) -> Lsn:
        """Steps 2 and 3; returns the consistent point C."""
        conninfo = sub.conninfo
        with ReplicationConnection.connect(
            conninfo, application_name=f"{self.subscription} sync"
        ) as repl:
            # The copy commits with the publisher's time from just before its
            # snapshot as its commit timestamp: every remote change the copy lacks
            # committed later, so last_update_wins never prefers copied rows to them.
            ((before_snapshot,),) = repl.execute("SELECT pg_catalog.now()::text")
            assert before_snapshot is not None
            slot = repl.create_slot(self.slot, snapshot="export")
            assert slot.snapshot_name is not None
            remote = connect.session(
                conninfo, side="publisher", application_name=f"{self.subscription} sync"
            )
            try:
                # The snapshot can be imported while the replication connection
                # that exported it stays idle; then it is ours until commit.
                remote.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                remote.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(slot.snapshot_name))
                )
                columns, row_filter = self._remote_shape(remote, sub.publications)
                missing_columns.add_before_copy(
                    local, remote, sub, (self.schema, self.name), columns
                )
                binary = copy_in_binary(remote, local, self.schema, self.name, columns)
                options = sql.SQL(" (FORMAT binary)" if binary else "")
                column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                # A table without columns: rows of nothing (COPY takes no empty list).
                into = sql.SQL(" ({})").format(column_list) if columns else sql.SQL("")
                table = sql.Identifier(self.schema, self.name)
                # ONLY keeps inheritance children out; a partitioned table published
                # through its root has its rows in the partitions, so not there.
                kind = remote.execute(
                    "SELECT c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                    (self.schema, self.name),
                ).fetchone()
                only = sql.SQL("" if kind and kind[0] == "p" else "ONLY ")
                source = sql.SQL("COPY (SELECT {} FROM {}{}{}) TO STDOUT{}").format(
                    column_list,
                    only,
                    table,
                    sql.SQL(" WHERE " + row_filter) if row_filter else sql.SQL(""),
                    options,
                )
                target = sql.SQL("COPY {}{} FROM STDIN{}").format(table, into, options)
                apply_session.prepare(local, self.slot, synchronous_commit)
                local.execute("BEGIN")
                try:
                    rows = relay(remote, local, source, target)
                    store.set_table_state(
                        local,
                        self.subscription,
                        self.schema,
                        self.name,
                        TableState.FINISHED,
                        slot.consistent_point,
                    )
                    local.execute(
                        origins.commit_with_origin(
                            slot.consistent_point, before_snapshot, self.slot
                        )
                    )
                except psycopg.Error as exc:
                    local.execute("ROLLBACK")
                    raise ApplyError(
                        f"subscription {self.subscription!r}: initial copy of {self.display}"
                        f" failed: {(exc.diag.message_primary or str(exc)).strip()}",
                        subscription=self.subscription,
                        table=self.display,
                        xid=None,
                        finish_lsn=None,
                        sqlstate=exc.diag.sqlstate,
                        hint="fix the subscriber table (existing rows are kept: a duplicate"
                        " key conflicts); the copy is retried from scratch",
                    ) from None
                finally:
                    remote.execute("COMMIT")
                    origins.release(local)
            finally:
                remote.close()
        logger.info(
            "table %s: %d rows copied at %s (%s)",
            self.display,
            rows,
            slot.consistent_point,
            "binary" if binary else "text",
            extra={"lsn": str(slot.consistent_point)},
        )
        return slot.consistent_point

    def _wait_for_catchup(self, local: psycopg.Connection[Any]) -> Lsn | None:
        """Step 4: the apply worker's position, once it gives it."""
        waited = time.monotonic()
        while not self._stop:
            state = handover.table_state(local, self.subscription, self.schema, self.name)
            if state is not None and state.catchup_lsn is not None:
                return state.catchup_lsn
            if time.monotonic() - waited > 30:
                logger.info("table %s: waiting for the apply worker", self.display)
                waited = time.monotonic()
            time.sleep(handover.POLL)
        return None

    def _catch_up(
        self,
        local: psycopg.Connection[Any],
        sub: store.Subscription,
        until: Lsn,
        synchronous_commit: str,
    ) -> None:
        """Step 5: this table's changes of the transactions that end up to ``until``
        (applied as the apply worker would: same conflict policies, same origin
        filter)."""
        start = apply_session.prepare(local, self.slot, synchronous_commit)
        target = (self.schema, self.name)

        def applies(relation: Relation, tx: Transaction) -> bool:
            return (relation.namespace, relation.name) == target

        relations = RelationCache()
        repl = ReplicationConnection.connect(
            sub.conninfo, application_name=f"{self.subscription} sync"
        )
        try:
            context = session_context(local, sub, self.slot, repl)
            origins_wanted = origin_filter(sub, repl.major)
            applier = Applier(
                local,
                self.subscription,
                self.slot,
                relations,
                applies=applies,
                conflicts=context,
                skip_origins=origins_wanted.skip_origins,
            )
            stream = repl.start_replication(
                self.slot,
                PgoutputOptions(
                    publication_names=sub.publications, origin=origins_wanted.origin_option
                ),
                start_lsn=start,
                status_interval=self.status_interval,
            )
        except BaseException:
            repl.close()
            raise
        assembler = Assembler(applier, stream.protocol_version, relations=relations)
        # The transactions that end before `until` are this worker's (see
        # catalog.handover); the one delivered at `until` is the apply worker's.
        pump = Pump(stream, assembler, bound=Bound(until, inclusive=False))
        done = start >= until
        try:
            while not done and not self._stop:
                if not pump.pump(timeout=0.1).items and assembler.between_transactions:
                    stream.send_status(reply_requested=True)  # where is the walsender?
                done = pump.finished
                if stream.ended:
                    break
            if not done:
                raise PgferryError(f"table {self.display}: catch-up stopped before {until}")
        except BaseException:
            applier.abort()
            raise
        finally:
            stream.close()
            origins.release(local)
