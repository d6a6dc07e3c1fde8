"""What every subscription of a subscriber database is doing: :func:`collect`.

For each subscription in the catalog (schema ``pgferry`` of the ``-d`` database),
read in one snapshot of the catalog, plus what the publisher says about its slot:

* ``enabled``, the apply worker (``pgferry.worker``) and its positions, the last
  error with its next action (:func:`error_hint`) and the counters of
  ``pgferry.subscription_stats``, the table states;
* the table sync workers and their initial copy's progress, and the launcher's
  planned retries (:mod:`pgferry.status.activity`);
* from the publisher, over a normal (not replication) connection with the stored
  conninfo: its current WAL position and the slot (active, ``restart_lsn``,
  ``confirmed_flush_lsn``, retained WAL, ``wal_status``). A publisher that cannot
  be reached is reported (masked conninfo, the error) and the local part is
  still shown: one subscription never fails the whole report.

Nothing is written: the catalog is neither created nor migrated.

**Worker state.** ``running`` when the apply worker's row was refreshed within
:data:`STALE_AFTER` seconds (3 x the 10 s status interval; a running apply
worker refreshes it about every second between transactions), ``stale`` when a row
exists but is older (the worker was killed, hangs, or is in one very long
transaction), ``retrying`` when there is no row and the launcher plans to start
the failed worker again (``worker.retry``: the attempt and when), ``stopped``
when there is no row otherwise (no worker, or it stopped cleanly). The age is
measured on the subscriber's clock, which wrote the row, so it holds when
``status`` runs on another machine.

**Lag.** ``lag.bytes`` is the publisher's current WAL position minus the slot's
``confirmed_flush_lsn``: WAL the subscriber has not yet confirmed as durably
applied (the apply worker also confirms positions that carry nothing for it, so
an idle subscription converges to 0). ``lag.seconds`` is the best estimate
available, and ``lag.seconds_source`` says which one it is:

* ``caught_up``: ``lag.bytes`` is 0 and every table is ready, so 0 seconds;
* ``tables_syncing``: ``lag.bytes`` is 0 but tables are still being
  synchronised, so the subscription has not caught up (``lag.seconds`` null; the
  copies' progress and ETA are in ``sync_workers``);
* ``publisher_flush_lag``: ``flush_lag`` of the slot's walsender in the
  publisher's ``pg_stat_replication``, PostgreSQL's own measure: how long after
  the publisher processed a WAL position the subscriber confirmed it durable; 0
  when the walsender's lag times are cleared because the subscriber confirmed
  everything it was sent (PostgreSQL clears them then, so the WAL still ahead is
  not waiting on the subscriber);
* ``since_last_report``: the apply worker is not running (stale): seconds since
  it last reported a confirmed position, i.e. how long replication has stood
  still;
* ``null`` (with ``lag.seconds`` null): no estimate (the publisher was not
  reached, there is no slot, or a worker is running but the publisher gives no
  ``flush_lag``; native PostgreSQL gives none in that case either).

**JSON** (``pgferry status --json``, :func:`pgferry.status.render.to_json`): an
array, one object per subscription ordered by name, with exactly these keys. LSNs
are ``"X/Y"`` strings, times ISO 8601 in UTC, absent values ``null``:

* ``name``, ``enabled`` (bool), ``publications`` (array), ``slot_name``,
  ``conninfo`` (password masked);
* ``worker``: ``state`` (``running``/``stale``/``retrying``/``stopped``),
  ``pid``, ``started_at``, ``received_lsn`` (last WAL position received from the
  publisher), ``applied_lsn`` (last position confirmed to the publisher as
  durably applied: ``latest_end_lsn``), ``last_msg_send_time``,
  ``last_msg_receipt_time``, ``latest_end_time``, ``seconds_since_report``,
  ``retry`` (null, or the launcher's retry of the failed worker: ``attempt``,
  ``next_in_seconds`` (0 or less: started already), ``exit_code``,
  ``failed_at``);
* ``lag``: ``bytes``, ``seconds``, ``seconds_source`` (above);
* ``last_error``, ``last_error_time``, ``last_error_lsn`` (the finish LSN of
  the remote transaction it is about: the one ``--skip`` takes),
  ``last_error_hint`` (what to do about it, e.g. the ``--skip`` command);
* ``sync_workers``: array, one object per table with a running sync worker or
  one waiting to retry: ``schema``, ``name``, ``state``, ``phase``
  (``starting``, ``copying``, ``waiting for the apply worker``, ``catching up``,
  ``handing over``, ``retrying``), ``pid`` (its session on the subscriber),
  ``since`` (when that session began), ``retry`` (as the worker's), ``copy``
  (null unless copying: ``rows`` and ``bytes`` so far, ``seconds`` since the COPY
  began, ``total_rows`` (the publisher's ``reltuples``, null before its first
  ANALYZE), ``total_bytes`` (its ``pg_table_size`` at create or refresh),
  ``fraction`` (0 to 1, by rows when ``total_rows`` is known, else by bytes),
  ``rows_per_second``, ``bytes_per_second``, ``eta_seconds``);
* ``stats``: ``apply_error_count``, ``sync_error_count``, the conflict counters
  ``confl_insert_exists`` ... ``confl_multiple_unique_conflicts`` (PostgreSQL 18's
  ``pg_stat_subscription_stats`` columns), ``stats_reset``;
* ``tables``: ``total``, ``states`` (state letter -> number of tables, in the
  order r s f d i, states with no table left out), ``not_ready`` (array of
  ``{"schema", "name", "state", "state_lsn"}`` for tables not in state ``r``);
* ``sequences`` (from ``pgferry.sequence_state``, written by each sequence sync,
  see :mod:`pgferry.sequences`): ``total``, ``largest_drift``, ``oldest_sync``
  (the time of the least recent sync), ``items`` (array of ``{"schema", "name",
  "publisher_value", "subscriber_value", "drift", "synced_at"}``: the last values
  as the last sync left them, null when never called). A ``drift`` is how far
  the subscriber's value is behind the publisher's: publisher minus subscriber
  value (the other way round for a descending sequence), so 0 or below right
  after a sync (minus ``sequence_headroom`` when one is set), null unless both
  values are known; ``largest_drift`` is the largest of them (null: none);
* ``publisher``: ``conninfo`` (masked), ``reachable`` (bool), ``error`` (why it
  could not be reached or queried: the server's or libpq's message; or null),
  ``wal_lsn`` (its current WAL position; the replay position on a standby),
  ``slot`` (null when the subscription has no slot name or the publisher was not
  reached, else ``name``, ``exists`` (bool), ``active`` (bool), ``active_pid``,
  ``restart_lsn``, ``confirmed_flush_lsn``, ``retained_wal_bytes``
  (``wal_lsn - restart_lsn``), ``wal_status``, ``flush_lag_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg

from pgferry import connect
from pgferry import conninfo as ci
from pgferry.catalog import TableState, store
from pgferry.catalog.schema import current_version
from pgferry.errors import PgferryError
from pgferry.hints import error_hint
from pgferry.protocol.lsn import Lsn
from pgferry.sequences import drift
from pgferry.status.activity import (
    RetryStatus,
    SyncWorkerStatus,
    estimated_rows,
    read_activity,
    sync_workers,
)
from pgferry.subscription.manage import STATE_ORDER

#: A worker row older than this (seconds) is ``stale``: 3 x the status interval.
STALE_AFTER = 30.0
#: libpq connect_timeout for the publisher when its conninfo sets none: a host
#: that does not answer costs this long, once per publisher.
CONNECT_TIMEOUT = 5

#: The publisher's WAL position: the write position, or on a standby (slots there
#: from PostgreSQL 16) the replayed one.
WAL_POSITION_SQL = (
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()"
    " ELSE pg_catalog.pg_current_wal_lsn() END"
)

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class WorkerStatus:
    #: ``running``, ``stale``, ``retrying`` or ``stopped`` (see the module docstring).
    state: str
    pid: int | None = None
    started_at: datetime | None = None
    received_lsn: Lsn | None = None
    #: The position confirmed to the publisher as durably applied (latest_end_lsn).
    applied_lsn: Lsn | None = None
    last_msg_send_time: datetime | None = None
    last_msg_receipt_time: datetime | None = None
    latest_end_time: datetime | None = None
    #: Seconds since the row was last refreshed, on the subscriber's clock.
    seconds_since_report: float | None = None
    #: The launcher's planned retry of a worker that failed (kept until it has
    #: run healthy for a while, so also while a restarted worker runs).
    retry: RetryStatus | None = None
    #: Bytes held in the worker's spools (streamed and prepared transactions
    #: waiting for their outcome), as last reported; None before catalog version 11.
    spool_bytes: int | None = None


@dataclass(frozen=True)
class TableStatus:
    schema: str
    name: str
    state: TableState
    state_lsn: Lsn | None


@dataclass(frozen=True)
class SequenceStatus:
    """One sequence as its last sync left it (``pgferry.sequence_state``)."""

    schema: str
    name: str
    #: The publisher's last value read by the sync; None: never called.
    publisher_value: int | None
    #: The subscriber's last value after the sync; None: never called.
    subscriber_value: int | None
    synced_at: datetime
    #: Seconds since the sync, on the subscriber's clock.
    seconds_since_sync: float
    #: Whether the subscriber's sequence counts down (its increment is negative).
    descending: bool = False

    @property
    def drift(self) -> int | None:
        """How far the subscriber is behind: publisher minus subscriber value, the
        other way round when descending (None unless both are known)."""
        if self.publisher_value is None or self.subscriber_value is None:
            return None
        return drift(self.publisher_value, self.subscriber_value, descending=self.descending)


@dataclass(frozen=True)
class SlotStatus:
    name: str
    exists: bool
    active: bool = False
    active_pid: int | None = None
    restart_lsn: Lsn | None = None
    confirmed_flush_lsn: Lsn | None = None
    retained_wal_bytes: int | None = None
    wal_status: str | None = None
    flush_lag_seconds: float | None = None


@dataclass(frozen=True)
class PublisherStatus:
    #: The stored conninfo with its password masked.
    conninfo: str
    reachable: bool
    error: str | None = None
    wal_lsn: Lsn | None = None
    slot: SlotStatus | None = None
    #: (schema, table) -> estimated rows (reltuples) of the tables being copied.
    estimated_rows: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionStatus:
    name: str
    enabled: bool
    publications: tuple[str, ...]
    slot_name: str | None
    #: Masked.
    conninfo: str
    worker: WorkerStatus
    last_error: str | None
    last_error_time: datetime | None
    #: apply_error_count, sync_error_count, confl_* (see store.STATS_KEYS).
    stats: dict[str, int]
    stats_reset: datetime | None
    tables: tuple[TableStatus, ...]
    publisher: PublisherStatus
    lag_bytes: int | None
    lag_seconds: float | None
    lag_seconds_source: str | None
    #: The sequences of its tables as the last sequence sync left them.
    sequences: tuple[SequenceStatus, ...] = ()
    #: Its table sync workers (running, or waiting to retry).
    sync_workers: tuple[SyncWorkerStatus, ...] = ()
    #: The finish LSN of the remote transaction the last error is about.
    last_error_lsn: Lsn | None = None
    #: What to do about the last error (see :func:`error_hint`).
    last_error_hint: str | None = None

    @property
    def copies(self) -> tuple[SyncWorkerStatus, ...]:
        """Its sync workers that are copying a table now."""
        return tuple(w for w in self.sync_workers if w.copy is not None)

    @property
    def largest_sequence_drift(self) -> int | None:
        """The largest drift of its sequences (the one furthest behind), if any."""
        drifts = [d for d in (s.drift for s in self.sequences) if d is not None]
        return max(drifts) if drifts else None

    @property
    def oldest_sequence_sync(self) -> SequenceStatus | None:
        """The sequence synced least recently, if any."""
        return min(self.sequences, key=lambda s: s.synced_at) if self.sequences else None

    @property
    def table_states(self) -> dict[TableState, int]:
        """State letter -> number of tables, in the order r s f d i, none with 0."""
        counts = {s: sum(1 for t in self.tables if t.state == s) for s in STATE_ORDER}
        return {s: n for s, n in counts.items() if n}

    @property
    def not_ready(self) -> tuple[TableStatus, ...]:
        return tuple(t for t in self.tables if t.state != TableState.READY)


def _lsn(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- the subscriber's catalog ---------------------------------------------------------


@dataclass(frozen=True)
class CatalogSubscription:
    name: str
    conninfo: str
    enabled: bool
    publications: tuple[str, ...]
    slot_name: str | None
    last_error: str | None
    last_error_time: datetime | None
    stats: dict[str, int]
    stats_reset: datetime | None
    worker: WorkerStatus
    tables: tuple[TableStatus, ...]
    sequences: tuple[SequenceStatus, ...]
    sync_workers: tuple[SyncWorkerStatus, ...] = ()
    last_error_lsn: Lsn | None = None


_STATS_KEYS = store.STATS_KEYS
#: The catalog version that has ``pgferry.sequence_state`` and table sizes.
SEQUENCE_STATE_VERSION = 6
#: The catalog version with ``subscription.last_error_lsn``.
ERROR_LSN_VERSION = 7
#: The catalog version with ``worker.spool_bytes``.
SPOOL_VERSION = 11


def _read_sequences(local: Conn) -> dict[str, list[SequenceStatus]]:
    found: dict[str, list[SequenceStatus]] = {}
    for sub, schema, name, published, subscribed, synced_at, age, down in local.execute(
        "SELECT st.subscription, st.sequence_schema, st.sequence_name, st.publisher_value,"
        " st.subscriber_value, st.synced_at, extract(epoch FROM now() - st.synced_at),"
        # (Looked up row by row, through indexes: see pgferry.sequences.)
        " coalesce((SELECT s.seqincrement < 0 FROM pg_catalog.pg_sequence s"
        "  WHERE s.seqrelid = (SELECT c.oid FROM pg_catalog.pg_class c"
        "   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        "   WHERE n.nspname = st.sequence_schema AND c.relname = st.sequence_name)), false)"
        " FROM pgferry.sequence_state st"
        " ORDER BY st.subscription, st.sequence_schema, st.sequence_name"
    ).fetchall():
        found.setdefault(sub, []).append(
            SequenceStatus(schema, name, published, subscribed, synced_at, float(age), down)
        )
    return found


def read_catalog(local: Conn, stale_after: float, version: int) -> list[CatalogSubscription]:
    """Every subscription's local part, from one snapshot of the catalog."""
    with local.transaction():
        local.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        error_lsn = "s.last_error_lsn::text" if version >= ERROR_LSN_VERSION else "NULL"
        subs = local.execute(
            "SELECT s.name, s.conninfo, s.enabled, s.publications, s.slot_name, s.last_error,"
            " s.last_error_time, " + ", ".join(f"st.{k}" for k in _STATS_KEYS) + ", st.stats_reset,"
            f" {error_lsn}"
            " FROM pgferry.subscription s"
            " LEFT JOIN pgferry.subscription_stats st ON st.subscription = s.name"
            " ORDER BY s.name"
        ).fetchall()
        spool = "spool_bytes" if version >= SPOOL_VERSION else "NULL::int8"
        workers = {
            r[0]: r[1:]
            for r in local.execute(
                "SELECT subscription, pid, started_at, received_lsn::text, last_msg_send_time,"
                " last_msg_receipt_time, latest_end_lsn::text, latest_end_time,"
                " extract(epoch FROM now() - greatest(latest_end_time, last_msg_receipt_time,"
                f" started_at)), {spool}"
                " FROM pgferry.worker WHERE relation = ''"
            ).fetchall()
        }
        tables: dict[str, list[TableStatus]] = {}
        syncing: dict[str, list[tuple[str, str, TableState, Lsn | None, int | None]]] = {}
        size = "size_bytes" if version >= SEQUENCE_STATE_VERSION else "NULL::int8"
        for sub, schema, name, state, state_lsn, catchup, nbytes in local.execute(
            "SELECT subscription, remote_schema, remote_name, state::text, state_lsn::text,"
            f" catchup_lsn::text, {size}"
            " FROM pgferry.subscription_table ORDER BY subscription, remote_schema, remote_name"
        ).fetchall():
            letter = TableState.parse(state)
            tables.setdefault(sub, []).append(TableStatus(schema, name, letter, _lsn(state_lsn)))
            if letter != TableState.READY:
                syncing.setdefault(sub, []).append(
                    (schema, name, letter, _lsn(catchup), None if nbytes is None else int(nbytes))
                )
        sequences = _read_sequences(local) if version >= SEQUENCE_STATE_VERSION else {}
        activity = read_activity(local, version)
    result = []
    for row in subs:
        name, conninfo, enabled, pubs, slot, error, error_time = row[:7]
        counts, stats_reset = row[7 : 7 + len(_STATS_KEYS)], row[7 + len(_STATS_KEYS)]
        failed_at = row[8 + len(_STATS_KEYS)]
        result.append(
            CatalogSubscription(
                name=name,
                conninfo=conninfo,
                enabled=bool(enabled),
                publications=tuple(pubs),
                slot_name=slot,
                last_error=error,
                last_error_time=error_time,
                stats={k: int(v or 0) for k, v in zip(_STATS_KEYS, counts, strict=True)},
                stats_reset=stats_reset,
                worker=_worker(workers.get(name), stale_after, activity.retry(name, "apply")),
                tables=tuple(tables.get(name, ())),
                sequences=tuple(sequences.get(name, ())),
                sync_workers=sync_workers(activity, name, syncing.get(name, [])),
                last_error_lsn=_lsn(failed_at),
            )
        )
    return result


