"""Reading and writing the catalog: subscriptions, their tables, stats, errors.

Plain functions over a psycopg connection to the subscriber database; each runs
in the caller's transaction (or autocommit), so callers decide atomicity, e.g. the
apply worker records a table's state change in the same transaction as the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgferry.catalog.model import DEFAULT_ENABLED, SubscriptionOptions, TableState
from pgferry.conflict import CONFLICT_TYPES
from pgferry.errors import InterfaceError
from pgferry.protocol.lsn import Lsn


class SubscriptionNotFound(InterfaceError):
    """No subscription of that name in the catalog."""


class SubscriptionExists(InterfaceError):
    """A subscription of that name is already in the catalog."""


@dataclass(frozen=True)
class Subscription:
    name: str
    conninfo: str
    publications: tuple[str, ...]
    slot_name: str | None
    origin_name: str
    enabled: bool = DEFAULT_ENABLED
    options: SubscriptionOptions = field(default_factory=SubscriptionOptions)
    skip_lsn: Lsn | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class SubscriptionTable:
    subscription: str
    remote_schema: str
    remote_name: str
    local_schema: str
    local_name: str
    state: TableState
    state_lsn: Lsn | None
    columns: tuple[str, ...] | None = None
    row_filter: str | None = None


_SUB_COLUMNS = (
    "name, conninfo, publications, slot_name, origin_name, enabled, options,"
    " skip_lsn::text, last_error"
)


def _subscription(row: tuple[Any, ...]) -> Subscription:
    name, conninfo, pubs, slot, origin, enabled, options, skip, error = row
    return Subscription(
        name,
        conninfo,
        tuple(pubs),
        slot,
        origin,
        enabled,
        SubscriptionOptions.from_json(options or {}),
        Lsn.parse(skip) if skip else None,
        error,
    )


def create_subscription(conn: psycopg.Connection[Any], sub: Subscription) -> None:
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO pgferry.subscription (name, conninfo, publications, slot_name,"
                " origin_name, enabled, options) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    sub.name,
                    sub.conninfo,
                    list(sub.publications),
                    sub.slot_name,
                    sub.origin_name,
                    sub.enabled,
                    Jsonb(sub.options.to_json()),
                ),
            )
            conn.execute(
                "INSERT INTO pgferry.subscription_stats (subscription) VALUES (%s)", (sub.name,)
            )
    except psycopg.errors.UniqueViolation:
        raise SubscriptionExists(f"subscription {sub.name!r} already exists") from None


def get_subscription(conn: psycopg.Connection[Any], name: str) -> Subscription:
    row = conn.execute(
        f"SELECT {_SUB_COLUMNS} FROM pgferry.subscription WHERE name = %s", (name,)
    ).fetchone()
    if row is None:
        raise SubscriptionNotFound(f"subscription {name!r} does not exist")
    return _subscription(row)


def list_subscriptions(conn: psycopg.Connection[Any]) -> list[Subscription]:
    rows = conn.execute(f"SELECT {_SUB_COLUMNS} FROM pgferry.subscription ORDER BY name")
    return [_subscription(r) for r in rows.fetchall()]


def delete_subscription(conn: psycopg.Connection[Any], name: str) -> None:
    cur = conn.execute("DELETE FROM pgferry.subscription WHERE name = %s", (name,))
    if cur.rowcount == 0:
        raise SubscriptionNotFound(f"subscription {name!r} does not exist")


def set_enabled(conn: psycopg.Connection[Any], name: str, enabled: bool) -> None:
    conn.execute("UPDATE pgferry.subscription SET enabled = %s WHERE name = %s", (enabled, name))


def set_skip_lsn(conn: psycopg.Connection[Any], name: str, lsn: Lsn | None) -> None:
    conn.execute(
        "UPDATE pgferry.subscription SET skip_lsn = %s::pg_lsn WHERE name = %s",
        (None if lsn is None else str(lsn), name),
    )


def record_error(
    conn: psycopg.Connection[Any],
    name: str,
    message: str | None,
    *,
    sync: bool = False,
    finish_lsn: Lsn | str | None = None,
) -> None:
    """Store the last error (None clears it) and count it, as pg_stat_subscription_stats;
    ``finish_lsn``: the finish LSN of the remote transaction it is about, the one
    ``--skip`` takes (see :func:`failed_lsn`)."""
    conn.execute(
        "UPDATE pgferry.subscription SET last_error = %s,"
        " last_error_time = CASE WHEN %s::text IS NULL THEN NULL ELSE now() END,"
        " last_error_lsn = %s::pg_lsn"
        " WHERE name = %s",
        (message, message, None if finish_lsn is None else str(finish_lsn), name),
    )
    if message is not None:
        column = "sync_error_count" if sync else "apply_error_count"
        conn.execute(
            f"UPDATE pgferry.subscription_stats SET {column} = {column} + 1"
            " WHERE subscription = %s",
            (name,),
        )


def record_failure(
    conn: psycopg.Connection[Any],
    name: str,
    message: str,
    *,
    sync: bool = False,
    finish_lsn: Lsn | str | None = None,
) -> bool:
    """A worker's error: stored and counted (see :func:`record_error`) and, with
    ``disable_on_error``, the subscription disabled, in one transaction; whether
    it was disabled. Apply and table sync errors alike, as native."""
    with conn.transaction():
        record_error(conn, name, message, sync=sync, finish_lsn=finish_lsn)
        row = conn.execute(
            "UPDATE pgferry.subscription SET enabled = false"
            " WHERE name = %s AND enabled AND (options ->> 'disable_on_error')::bool"
            " RETURNING name",
            (name,),
        ).fetchone()
    return row is not None


def failed_lsn(conn: psycopg.Connection[Any], name: str) -> Lsn | None:
    """The finish LSN of the remote transaction the last error is about (None: no
    error, or one about no particular transaction)."""
    row = conn.execute(
        "SELECT last_error_lsn::text FROM pgferry.subscription WHERE name = %s", (name,)
    ).fetchone()
    return Lsn.parse(row[0]) if row and row[0] else None


#: The counters of ``pgferry.subscription_stats``, in pg_stat_subscription_stats order.
STATS_KEYS: tuple[str, ...] = (
    "apply_error_count",
    "sync_error_count",
    *(t.counter for t in CONFLICT_TYPES),
)


def stats(conn: psycopg.Connection[Any], name: str) -> dict[str, int]:
    row = conn.execute(
        f"SELECT {', '.join(STATS_KEYS)} FROM pgferry.subscription_stats WHERE subscription = %s",
        (name,),
    ).fetchone()
    if row is None:
        raise SubscriptionNotFound(f"subscription {name!r} does not exist")
    return dict(zip(STATS_KEYS, (int(v) for v in row), strict=True))


def applied_counts(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """Subscription -> (remote transactions, row changes) its apply worker applied,
    as written with its last report (see :mod:`pgferry.catalog.workers`)."""
    rows = conn.execute(
        "SELECT subscription, transactions_applied, rows_applied FROM pgferry.subscription_stats"
    ).fetchall()
    return {str(sub): (int(t), int(r)) for sub, t, r in rows}


def upsert_table(conn: psycopg.Connection[Any], table: SubscriptionTable) -> None:
    state = TableState.parse(table.state)
    conn.execute(
        "INSERT INTO pgferry.subscription_table (subscription, remote_schema, remote_name,"
        " local_schema, local_name, state, state_lsn, columns, row_filter)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::pg_lsn, %s, %s)"
        " ON CONFLICT (subscription, remote_schema, remote_name) DO UPDATE SET"
        " local_schema = excluded.local_schema, local_name = excluded.local_name,"
        " state = excluded.state, state_lsn = excluded.state_lsn,"
        " columns = excluded.columns, row_filter = excluded.row_filter",
        (
            table.subscription,
            table.remote_schema,
            table.remote_name,
            table.local_schema,
            table.local_name,
            state.value,
            None if table.state_lsn is None else str(table.state_lsn),
            None if table.columns is None else list(table.columns),
            table.row_filter,
        ),
    )


def set_table_state(
    conn: psycopg.Connection[Any],
    subscription: str,
    remote_schema: str,
    remote_name: str,
    state: TableState,
    lsn: Lsn | None,
) -> bool:
    """Whether the table is still the subscription's (its row was updated)."""
    letter = TableState.parse(state).value
    cursor = conn.execute(
        "UPDATE pgferry.subscription_table SET state = %s, state_lsn = %s::pg_lsn"
        " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
        (letter, None if lsn is None else str(lsn), subscription, remote_schema, remote_name),
    )
    return cursor.rowcount == 1


