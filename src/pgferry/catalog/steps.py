"""The schema copy's steps after the data, in ``pgferry.schema_step``.

A step is one statement (an index build, a constraint, a trigger...) that
:mod:`pgferry.schema.copy` runs after a table's copy (``table`` set) or once every
table of the subscription is ready (``table`` None), in ``phase`` order then in
the order stored. Each is deleted by the transaction that runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]
#: A published table: (schema, name).
TableName = tuple[str, str]

#: After the table's copy, in parallel sessions: index builds.
PHASE_INDEX = 1
#: After the table's index builds, in order: constraints, triggers, rules, policies.
PHASE_TABLE = 2
#: Once every table is ready: what spans tables.
PHASE_FINAL = 3
#: Then: validating the foreign keys added NOT VALID.
PHASE_VALIDATE = 4


@dataclass(frozen=True)
class Step:
    """One statement after the data: ``table`` is the published table whose copy
    it follows (None: once every table is ready)."""

    table: TableName | None
    phase: int
    object: str
    statement: str


@dataclass(frozen=True)
class PendingStep:
    step: int
    phase: int
    object: str
    statement: str


def store_steps(local: Conn, subscription: str, steps: Sequence[Step]) -> None:
    """Add ``steps`` after the subscription's stored ones (in ``local``'s transaction)."""
    if not steps:
        return
    row = local.execute(
        "SELECT coalesce(max(step), 0) FROM pgferry.schema_step WHERE subscription = %s",
        (subscription,),
    ).fetchone()
    first = int(row[0]) + 1 if row else 1
    with local.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgferry.schema_step"
            " (subscription, step, table_schema, table_name, phase, object, statement)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    subscription,
                    first + i,
                    s.table[0] if s.table else None,
                    s.table[1] if s.table else None,
                    s.phase,
                    s.object,
                    s.statement,
                )
                for i, s in enumerate(steps)
            ],
        )


def pending(conn: Conn, subscription: str, table: TableName | None) -> list[PendingStep]:
    if table is None:
        where, args = "table_schema IS NULL", (subscription,)
    else:
        where = "table_schema = %s AND table_name = %s"
        args = (subscription, *table)  # type: ignore[assignment]
    rows = conn.execute(
        "SELECT step, phase, object, statement FROM pgferry.schema_step"
        f" WHERE subscription = %s AND {where} ORDER BY phase, step",
        args,
    ).fetchall()
    return [PendingStep(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]


def pending_final(conn: Conn) -> set[str]:
    """Subscriptions with steps that wait until every table is ready."""
    rows = conn.execute(
        "SELECT DISTINCT subscription FROM pgferry.schema_step WHERE table_schema IS NULL"
    ).fetchall()
    return {str(r[0]) for r in rows}


def pending_count(conn: Conn, subscription: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgferry.schema_step WHERE subscription = %s", (subscription,)
    ).fetchone()
    return int(row[0]) if row else 0
