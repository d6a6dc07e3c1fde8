"""The conflict log, the conflict counters and per-table resolution in the catalog.

* ``pgferry.conflict``: one row per conflict, written in the same local transaction
  as its resolution (so a resolved conflict is logged exactly when its effect
  commits), or, when the policy stops the worker, in a transaction of its own after
  the rollback, once: a retry that meets the same conflict again (same remote
  transaction, table, type and key: :func:`already_logged`) logs and counts
  nothing more (native's counters count every attempt);
* ``pgferry.subscription_stats.confl_*``: counters per type, PostgreSQL 18's
  ``pg_stat_subscription_stats`` columns;
* ``pgferry.conflict_count``: conflicts logged by type and resolution (the policy
  applied), counted by :func:`insert` in the same transaction as the log rows, so
  it holds the log's counts without a scrape counting the log (:func:`counts`);
* ``pgferry.subscription_table.conflict_resolution``: a table's own resolution
  spec, overriding the subscription's ``conflict_resolution`` option.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgferry.conflict import ConflictType, Resolution
from pgferry.errors import InterfaceError
from pgferry.protocol.lsn import Lsn

JsonValue = dict[str, Any] | list[dict[str, Any]] | None


@dataclass(frozen=True)
class ConflictRecord:
    subscription: str
    table_schema: str
    table_name: str
    conflict_type: ConflictType
    resolution: str
    applied: bool
    remote_xid: int | None
    remote_commit_lsn: Lsn | None
    remote_commit_time: datetime | None
    remote_origin: str | None
    local_origin: str | None
    local_commit_time: datetime | None
    key: JsonValue
    local_row: JsonValue
    remote_row: JsonValue


@dataclass(frozen=True)
class LoggedConflict(ConflictRecord):
    id: int = 0
    logged_at: datetime | None = None


_COLUMNS = (
    "subscription, table_schema, table_name, conflict_type, resolution, applied,"
    " remote_xid, remote_commit_lsn, remote_commit_time, remote_origin, local_origin,"
    " local_commit_time, key, local_row, remote_row"
)


def _json(value: JsonValue) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def insert(conn: psycopg.Connection[Any], records: Iterable[ConflictRecord]) -> None:
    """Append ``records`` to the log, and count them in ``conflict_count`` (in the
    caller's transaction)."""
    records = list(records)
    rows = [
        (
            r.subscription,
            r.table_schema,
            r.table_name,
            str(r.conflict_type),
            r.resolution,
            r.applied,
            r.remote_xid,
            None if r.remote_commit_lsn is None else str(r.remote_commit_lsn),
            r.remote_commit_time,
            r.remote_origin,
            r.local_origin,
            r.local_commit_time,
            _json(r.key),
            _json(r.local_row),
            _json(r.remote_row),
        )
        for r in records
    ]
    if not rows:
        return
    counted = Counter((r.subscription, str(r.conflict_type), r.resolution) for r in records)
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO pgferry.conflict ({_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::pg_lsn, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
        cur.execute(
            "INSERT INTO pgferry.conflict_count AS c (subscription, conflict_type, resolution,"
            " count) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[])"
            " ON CONFLICT (subscription, conflict_type, resolution)"
            " DO UPDATE SET count = c.count + excluded.count",
            (
                [k[0] for k in counted],
                [k[1] for k in counted],
                [k[2] for k in counted],
                list(counted.values()),
            ),
        )


def counts(conn: psycopg.Connection[Any]) -> dict[tuple[str, str, str], int]:
    """(subscription, conflict type, resolution) -> conflicts logged."""
    rows = conn.execute(
        "SELECT subscription, conflict_type, resolution, count FROM pgferry.conflict_count"
    ).fetchall()
    return {(str(s), str(t), str(r)): int(n) for s, t, r, n in rows}


def already_logged(conn: psycopg.Connection[Any], record: ConflictRecord) -> bool:
    """Whether the conflict that stopped the worker was logged by an attempt
    before: a conflict of the same remote transaction, table, type and key, not
    applied."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pgferry.conflict WHERE subscription = %s"
        " AND remote_commit_lsn = %s::pg_lsn AND remote_xid IS NOT DISTINCT FROM %s"
        " AND table_schema = %s AND table_name = %s AND conflict_type = %s AND NOT applied"
        " AND key IS NOT DISTINCT FROM %s)",
        (
            record.subscription,
            None if record.remote_commit_lsn is None else str(record.remote_commit_lsn),
            record.remote_xid,
            record.table_schema,
            record.table_name,
            str(record.conflict_type),
            _json(record.key),
        ),
    ).fetchone()
    return bool(row and row[0])


def add_counts(
    conn: psycopg.Connection[Any], subscription: str, counts: Mapping[ConflictType, int]
) -> None:
    """Add to the subscription's ``confl_*`` counters (in the caller's transaction)."""
    counted = [(t, n) for t, n in counts.items() if n]
    if not counted:
        return
    sets = ", ".join(f"{t.counter} = {t.counter} + %s" for t, _ in counted)
    conn.execute(
        f"UPDATE pgferry.subscription_stats SET {sets} WHERE subscription = %s",
        [*(n for _, n in counted), subscription],
    )


def list_conflicts(
    conn: psycopg.Connection[Any],
    *,
    subscription: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[LoggedConflict]:
    """Logged conflicts, oldest first (the newest ``limit`` of them)."""
    where = ["(%(sub)s::text IS NULL OR subscription = %(sub)s)"]
    where.append("(%(since)s::timestamptz IS NULL OR logged_at >= %(since)s)")
    query = (
        f"SELECT id, logged_at, {_COLUMNS.replace('remote_commit_lsn', 'remote_commit_lsn::text')}"
        f" FROM pgferry.conflict WHERE {' AND '.join(where)} ORDER BY id DESC"
    )
    if limit is not None:
        query += " LIMIT %(limit)s"
    rows = conn.execute(query, {"sub": subscription, "since": since, "limit": limit}).fetchall()
    result = []
    for row in reversed(rows):
        result.append(
            LoggedConflict(
                subscription=row[2],
                table_schema=row[3],
                table_name=row[4],
                conflict_type=ConflictType(row[5]),
                resolution=row[6],
                applied=row[7],
                remote_xid=row[8],
                remote_commit_lsn=Lsn.parse(row[9]) if row[9] else None,
                remote_commit_time=row[10],
                remote_origin=row[11],
                local_origin=row[12],
                local_commit_time=row[13],
                key=row[14],
                local_row=row[15],
                remote_row=row[16],
                id=row[0],
                logged_at=row[1],
            )
        )
    return result


def set_table_resolution(
    conn: psycopg.Connection[Any],
    subscription: str,
    schema: str,
    name: str,
    resolution: Resolution | None,
) -> None:
    """Set (None: clear) a table's own resolution spec."""
    cur = conn.execute(
        "UPDATE pgferry.subscription_table SET conflict_resolution = %s"
        " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
        (
            None if resolution is None or resolution.empty else str(resolution),
            subscription,
            schema,
            name,
        ),
    )
    if cur.rowcount == 0:
        raise InterfaceError(
            f"table {schema}.{name} is not part of subscription {subscription!r}",
            hint="list its tables with pgferry status, or refresh the subscription first",
        )


def table_resolutions(
    conn: psycopg.Connection[Any], subscription: str
) -> dict[tuple[str, str], Resolution]:
    rows = conn.execute(
        "SELECT remote_schema, remote_name, conflict_resolution FROM pgferry.subscription_table"
        " WHERE subscription = %s AND conflict_resolution IS NOT NULL",
        (subscription,),
    ).fetchall()
    return {(r[0], r[1]): Resolution.parse(r[2]) for r in rows}


def set_remote_node(conn: psycopg.Connection[Any], subscription: str, node: str) -> None:
    conn.execute(
        "UPDATE pgferry.subscription SET remote_node = %s"
        " WHERE name = %s AND remote_node IS DISTINCT FROM %s",
        (node, subscription, node),
    )


def origin_nodes(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Replication origin name -> the publisher node of the subscription using it."""
    rows = conn.execute(
        "SELECT origin_name, remote_node FROM pgferry.subscription WHERE remote_node IS NOT NULL"
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def timestamp_policies_in_use(conn: psycopg.Connection[Any]) -> bool:
    """Some subscription or table of this database resolves conflicts by commit
    time (last_update_wins / first_update_wins)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pgferry.subscription"
        "   WHERE options ->> 'conflict_resolution' ~ '(last|first)_update_wins')"
        " OR EXISTS (SELECT 1 FROM pgferry.subscription_table"
        "   WHERE conflict_resolution ~ '(last|first)_update_wins')"
    ).fetchone()
    return bool(row and row[0])
