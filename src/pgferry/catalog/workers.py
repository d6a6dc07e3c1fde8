"""The workers in the catalog, read by ``pgferry status`` and ``subscription wait``.

* ``pgferry.worker``: live statistics, one row per running apply worker (like
  ``pg_stat_subscription``), written by the workers; the same statement adds
  what the apply worker counted since its last report (remote transactions and
  row changes applied) to ``pgferry.subscription_stats.transactions_applied`` and
  ``rows_applied``, so the counters cost no write of their own and survive the
  worker (a worker killed loses what it counted since its last report);
* ``pgferry.worker_retry``: one row per worker that failed and has not run
  healthy since, written by the launcher: ``attempt`` (its failures in a row,
  so the number of the retry to come), ``next_retry_at`` (when the launcher
  starts it again; in the past once started), ``exit_code`` and ``failed_at``.
  ``kind`` is the launcher's worker kind (``apply``, ``sync``, ``sequences``,
  ``schema``), ``table_schema`` and ``table_name`` name a sync worker's table
  (empty for the others);
* ``pgferry.worker_restart``: each worker kind's failed exits, every one of
  which the launcher restarts (counted by :func:`record_retry`; never reset).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgferry.protocol.lsn import Lsn

#: Adds ``%(transactions)s`` and ``%(rows)s`` to the subscription's applied
#: counters, in the statement it prefixes (nothing when both are 0).
_COUNT_APPLIED = (
    "WITH counted AS (UPDATE pgferry.subscription_stats SET"
    " transactions_applied = transactions_applied + %(transactions)s,"
    " rows_applied = rows_applied + %(rows)s"
    " WHERE subscription = %(subscription)s AND %(transactions)s + %(rows)s > 0) "
)


def report_worker(
    conn: psycopg.Connection[Any],
    subscription: str,
    relation: str,
    pid: int,
    received_lsn: Lsn,
    last_send_time: Any,
    latest_end_lsn: Lsn,
    committed_lsn: Lsn | None = None,
    applied: tuple[int, int] = (0, 0),
    spool_bytes: int | None = None,
) -> None:
    """Upsert a worker's live statistics (``pgferry.worker``, like pg_stat_subscription);
    ``committed_lsn``: every transaction committed before it is durably applied;
    ``applied``: (remote transactions, row changes) applied since the last report,
    added to the subscription's counters; ``spool_bytes``: what its spools hold."""
    conn.execute(
        _COUNT_APPLIED
        + "INSERT INTO pgferry.worker AS w (subscription, relation, pid, received_lsn,"
        " last_msg_send_time, last_msg_receipt_time, latest_end_lsn, latest_end_time,"
        " committed_lsn, spool_bytes)"
        " VALUES (%(subscription)s, %(relation)s, %(pid)s, %(received)s::pg_lsn, %(sent)s,"
        " now(), %(end)s::pg_lsn, now(), %(committed)s::pg_lsn, %(spool)s)"
        " ON CONFLICT (subscription, relation) DO UPDATE SET pid = excluded.pid,"
        " received_lsn = excluded.received_lsn,"
        " last_msg_send_time = excluded.last_msg_send_time,"
        " last_msg_receipt_time = excluded.last_msg_receipt_time,"
        " latest_end_lsn = excluded.latest_end_lsn, latest_end_time = excluded.latest_end_time,"
        " committed_lsn = excluded.committed_lsn, spool_bytes = excluded.spool_bytes",
        {
            "subscription": subscription,
            "relation": relation,
            "pid": pid,
            "received": str(received_lsn),
            "sent": last_send_time,
            "end": str(latest_end_lsn),
            "committed": None if committed_lsn is None else str(committed_lsn),
            "transactions": applied[0],
            "rows": applied[1],
            "spool": spool_bytes,
        },
    )


def forget_worker(
    conn: psycopg.Connection[Any],
    subscription: str,
    relation: str,
    applied: tuple[int, int] = (0, 0),
) -> None:
    """The worker stops: its row goes; ``applied`` as :func:`report_worker` takes it."""
    conn.execute(
        _COUNT_APPLIED + "DELETE FROM pgferry.worker"
        " WHERE subscription = %(subscription)s AND relation = %(relation)s",
        {
            "subscription": subscription,
            "relation": relation,
            "transactions": applied[0],
            "rows": applied[1],
        },
    )


