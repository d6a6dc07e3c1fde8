"""Adding the published columns a subscriber table lacks (``missing_columns = add``).

Native stops when a Relation message names a column the local table does not
have ("... is missing replicated column ..."), and so does pgferry by default.
With the subscription option ``missing_columns = add`` the column is added first,
then the change is applied; no publisher install is needed (no event trigger),
only an ordinary connection to the publisher database with the subscription's
conninfo to read its catalog.

* **Type**: exactly the publisher's. The Relation message carries the type OID
  and typmod: a built-in type (OID below 16384) is the same on both sides; a user
  type (enum, domain, composite, an array of them) is named by the publisher's
  ``format_type`` and must exist on the subscriber under the same schema and name,
  or apply stops with one error naming the subscription, table, column and type
  (the hint: create the type, or use ``copy_schema``).
* **Rows already there**: the publisher sent no change for its existing rows
  when the column was added. If it gave them a value (a non-volatile default:
  PostgreSQL keeps that value as the column's "missing value",
  ``pg_attribute.attmissingval``), the subscriber's column is added with that
  value as a constant default, so its existing rows get the same value, and
  ``NOT NULL`` when the publisher's column has it; the default is dropped again
  when the publisher's column has none any more (Django's add-then-drop). Without
  a missing value the column is added without default and nullable: existing rows
  get NULL, as the publisher's have, except when a volatile default (or a
  generated expression) made the publisher rewrite its rows with values no change
  carried: that is logged as a warning (``pgferry verify`` shows the rows).
* **When**: before the change that met the column. With no local transaction
  open, in a short transaction of its own; inside an open batch (whose changes
  may already hold a lock on the table, so that another session would wait on
  them), under a savepoint in it. Either way with ``lock_timeout`` =
  :data:`LOCK_TIMEOUT`, tried :data:`ATTEMPTS` times; ``ADD COLUMN IF NOT
  EXISTS``, so a table sync worker meeting the same column concurrently is no
  error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgferry import connect
from pgferry.catalog import store
from pgferry.protocol.messages import Column, Relation

from .mapping import MappingError

logger = logging.getLogger("pgferry.apply")

#: Longest wait for the table's lock, per attempt.
LOCK_TIMEOUT = "2s"
#: Attempts to take the lock before apply stops (and is retried with the worker).
ATTEMPTS = 5
#: Seconds to connect to the publisher, and its statement_timeout.
PUBLISHER_TIMEOUT = 10
#: The first OID of objects created after initdb: below it, built-in types.
FIRST_NORMAL_OID = 16384

_PUBLISHER_COLUMNS = """
SELECT c.name, pg_catalog.format_type(c.typ, NULL), coalesce(a.attnotnull, false),
    coalesce(a.atthasmissing, false), a.attmissingval::text, d.adbin IS NOT NULL,
    coalesce(a.attgenerated <> '', false)
FROM unnest(%s::text[], %s::oid[]) WITH ORDINALITY AS c(name, typ, n)
LEFT JOIN pg_catalog.pg_attribute a
    ON a.attrelid = %s::oid AND a.attname = c.name AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
ORDER BY c.n
"""


@dataclass(frozen=True)
class NewColumn:
    """A column to add: its name, local type text, and what existing rows get."""

    name: str
    type: str
    #: The value (text) the publisher's existing rows have; None: NULL.
    value: str | None = None
    not_null: bool = False
    #: The publisher's column still has a default (else it is dropped again).
    keeps_default: bool = False
    #: The publisher may have rewritten its rows with values not known here.
    rewritten: bool = False


def wanted(conn: psycopg.Connection[Any], subscription: str) -> store.Subscription | None:
    """The subscription, when its ``missing_columns`` option is ``add``."""
    try:
        sub = store.get_subscription(conn, subscription)
    except store.SubscriptionNotFound:
        return None
    return sub if sub.options.missing_columns == "add" else None


def missing_value(text: str | None) -> str | None:
    """The one element of ``attmissingval`` as text (``{x}``, ``{"x y"}``,
    ``{NULL}``); None for NULL."""
    if text is None or len(text) < 2 or text[0] != "{" or text[-1] != "}":
        return None
    inner = text[1:-1]
    if not inner.startswith('"'):
        return None if inner.upper() == "NULL" else inner
    out: list[str] = []
    i = 1
    while i < len(inner) and inner[i] != '"':
        if inner[i] == "\\":
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


def describe(
    local: psycopg.Connection[Any],
    sub: store.Subscription,
    relation: Relation,
    missing: tuple[Column, ...],
) -> list[NewColumn]:
    """The columns of ``relation`` to add (subscriber types resolved; a user type
    the subscriber lacks is a :class:`MappingError` with a hint)."""
    table = f"{relation.namespace}.{relation.name}"
    with connect.publisher(
        sub.conninfo, application_name=f"{sub.name} columns", timeout=PUBLISHER_TIMEOUT
    ) as remote:
        remote.execute(
            "SELECT pg_catalog.set_config('search_path', '', false),"
            " pg_catalog.set_config('statement_timeout', %s, false)",
            (f"{PUBLISHER_TIMEOUT}s",),
        )
        rows = remote.execute(
            _PUBLISHER_COLUMNS,
            ([c.name for c in missing], [c.type_oid for c in missing], relation.relation_id),
        ).fetchall()
    columns = []
    for column, (_, remote_type, not_null, has_missing, stored, has_default, generated) in zip(
        missing, rows, strict=True
    ):
        value = missing_value(stored) if has_missing else None
        columns.append(
            NewColumn(
                column.name,
                _local_type(local, table, column, str(remote_type)),
                value,
                not_null=bool(not_null) and value is not None,
                keeps_default=bool(has_default),
                rewritten=not has_missing and (bool(has_default) or bool(generated)),
            )
        )
    return columns


def _local_type(local: psycopg.Connection[Any], table: str, column: Column, remote: str) -> str:
    """The subscriber's text of the column's type (with its typmod)."""
    if column.type_oid < FIRST_NORMAL_OID:
        row = local.execute(
            "SELECT pg_catalog.format_type(%s::oid, %s)", (column.type_oid, column.type_modifier)
        ).fetchone()
    else:
        row = local.execute(
            "SELECT pg_catalog.format_type(t, %s) FROM pg_catalog.to_regtype(%s) AS t"
            " WHERE t IS NOT NULL",
            (column.type_modifier, remote),
        ).fetchone()
    if row is None or row[0] is None:
        error = MappingError(
            f'cannot add column "{column.name}" to table {table}:'
            f" its type {remote} does not exist on the subscriber"
        )
        error.hint = (
            f"create the type {remote} on the subscriber (or use --with copy_schema=true);"
            " replication resumes on the next retry"
        )
        raise error
    return str(row[0])


def _add_statements(target: sql.Composable, column: NewColumn) -> list[sql.Composed]:
    """ALTER TABLE ... ADD COLUMN IF NOT EXISTS (and DROP DEFAULT when the
    publisher's column has none any more)."""
    name, kind = sql.Identifier(column.name), sql.SQL(column.type)
    default: sql.Composable = sql.SQL("")
    if column.value is not None:
        default = sql.SQL(" DEFAULT {}::{}{}").format(
            sql.Literal(column.value), kind, sql.SQL(" NOT NULL" if column.not_null else "")
        )
    statements = [
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}{}").format(
            target, name, kind, default
        )
    ]
    if column.value is not None and not column.keeps_default:
        statements.append(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(target, name)
        )
    return statements