def tables(conn: psycopg.Connection[Any], subscription: str) -> list[SubscriptionTable]:
    rows = conn.execute(
        "SELECT subscription, remote_schema, remote_name, local_schema, local_name, state,"
        " state_lsn::text, columns, row_filter FROM pgferry.subscription_table"
        " WHERE subscription = %s ORDER BY remote_schema, remote_name",
        (subscription,),
    ).fetchall()
    return [
        SubscriptionTable(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            TableState.parse(str(r[5])),
            Lsn.parse(r[6]) if r[6] else None,
            tuple(r[7]) if r[7] is not None else None,
            r[8],
        )
        for r in rows
    ]


# -- subscription management (pgferry subscription create/alter/drop/list) ------------


def subscription_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pgferry.subscription WHERE name = %s", (name,)).fetchone()
    return row is not None


def lock_subscription(conn: psycopg.Connection[Any], name: str) -> Subscription:
    """The subscription's row, locked FOR UPDATE until the caller's transaction ends."""
    row = conn.execute(
        f"SELECT {_SUB_COLUMNS} FROM pgferry.subscription WHERE name = %s FOR UPDATE", (name,)
    ).fetchone()
    if row is None:
        raise SubscriptionNotFound(f"subscription {name!r} does not exist")
    return _subscription(row)