def _worker(
    row: tuple[Any, ...] | None, stale_after: float, retry: RetryStatus | None = None
) -> WorkerStatus:
    if row is None:
        return WorkerStatus("stopped" if retry is None else "retrying", retry=retry)
    pid, started, received, send_time, receipt_time, applied, end_time, age, spool = row
    seconds = _float(age)
    state = "running" if seconds is not None and seconds <= stale_after else "stale"
    return WorkerStatus(
        retry=retry,
        state=state,
        pid=int(pid),
        started_at=started,
        received_lsn=_lsn(received),
        applied_lsn=_lsn(applied),
        last_msg_send_time=send_time,
        last_msg_receipt_time=receipt_time,
        latest_end_time=end_time,
        seconds_since_report=seconds,
        spool_bytes=None if spool is None else int(spool),
    )


# -- the publisher ----------------------------------------------------------------------


def scrub(message: str, conninfo: str) -> str:
    """An error message on one line, without the conninfo's password (libpq does not
    echo it, but a message must not depend on that)."""
    text = " ".join(message.split())
    try:
        password = ci.parse(conninfo).get("password")
    except PgferryError:
        return ci.mask(text)
    if password:
        text = text.replace(password, "********")
    return text


def connect_publisher(conninfo: str) -> Conn:
    """A connection to the publisher with the stored conninfo (``connect_timeout``
    :data:`CONNECT_TIMEOUT` unless it sets one); a failure is a
    :class:`PgferryError` whose message shows the masked conninfo and the reason."""
    return connect.publisher(conninfo, application_name="pgferry status", timeout=CONNECT_TIMEOUT)


