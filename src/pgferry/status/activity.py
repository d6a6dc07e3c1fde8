"""What the workers are doing now, beyond the catalog's rows: the table sync
workers' sessions and their initial copy's progress, and the launcher's retries.

* **Sync workers.** A table sync worker's session on the subscriber carries its
  slot's name as ``application_name`` (:func:`pgferry.origins.sync_origin`, unique
  per subscription and table), so ``pg_stat_activity`` tells which tables have a
  worker, its session's ``pid`` and since when. While the worker copies, the
  subscriber's ``pg_stat_progress_copy`` (PostgreSQL 14+) for that ``pid`` gives
  the rows and bytes of its ``COPY FROM`` so far; the copy's start is the
  statement's ``query_start``. (Another role's sessions show only to a role
  with ``pg_read_all_stats``, as in ``pg_stat_activity`` itself.)
* **Totals**, estimates both: the publisher's ``reltuples`` of the table (the sum
  over its leaf partitions; unknown before its first VACUUM or ANALYZE), read by
  :func:`estimated_rows`, and the table's size on the publisher recorded at
  ``create`` or refresh (``pgferry.subscription_table.size_bytes``, its
  ``pg_table_size``: on-disk bytes, which COPY's data bytes only approximate).
  :class:`CopyProgress` works out the fraction done, the rate and the ETA from
  them, by rows when the row estimate is known, else by bytes.
* **Retries**: ``pgferry.worker_retry`` (:func:`pgferry.catalog.workers.retries`),
  one row per failed worker the launcher starts again.

Nothing here writes; every reading is a snapshot of one moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgferry.catalog import TableState, workers
from pgferry.origins import SYNC_PREFIX, sync_origin
from pgferry.protocol.lsn import Lsn

Conn = psycopg.Connection[Any]

#: The subscriber version from which ``pg_stat_progress_copy`` exists.
PROGRESS_COPY_VERSION = 140000
#: The catalog version with ``pgferry.worker_retry``.
RETRY_VERSION = 7


@dataclass(frozen=True)
class CopyProgress:
    """A running initial copy: done so far, and the estimated totals."""

    rows: int
    #: COPY data received so far (bytes_processed).
    bytes: int
    #: Seconds since the COPY started.
    seconds: float
    #: The publisher's estimate of the table's rows (reltuples); None: unknown.
    total_rows: int | None = None
    #: The table's size on the publisher (pg_table_size at create or refresh).
    total_bytes: int | None = None

    @property
    def rows_per_second(self) -> float | None:
        return self.rows / self.seconds if self.seconds > 0 else None

    @property
    def bytes_per_second(self) -> float | None:
        return self.bytes / self.seconds if self.seconds > 0 else None

    def _measure(self) -> tuple[int, int] | None:
        """(done, total) by rows when their estimate is known, else by bytes."""
        if self.total_rows:
            return self.rows, self.total_rows
        if self.total_bytes:
            return self.bytes, self.total_bytes
        return None

    @property
    def fraction(self) -> float | None:
        """Done / total, at most 1 (an estimate can be exceeded); None: no total."""
        measure = self._measure()
        return None if measure is None else min(1.0, measure[0] / measure[1])

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; None without a total, a rate, or once
        the estimate is exceeded."""
        measure = self._measure()
        if measure is None or self.seconds <= 0 or measure[0] <= 0 or measure[0] >= measure[1]:
            return None
        done, total = measure
        return (total - done) / (done / self.seconds)


@dataclass(frozen=True)
class RetryStatus:
    """A failed worker the launcher starts again (``pgferry.worker_retry``)."""

    #: Its failures in a row: the number of the retry to come (or just made).
    attempt: int
    #: Seconds until the launcher starts it again; 0 or less: started already.
    next_in: float
    exit_code: int | None
    failed_at: datetime


@dataclass(frozen=True)
class SyncWorkerStatus:
    """A table being synchronised by a worker, or waiting to retry one."""

    schema: str
    name: str
    state: TableState
    #: ``starting`` (state d, slot and snapshot being made), ``copying``,
    #: ``catching up`` (state f: its indexes, then the changes up to the apply
    #: worker's position), ``waiting for the apply worker`` (state f, no position
    #: given yet), ``handing over`` (state s), or ``retrying``.
    phase: str
    #: The worker's session on the subscriber (pg_stat_activity.pid); None when
    #: no worker runs (retrying).
    pid: int | None
    #: When that session began, and seconds since, by the subscriber's clock.
    since: datetime | None
    seconds: float | None
    copy: CopyProgress | None = None
    retry: RetryStatus | None = None
    #: The apply worker's position the catch-up runs to (catchup_lsn).
    catchup_lsn: Lsn | None = None


@dataclass(frozen=True)
class _Session:
    pid: int
    since: datetime
    seconds: float
    #: (rows, bytes, seconds since the COPY began) while it copies.
    copy: tuple[int, int, float] | None