# -- retries (``pgferry.worker_retry``, written by the launcher) ------------------------


def record_retry(
    conn: psycopg.Connection[Any],
    subscription: str,
    kind: str,
    table: tuple[str, str] | None,
    attempt: int,
    delay: float,
    exit_code: int,
) -> None:
    """A worker failed: the launcher starts it again in ``delay`` seconds, as retry
    number ``attempt`` (its failures in a row), and counts the restart (in
    ``pgferry.worker_restart``). Nothing for a subscription gone."""
    schema, name = table or ("", "")
    conn.execute(
        "INSERT INTO pgferry.worker_restart AS r (subscription, kind, restarts)"
        " SELECT s.name, %s, 1 FROM pgferry.subscription s WHERE s.name = %s"
        " ON CONFLICT (subscription, kind) DO UPDATE SET restarts = r.restarts + 1",
        (kind, subscription),
    )
    conn.execute(
        "INSERT INTO pgferry.worker_retry AS r (subscription, kind, table_schema, table_name,"
        " attempt, next_retry_at, exit_code)"
        " SELECT s.name, %s, %s, %s, %s, now() + %s * interval '1 second', %s"
        " FROM pgferry.subscription s WHERE s.name = %s"
        " ON CONFLICT (subscription, kind, table_schema, table_name) DO UPDATE SET"
        " attempt = excluded.attempt, next_retry_at = excluded.next_retry_at,"
        " exit_code = excluded.exit_code, failed_at = excluded.failed_at",
        (kind, schema, name, attempt, delay, exit_code, subscription),
    )


def forget_retry(
    conn: psycopg.Connection[Any], subscription: str, kind: str, table: tuple[str, str] | None
) -> None:
    """The worker ran healthy, ended cleanly or is no longer wanted."""
    schema, name = table or ("", "")
    conn.execute(
        "DELETE FROM pgferry.worker_retry"
        " WHERE subscription = %s AND kind = %s AND table_schema = %s AND table_name = %s",
        (subscription, kind, schema, name),
    )


def forget_all_retries(conn: psycopg.Connection[Any]) -> None:
    """A launcher starts: the retries of one before it are no longer planned."""
    conn.execute("DELETE FROM pgferry.worker_retry")


@dataclass(frozen=True)
class Retry:
    """A failed worker the launcher starts again (a ``pgferry.worker_retry`` row)."""

    subscription: str
    #: The launcher's worker kind: apply, sync, sequences, schema.
    kind: str
    #: A sync worker's table (schema, name); None for the other kinds.
    table: tuple[str, str] | None
    #: Its failures in a row: the number of the retry to come (or just made).
    attempt: int
    #: Seconds until the retry, by the subscriber's clock; 0 or less: made already.
    next_in: float
    exit_code: int | None
    failed_at: datetime


def retries(conn: psycopg.Connection[Any]) -> list[Retry]:
    """Every planned retry, by subscription, kind and table. ``status`` shows one
    as "retrying (attempt N, next in S s)" while ``next_in`` is positive."""
    rows = conn.execute(
        "SELECT subscription, kind, table_schema, table_name, attempt,"
        " extract(epoch FROM next_retry_at - now())::float8, exit_code, failed_at"
        " FROM pgferry.worker_retry ORDER BY 1, 2, 3, 4"
    ).fetchall()
    return [
        Retry(str(r[0]), str(r[1]), (str(r[2]), str(r[3])) if r[2] else None, int(r[4]),
              float(r[5]), r[6], r[7])
        for r in rows
    ]  # fmt: skip


def restarts(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    """(subscription, worker kind) -> its failed exits, each restarted by the launcher."""
    rows = conn.execute("SELECT subscription, kind, restarts FROM pgferry.worker_restart")
    return {(str(sub), str(kind)): int(n) for sub, kind, n in rows.fetchall()}
