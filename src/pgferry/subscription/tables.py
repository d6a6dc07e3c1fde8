"""The tables a subscription receives: what the publisher publishes, and whether the
subscriber has somewhere to put it.

* :func:`published_tables` reads what the publications publish over a replication
  connection (plain SQL is allowed there), by the one definition of
  :mod:`pgferry.publisher.shape`.
* :func:`check_subscriber` verifies, before anything is created, that every
  published table exists on the subscriber as a table (or partitioned table) with
  every published column, not generated there; otherwise one
  :class:`SubscriberTablesMissing` names everything missing. Native checks none of
  this when the subscription is created and fails later, in the workers; checking
  up front is a deliberate difference.

Tables are matched by schema and name, columns by name, as native does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from pgferry.errors import ServerError
from pgferry.publisher import shape
from pgferry.publisher.shape import PublishedTable
from pgferry.sqltext import ident, quote_literal
from pgferry.stream import ReplicationConnection


class SubscriberTablesMissing(ServerError):
    """Published tables or columns do not exist on the subscriber."""


def published_tables(
    repl: ReplicationConnection, publications: Sequence[str]
) -> list[PublishedTable]:
    """The tables ``publications`` publish, ordered by schema and name (see
    :mod:`pgferry.publisher.shape`)."""
    return shape.published_tables(
        lambda query: repl.execute(query, context="listing the published tables"),
        repl.major,
        publications,
    )


_RELKINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "c": "a composite type",
    "i": "an index",
    "I": "an index",
    "t": "a TOAST table",
}


def subscriber_problems(
    conn: psycopg.Connection[Any], tables: Sequence[PublishedTable]
) -> list[str]:
    """What the subscriber lacks to receive ``tables``, one item per table."""
    if not tables:
        return []
    rows = conn.execute(
        "SELECT s.schema, s.name, c.relkind::text,"
        " (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, a.attgenerated <> ''))"
        "    FROM pg_catalog.pg_attribute a"
        "    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)"
        " FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]))"
        "   WITH ORDINALITY AS s(schema, name, n)"
        " LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = s.schema"
        " LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = s.name"
        " ORDER BY s.n",
        ([t.schema for t in tables], [t.name for t in tables]),
    ).fetchall()
    problems: list[str] = []
    for table, (_schema, _name, relkind, attributes) in zip(tables, rows, strict=True):
        if relkind is None:
            problems.append(f"table {table.display} does not exist")
            continue
        if relkind not in ("r", "p"):
            what = _RELKINDS.get(relkind, f"a relation of kind {relkind!r}")
            problems.append(f"{table.display} is {what}, not a table")
            continue
        local: dict[str, bool] = {str(n): bool(g) for n, g in (attributes or [])}
        missing = [c for c in table.columns if c not in local]
        generated = [c for c in table.columns if local.get(c)]
        if missing:
            problems.append(
                f"table {table.display} lacks column{'s' if len(missing) > 1 else ''} "
                + ", ".join(ident(c) for c in missing)
            )
        if generated:
            problems.append(
                f"table {table.display} has generated column{'s' if len(generated) > 1 else ''} "
                + ", ".join(ident(c) for c in generated)
                + " where the publisher sends values"
            )
    return problems


def check_subscriber(conn: psycopg.Connection[Any], tables: Sequence[PublishedTable]) -> None:
    """Raise :class:`SubscriberTablesMissing` naming everything the subscriber lacks."""
    problems = subscriber_problems(conn, tables)
    if problems:
        raise SubscriberTablesMissing(
            "the subscriber cannot receive what the publications publish: " + "; ".join(problems),
            hint="create the missing tables and columns on the subscriber (logical replication"
            " does not copy DDL), or leave them out of the publication",
        )


def table_sizes(
    repl: ReplicationConnection, tables: Sequence[PublishedTable]
) -> dict[tuple[str, str], int]:
    """Each table's size on the publisher, in bytes (a partitioned table: its
    partitions'), so that the largest is copied first."""
    if not tables:
        return {}
    values = ", ".join(f"({quote_literal(t.schema)}, {quote_literal(t.name)})" for t in tables)
    rows = repl.execute(
        "SELECT v.s, v.n, CASE WHEN c.relkind = 'p' THEN"
        " (SELECT coalesce(sum(pg_catalog.pg_table_size(p.relid)), 0)"
        "  FROM pg_catalog.pg_partition_tree(c.oid) p)::int8"
        " ELSE pg_catalog.pg_table_size(c.oid) END"
        f" FROM (VALUES {values}) AS v(s, n)"
        " JOIN pg_catalog.pg_namespace ns ON ns.nspname = v.s"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = v.n"
    )
    return {(str(s), str(n)): int(size or 0) for s, n, size in rows}


def existing_tables(
    conn: psycopg.Connection[Any], tables: Sequence[PublishedTable]
) -> set[tuple[str, str]]:
    """The published tables that exist on the subscriber (as any relation)."""
    rows = conn.execute(
        "SELECT t.s, t.n FROM unnest(%s::text[], %s::text[]) AS t(s, n)"
        " WHERE EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns"
        " ON ns.oid = c.relnamespace WHERE ns.nspname = t.s AND c.relname = t.n)",
        ([t.schema for t in tables], [t.name for t in tables]),
    ).fetchall()
    return {(str(s), str(n)) for s, n in rows}


def column_differences(
    conn: psycopg.Connection[Any], conninfo: str, tables: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """How the columns of ``tables`` differ between the subscriber (``conn``) and
    the publisher (``conninfo``); a table that matches has an empty list. Columns
    only the subscriber has are no difference: replication leaves them alone."""
    from pgferry import connect
    from pgferry.schema import diff

    with connect.session(conninfo, side="publisher", application_name="pgferry schema") as remote:
        theirs = diff.describe_tables(remote, tables)
    ours = diff.describe_tables(conn, tables)
    return {
        table: diff.column_differences(theirs[table], ours[table], None, extra=False)
        for table in tables
        if table in theirs and table in ours
    }
