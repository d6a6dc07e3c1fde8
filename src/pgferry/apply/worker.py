"""The apply worker of one subscription: slot -> pump -> assembler -> applier -> progress.

Contract:

* starts streaming at the subscription's replication origin progress (the last
  remote commit applied), so a restart neither loses nor repeats a transaction;
* applies each remote transaction in commit order (see :mod:`.applier`) for the
  tables in state ``r`` (ready) in the catalog, and serves the table sync workers'
  handovers between transactions (see :mod:`.handover`); the tables it applies
  follow the catalog (see :mod:`.tables`);
* runs the DDL statements a ``--ddl`` publication carries, each at its place
  among the changes, for the subscription's publications only (see
  :mod:`pgferry.ddl.execute`, and ``ddl_unsafe``);
* in batch mode (the default ``apply_mode``) groups consecutive remote
  transactions into one local commit, committed at the batch limits and whenever
  the stream pauses or a handover needs a commit point;
* with ``streaming = parallel`` (the default) applies a large streamed
  transaction as it arrives, on a second session (see :mod:`.live`); when that
  cannot go on safely, starts again from the origin with the transaction spooled
  and applied at its commit;
* tells the publisher "flushed" only for remote transactions whose local commit is
  durable (see :mod:`.progress`), and confirms as soon as the stream pauses;
* holds between transactions while ``pgferry verify`` or ``pgferry
  switchover`` asks it to (see :mod:`.hold`): at the next transaction boundary,
  or exactly at a publisher LSN, for at most the hold's lease; a request (a
  notification on its catalog watch) ends its wait for the publisher's data at
  once;
* on an apply error: rolls back, records the error in the catalog (with the
  failed transaction's finish LSN, the one ``--skip`` takes), disables the
  subscription if ``disable_on_error``, and raises; retrying is the launcher's job;
* when the subscriber goes away (a restart, a crash: its connection closed or
  the server shutting down), whatever was being applied is no failed batch: the
  worker ends with one :class:`~pgferry.errors.ConnectionFailed` naming the
  subscription, records nothing, and the launcher starts it again; so too when
  the publisher's stream fails or goes silent for the receiver timeout (see
  :mod:`pgferry.stream.connection`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from pgferry import connect, origins
from pgferry.assembler import Assembler
from pgferry.catalog import TableState, conflict_log, store
from pgferry.catalog.watch import CatalogWatch
from pgferry.ddl.execute import DdlApplier
from pgferry.errors import ApplyError, ConnectionFailed, PgferryError
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.relations import RelationCache
from pgferry.pump import READ_BATCH, Pump
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.stream.commands import streaming_for

from . import session as apply_session
from .applier import Applier, Batching, RetryExact
from .conflict_context import session_context
from .handover import HandoverServer
from .hold import ApplyHold
from .live import LiveStreams, RetrySerial
from .origin_filter import origin_filter
from .progress import DurableProgress
from .tables import SubscribedTables

logger = logging.getLogger("pgferry.apply")

#: How long a restarted run asks again for a slot still held by the walsender of
#: the run before (it exits when it notices the closed connection).
_RESTART_WAIT = 10.0

#: SQLSTATEs of a server going away: admin_shutdown, crash_shutdown, cannot_connect_now.
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(local: psycopg.Connection[Any], exc: BaseException) -> bool:
    """Whether ``exc`` means the subscriber went away rather than that applying
    failed: the session is closed or broken, or the error is a connection
    failure (SQLSTATE class 08, a shutdown, or libpq's error without SQLSTATE)."""
    if local.closed or local.broken:
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate.startswith("08") or sqlstate in _SHUTDOWN_STATES)
    return isinstance(exc, psycopg.OperationalError)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def batching_of(local: psycopg.Connection[Any], sub: store.Subscription) -> Batching:
    """The subscription's apply_mode and batch limits.

    A batch commits all its rows with the commit time of its last remote
    transaction; last/first_update_wins compare those times, so where any
    subscription of this database resolves by them, apply is exact.
    """
    if sub.options.apply_mode == "exact":
        return Batching(1)
    if conflict_log.timestamp_policies_in_use(local):
        logger.info("subscription %s: exact apply (commit-time conflict policies)", sub.name)
        return Batching(1)
    return Batching(
        sub.options.batch_transactions,
        sub.options.batch_latency_ms / 1000,
    )


