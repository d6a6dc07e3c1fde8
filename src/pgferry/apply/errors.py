"""Apply errors: one line naming the subscription, table, column, remote
transaction and its finish LSN, with what to do next.

:func:`apply_error` turns a server error met while applying into an
:class:`~pgferry.errors.ApplyError` (the message is PostgreSQL's primary message
and detail; the hint is to fix the data or skip exactly that transaction);
:func:`mapping_error` does it for a remote relation the subscriber cannot hold
(a missing table or column). Conflicts that stop the worker have their own text
(:mod:`.rowwise`).
"""

from __future__ import annotations

import psycopg

from pgferry.assembler import Transaction
from pgferry.errors import ApplyError
from pgferry.hints import failed_transaction
from pgferry.protocol.messages import Relation

from .mapping import MappingError


def apply_error(
    subscription: str,
    exc: psycopg.Error,
    tx: Transaction,
    table: str | None,
    op: str,
    *,
    column: str | None = None,
) -> ApplyError:
    diag = exc.diag
    text = (diag.message_primary or str(exc)).strip()
    where = []
    if table:
        where.append(f"table {table}")
    if diag.column_name or column:
        where.append(f"column {diag.column_name or column}")
    if diag.constraint_name:
        where.append(f"constraint {diag.constraint_name}")
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    return ApplyError(
        f"subscription {subscription!r}: {text}{detail}; applying {op}"
        f"{' on ' + ', '.join(where) if where else ''} in remote transaction {tx.xid}"
        f" finished at {tx.commit_lsn}",
        subscription=subscription,
        table=table,
        xid=tx.xid,
        finish_lsn=str(tx.commit_lsn),
        sqlstate=diag.sqlstate,
        hint=failed_transaction(subscription, tx.commit_lsn),
    )


def mapping_error(
    subscription: str, exc: MappingError, tx: Transaction, relation: Relation, op: str
) -> ApplyError:
    return ApplyError(
        f"subscription {subscription!r}: {exc} (remote transaction {tx.xid}"
        f" finished at {tx.commit_lsn}, applying {op})",
        subscription=subscription,
        table=f"{relation.namespace}.{relation.name}",
        xid=tx.xid,
        finish_lsn=str(tx.commit_lsn),
        hint=exc.hint
        or "create the table or column on the subscriber; replication resumes on the next retry",
    )