def read_publisher(remote: Conn, conninfo: str, slot_name: str | None) -> PublisherStatus:
    row = remote.execute(
        f"SELECT ({WAL_POSITION_SQL})::text, s.slot_name IS NOT NULL, s.active, s.active_pid,"
        " s.restart_lsn::text, s.confirmed_flush_lsn::text,"
        f" pg_catalog.pg_wal_lsn_diff({WAL_POSITION_SQL}, s.restart_lsn), s.wal_status,"
        # PostgreSQL clears the lag times once the receiver has confirmed all that
        # was sent (twice in a row): nothing sent is waiting, the lag is 0 then.
        " coalesce(extract(epoch FROM r.flush_lag),"
        "  CASE WHEN r.flush_lsn >= r.sent_lsn THEN 0 END)"
        " FROM (SELECT 1) AS one"
        " LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = %s"
        " LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid",
        (slot_name,),
    ).fetchone()
    assert row is not None
    wal, exists, active, active_pid, restart, flushed, retained, wal_status, lag = row
    slot = None
    if slot_name is not None:
        slot = SlotStatus(
            name=slot_name,
            exists=bool(exists),
            active=bool(active),
            active_pid=None if active_pid is None else int(active_pid),
            restart_lsn=_lsn(restart),
            confirmed_flush_lsn=_lsn(flushed),
            retained_wal_bytes=None if retained is None else int(retained),
            wal_status=wal_status,
            flush_lag_seconds=_float(lag),
        )
    return PublisherStatus(ci.mask(conninfo), True, None, _lsn(wal), slot)