def set_conninfo(conn: psycopg.Connection[Any], name: str, conninfo: str) -> None:
    conn.execute("UPDATE pgferry.subscription SET conninfo = %s WHERE name = %s", (conninfo, name))


def set_publications(
    conn: psycopg.Connection[Any], name: str, publications: tuple[str, ...]
) -> None:
    conn.execute(
        "UPDATE pgferry.subscription SET publications = %s WHERE name = %s",
        (list(publications), name),
    )


def set_slot_name(conn: psycopg.Connection[Any], name: str, slot_name: str | None) -> None:
    conn.execute(
        "UPDATE pgferry.subscription SET slot_name = %s WHERE name = %s", (slot_name, name)
    )


def set_options(conn: psycopg.Connection[Any], name: str, options: SubscriptionOptions) -> None:
    """Replace the subscription's ``options`` object."""
    conn.execute(
        "UPDATE pgferry.subscription SET options = %s WHERE name = %s",
        (Jsonb(options.to_json()), name),
    )


def delete_table(
    conn: psycopg.Connection[Any], subscription: str, remote_schema: str, remote_name: str
) -> None:
    conn.execute(
        "DELETE FROM pgferry.subscription_table"
        " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
        (subscription, remote_schema, remote_name),
    )


def set_table_shape(
    conn: psycopg.Connection[Any],
    subscription: str,
    remote_schema: str,
    remote_name: str,
    columns: tuple[str, ...] | None,
    row_filter: str | None,
) -> None:
    """Record a table's published column list and row filter; its state is untouched."""
    conn.execute(
        "UPDATE pgferry.subscription_table SET columns = %s, row_filter = %s"
        " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
        (
            None if columns is None else list(columns),
            row_filter,
            subscription,
            remote_schema,
            remote_name,
        ),
    )


def table_state_counts(conn: psycopg.Connection[Any]) -> dict[str, dict[TableState, int]]:
    """{subscription: {state: number of tables}} for every subscription with tables."""
    rows = conn.execute(
        "SELECT subscription, state::text, count(*) FROM pgferry.subscription_table GROUP BY 1, 2"
    ).fetchall()
    counts: dict[str, dict[TableState, int]] = {}
    for subscription, state, number in rows:
        counts.setdefault(subscription, {})[TableState.parse(state)] = int(number)
    return counts


def set_table_sizes(
    conn: psycopg.Connection[Any], subscription: str, sizes: dict[tuple[str, str], int]
) -> None:
    """Record each table's size on the publisher (the launcher copies the largest first)."""
    if sizes:
        conn.execute(
            "UPDATE pgferry.subscription_table t SET size_bytes = v.size"
            " FROM unnest(%s::text[], %s::text[], %s::int8[]) AS v(s, n, size)"
            " WHERE t.subscription = %s AND t.remote_schema = v.s AND t.remote_name = v.n",
            (
                [s for s, _ in sizes],
                [n for _, n in sizes],
                list(sizes.values()),
                subscription,
            ),
        )