def _sessions(local: Conn) -> dict[str, _Session]:
    """Sync workers' sessions on the subscriber, by ``application_name``."""
    copying = local.info.server_version >= PROGRESS_COPY_VERSION
    progress = (
        "p.tuples_processed, p.bytes_processed, extract(epoch FROM now() - a.query_start)"
        if copying
        else "NULL::int8, NULL::int8, NULL::float8"
    )
    join = (
        " LEFT JOIN pg_catalog.pg_stat_progress_copy p ON p.pid = a.pid AND p.command = 'COPY FROM'"
        if copying
        else ""
    )
    rows = local.execute(
        "SELECT a.application_name, a.pid, a.backend_start,"
        f" extract(epoch FROM now() - a.backend_start)::float8, {progress}"
        f" FROM pg_catalog.pg_stat_activity a{join}"
        " WHERE a.datname = pg_catalog.current_database()"
        " AND starts_with(a.application_name, %s)",
        (SYNC_PREFIX,),
    ).fetchall()
    found: dict[str, _Session] = {}
    for app, pid, since, seconds, rows_done, bytes_done, copy_seconds in rows:
        copy = None
        if rows_done is not None:
            copy = (int(rows_done), int(bytes_done or 0), max(0.0, float(copy_seconds or 0)))
        found[str(app)] = _Session(int(pid), since, max(0.0, float(seconds or 0)), copy)
    return found


@dataclass(frozen=True)
class Activity:
    """One reading of the subscriber's workers, for every subscription."""

    sessions: dict[str, _Session]
    #: (subscription, kind, schema, table) -> retry ('' schema and table: not a sync worker).
    retries: dict[tuple[str, str, str, str], RetryStatus]

    def retry(
        self, subscription: str, kind: str, table: tuple[str, str] = ("", "")
    ) -> RetryStatus | None:
        return self.retries.get((subscription, kind, *table))


def read_activity(local: Conn, catalog_version: int) -> Activity:
    retries: dict[tuple[str, str, str, str], RetryStatus] = {}
    if catalog_version >= RETRY_VERSION:
        for r in workers.retries(local):
            schema, name = r.table or ("", "")
            retries[(r.subscription, r.kind, schema, name)] = RetryStatus(
                r.attempt, r.next_in, r.exit_code, r.failed_at
            )
    return Activity(_sessions(local), retries)


_SYNCING = (TableState.INIT, TableState.DATA, TableState.FINISHED, TableState.SYNCDONE)


def sync_workers(
    activity: Activity,
    subscription: str,
    tables: list[tuple[str, str, TableState, Lsn | None, int | None]],
) -> tuple[SyncWorkerStatus, ...]:
    """The sync workers of ``subscription``: each table (schema, name, state,
    catchup_lsn, size_bytes) not ready that has a worker session or a retry."""
    found = []
    for schema, name, state, catchup, size in tables:
        if state not in _SYNCING:
            continue
        session = activity.sessions.get(sync_origin(subscription, schema, name))
        retry = activity.retry(subscription, "sync", (schema, name))
        if session is None:
            if retry is None:
                continue
            found.append(
                SyncWorkerStatus(schema, name, state, "retrying", None, None, None, retry=retry)
            )
            continue
        copy = None
        if session.copy is not None and state == TableState.DATA:
            rows, nbytes, seconds = session.copy
            copy = CopyProgress(rows, nbytes, seconds, None, size)
        found.append(
            SyncWorkerStatus(
                schema,
                name,
                state,
                _phase(state, copy, catchup),
                session.pid,
                session.since,
                session.seconds,
                copy,
                retry,
                catchup,
            )
        )
    return tuple(found)


def _phase(state: TableState, copy: CopyProgress | None, catchup: Lsn | None) -> str:
    if state == TableState.SYNCDONE:
        return "handing over"
    if state == TableState.FINISHED:
        return "waiting for the apply worker" if catchup is None else "catching up"
    return "copying" if copy is not None else "starting"


def estimated_rows(remote: Conn, tables: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The publisher's estimate of each table's rows (``reltuples``; of a
    partitioned table, the sum of its leaf partitions'), where it has one: not
    before the table's first VACUUM or ANALYZE."""
    if not tables:
        return {}
    rows = remote.execute(
        "SELECT v.s, v.n, (SELECT CASE WHEN bool_or(c.reltuples < 0) THEN NULL"
        "  ELSE sum(c.reltuples) END FROM pg_catalog.pg_class c"
        "  WHERE c.oid = r.oid AND r.relkind <> 'p' OR c.oid IN (SELECT p.relid"
        "   FROM pg_catalog.pg_partition_tree(r.oid) p WHERE p.isleaf))"
        " FROM unnest(%s::text[], %s::text[]) AS v(s, n)"
        " JOIN pg_catalog.pg_namespace ns ON ns.nspname = v.s"
        " JOIN pg_catalog.pg_class r ON r.relnamespace = ns.oid AND r.relname = v.n",
        ([s for s, _ in tables], [n for _, n in tables]),
    ).fetchall()
    # 0 on PostgreSQL 13 means "never counted" as often as "empty": no estimate.
    return {(s, n): int(est) for s, n, est in rows if est is not None and est > 0}
