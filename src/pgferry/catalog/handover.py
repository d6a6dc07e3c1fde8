"""The table sync handover, through the catalog (native does it in shared memory).

For one table, between its sync worker and the subscription's apply worker:

1. the sync worker commits the copy and state ``f`` with the copy's consistent
   point C as state LSN;
2. the apply worker, between two transactions, sees ``f``, stores its position A
   (the end LSN of the last remote transaction it processed) as ``catchup_lsn`` and
   waits;
3. the sync worker applies this table's changes of the transactions that end after
   C and up to A from its own slot, then commits state ``s`` with H = max(C, A);
4. the apply worker resumes: it applies this table's changes of transactions that
   end after H, and marks the table ``r`` once its own position reaches H.

A transaction ends after H exactly when its commit record starts at or after H (H
is a record boundary), which is what both workers test, since the start of the
commit record is known when a transaction begins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pgferry.protocol.lsn import Lsn

#: Seconds between two looks at a table's state while its sync worker and the
#: apply worker wait for each other: short, as each wait is on the critical path
#: of the table's sync (native wakes the other worker through its latch).
POLL = 0.02


@dataclass(frozen=True)
class TableState:
    remote_schema: str
    remote_name: str
    state: str
    state_lsn: Lsn | None
    catchup_lsn: Lsn | None


def _lsn(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def states(conn: psycopg.Connection[Any], subscription: str) -> dict[tuple[str, str], TableState]:
    rows = conn.execute(
        "SELECT remote_schema, remote_name, state, state_lsn::text, catchup_lsn::text"
        " FROM pgferry.subscription_table WHERE subscription = %s",
        (subscription,),
    ).fetchall()
    return {(r[0], r[1]): TableState(r[0], r[1], str(r[2]), _lsn(r[3]), _lsn(r[4])) for r in rows}


def table_state(
    conn: psycopg.Connection[Any], subscription: str, schema: str, name: str
) -> TableState | None:
    return states(conn, subscription).get((schema, name))


def set_catchup(
    conn: psycopg.Connection[Any], subscription: str, schema: str, name: str, lsn: Lsn
) -> None:
    conn.execute(
        "UPDATE pgferry.subscription_table SET catchup_lsn = %s::pg_lsn"
        " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
        (str(lsn), subscription, schema, name),
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
