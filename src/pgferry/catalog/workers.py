"""The workers' live statistics in the catalog (``pgferry.worker``, one row per
running worker, like ``pg_stat_subscription``): written by the workers, read by
``pgferry status`` and ``subscription wait``."""

from __future__ import annotations

from typing import Any

import psycopg

from pgferry.protocol.lsn import Lsn


def report_worker(
    conn: psycopg.Connection[Any],
    subscription: str,
    relation: str,
    pid: int,
    received_lsn: Lsn,
    last_send_time: Any,
    latest_end_lsn: Lsn,
    committed_lsn: Lsn | None = None,
) -> None:
    """Upsert a worker's live statistics (``pgferry.worker``, like pg_stat_subscription);
    ``committed_lsn``: every transaction committed before it is durably applied."""
    conn.execute(
        "INSERT INTO pgferry.worker AS w (subscription, relation, pid, received_lsn,"
        " last_msg_send_time, last_msg_receipt_time, latest_end_lsn, latest_end_time,"
        " committed_lsn)"
        " VALUES (%s, %s, %s, %s::pg_lsn, %s, now(), %s::pg_lsn, now(), %s::pg_lsn)"
        " ON CONFLICT (subscription, relation) DO UPDATE SET pid = excluded.pid,"
        " received_lsn = excluded.received_lsn,"
        " last_msg_send_time = excluded.last_msg_send_time,"
        " last_msg_receipt_time = excluded.last_msg_receipt_time,"
        " latest_end_lsn = excluded.latest_end_lsn, latest_end_time = excluded.latest_end_time,"
        " committed_lsn = excluded.committed_lsn",
        (
            subscription,
            relation,
            pid,
            str(received_lsn),
            last_send_time,
            str(latest_end_lsn),
            None if committed_lsn is None else str(committed_lsn),
        ),
    )


def forget_worker(conn: psycopg.Connection[Any], subscription: str, relation: str) -> None:
    conn.execute(
        "DELETE FROM pgferry.worker WHERE subscription = %s AND relation = %s",
        (subscription, relation),
    )
