"""The tables a subscription receives: what the publisher publishes, and whether the
subscriber has somewhere to put it.

* :func:`published_tables` reads ``pg_publication_tables`` over a replication
  connection (plain SQL is allowed there), with the column lists (``attnames``) and
  row filters (``rowfilter``) from PostgreSQL 15 on. A table in several of the
  subscription's publications is combined as native does: its row filters are
  OR-ed (no filter at all if one publication has none), and the publications must
  publish the same columns (native refuses different column lists, a publication
  without a list counting as "every column").
* :func:`check_subscriber` verifies, before anything is created, that every
  published table exists on the subscriber as a table (or partitioned table) with
  every published column, not generated there; otherwise one
  :class:`SubscriberTablesMissing` names everything missing. Native checks none of
  this when the subscription is created and fails later, in the workers; checking
  up front is a deliberate difference.

Tables are matched by schema and name, columns by name, as native does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgferry.errors import ServerError
from pgferry.stream import ReplicationConnection
from pgferry.stream.commands import quote_literal

#: First publisher major with column lists and row filters in pg_publication_tables.
FILTERS_MAJOR = 15


class SubscriberTablesMissing(ServerError):
    """Published tables or columns do not exist on the subscriber."""


class ColumnListConflict(ServerError):
    """Two of the subscription's publications publish different columns of a table."""


@dataclass(frozen=True)
class PublishedTable:
    """One published table as the subscription receives it."""

    schema: str
    name: str
    #: The columns the publisher sends, in the publisher's order.
    columns: tuple[str, ...]
    #: The publications' column list; None when every column is published.
    column_list: tuple[str, ...] | None
    #: The combined row filter (SQL, as the publisher deparses it); None: every row.
    row_filter: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def display(self) -> str:
        return qualified(self.schema, self.name)


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a message stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def ident(name: str) -> str:
    """``name`` as SQL would need it written (double-quoted unless plain lower case)."""
    plain = name.isidentifier() and name.isascii() and name == name.lower()
    return printable(name if plain else '"' + name.replace('"', '""') + '"')


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def _json_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    value = json.loads(text)
    return None if value is None else tuple(str(v) for v in value)


def published_tables(
    repl: ReplicationConnection, publications: Sequence[str]
) -> list[PublishedTable]:
    """The tables ``publications`` publish, ordered by schema and name."""
    if not publications:
        return []
    listed = ", ".join(quote_literal(p) for p in publications)
    if repl.major >= FILTERS_MAJOR:
        shape = "pg_catalog.to_json(t.attnames)::text, t.rowfilter"
    else:
        shape = "NULL::text, NULL::text"
    rows = repl.execute(
        "SELECT t.schemaname::text, t.tablename::text, t.pubname::text, "
        + shape
        + ", (SELECT pg_catalog.to_json(pg_catalog.array_agg(a.attname ORDER BY a.attnum))"
        "     FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0"
        "     AND NOT a.attisdropped AND a.attgenerated = '')::text"
        " FROM pg_catalog.pg_publication_tables t"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename"
        f" WHERE t.pubname IN ({listed})"
        " ORDER BY 1, 2, 3",
        context="listing the published tables",
    )
    grouped: dict[tuple[str, str], list[tuple[tuple[str, ...], str | None]]] = {}
    all_columns: dict[tuple[str, str], tuple[str, ...]] = {}
    for schema, name, _pub, attnames, rowfilter, every in rows:
        assert schema is not None and name is not None
        key = (schema, name)
        default = _json_list(every) or ()
        all_columns[key] = default
        grouped.setdefault(key, []).append((_json_list(attnames) or default, rowfilter))
    tables: list[PublishedTable] = []
    for key, entries in grouped.items():
        columns = entries[0][0]
        if any(set(cols) != set(columns) for cols, _ in entries[1:]):
            raise ColumnListConflict(
                f"cannot use different column lists for table {qualified(*key)}"
                " in different publications",
                hint="publish the same columns of it in every publication of the subscription",
            )
        filters = [f for _, f in entries]
        row_filter: str | None = None
        if all(f is not None for f in filters):
            unique = list(dict.fromkeys(f for f in filters if f is not None))
            row_filter = unique[0] if len(unique) == 1 else " OR ".join(f"({f})" for f in unique)
        column_list = None if set(columns) == set(all_columns[key]) else columns
        tables.append(PublishedTable(key[0], key[1], columns, column_list, row_filter))
    return tables


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
