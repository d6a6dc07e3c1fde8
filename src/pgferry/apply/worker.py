"""The apply worker of one subscription: slot -> decoder -> assembler -> applier -> progress.

Contract:

* starts streaming at the subscription's replication origin progress (the last
  remote commit applied), so a restart neither loses nor repeats a transaction;
* applies each remote transaction in commit order (see :mod:`.applier`) for the
  tables in state ``r`` (ready) in the catalog, and serves the table sync workers'
  handovers between transactions (see :mod:`pgferry.catalog.handover`);
* in batch mode (the default ``apply_mode``) groups consecutive remote
  transactions into one local commit, committed at the batch limits and whenever
  the stream pauses or a handover needs a commit point;
* with ``streaming = parallel`` (the default) applies a large streamed
  transaction as it arrives, on a second session (see :mod:`.live`); when that
  cannot go on safely, starts again from the origin with the transaction spooled
  and applied at its commit;
* tells the publisher "flushed" only for remote transactions whose local commit is
  durable: with ``synchronous_commit`` off (native's default for subscriptions) it
  pairs the last applied remote LSN with the local WAL insert position and confirms
  it once the local WAL is flushed past that point, as native does; when the
  stream goes idle (nothing or only keepalives to read) it flushes that WAL
  itself, by writing its worker row with ``synchronous_commit`` on, rather than
  wait for the WAL writer and its own next look;
* between transactions, with nothing pending, confirms the keepalive's WAL end so
  the slot does not hold WAL that carries nothing for this subscription;
* on an apply error: rolls back, records the error in the catalog, disables the
  subscription if ``disable_on_error``, and raises; retrying is the launcher's job.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any

import psycopg

from pgferry import connect
from pgferry.assembler import Assembler, Transaction
from pgferry.catalog import conflicts, handover, store
from pgferry.catalog.watch import CatalogWatch
from pgferry.errors import ApplyError, PgferryError
from pgferry.protocol.envelope import PrimaryKeepalive, XLogData
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.messages import Relation
from pgferry.protocol.pgoutput import PgoutputDecoder
from pgferry.protocol.relations import RelationCache
from pgferry.protocol.timestamps import to_datetime
from pgferry.stream import PgoutputOptions, ReplicationConnection, ReplicationStream
from pgferry.stream.commands import streaming_for

from .applier import Applier, Applies, Batching, RetryExact
from .conflicts import session_conflicts
from .live import LiveStreams, RetrySerial

logger = logging.getLogger("pgferry.apply")

_DURABLE_ON_COMMIT = {"on", "local", "remote_write", "remote_apply"}
#: Most stream messages handled between two looks at the batch and the catalog.
READ_BATCH = 2000

#: How long a restarted run asks again for a slot still held by the walsender of
#: the run before (it exits when it notices the closed connection).
_RESTART_WAIT = 10.0


def batching_of(local: psycopg.Connection[Any], sub: store.Subscription) -> Batching:
    """The subscription's apply_mode and batch limits.

    A batch commits all its rows with the commit time of its last remote
    transaction; last/first_update_wins compare those times, so where any
    subscription of this database resolves by them, apply is exact.
    """
    if sub.option("apply_mode", "batch") == "exact":
        return Batching(1)
    if conflicts.timestamp_policies_in_use(local):
        logger.info("subscription %s: exact apply (commit-time conflict policies)", sub.name)
        return Batching(1)
    return Batching(
        int(sub.option("batch_transactions", 1000)),
        int(sub.option("batch_latency_ms", 100)) / 1000,
    )


def _wal_positions(local: psycopg.Connection[Any]) -> tuple[Lsn, Lsn]:
    """The subscriber's WAL insert and flush positions."""
    row = local.execute(
        "SELECT pg_catalog.pg_current_wal_insert_lsn()::text,"
        " pg_catalog.pg_current_wal_flush_lsn()::text"
    ).fetchone()
    assert row is not None
    return Lsn.parse(row[0]), Lsn.parse(row[1])