def add(
    conn: psycopg.Connection[Any],
    relation: Relation,
    columns: list[NewColumn],
    *,
    in_transaction: bool,
) -> None:
    """Add ``columns`` to the local table of ``relation``: in a transaction of
    their own, or (``in_transaction``) under a savepoint of the open one; a lock
    not had within :data:`LOCK_TIMEOUT` is tried again, :data:`ATTEMPTS` times."""
    target = sql.SQL("{}.{}").format(
        sql.Identifier(relation.namespace), sql.Identifier(relation.name)
    )
    statements = [s for column in columns for s in _add_statements(target, column)]
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if in_transaction:
                _in_savepoint(conn, statements)
            else:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_catalog.set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,)
                    )
                    for statement in statements:
                        conn.execute(statement)
            break
        except psycopg.errors.LockNotAvailable:
            if attempt == ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    table = f"{relation.namespace}.{relation.name}"
    for column in columns:
        logger.info(
            'added column "%s" %s to %s (missing_columns = add, %s)',
            column.name,
            column.type,
            table,
            "in the open batch" if in_transaction else "in a transaction of its own",
        )
        if column.rewritten:
            logger.warning(
                'column "%s" of %s: the publisher may have given its existing rows values'
                " (a volatile default or a generated column) that no change carried; they are"
                " NULL here: compare with pgferry verify",
                column.name,
                table,
            )


def add_before_copy(
    local: psycopg.Connection[Any],
    remote: psycopg.Connection[Any],
    sub: store.Subscription,
    table: tuple[str, str],
    published: list[str],
) -> None:
    """Before a table's initial copy: add the ``published`` columns the local
    table lacks (``missing_columns = add``; nothing otherwise). ``remote`` is the
    copy's session, in its snapshot: the types are read there. A table sync
    worker meets them when a column was added on the publisher after the
    subscription was created (``create`` checks every column up front)."""
    if sub.options.missing_columns != "add":
        return
    schema, name = table
    have = {
        str(r[0])
        for r in local.execute(
            "SELECT a.attname FROM pg_catalog.pg_attribute a"
            " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (schema, name),
        ).fetchall()
    }
    lacking = [c for c in published if c not in have]
    if not lacking:
        return
    rows = remote.execute(
        "SELECT c.oid, a.attname, a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = ANY(%s)"
        " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, name, lacking),
    ).fetchall()
    if not rows:
        return
    columns = tuple(Column(str(n), int(typ), int(mod), False) for _, n, typ, mod in rows)
    relation = Relation(None, int(rows[0][0]), schema, name, "d", columns)
    add(local, relation, describe(local, sub, relation, columns), in_transaction=False)


def _in_savepoint(conn: psycopg.Connection[Any], statements: list[sql.Composed]) -> None:
    """Run ``statements`` under a savepoint of the open transaction with the lock
    timeout, which is then set back to what it was (or all is rolled back to the
    savepoint)."""
    row = conn.execute("SELECT pg_catalog.current_setting('lock_timeout')").fetchone()
    before = str(row[0]) if row else "0"
    conn.execute("SAVEPOINT pgferry_add_column")
    try:
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
        for statement in statements:
            conn.execute(statement)
    except psycopg.Error:
        conn.execute("ROLLBACK TO SAVEPOINT pgferry_add_column")
        raise
    conn.execute("RELEASE SAVEPOINT pgferry_add_column")
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (before,))
