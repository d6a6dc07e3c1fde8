"""The published shape of a table: which columns and rows the publisher sends.

One definition, used when a subscription is created or refreshed (over the
replication connection) and by the table sync worker's copy (inside the copy's
snapshot), so both agree with each other and with what pgoutput sends:

* columns: from PostgreSQL 15, ``pg_publication_tables.attnames`` (the column
  list, or every column); before 18 pgoutput never sends a generated column, yet
  15-17 list stored generated columns there, so they are left out; 18 lists a
  generated column exactly when it is published (``publish_generated_columns`` or
  a column list naming it). Before 15, every column that is not generated. The
  publisher's column order is kept. A table may have no columns at all.
* a table in several of the subscription's publications: the column lists must
  be equal (native refuses different lists, a publication without a list counting
  as "every column"), the row filters are OR-ed, and no filter at all if one
  publication has none.
* the DDL queue (``pgferry_ddl.queue``, see :mod:`pgferry.ddl.capture`) is
  published for the statements it carries, never a table of a subscription.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pgferry.ddl.capture import QUEUE_SCHEMA
from pgferry.errors import ServerError
from pgferry.sqltext import qualified, quote_literal

#: First publisher major with column lists and row filters in pg_publication_tables.
FILTERS_MAJOR = 15
#: First publisher major that can publish generated columns.
GENERATED_MAJOR = 18

#: Runs one query whose columns are all text; its rows.
RunQuery = Callable[[str], Sequence[tuple[str | None, ...]]]


class ColumnListConflict(ServerError):
    """Two of the subscription's publications publish different columns of a table."""


@dataclass(frozen=True)
class PublishedTable:
    """One published table as the subscription receives it."""

    schema: str
    name: str
    #: The columns the publisher sends, in the publisher's order.
    columns: tuple[str, ...]
    #: The publications' column list; None when the default columns are published.
    column_list: tuple[str, ...] | None
    #: The combined row filter (SQL, as the publisher deparses it); None: every row.
    row_filter: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def display(self) -> str:
        return qualified(self.schema, self.name)


def _query(major: int, publications: Sequence[str], table: tuple[str, str] | None) -> str:
    listed = ", ".join(quote_literal(p) for p in publications)
    if major >= FILTERS_MAJOR:
        shape = "pg_catalog.to_json(t.attnames)::text, t.rowfilter"
    else:
        shape = "NULL::text, NULL::text"
    only = (
        f" AND t.schemaname = {quote_literal(table[0])} AND t.tablename = {quote_literal(table[1])}"
        if table is not None
        else ""
    )
    return (
        "SELECT t.schemaname::text, t.tablename::text, "
        + shape
        + ", (SELECT pg_catalog.to_json(pg_catalog.array_agg("
        "       pg_catalog.json_build_array(a.attname, a.attgenerated <> '') ORDER BY a.attnum))"
        "     FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0"
        "     AND NOT a.attisdropped)::text"
        " FROM pg_catalog.pg_publication_tables t"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename"
        f" WHERE t.pubname IN ({listed}){only}"
        # The DDL queue is published for its statements, not as a table to copy.
        f" AND t.schemaname <> {quote_literal(QUEUE_SCHEMA)}"
        " ORDER BY 1, 2, t.pubname"
    )


def _sent(major: int, attnames: str | None, attributes: str | None) -> tuple[str, ...]:
    """The columns one publication sends, in the table's order."""
    every = [(str(n), bool(g)) for n, g in json.loads(attributes or "null") or []]
    listed = json.loads(attnames) if attnames is not None else None
    if listed is None:
        return tuple(n for n, generated in every if not generated)
    names = set(listed)
    return tuple(
        n for n, generated in every if n in names and (major >= GENERATED_MAJOR or not generated)
    )


def _default(attributes: str | None) -> tuple[str, ...]:
    every = json.loads(attributes or "null") or []
    return tuple(str(n) for n, generated in every if not generated)


def published_tables(
    run: RunQuery,
    major: int,
    publications: Sequence[str],
    *,
    table: tuple[str, str] | None = None,
) -> list[PublishedTable]:
    """The tables ``publications`` publish (only ``table`` if given), by schema and
    name, on a publisher of ``major``."""
    if not publications:
        return []
    grouped: dict[tuple[str, str], list[tuple[tuple[str, ...], str | None]]] = {}
    defaults: dict[tuple[str, str], tuple[str, ...]] = {}
    for schema, name, attnames, rowfilter, attributes in run(_query(major, publications, table)):
        assert schema is not None and name is not None
        key = (schema, name)
        defaults[key] = _default(attributes)
        grouped.setdefault(key, []).append((_sent(major, attnames, attributes), rowfilter))
    return [_combine(key, entries, defaults[key]) for key, entries in grouped.items()]


def _combine(
    key: tuple[str, str],
    entries: list[tuple[tuple[str, ...], str | None]],
    default: tuple[str, ...],
) -> PublishedTable:
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
    column_list = None if set(columns) == set(default) else columns
    return PublishedTable(key[0], key[1], columns, column_list, row_filter)
