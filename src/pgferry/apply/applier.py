"""Applying committed remote transactions to the subscriber, exactly once.

:class:`Applier` is a :class:`~pgferry.assembler.TransactionConsumer`: for each
remote transaction it opens one local transaction, applies the changes of the
tables it is responsible for, and commits with the replication origin's progress
set to the remote commit's end LSN (``pg_replication_origin_xact_setup``), so the
data and the progress land in the same commit record: after a crash the origin
says exactly which remote transactions are applied. This is native's algorithm
(see ``docs/design.md``, "Exactly-once apply").

The session runs with ``session_replication_role = replica`` (only ENABLE REPLICA
and ENABLE ALWAYS triggers fire, foreign keys are not checked), ``search_path = ''``
(every name is qualified) and the subscription's ``synchronous_commit``.

Behaviour per change, as native by default (see :mod:`pgferry.conflict` for the
conflict types and policies, :mod:`.rowwise` for how each is detected):

* INSERT inserts; one that collides with local rows on a unique index is an
  ``insert_exists`` (or ``multiple_unique_conflicts``) conflict: the worker stops;
* UPDATE and DELETE find the row by the replica identity; a row that is not there
  is ``update_missing`` / ``delete_missing``: skipped; a row last written by
  another origin (with ``track_commit_timestamp`` on) is ``*_origin_differs``:
  applied; an UPDATE whose new values collide with other rows is ``update_exists``
  (or ``multiple_unique_conflicts``): the worker stops;
* every conflict is counted and logged (``pgferry.conflict``) in the same local
  transaction as its resolution; the conflict resolution policies change what
  happens, inside that transaction, so a resolution and the origin's progress
  commit together;
* TRUNCATE truncates every listed table it applies, in one statement, with
  RESTART IDENTITY when the publisher used it and without CASCADE (native does not
  cascade on the subscriber);
* logical messages are not applied;
* an insert into the publisher's DDL queue runs its statement at that place
  (:mod:`pgferry.ddl.execute`), after what comes before it, and the remote
  transaction holding it ends its batch.

In batch mode (:class:`Batching`) several remote transactions share one local
transaction; each eligible table's changes are then staged and applied set-based,
as their net effect per key (:mod:`.staging`), and the rest go row by row,
pipelined where the conflict policies allow. Either way a batch that meets a
surprise is rolled back and applied again exactly (:class:`RetryExact`).

A failing change raises :class:`~pgferry.errors.ApplyError` naming the
subscription, table, remote xid and the transaction's finish LSN; the local
transaction is rolled back, so nothing of it is applied and the origin does not
move.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from pgferry import origins
from pgferry.assembler import Transaction
from pgferry.catalog import store
from pgferry.conflict import CONFLICT_TYPES, ConflictType, Policy, Resolution
from pgferry.ddl.execute import DdlApplier, is_queue
from pgferry.errors import PgferryError
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
from pgferry.protocol.timestamps import now_pg_us, to_datetime

from . import columns
from .conflict_context import ConflictContext, LocalRow
from .errors import apply_error, mapping_error
from .mapping import ColumnsMissing, MappingError, Stamps, TableMap, build_map, text_value
from .pipeline import Pipeline
from .routing import Routing, TableFilter, all_tables
from .rowwise import Provisional, RowChanges
from .staging import (
    Eligibility,
    Stage,
    Staged,
    StageMismatch,
    Suspect,
    eligibility,
)
from .writer import Commit, WriterQueue

logger = logging.getLogger("pgferry.apply")

IDLE = TransactionStatus.IDLE


@dataclass(frozen=True)
class Batching:
    """How many remote transactions may share one local commit.

    ``max_transactions = 1`` is exact per-transaction apply (a local commit per
    remote one); more groups consecutive remote transactions into one local
    transaction, committed with the last one's end LSN as the origin's progress,
    once ``max_transactions`` are in or ``max_latency`` seconds after the first
    (and whenever the worker is idle or needs a commit point). Either way every
    local commit is a remote commit boundary, and a crash rolls back whole remote
    transactions that the origin then sends again.
    """

    max_transactions: int = 1
    max_latency: float = 0.1
    #: Send a batch's statements without waiting for each result (libpq pipeline
    #: mode), where the conflict policies make results matter only afterwards.
    pipeline: bool = True
    #: Apply each eligible table's changes as their net effect per key, a few
    #: statements per table and batch (see :mod:`.staging`).
    set_based: bool = True


#: A batch whose last remote commit is younger than this (seconds) commits as
#: soon as everything received is applied (see :attr:`Applier.live`).
LIVE_WINDOW = 0.2
#: Changes between two calls of :attr:`Applier.keepalive`.
KEEPALIVE_EVERY = 2000
#: The changes a stage may take (see Applier.change).
_ROW_CHANGES = (Insert, Update, Delete)


class BatchState(enum.Enum):
    """Where the applier is; its local transaction (the batch) holds remote ones.

    IDLE ──begin──▶ RECEIVING ──commit──▶ HOLDING ──flush──▶ IDLE
                        ▲                    │
                        └───────begin────────┘

    BEGIN itself goes out lazily, with the batch's first statement (see
    :attr:`Applier.conn`); an error in any state rolls back to IDLE.
    """

    #: No local transaction.
    IDLE = enum.auto()
    #: A remote transaction is being applied (between its begin and commit).
    RECEIVING = enum.auto()
    #: Applied remote transactions wait in the open local one for its commit.
    HOLDING = enum.auto()


class _Mode(NamedTuple):
    """How the remote transaction being applied is applied (set at its begin)."""

    #: Consumed, not applied (the skip LSN, or an origin to leave out).
    skip: bool
    #: Committed on its own, each change one statement (see RetryExact).
    exact: bool
    #: Eligible tables' changes are staged (set-based apply).
    staged: bool


_IDLE_MODE = _Mode(skip=False, exact=False, staged=False)


class RetryExact(Exception):
    """A pipelined batch failed: roll it back and apply the remote transactions
    up to ``until`` again one by one, so the failure is diagnosed exactly."""

    def __init__(self, until: Lsn) -> None:
        super().__init__(f"retry exactly up to {until}")
        self.until = until


class Applier:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        subscription: str,
        origin: str,
        relations: RelationCache,
        *,
        applies: TableFilter = all_tables,
        skip_lsn: Lsn | None = None,
        conflicts: ConflictContext | None = None,
        skip_origins: bool = False,
        batching: Batching = Batching(),
        exact_until: Lsn | None = None,
        background: bool = False,
        filter_changed: Callable[[], bool] | None = None,
        keepalive: Callable[[], None] | None = None,
        provisional: bool = False,
        ddl: DdlApplier | None = None,
    ) -> None:
        """``keepalive``: called every :data:`KEEPALIVE_EVERY` changes (a long
        transaction, a streamed one replayed at its commit, must not let the
        walsender's wal_sender_timeout expire while nothing is read from the
        stream). ``provisional``: the transactions' commits are not known yet (see
        :class:`~.rowwise.Provisional`). ``filter_changed``: asked before each
        remote transaction; True means the table filter may answer otherwise from
        now on (see :meth:`refilter`). ``skip_origins``: apply nothing of the
        transactions that reached the publisher through replication (``origin =
        none`` on a publisher older than 16, which cannot filter them itself).
        ``background``: staged statements and batch commits may run in a thread
        of their own (see :class:`~.writer.Writer`); then the owner waits (:meth:`wait`)
        before using the connection itself. ``ddl``: runs the statements of the
        publisher's DDL queue (None: they are not applied)."""
        if not conn.autocommit:
            raise ValueError("the applier manages its transactions: pass an autocommit connection")
        self._conn = conn
        self.background = background
        #: Writers in flight, oldest first (see .writer).
        self._writers = WriterQueue()
        self.subscription = subscription
        self.origin = origin
        self.relations = relations
        self.filter_changed = filter_changed
        self.routing = Routing(relations, applies)
        self.skip_lsn = skip_lsn
        #: End LSN and local commit order of the last applied remote transaction.
        self.applied_lsn: Lsn | None = None
        self.applied_count = 0
        #: Remote transactions applied (not those consumed by a skip) and their
        #: row changes, once committed: the worker's counters (see .progress).
        self.transactions_applied = 0
        self.rows_applied = 0
        self.conflicts = conflicts or ConflictContext.load(conn, subscription, origin)
        #: Row-by-row apply with conflict handling, on this applier's connection.
        self.rows = RowChanges(
            subscription,
            self.conflicts,
            lambda: self.conn,
            self._rollback,
            provisional=provisional,
        )
        self.skip_origins = skip_origins
        self.batching = batching
        #: Remote transactions ending up to here are applied exactly (see RetryExact).
        self.exact_until = exact_until
        self._state = BatchState.IDLE
        self._mode = _IDLE_MODE
        self._pipeline = Pipeline()
        #: Staged changes by relation id (None: the table is applied row by row).
        self._stages: dict[int, Stage | None] = {}
        # The local transaction holds ``_batched`` applied remote transactions,
        # the last of which is ``_last`` (tx, end LSN).
        # BEGIN was sent (it is sent before the batch's first statement).
        self._begun = False
        # Pipelined statements may be used in this batch.
        self._pipelining = False
        self._batched = 0
        # Of those, the applied ones, and the row changes applied in the batch.
        self._batch_transactions = 0
        self._batch_rows = 0
        self._last: tuple[Transaction, Lsn] | None = None
        self._batch_started = 0.0
        self.keepalive = keepalive
        self._changes = 0
        self.ddl = ddl
        # A DDL statement ran in the open batch: it commits at this remote
        # transaction's end (a new enum value, say, is usable only after that).
        self._ddl_ran = False

    # -- TransactionConsumer --------------------------------------------------------

    def begin(self, tx: Transaction) -> None:
        if self.filter_changed is not None and self.filter_changed():
            self.refilter()
        skip = (self.skip_lsn is not None and tx.commit_lsn == self.skip_lsn) or (
            self.skip_origins and tx.origin is not None
        )
        self.conflicts.reset()
        exact = self.batching.max_transactions == 1 or (
            self.exact_until is not None and tx.commit_lsn <= self.exact_until
        )
        if exact and self._state is BatchState.HOLDING:
            self.flush()  # this one commits on its own
        self._mode = _Mode(skip, exact, not exact and self.batching.set_based)
        if self._state is BatchState.IDLE:
            # BEGIN goes out with the first statement (see conn): a batch staged
            # in memory meanwhile overlaps the writer's commit of the one before.
            self._begun = False
            self._pipelining = not exact and self.batching.pipeline
            self._batch_started = time.monotonic()
        self._state = BatchState.RECEIVING

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection, ready for a statement of the batch: what the writer
        was doing is done, and the local transaction is begun."""
        while self._writers:
            self._wait_writer()
        if self._state is not BatchState.IDLE and not self._begun:
            self._begun = True
            self._conn.execute("BEGIN")
        return self._conn

    def wait(self) -> None:
        """Wait for the writer (see :class:`~.writer.Writer`): after this, the owner may use
        the connection; raises what the writer's work raised."""
        while self._writers:
            self._wait_writer()

    def change(self, tx: Transaction, change: Change) -> None:
        self._changes += 1
        if self._changes % KEEPALIVE_EVERY == 0 and self.keepalive is not None:
            self.keepalive()
        pipelining = self._pipelining
        try:
            mode = self._mode
            if mode.staged and not mode.skip and isinstance(change, _ROW_CHANGES):
                # The common case in this one frame, as _change and _map would
                # do it: the table's decision holds for this transaction and its
                # relation is the latest, its stage takes the change.
                relation_id = change.relation_id
                stage = self._stages.get(relation_id)
                decided = self.routing.decided.get(relation_id)
                if (
                    stage is not None
                    and decided is not None
                    and (decided[1] is None or decided[1] is tx)
                    and decided[2] is stage.table
                    and decided[0] is self.relations.get(relation_id)
                    and stage.add(change, tx)
                ):
                    self._batch_rows += 1
                    if stage.full:
                        self._apply_stages(tx, [stage], keep=True)
                    return
            self._change(tx, change)
        except psycopg.Error:
            if not pipelining:
                raise
            self._batch_failed(tx)

    def _change(self, tx: Transaction, change: Change) -> None:
        if self._mode.skip or isinstance(change, LogicalMessage):
            return
        if isinstance(change, Truncate):
            self._truncate(tx, change)
            return
        relation_id = change.relation_id
        table = self._map(tx, relation_id, change)
        if table is None:
            if isinstance(change, Insert) and is_queue(self.relations.relation(relation_id)):
                self._ddl(tx, change)
            return
        self._batch_rows += 1
        if self._mode.staged:
            stages = self._stages
            stage = (
                stages[relation_id] if relation_id in stages else self._stage(relation_id, table)
            )
            if stage is not None:
                if stage.add(change, tx):
                    if stage.full:
                        self._apply_stages(tx, [stage], keep=True)
                    return
                # Applied in order: what is staged first, then this change.
                self._apply_stages(tx, [stage], keep=True)
            elif table.fires_triggers:
                # Its triggers may read other tables: they see every change before.
                self._apply_stages(tx, None, keep=True)
        if self._pipelining:
            if self._native_policies(table):
                if not self._pipeline.is_open:
                    self._pipeline.open(self.conn)
                self._pipelined(tx, table, change)
                return
            # This table's conflicts are resolved as they happen: results are
            # needed at once from here to the end of the batch.
            self._pipelining = False
            self._pipeline.collect()
            self._pipeline.close_strict()
        try:
            if isinstance(change, Insert):
                self.rows.insert(tx, table, change.new)
            elif isinstance(change, Update):
                self.rows.update(tx, table, change.old, change.new)
            else:
                assert isinstance(change, Delete)
                self.rows.delete(tx, table, change.old)
        except psycopg.Error as exc:
            column = None
            if (exc.sqlstate or "").startswith("22") and not isinstance(change, Delete):
                # A data exception (bad input for the local type...): find the
                # column, which PostgreSQL does not name for input conversions.
                self._rollback()
                column = table.failing_column(self.conn, change.new)
            raise apply_error(
                self.subscription,
                exc,
                tx,
                table.display,
                type(change).__name__.upper(),
                column=column,
            ) from None

    # -- staged changes (set-based apply) -------------------------------------------------

    def _stage(self, relation_id: int, table: TableMap) -> Stage | None:
        """The table's stage, made on its first change (None: applied row by row)."""
        applied = all(
            self.conflicts.policy(table.relation, t) is Policy.APPLY_REMOTE
            for t in (ConflictType.UPDATE_ORIGIN_DIFFERS, ConflictType.DELETE_ORIGIN_DIFFERS)
        )
        kind = eligibility(table, applied)
        stage = None if kind is Eligibility.NONE else Stage(table, kind)
        self._stages[relation_id] = stage
        return stage

    def _apply_stages(self, tx: Transaction, stages: list[Stage] | None, *, keep: bool) -> None:
        """Apply the staged changes (of ``stages``, or of every table); ``keep``: the
        batch goes on. A surprise fails the batch (:class:`RetryExact`)."""
        pending = self._pending_stages(stages)
        if not pending:
            return
        try:
            if self._pipeline.is_open:
                # COPY is not possible in pipeline mode (it opens again when needed).
                self._pipeline.collect()
                self._pipeline.close_strict()
        except psycopg.Error:
            self._batch_failed(tx)
        self._run_staged(tx, [(stage, stage.prepare(keep=keep)) for stage in pending], None)

    def _pending_stages(self, stages: list[Stage] | None) -> list[Stage]:
        """Those of ``stages`` (or of every table) with rows staged."""
        candidates = stages if stages is not None else self._stages.values()
        return [s for s in candidates if s is not None and s.pending]

    def _suspect(self, table: TableMap, suspect: Suspect) -> None:
        """A staged change met a row another origin wrote: log it as the exact path
        would have, for the change that met it first (applied: the policy is
        native's, apply_remote)."""
        if not self.conflicts.origin_differs(self.conn, suspect.row):
            return
        if self.rows.provisional:
            raise Provisional(f"origin differs on {table.display}")
        ctype = (
            ConflictType.UPDATE_ORIGIN_DIFFERS
            if suspect.new is not None
            else ConflictType.DELETE_ORIGIN_DIFFERS
        )
        key = {table.names[i]: text_value(v) for i, v in zip(table.key, suspect.key, strict=True)}
        self.conflicts.record(
            self.conn,
            suspect.tx,
            table.relation,
            ctype,
            Policy.APPLY_REMOTE,
            True,
            key=key,
            local=[suspect.row],
            remote_row=table.row_json(suspect.new),
        )

    def checkpoint(self, tx: Transaction) -> None:
        """Send everything staged or queued so far and see to its results; the
        open transaction goes on (a savepoint may follow). A surprise fails the
        batch (:class:`RetryExact`)."""
        self._apply_stages(tx, None, keep=True)
        if self._pipeline.is_open:
            try:
                self._pipeline.collect()
                self.conflicts.flush(self.conn)
            except psycopg.Error:
                self._batch_failed(tx)
        self.wait()

    def rollback_to(self, tx: Transaction, savepoint: sql.Composable) -> None:
        """Undo what was applied since ``savepoint`` (taken after a checkpoint):
        what is staged is dropped, what is queued is waited for first."""
        self._discard_stages()  # and staging tables may be younger than the savepoint
        if self._pipeline.is_open:
            try:
                self._pipeline.collect()
            except psycopg.Error:
                self._batch_failed(tx)
        self.conflicts.reset()
        self.conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(savepoint))

    def settle(self, end_lsn: Lsn, rows: int = 0) -> None:
        """Count a remote transaction committed, with the origin, by another
        session of this subscription (see :mod:`.live`), with its ``rows``."""
        self.applied_lsn = end_lsn
        self.applied_count += 1
        self.transactions_applied += 1
        self.rows_applied += rows

    @property
    def staged_rows(self) -> int:
        """Net rows applied set-based so far (see :mod:`.staging`)."""
        return sum(s.applied for s in self._stages.values() if s is not None)

    def _discard_stages(self) -> None:
        """The transaction rolled back: so did what was staged, and maybe the
        staging tables created in it."""
        for stage in self._stages.values():
            if stage is not None:
                stage.clear(created=False)

    # -- pipelined changes ----------------------------------------------------------------

    def _native_policies(self, table: TableMap) -> bool:
        """The table's conflicts are handled as native does: then a change's result
        only decides what is logged, or that the batch fails, never what to do next."""
        cached = table.native_policies
        if cached is None:
            policy = self.conflicts.policy
            native = Resolution()
            cached = all(policy(table.relation, t) is native.policy_for(t) for t in CONFLICT_TYPES)
            table.native_policies = cached
        return cached

    def _pipelined(self, tx: Transaction, table: TableMap, change: Change) -> None:
        """Queue the change's statement; what its result means is seen to later
        (:meth:`_collect`). A unique violation fails the batch (RetryExact), and
        the exact retry reports the conflict as the exact path does."""
        conn = self.conn
        if isinstance(change, Insert):
            conn.execute(*table.insert(change.new))
            return
        if isinstance(change, Update):
            old, new = change.old, change.new
            ctype, identity = ConflictType.UPDATE_MISSING, old if old is not None else new
            if table.stamps is Stamps.NONE:
                cur = conn.execute(*table.update(old, new))
            else:
                cur = conn.execute(*table.update_returning(old, new))
        else:
            assert isinstance(change, Delete)
            ctype, identity, new = ConflictType.DELETE_MISSING, change.old, None
            if table.stamps is Stamps.NONE:
                cur = conn.execute(*table.delete(change.old))
            else:
                cur = conn.execute(*table.delete_returning(change.old))

        def seen(cur: psycopg.Cursor[Any]) -> None:
            if table.stamps is Stamps.NONE:
                rows = []
                found = cur.rowcount > 0
            else:
                rows = [LocalRow.from_row(r) for r in cur.fetchall()]
                found = bool(rows)
            if not found:
                key = table.row_json(identity, key_only=True)
                self.rows.resolve(tx, table, ctype, [], key=key, remote=new)
            elif self.conflicts.origin_differs(self.conn, rows[0]):
                key = table.row_json(identity, key_only=True)
                differs = (
                    ConflictType.UPDATE_ORIGIN_DIFFERS
                    if ctype is ConflictType.UPDATE_MISSING
                    else ConflictType.DELETE_ORIGIN_DIFFERS
                )
                self.rows.resolve(tx, table, differs, rows, key=key, remote=new)

        self._pipeline.defer(cur, seen)

    def _batch_failed(self, tx: Transaction, cause: BaseException | None = None) -> NoReturn:
        if self._conn.closed or self._conn.broken:
            # The subscriber went away: no batch to apply exactly on this session
            # (the worker ends, see .worker).
            self._drop_batch()
            why = f": {' '.join(str(cause).split())}" if cause is not None else ""
            raise psycopg.OperationalError(f"the subscriber's connection is closed{why}") from cause
        # A provisional transaction's caller says what becomes of it (see .live).
        logger.log(
            logging.DEBUG if self.rows.provisional else logging.INFO,
            "subscription %s: a pipelined or staged batch failed%s; applying up to %s exactly",
            self.subscription,
            f" ({' '.join(str(cause).split())})" if cause is not None else "",
            tx.commit_lsn,
        )
        self._drop_batch()
        raise RetryExact(tx.commit_lsn) from cause

    def _drop_batch(self) -> None:
        """Roll back the local transaction, whatever it holds (the writer's work
        too), and forget the batch: the origin, not moved, sends it again."""
        self._join_writer()
        self._pipeline.close()
        if not self._conn.closed and self._conn.info.transaction_status != IDLE:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("ROLLBACK")
        self._forget_batch()
        self._discard_stages()
        self.conflicts.reset()

    def commit(self, tx: Transaction, end_lsn: Lsn) -> None:
        try:
            # (The connection is not asked for without a need: see conn.)
            if self.conflicts.records or self.conflicts.counts:
                self.conflicts.flush(self.conn)
            if self._mode.skip:
                # ALTER SUBSCRIPTION ... SKIP: the transaction is consumed, not applied,
                # and the skip is cleared in the same commit.
                store.set_skip_lsn(self.conn, self.subscription, None)
                self.skip_lsn = None
        except psycopg.Error as exc:
            raise apply_error(self.subscription, exc, tx, None, "COMMIT") from None
        self._state = BatchState.HOLDING
        self._batched += 1
        self._batch_transactions += not self._mode.skip
        self._last = (tx, end_lsn)
        if (
            self._mode.exact
            or self._batched >= self.batching.max_transactions
            or self.due
            or self._ddl_ran
        ):
            self.flush(background=True)

    @property
    def pending(self) -> bool:
        """Applied remote transactions wait in an open local transaction."""
        return self._last is not None

    @property
    def live(self) -> bool:
        """The open batch's last remote commit is under :data:`LIVE_WINDOW` old:
        the stream is live, not catching up (by the two servers' clocks)."""
        return (
            self._last is not None
            and now_pg_us() - self._last[0].commit_time < LIVE_WINDOW * 1_000_000
        )

    @property
    def due(self) -> bool:
        """The open batch has waited its maximum latency."""
        return (
            self._last is not None
            and time.monotonic() - self._batch_started >= self.batching.max_latency
        )

    def flush(self, *, background: bool = False) -> None:
        """Commit the applied remote transactions waiting in the open local one
        (between remote transactions only; a no-op otherwise). ``background``: the
        writer may commit (see :class:`~.writer.Writer`); otherwise the commit is done
        when this returns."""
        if self._state is not BatchState.HOLDING:
            self.wait()
            return
        assert self._last is not None
        tx, end_lsn = self._last
        if self._pipeline.is_open:
            try:
                self._pipeline.collect()
                self.conflicts.flush(self.conn)  # what the results logged
                self._pipeline.close_strict()
            except psycopg.Error:
                self._batch_failed(tx)
        commit = Commit(
            origins.commit_with_origin(end_lsn, to_datetime(tx.commit_time), self.origin),
            end_lsn,
            self._batched,
            self._batch_transactions,
            self._batch_rows,
        )
        if background and self.background:
            staged = [(stage, stage.prepare(keep=False)) for stage in self._pending_stages(None)]
            if self._run_staged(tx, staged, commit):
                self._forget_batch()
                return
        self._apply_stages(tx, None, keep=False)
        try:
            self.conn.execute(commit.statement)
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("ROLLBACK")  # if the message stopped before COMMIT
            self._forget_batch()
            self._discard_stages()
            raise apply_error(self.subscription, exc, tx, None, "COMMIT") from None
        self._committed(commit)
        self._forget_batch()

    def _committed(self, commit: Commit) -> None:
        """A batch's commit is done: count what it committed."""
        self.applied_lsn = commit.end_lsn
        self.applied_count += commit.batched
        self.transactions_applied += commit.transactions
        self.rows_applied += commit.rows

    # -- the writer ---------------------------------------------------------------------

    def _run_staged(
        self,
        tx: Transaction,
        staged: list[tuple[Stage, Staged | None]],
        commit: Commit | None,
    ) -> bool:
        """Run prepared stages: by the writer when they need nothing in between
        (no origins to check) and there is one (then also ``commit``, and True);
        here and now otherwise, seeing to the suspects."""
        runs = [(stage, run) for stage, run in staged if run is not None]
        if self.background and not any(run.checks_origins for _, run in runs):
            if not runs and commit is None:
                return True
            if self.conflicts.records or self.conflicts.counts:
                self.conflicts.flush(self.conn)
            self._write(tx, [run for _, run in runs], commit)
            return True
        try:
            for stage, run in runs:
                for suspect in run.run(self.conn):
                    self._suspect(stage.table, suspect)
            self.conflicts.flush(self.conn)
        except (psycopg.Error, StageMismatch) as exc:
            logger.debug("subscription %s: staged apply failed: %s", self.subscription, exc)
            self._batch_failed(tx)
        return False

    def _write(self, tx: Transaction, staged: list[Staged], commit: Commit | None) -> None:
        """Hand the staged statements (and the batch's commit) to the writer."""
        begin = not self._begun
        self._begun = True
        while self._writers.full:
            self._wait_writer()
        self._writers.submit(self._conn, tx, begin, staged, commit)

    def _wait_writer(self) -> None:
        """Wait for the oldest writer; what it raised is raised here (the later
        ones skip their work, and are rolled back with it)."""
        writer = self._writers.oldest()
        # (Only a failed writer's successors skip, and they are joined with it.)
        assert not writer.skipped
        exc = writer.error
        if exc is None:
            if writer.commit is not None:
                self._committed(writer.commit)
            return
        if isinstance(exc, (psycopg.Error, StageMismatch)) and not writer.committing:
            self._batch_failed(writer.tx, exc)
        # What the writer did is rolled back, and so is whatever came after it.
        self._drop_batch()
        if isinstance(exc, psycopg.Error):
            raise apply_error(self.subscription, exc, writer.tx, None, "COMMIT") from None
        raise exc

    def _join_writer(self) -> None:
        """Wait for the writers, whatever they raised (what they did is rolled back next)."""
        self._writers.join_all()

    def message(self, message: LogicalMessage) -> None:
        """Non-transactional messages are not applied."""

    @property
    def in_transaction(self) -> bool:
        """A local transaction is open (a remote one is being applied)."""
        return self._state is not BatchState.IDLE

    def abort(self) -> None:
        """Roll back the local transaction in progress, if any (after an error)."""
        self._drop_batch()

    def _rollback(self) -> None:
        """Roll back the open local transaction: the whole batch, which the
        origin (not moved) sends again after a restart."""
        self._join_writer()
        self._conn.execute("ROLLBACK")
        self._forget_batch()
        self._discard_stages()

    def _forget_batch(self) -> None:
        self._ddl_ran = False
        self._state = BatchState.IDLE
        self._begun = False
        self._pipelining = False
        self._batched = 0
        self._batch_transactions = 0
        self._batch_rows = 0
        self._last = None

    # -- helpers ----------------------------------------------------------------------

    def _map(
        self, tx: Transaction, relation_id: int, op: str | Insert | Update | Delete
    ) -> TableMap | None:
        """The local table of a relation, None when this transaction does not apply
        it (see :mod:`.routing`); ``op`` names what is applied, for errors."""

        def build(relation: Relation) -> TableMap:
            began = self._begun
            try:
                try:
                    return build_map(
                        self.conn, relation, self.conflicts.stamps, self.conflicts.origin_id
                    )
                except ColumnsMissing as missing:
                    if not self._add_columns(tx, missing, began, op):
                        raise
                return build_map(
                    self.conn, relation, self.conflicts.stamps, self.conflicts.origin_id
                )
            except MappingError as exc:
                name = op if isinstance(op, str) else type(op).__name__.upper()
                raise mapping_error(self.subscription, exc, tx, relation, name) from None

        def reshaped(relation_id: int) -> None:
            # What was staged in the relation's old shape goes first.
            old_stage = self._stages.pop(relation_id, None)
            if old_stage is not None:
                self._apply_stages(tx, [old_stage], keep=True)

        return self.routing.table(tx, relation_id, build, reshaped)

    def _add_columns(
        self, tx: Transaction, missing: ColumnsMissing, began: bool, op: str | Change
    ) -> bool:
        """With ``missing_columns = add``, add the columns the local table lacks
        (see :mod:`.columns`): in a transaction of their own when the batch had not
        begun (``began``: before the failed map's reads), else in it. False: the
        option is ``error``."""
        if not began:
            # The batch's transaction holds only the map's reads: end it.
            if self._conn.info.transaction_status != IDLE:
                self._conn.execute("ROLLBACK")
            self._begun = False
        elif self._pipeline.is_open:
            try:
                self._pipeline.collect()
                self._pipeline.close_strict()
            except psycopg.Error:
                self._batch_failed(tx)
        conn = self._conn
        sub = columns.wanted(conn, self.subscription)
        if sub is None:
            return False
        relation = missing.relation
        try:
            new = columns.describe(conn, sub, relation, missing.missing)
            columns.add(conn, relation, new, in_transaction=began)
        except PgferryError as exc:
            error = MappingError(f"cannot add the missing columns: {exc.message}")
            error.hint = exc.hint
            raise error from None
        except psycopg.Error as exc:
            name = op if isinstance(op, str) else type(op).__name__.upper()
            table = f"{relation.namespace}.{relation.name}"
            raise apply_error(self.subscription, exc, tx, table, name) from None
        return True

    def refilter(self) -> None:
        """The table filter may answer otherwise now: ask it again."""
        self.routing.refilter()

    def _ddl(self, tx: Transaction, change: Insert) -> None:
        """The one place DDL is applied: a statement of the publisher's DDL queue
        runs after everything before it is applied; the relations' maps and
        stages are made again afterwards (the next Relation messages describe
        the new shapes)."""
        if self.ddl is None:
            return
        if self.rows.provisional:
            # Streamed and applied as it arrives: applied at its commit instead.
            raise Provisional("a DDL statement in a transaction still streaming")
        self.checkpoint(tx)
        if self._pipeline.is_open:
            try:
                self._pipeline.close_strict()
            except psycopg.Error:
                self._batch_failed(tx)
        self._pipelining = False
        relation = self.relations.relation(change.relation_id)
        if self.ddl.apply(self.conn, tx, relation, change.new):
            self._ddl_ran = True
            self._stages.clear()
            self.routing.reset()

    def _truncate(self, tx: Transaction, change: Truncate) -> None:
        targets = []
        for relid in change.relation_ids:
            table = self._map(tx, relid, "TRUNCATE")
            if table is not None:
                targets.append(table)
        if not targets:
            return
        self._apply_stages(tx, None, keep=True)
        query = sql.SQL("TRUNCATE {}{}").format(
            sql.SQL(", ").join(t.target for t in targets),
            sql.SQL(" RESTART IDENTITY" if change.restart_identity else ""),
        )
        try:
            self.conn.execute(query)
        except psycopg.Error as exc:
            names = ", ".join(t.display for t in targets)
            raise apply_error(self.subscription, exc, tx, names, "TRUNCATE") from None