def _handover_interval(states: dict[tuple[str, str], Any]) -> float:
    """Seconds between two looks at the handovers: shorter while a table syncs."""
    return 0.1 if any(s.state != "r" for s in states.values()) else 0.5


class ApplyWorker:
    def __init__(
        self,
        subscriber_dsn: str,
        subscription: str,
        *,
        status_interval: float = 10.0,
        confirm_interval: float = 1.0,
    ) -> None:
        self.subscriber_dsn = subscriber_dsn
        self.name = subscription
        self.status_interval = status_interval
        self.confirm_interval = confirm_interval
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
                # As the session was: the origin unbound, no lock wait limit (a
                # batch that failed may have rolled back the RESET of .live).
                local.execute("RESET lock_timeout")
                Applier.release_origin(local)
        except ApplyError as exc:
            self._record_failure(local, exc)
            raise
        finally:
            local.close()

    def _record_failure(self, local: psycopg.Connection[Any], exc: ApplyError) -> None:
        logger.error("%s", exc)
        if local.closed:
            return
        try:
            local.execute("ROLLBACK")
            if store.record_failure(local, self.name, exc.message):
                logger.error("subscription %s disabled because of the error", self.name)
        except psycopg.Error as inner:
            logger.error("could not record the error in the catalog: %s", inner)

    def _wait_handover(
        self, local: psycopg.Connection[Any], key: tuple[str, str], stream: ReplicationStream
    ) -> None:
        """Block until the sync worker of ``key`` has handed the table over (``s``),
        keeping the publisher connection alive with status updates."""
        while not self._stop:
            state = handover.states(local, self.name).get(key)
            if state is None or state.state in ("s", "r"):
                return
            if time.monotonic() >= stream.next_status_time:
                stream.send_status()
            time.sleep(handover.POLL)

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
        synchronous_commit = str(sub.option("synchronous_commit", "off"))
        start = Applier.prepare_session(local, sub.origin_name, synchronous_commit)
        states = handover.states(local, self.name)
        handover_due = _handover_interval(states)
        watch = CatalogWatch.connect(self.subscriber_dsn)
        reread_for: Transaction | None = None

        def filter_changed() -> bool:
            # Before each remote transaction: a catalog change (a refresh, a
            # handover) committed since the last look is taken in first.
            nonlocal states
            if not watch.changed():
                return False
            states = watch.states(self.name)
            return True

        def applies(relation: Relation, tx: Transaction) -> bool | Applies:
            # Ready tables always (until the states are read again); a table just
            # handed over by its sync worker for transactions that end after the
            # handover LSN (see catalog.handover).
            nonlocal states, reread_for
            key = (relation.namespace, relation.name)
            state = states.get(key)
            if state is None and reread_for is not tx:
                # Not ours as far as we know: read again, once per transaction, in
                # case a refresh added it just now.
                reread_for = tx
                states = watch.states(self.name)
                state = states.get(key)
            if state is None:
                return False
            if state.state == "r":
                return Applies.ALWAYS
            return (
                state.state == "s"
                and state.state_lsn is not None
                and tx.commit_lsn >= state.state_lsn
            )

        relations = RelationCache()
        remote = ReplicationConnection.connect(sub.conninfo, application_name=self.name)
        try:
            session = session_conflicts(local, sub, sub.origin_name, remote, record_node=True)
            applier = Applier(
                local,
                self.name,
                sub.origin_name,
                relations,
                applies=applies,
                skip_lsn=sub.skip_lsn,
                conflicts=session.context,
                skip_origins=session.skip_origins,
                batching=batching_of(local, sub),
                exact_until=self._exact_until,
                background=True,
                filter_changed=filter_changed,
            )
            self.applier = applier
            streaming = sub.option("streaming", "parallel")
            live = LiveStreams(
                applier,
                lambda: connect.session(self.subscriber_dsn),
                synchronous_commit=synchronous_commit,
                applies=applies,
                eligible=lambda xid, lsn: (
                    streaming == "parallel"
                    and xid not in self._serial
                    and applier.batching.max_transactions > 1
                    and applier.skip_lsn is None
                    and not applier.skip_origins
                    and (self._exact_until is None or self._exact_until < lsn)
                    and all(s.state in ("r", "s") for s in states.values())
                ),
            )
            options = PgoutputOptions(
                publication_names=sub.publications,
                # Large transactions arrive while in progress: applied as they
                # arrive (parallel, see .live) or spooled past a memory bound and
                # applied at their commit (on).
                streaming=streaming_for(streaming, remote.major),
                origin=session.origin_option,
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
            )
        except BaseException:
            remote.close()
            watch.close()
            raise
        logger.info("subscription %s: apply worker streaming from %s", self.name, start)
        applier.keepalive = stream.send_status_if_due
        decoder = PgoutputDecoder(stream.protocol_version)
        assembler = Assembler(applier, stream.protocol_version, relations=relations, streams=live)
        durable_on_commit = synchronous_commit in _DURABLE_ON_COMMIT
        # (remote end LSN, local WAL position at or after its commit), oldest first.
        unflushed: deque[tuple[Lsn, Lsn]] = deque()
        idle_lsn = INVALID_LSN
        # Changes were received since the last idle confirm.
        unconfirmed = False
        next_confirm = time.monotonic() + self.confirm_interval
        error_shown = sub.last_error is not None
        next_sync_check = time.monotonic()

        def sync_handover() -> None:
            """Between transactions: serve the table sync workers' handovers."""
            nonlocal states, handover_due
            applier.flush()  # the position given out must be committed
            states = handover.states(local, self.name)
            # Every remote transaction ending up to here is processed, none after:
            # the last one applied, or a keepalive's position received between
            # transactions (nothing was pending before it).
            position = max(applier.applied_lsn or start, idle_lsn)
            for key, state in states.items():
                if state.state == "f":
                    if state.catchup_lsn is None:
                        # Give our position and wait for the sync worker to catch up
                        # to it: meanwhile nothing of that table may pass us by.
                        handover.set_catchup(local, self.name, key[0], key[1], position)
                        logger.info(
                            "subscription %s: table %s.%s catches up to %s",
                            self.name,
                            key[0],
                            key[1],
                            position,
                        )
                    # With the position given before (by this worker's predecessor,
                    # which stopped right there), wait all the same.
                    self._wait_handover(local, key, stream)
            # Read again: a table just handed over is ready now, not at the next look.
            states = handover.states(local, self.name)
            for key, state in states.items():
                lsn = state.state_lsn
                if state.state == "s" and lsn is not None and position >= lsn:
                    store.set_table_state(local, self.name, key[0], key[1], "r", position)
            states = handover.states(local, self.name)
            handover_due = _handover_interval(states)
            applier.refilter()

        # Every remote transaction committed before it is durably applied (the
        # slot's position may be held back by a transaction kept whole).
        committed = INVALID_LSN

        def report() -> None:
            handover.report_worker(
                local,
                self.name,
                "",
                os.getpid(),
                stream.received_lsn,
                to_datetime(stream.last_server_time) if stream.last_server_time else None,
                stream.flush_lsn,
                committed if committed > stream.flush_lsn else stream.flush_lsn,
            )

        def confirm(idle: bool = False) -> None:
            """Tell the publisher what is durably applied; ``idle``: nothing more
            has arrived, so flush the local WAL for it now (see below)."""
            nonlocal idle_lsn, unconfirmed, committed
            if assembler.between_transactions:
                applier.flush()  # what is applied gets confirmed, and the worker row written
            applier.wait()  # the connection is used here
            candidate = INVALID_LSN
            applied = applier.applied_lsn
            if applied is not None:
                if durable_on_commit:
                    candidate = applied
                else:
                    inserted, flushed = _wal_positions(local)
                    if not unflushed or unflushed[-1][0] != applied:
                        unflushed.append((applied, inserted))
                    if idle and not applier.in_transaction and unflushed[-1][1] > flushed:
                        # Nothing more to apply: make what was applied durable now
                        # instead of when the WAL writer gets to it (up to
                        # wal_writer_delay, and we would only look again after the
                        # idle wait), so the publisher learns the position at once.
                        # A commit flushes the WAL before it only if it wrote some
                        # itself (an xid alone is not enough): the worker row.
                        with local.transaction():
                            local.execute("SET LOCAL synchronous_commit = on")
                            report()
                        flushed = _wal_positions(local)[1]
                    while unflushed and unflushed[0][1] <= flushed:
                        candidate = unflushed.popleft()[0]
            if not unflushed and idle_lsn > candidate:
                candidate = idle_lsn
            committed = max(committed, candidate)
            floor = assembler.restart_floor()
            if floor is not None:
                candidate = min(candidate, floor)
            if candidate > stream.flush_lsn:
                stream.confirm(candidate)
                # Tell the publisher now (at most once per confirm interval), not at
                # the next status interval: the slot releases WAL sooner, and a
                # restart re-sends less.
                stream.send_status()
            if not applier.in_transaction:
                report()
            if idle:
                unconfirmed = bool(unflushed)

        feed, decode = assembler.feed, decoder.decode
        try:
            while not self._stop:
                # With a batch open, look again soon: it commits when the stream
                # pauses (or at its size or latency limit). So too with changes
                # received and not confirmed (a batch the writer commits): the
                # pause confirms them. While a table syncs, its handover is
                # looked at five times as often.
                batch = stream.read_batch(
                    timeout=0.01 if applier.pending or unconfirmed else handover_due,
                    max_items=READ_BATCH,
                )
                if not batch:
                    if stream.ended:
                        break
                    if assembler.between_transactions:
                        applier.flush()
                    confirm(idle=assembler.between_transactions)
                    if assembler.between_transactions:
                        # Idle: ask the walsender where it is (it answers with a
                        # keepalive), as native does, so that our position and the
                        # slot move on without waiting for its own keepalives.
                        stream.send_status(reply_requested=True)
                    continue
                received = False
                for item in batch:
                    if type(item) is XLogData:
                        payload = item.payload
                        feed(decode(payload), payload, item.data_start)
                        received = True
                    else:
                        assert isinstance(item, PrimaryKeepalive)
                        if assembler.between_transactions:
                            idle_lsn = item.wal_end
                if received:
                    unconfirmed = True
                elif unconfirmed and assembler.between_transactions:
                    # Only keepalives: the walsender has nothing for us (it sends
                    # them while it reads WAL of other databases, ours included,
                    # so the stream need not fall silent): idle, as above.
                    confirm(idle=True)
                if assembler.between_transactions and (
                    applier.due or (len(batch) < READ_BATCH and applier.live)
                ):
                    # At the limit, or live: everything received is applied and
                    # the last commit is recent, so waiting would only add lag (in
                    # a catch-up the commits are older and batches fill up).
                    applier.flush(background=True)
                if (
                    time.monotonic() >= next_sync_check
                    and assembler.between_transactions
                    and live.current is None  # a sync worker could wait for its locks
                ):
                    sync_handover()
                    next_sync_check = time.monotonic() + handover_due
                if error_shown and applier.applied_count:
                    # Replication moves again: the stored error is history now
                    # (its count stays in the stats).
                    applier.wait()
                    store.record_error(local, self.name, None)
                    error_shown = False
                if time.monotonic() >= next_confirm:
                    confirm()
                    next_confirm = time.monotonic() + self.confirm_interval
            if assembler.between_transactions:
                applier.flush()
            confirm()
            stream.send_status()
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
            watch.close()
            if not local.closed and not local.broken:
                try:
                    handover.forget_worker(local, self.name, "")
                except psycopg.Error as exc:
                    logger.debug("could not clear the worker row: %s", exc)
