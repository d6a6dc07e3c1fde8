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
from pgferry.sqltext import ident
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
