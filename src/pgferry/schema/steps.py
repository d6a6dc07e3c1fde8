"""Running the schema copy's steps after the data (see :mod:`pgferry.catalog.steps`).

:func:`run_table_steps` runs, for the table sync worker right after a table's
copy, the table's index builds in parallel sessions (each with more
``maintenance_work_mem``), then its other steps in order.
:class:`FinalStepsWorker` (worker kind ``schema``, started by the launcher once
every table of the subscription is ready) runs the steps that span tables: the
foreign keys, added ``NOT VALID`` and then validated. Every step runs with a
bounded ``lock_timeout``; a failed step is one error naming the subscription and
the object, and is retried with the worker.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog.steps import PHASE_INDEX, PendingStep, TableName, pending
from pgferry.schema.dump import SchemaCopyError

logger = logging.getLogger("pgferry.schema")

Conn = psycopg.Connection[Any]

#: Longest wait for a lock of each step.
LOCK_TIMEOUT = "30s"
#: Parallel sessions building one table's indexes.
INDEX_JOBS = 2
#: Memory of each index build (the subscriber's default is 64MB).
INDEX_MEMORY = "256MB"


def _reason(error: psycopg.Error) -> str:
    return " ".join((error.diag.message_primary or str(error)).split())


def _run_step(conn: Conn, subscription: str, step: PendingStep, memory: bool = False) -> None:
    number, what, statement = step.step, step.object, step.statement
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn.execute("SELECT pg_catalog.set_config('search_path', '', true)")
            if memory:
                conn.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_MEMORY}'")
            conn.execute(statement.encode())
            conn.execute(
                "DELETE FROM pgferry.schema_step WHERE subscription = %s AND step = %s",
                (subscription, number),
            )
    except psycopg.Error as exc:
        raise SchemaCopyError(
            f"subscription {subscription!r}: schema copy: {what} after the data failed:"
            f" {_reason(exc)}",
            hint="fix the cause on the subscriber; the step is retried (it is in"
            " pgferry.schema_step, delete it there to give it up)",
        ) from None
    logger.info("subscription %s: schema copy: %s done", subscription, what)


def run_table_steps(dsn: str, subscription: str, table: TableName) -> int:
    """Run the steps that follow ``table``'s copy: its index builds in parallel
    sessions, then the rest in order. Returns how many ran."""
    with connect.session(dsn, application_name=f"{subscription} schema") as conn:
        steps = pending(conn, subscription, table)
        builds = [s for s in steps if s.phase == PHASE_INDEX]
        if builds:
            jobs = min(INDEX_JOBS, len(builds))
            with ThreadPoolExecutor(jobs) as pool:
                for done in pool.map(lambda s: _build(dsn, subscription, s), builds):
                    assert done
        for step in steps:
            if step.phase != PHASE_INDEX:
                _run_step(conn, subscription, step)
    return len(steps)


def _build(dsn: str, subscription: str, step: PendingStep) -> bool:
    with connect.session(dsn, application_name=f"{subscription} schema") as conn:
        _run_step(conn, subscription, step, memory=True)
    return True


def run_final_steps(dsn: str, subscription: str) -> int:
    """Run the steps that wait until every table is ready, in order."""
    with connect.session(dsn, application_name=f"{subscription} schema") as conn:
        steps = pending(conn, subscription, None)
        for step in steps:
            _run_step(conn, subscription, step)
    return len(steps)


class FinalStepsWorker:
    """Worker kind ``schema``: the steps that wait until every table is ready."""

    def __init__(self, dsn: str, subscription: str) -> None:
        self.dsn = dsn
        self.subscription = subscription

    def request_stop(self) -> None:
        """Steps are short; the worker ends after the one running."""

    def run(self) -> None:
        done = run_final_steps(self.dsn, self.subscription)
        logger.info("subscription %s: schema copy: %d final steps done", self.subscription, done)