class _Publishers:
    """One connection per distinct conninfo for one report (and one failure)."""

    def __init__(self) -> None:
        self._conns: dict[str, Conn | PgferryError] = {}

    def status(
        self, conninfo: str, slot_name: str | None, copying: list[tuple[str, str]] | None = None
    ) -> PublisherStatus:
        """The publisher's side of one subscription; ``copying``: the tables whose
        row estimate is wanted."""
        conn = self._conns.get(conninfo)
        if conn is None:
            try:
                conn = connect_publisher(conninfo)
            except PgferryError as exc:  # masked: unparsable, or unreachable
                conn = exc
            self._conns[conninfo] = conn
        if isinstance(conn, PgferryError):
            return PublisherStatus(ci.mask(conninfo), False, conn.message)
        try:
            status = read_publisher(conn, conninfo, slot_name)
            if copying:
                status = replace(status, estimated_rows=estimated_rows(conn, copying))
            return status
        except psycopg.Error as exc:
            return PublisherStatus(ci.mask(conninfo), False, scrub(str(exc), conninfo))

    def close(self) -> None:
        for conn in self._conns.values():
            if isinstance(conn, psycopg.Connection):
                conn.close()


# -- together -----------------------------------------------------------------------------


def _lag(
    worker: WorkerStatus, publisher: PublisherStatus, syncing: bool = False
) -> tuple[int | None, float | None, str | None]:
    slot = publisher.slot
    if (
        slot is None
        or not slot.exists
        or publisher.wal_lsn is None
        or slot.confirmed_flush_lsn is None
    ):
        return None, None, None
    lag_bytes = max(0, publisher.wal_lsn - slot.confirmed_flush_lsn)
    if lag_bytes == 0:
        # Tables still being synchronised: the stream is, the subscription is not.
        return (0, None, "tables_syncing") if syncing else (0, 0.0, "caught_up")
    if slot.flush_lag_seconds is not None:
        return lag_bytes, slot.flush_lag_seconds, "publisher_flush_lag"
    if worker.state == "stale" and worker.seconds_since_report is not None:
        return lag_bytes, worker.seconds_since_report, "since_last_report"
    return lag_bytes, None, None