class ApplyWorker:
    def __init__(
        self,
        subscriber_dsn: str,
        subscription: str,
        *,
        status_interval: float = 10.0,
        confirm_interval: float = 1.0,
        receiver_timeout: float | None = None,
    ) -> None:
        """``receiver_timeout``: seconds without any message from the publisher
        before the worker gives up (None: ``$PGFERRY_RECEIVER_TIMEOUT`` or 60 s;
        0: never; see :mod:`pgferry.stream.connection`)."""
        self.subscriber_dsn = subscriber_dsn
        self.name = subscription
        self.status_interval = status_interval
        self.confirm_interval = confirm_interval
        self.receiver_timeout = receiver_timeout
        self._stop = False
        self._exact_until: Lsn | None = None
        #: Streamed transactions to apply at their commit, not as they arrive.
        self._serial: set[int] = set()
        #: The applier of the current (or last) run, for inspection.
        self.applier: Applier | None = None
        #: Streamed transactions applied as they arrived (this worker, all runs).
        self.live_applied = 0

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        local = connect.session(self.subscriber_dsn)
        try:
            while True:
                try:
                    self._run(local)
                    break
                except RetryExact as retry:
                    # Start again from the origin, applying the failed batch's
                    # transactions one by one: the failure shows where it is.
                    self._exact_until = retry.until
                except RetrySerial as retry:
                    # Start again from the origin; the publisher streams that
                    # transaction again, and it is spooled this time.
                    self._serial.add(retry.xid)
                if local.closed or local.broken:
                    # The batch failed because the subscriber went away: nothing
                    # to apply exactly on this session.
                    raise self._lost(None)
                # As the session was: the origin unbound, no lock wait limit (a
                # batch that failed may have rolled back the RESET of .live).
                local.execute("RESET lock_timeout")
                origins.release(local)
        except ApplyError as exc:
            if connection_lost(local, exc):
                raise self._lost(exc) from None
            self._record_failure(local, exc)
            raise
        except ConnectionFailed as exc:
            if not exc.message.startswith("subscription "):
                exc.message = f"subscription {self.name!r}: {exc.message}"
            raise
        except psycopg.Error as exc:
            if connection_lost(local, exc):
                raise self._lost(exc) from None
            raise
        finally:
            local.close()

    def _lost(self, exc: BaseException | None) -> ConnectionFailed:
        """The subscriber went away (restart, crash): one line, nothing recorded."""
        why = f" ({_one_line(exc)})" if exc is not None else ""
        return ConnectionFailed(
            f"subscription {self.name!r}: lost the connection to the subscriber{why};"
            " the apply worker ends, nothing applied is lost",
            hint="pgferry run starts it again once the subscriber accepts connections",
        )

    def _record_failure(self, local: psycopg.Connection[Any], exc: ApplyError) -> None:
        """Store the error (the caller raises it: the worker process logs it, once)."""
        if local.closed:
            return
        try:
            local.execute("ROLLBACK")
            if store.record_failure(local, self.name, exc.message, finish_lsn=exc.finish_lsn):
                logger.error("subscription %s disabled because of the error", self.name)
        except psycopg.Error as inner:
            logger.error("could not record the error in the catalog: %s", inner)

    def _run(self, local: psycopg.Connection[Any]) -> None:
        sub = store.get_subscription(local, self.name)
        if not sub.enabled:
            logger.info("subscription %s is disabled", self.name)
            return
        if sub.slot_name is None:
            raise PgferryError(
                f"subscription {self.name!r} has no slot (slot_name = NONE)",
                hint="set a slot name before enabling it",
            )
        synchronous_commit = sub.options.synchronous_commit
        start = apply_session.prepare(local, sub.origin_name, synchronous_commit)
        watch = CatalogWatch.connect(self.subscriber_dsn)
        try:
            self._stream(
                local,
                sub,
                start,
                synchronous_commit,
                SubscribedTables(watch, self.name),
                ApplyHold(watch, self.name),
            )
        finally:
            watch.close()

    def _stream(
        self,
        local: psycopg.Connection[Any],
        sub: store.Subscription,
        start: Lsn,
        synchronous_commit: str,
        tables: SubscribedTables,
        holds: ApplyHold,
    ) -> None:
        """Stream from ``start`` and apply until stopped (see the module docstring)."""
        assert sub.slot_name is not None
        relations = RelationCache()
        remote = ReplicationConnection.connect(sub.conninfo, application_name=self.name)
        try:
            context = session_context(local, sub, sub.origin_name, remote, record_node=True)
            origins_wanted = origin_filter(sub, remote.major)
            streaming = sub.options.streaming
            options = PgoutputOptions(
                publication_names=sub.publications,
                # Large transactions arrive while in progress: applied as they
                # arrive (parallel, see .live) or spooled past a memory bound and
                # applied at their commit (on).
                streaming=origins_wanted.streaming(streaming_for(streaming, remote.major)),
                origin=origins_wanted.origin_option,
            )
            stream = remote.start_replication(
                sub.slot_name,
                options,
                start_lsn=start,
                status_interval=self.status_interval,
                # Restarted in this process (after RetryExact or RetrySerial): the
                # walsender of the run before may not have exited yet.
                wait_in_use=(
                    _RESTART_WAIT if self._exact_until is not None or self._serial else 0.0
                ),
                receiver_timeout=self.receiver_timeout,
            )
            # A hold or a catalog change ends a wait for data at once.
            stream.wake_on(holds.watch.fileno())
            applier = Applier(
                local,
                self.name,
                sub.origin_name,
                relations,
                applies=tables.applies,
                skip_lsn=sub.skip_lsn,
                conflicts=context,
                skip_origins=origins_wanted.skip_origins,
                batching=batching_of(local, sub),
                exact_until=self._exact_until,
                background=True,
                filter_changed=tables.changed,
                keepalive=stream.send_status_if_due,
                ddl=DdlApplier(
                    self.name,
                    sub.publications,
                    sub.options.ddl_unsafe,
                    tables.adopt,
                    conninfo=sub.conninfo,
                ),
            )
            self.applier = applier
            live = LiveStreams(
                applier,
                lambda: connect.session(self.subscriber_dsn),
                synchronous_commit=synchronous_commit,
                applies=tables.applies,
                eligible=lambda xid, lsn: (
                    streaming == "parallel"
                    and xid not in self._serial
                    and applier.batching.max_transactions > 1
                    and applier.skip_lsn is None
                    and not applier.skip_origins
                    and (self._exact_until is None or self._exact_until < lsn)
                    and all(
                        s.state in (TableState.READY, TableState.SYNCDONE)
                        for s in tables.states.values()
                    )
                ),
            )
        except BaseException:
            remote.close()
            raise
        logger.info(
            "subscription %s: apply worker streaming from %s",
            self.name,
            start,
            extra={"lsn": str(start)},
        )
        assembler = Assembler(applier, stream.protocol_version, relations=relations, streams=live)
        pump = Pump(stream, assembler)
        progress = DurableProgress(local, self.name, applier, assembler, pump, synchronous_commit)
        handovers = HandoverServer(
            local,
            self.name,
            applier,
            tables,
            stream,
            lambda: max(applier.applied_lsn or start, pump.idle_lsn),
            lambda: self._stop,
        )
        try:
            self._loop(local, sub, pump, progress, handovers, live, holds)
        except ApplyError as exc:
            applier.abort()
            if live.current is not None and exc.sqlstate == "55P03":
                # lock_not_available: maybe the side session's lock (see .live).
                raise RetrySerial(live.current, str(exc)) from exc
            raise
        except BaseException:
            applier.abort()
            raise
        finally:
            self.live_applied += live.applied
            live.close()
            stream.close()
            if not local.closed and not local.broken:
                try:
                    progress.stopped()
                except psycopg.Error as exc:
                    logger.debug("could not clear the worker row: %s", exc)

    def _loop(
        self,
        local: psycopg.Connection[Any],
        sub: store.Subscription,
        pump: Pump,
        progress: DurableProgress,
        handovers: HandoverServer,
        live: LiveStreams,
        holds: ApplyHold,
    ) -> None:
        """Read, apply, commit, confirm and serve handovers until stopped."""
        applier, assembler, stream = progress.applier, pump.assembler, pump.stream
        error_shown = sub.last_error is not None
        next_handover = next_confirm = time.monotonic()
        idle_seen = Lsn(0)  # the last keepalive position confirmed for its own sake
        next_confirm += self.confirm_interval
        while not self._stop:
            if holds.held(pump, applier):
                continue
            # With a batch open, look again soon: it commits when the stream pauses
            # (or at its size or latency limit). So too with changes received and
            # not confirmed (a batch the writer commits): the pause confirms them.
            busy = applier.pending or progress.unconfirmed
            pumped = pump.pump(timeout=0.01 if busy else handovers.interval)
            between = assembler.between_transactions
            if not pumped.items:
                if stream.ended:
                    break
                if between:
                    applier.flush()
                progress.confirm(idle=between)
                if between:
                    # Idle: ask the walsender where it is (it answers with a
                    # keepalive), as native does, so that our position and the
                    # slot move on without waiting for its own keepalives.
                    stream.send_status(reply_requested=True)
                continue
            if pumped.data:
                progress.unconfirmed = True
            elif between and (
                progress.unconfirmed or pump.idle_lsn > max(progress.committed, idle_seen)
            ):
                # Only keepalives: the walsender has nothing for us: idle, as above.
                # Also, once per position, when a keepalive is past ours (WAL with
                # nothing for us, such as a switchover's marker): confirming it at
                # once is what lets a switchover's drain end in milliseconds.
                idle_seen = pump.idle_lsn
                progress.confirm(idle=True, report=progress.unconfirmed)
            if between and (applier.due or (pumped.items < READ_BATCH and applier.live)):
                # At the limit, or live: everything received is applied and the
                # last commit is recent, so waiting would only add lag.
                applier.flush(background=True)
            now = time.monotonic()
            # (During a live streamed transaction a sync worker could wait for its locks.)
            if now >= next_handover and between and live.current is None:
                handovers.serve()
                next_handover = time.monotonic() + handovers.interval
            if error_shown and applier.applied_count:
                # Replication moves again: the stored error is history now.
                applier.wait()
                store.record_error(local, self.name, None)
                error_shown = False
            if now >= next_confirm:
                progress.confirm()
                next_confirm = time.monotonic() + self.confirm_interval
        if assembler.between_transactions:
            applier.flush()
        progress.confirm()
        stream.send_status()
