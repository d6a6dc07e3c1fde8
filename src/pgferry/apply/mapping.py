"""Remote relation -> local table: columns matched by name, statements per shape.

A :class:`TableMap` is built from a Relation message and the subscriber's own
catalog, the way native's ``logicalrep_rel_open`` does:

* the local table has the remote schema and name;
* columns are matched by name, whatever their order; extra local columns take
  their defaults; a published column missing locally is an error naming it;
* values travel in their text form and are cast to the *local* column type, so a
  different but text-compatible type works (int4 -> int8, varchar -> text...);
* UPDATE and DELETE find the row by the replica identity the publisher sent: its
  key columns with ``=``, or, under REPLICA IDENTITY FULL, every column with
  ``IS NOT DISTINCT FROM`` (text comparison for types without equality, such as
  json or point), and only one row is touched, as native does.

Statements are composed with ``psycopg.sql`` (every identifier quoted) and cached
per shape (which columns are present, unchanged-TOAST or NULL-keyed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgferry.protocol.messages import UNCHANGED_TOAST, Relation, Value


class MappingError(Exception):
    """The local table does not fit the remote relation (missing table or column)."""


@dataclass
class TableMap:
    relation: Relation
    #: "schema"."table" of the local table.
    target: sql.Composed
    #: Local type (format_type text) of each remote column, by remote position.
    types: tuple[str, ...]
    names: tuple[str, ...]
    #: Remote positions of the replica identity columns.
    key: tuple[int, ...]
    full: bool
    #: Local columns whose type has no equality operator (compared as text).
    no_equality: frozenset[str]
    #: Remote positions of local GENERATED ALWAYS AS IDENTITY columns.
    identity_always: frozenset[int] = frozenset()
    _cache: dict[Any, sql.Composed] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return f"{self.relation.namespace}.{self.relation.name}"

    # -- statements ------------------------------------------------------------------

    def _value(self, i: int) -> sql.Composed:
        return sql.SQL("%s::{}").format(sql.SQL(self.types[i]))

    def insert(self, values: tuple[Value, ...]) -> tuple[sql.Composed, list[str | None]]:
        present = tuple(i for i, v in enumerate(values) if v is not UNCHANGED_TOAST)
        query = self._cache.get(("i", present))
        if query is None:
            # The publisher's value wins over a local GENERATED ALWAYS identity,
            # as it does when native writes the row directly.
            overriding = any(i in self.identity_always for i in present)
            query = sql.SQL("INSERT INTO {} ({}){} VALUES ({})").format(
                self.target,
                sql.SQL(", ").join(sql.Identifier(self.names[i]) for i in present),
                sql.SQL(" OVERRIDING SYSTEM VALUE" if overriding else ""),
                sql.SQL(", ").join(self._value(i) for i in present),
            )
            self._cache[("i", present)] = query
        return query, [_text(values[i]) for i in present]

    def _match(self, identity: tuple[Value, ...]) -> tuple[tuple[int, ...], list[str | None]]:
        """Positions of the columns that locate the row, and their values.

        Key columns, or every column under FULL; unchanged-TOAST values were not
        sent and cannot take part.
        """
        positions = range(len(self.names)) if self.full else self.key
        used = tuple(i for i in positions if identity[i] is not UNCHANGED_TOAST)
        return used, [_text(identity[i]) for i in used]

    def _locate(self, used: tuple[int, ...]) -> sql.Composable:
        conds: list[sql.Composable] = []
        for i in used:
            column = sql.Identifier(self.names[i])
            if not self.full:
                conds.append(sql.SQL("{} = {}").format(column, self._value(i)))
            elif self.names[i] in self.no_equality:
                conds.append(sql.SQL("{}::text IS NOT DISTINCT FROM %s::text").format(column))
            else:
                conds.append(sql.SQL("{} IS NOT DISTINCT FROM {}").format(column, self._value(i)))
        cond = sql.SQL(" AND ").join(conds)
        if not self.full:
            return cond
        # FULL may match several identical rows; touch one, as native does.
        return sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(self.target, cond)

    def update(
        self, old: tuple[Value, ...] | None, new: tuple[Value, ...]
    ) -> tuple[sql.Composed, list[str | None]]:
        used, key_params = self._match(old if old is not None else new)
        # Without an old tuple the key did not change; a GENERATED ALWAYS identity
        # key column may then not appear in SET (PostgreSQL refuses any value).
        unchanged_key = self.identity_always.intersection(self.key) if old is None else ()
        present = tuple(
            i for i, v in enumerate(new) if v is not UNCHANGED_TOAST and i not in unchanged_key
        )
        shape = ("u", present, used)
        query = self._cache.get(shape)
        if query is None:
            query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
                self.target,
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(self.names[i]), self._value(i))
                    for i in present
                ),
                self._locate(used),
            )
            self._cache[shape] = query
        return query, [_text(new[i]) for i in present] + key_params

    def delete(self, old: tuple[Value, ...]) -> tuple[sql.Composed, list[str | None]]:
        used, params = self._match(old)
        query = self._cache.get(("d", used))
        if query is None:
            query = sql.SQL("DELETE FROM {} WHERE {}").format(self.target, self._locate(used))
            self._cache[("d", used)] = query
        return query, params

    def failing_column(
        self, conn: psycopg.Connection[Any], values: tuple[Value, ...]
    ) -> str | None:
        """The first column whose value its local type refuses (error path only)."""
        for i, value in enumerate(values):
            if value is UNCHANGED_TOAST or value is None:
                continue
            try:
                conn.execute(sql.SQL("SELECT {}").format(self._value(i)), [_text(value)])
            except psycopg.DataError:
                return self.names[i]
        return None


def _text(value: Value) -> str | None:
    if value is None:
        return None
    assert isinstance(value, bytes)
    return value.decode()


def build_map(conn: psycopg.Connection[Any], relation: Relation) -> TableMap:
    """Resolve ``relation`` against the subscriber's catalog."""
    target = sql.SQL("{}.{}").format(
        sql.Identifier(relation.namespace), sql.Identifier(relation.name)
    )
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
        " NOT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprname = '='"
        "   AND o.oprleft = a.atttypid AND o.oprright = a.atttypid),"
        " a.attidentity = 'a'"
        " FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"
        " AND a.attnum > 0 AND NOT a.attisdropped",
        (relation.namespace, relation.name),
    ).fetchall()
    if not rows:
        raise MappingError(
            f'logical replication target relation "{relation.namespace}.{relation.name}"'
            " does not exist"
        )
    local = {str(r[0]): (str(r[1]), bool(r[2]), bool(r[3])) for r in rows}
    missing = [c.name for c in relation.columns if c.name not in local]
    if missing:
        listed = ", ".join(f'"{m}"' for m in missing)
        raise MappingError(
            f'logical replication target relation "{relation.namespace}.{relation.name}"'
            f" is missing replicated column{'s' if len(missing) > 1 else ''}: {listed}"
        )
    names = tuple(c.name for c in relation.columns)
    return TableMap(
        relation=relation,
        target=target,
        types=tuple(local[n][0] for n in names),
        names=names,
        key=tuple(i for i, c in enumerate(relation.columns) if c.is_key),
        full=relation.replica_identity == "f",
        no_equality=frozenset(n for n in names if local[n][1]),
        identity_always=frozenset(i for i, n in enumerate(names) if local[n][2]),
    )