def _with_totals(
    workers: tuple[SyncWorkerStatus, ...], publisher: PublisherStatus
) -> tuple[SyncWorkerStatus, ...]:
    """The sync workers with the publisher's row estimates added to their copies."""
    found = []
    for w in workers:
        rows = publisher.estimated_rows.get((w.schema, w.name))
        if w.copy is not None and rows is not None:
            w = replace(w, copy=replace(w.copy, total_rows=rows))
        found.append(w)
    return tuple(found)


def subscription_status(
    local: CatalogSubscription, publisher: PublisherStatus
) -> SubscriptionStatus:
    syncing = any(t.state != TableState.READY for t in local.tables)
    lag_bytes, lag_seconds, source = _lag(local.worker, publisher, syncing)
    return SubscriptionStatus(
        name=local.name,
        enabled=local.enabled,
        publications=local.publications,
        slot_name=local.slot_name,
        conninfo=ci.mask(local.conninfo),
        worker=local.worker,
        last_error=local.last_error,
        last_error_time=local.last_error_time,
        stats=local.stats,
        stats_reset=local.stats_reset,
        tables=local.tables,
        publisher=publisher,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        lag_seconds_source=source,
        sequences=local.sequences,
        sync_workers=_with_totals(local.sync_workers, publisher),
        last_error_lsn=local.last_error_lsn,
        last_error_hint=error_hint(
            local.name, local.last_error, local.last_error_lsn, local.enabled
        ),
    )


def _copying(sub: CatalogSubscription) -> list[tuple[str, str]]:
    return [(w.schema, w.name) for w in sub.sync_workers if w.copy is not None]


def collect(
    dsn: str, *, stale_after: float = STALE_AFTER, names: Iterable[str] | None = None
) -> list[SubscriptionStatus]:
    """The status of every subscription of the subscriber database ``dsn``, ordered
    by name (only those in ``names`` when given); none without a catalog.

    The subscriber must be reachable (its failure is a
    :class:`~pgferry.errors.ConnectionFailed`); a publisher need not be.
    """
    wanted = None if names is None else set(names)
    with connect.subscriber(dsn) as local:
        version = current_version(local)
        if version == 0:
            return []
        locals_ = [
            s
            for s in read_catalog(local, stale_after, version)
            if wanted is None or s.name in wanted
        ]
    # The subscriber transaction is over before any publisher is contacted.
    publishers = _Publishers()
    try:
        return [
            subscription_status(s, publishers.status(s.conninfo, s.slot_name, _copying(s)))
            for s in locals_
        ]
    finally:
        publishers.close()
