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

from pgferry.catalog import model
from pgferry.protocol.lsn import Lsn

#: Seconds between two looks at a table's state while its sync worker and the
#: apply worker wait for each other: short, as each wait is on the critical path
#: of the table's sync (native wakes the other worker through its latch).
POLL = 0.02


@dataclass(frozen=True)
class TableState:
    remote_schema: str
    remote_name: str
    state: model.TableState
    state_lsn: Lsn | None
    catchup_lsn: Lsn | None
    #: The table's size on the publisher when it was added (the largest is copied first).
    size_bytes: int | None = None


def _lsn(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def states(conn: psycopg.Connection[Any], subscription: str) -> dict[tuple[str, str], TableState]:
    rows = conn.execute(
        "SELECT remote_schema, remote_name, state, state_lsn::text, catchup_lsn::text,"
        " size_bytes"
        " FROM pgferry.subscription_table WHERE subscription = %s",
        (subscription,),
    ).fetchall()
    return {
        (r[0], r[1]): TableState(
            r[0],
            r[1],
            model.TableState.parse(str(r[2])),
            _lsn(r[3]),
            _lsn(r[4]),
            None if r[5] is None else int(r[5]),
        )
        for r in rows
    }


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
