"""Remote relation -> local table: columns matched by name, statements per shape.

A :class:`TableMap` is built from a Relation message and the subscriber's own
catalog, the way native's ``logicalrep_rel_open`` does:

* the local table has the remote schema and name;
* columns are matched by name, whatever their order; extra local columns take
  their defaults; a published column missing locally is an error naming it
  (:class:`ColumnsMissing`: ``missing_columns = add`` adds it, see :mod:`.columns`);
* values travel in their text form and are cast to the *local* column type, so a
  different but text-compatible type works (int4 -> int8, varchar -> text...);
* UPDATE and DELETE find the row by the replica identity the publisher sent: its
  key columns with ``=``, or, under REPLICA IDENTITY FULL, every column with
  ``IS NOT DISTINCT FROM`` (text comparison for types without equality, such as
  json or point), and only one row is touched, as native does.

Statements are composed with ``psycopg.sql`` (every identifier quoted) and cached
per shape (which columns are present, unchanged-TOAST or NULL-keyed).

For conflict detection (see :mod:`pgferry.apply.applier`) a map also knows the
table's unique indexes and builds the statements that read a local row with its
commit timestamp and origin (``pg_xact_commit_timestamp_origin(xmin)``), find the
rows a new version would collide with, and change one row by its address
(``tableoid``, ``ctid``, both needed on a partitioned table).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgferry.protocol.messages import UNCHANGED_TOAST, Column, Relation, Value


class MappingError(Exception):
    """The local table does not fit the remote relation (missing table or column);
    ``hint`` says what to do, when it is more than creating what is missing."""

    hint: str | None = None


class ColumnsMissing(MappingError):
    """Published columns the local table lacks (``missing`` of ``relation``), which
    ``missing_columns = add`` adds (see :mod:`.columns`)."""

    def __init__(self, message: str, relation: Relation, missing: tuple[Column, ...]) -> None:
        super().__init__(message)
        self.relation = relation
        self.missing = missing


class Stamps(enum.Enum):
    """What the subscriber can tell about who wrote a local row, and when."""

    ORIGIN = "origin"  # track_commit_timestamp on, PG 14+: time and origin
    TIME = "time"  # track_commit_timestamp on, PG 13: time only
    NONE = "none"  # track_commit_timestamp off


#: Alias of the local table in the statements that read local rows.
_L = "pgferry_l"


def _stamp_columns(stamps: Stamps) -> sql.SQL:
    """Commit time and origin id of the row ``pgferry_l`` (NULL when unknown)."""
    if stamps is Stamps.ORIGIN:
        call = f"pg_catalog.pg_xact_commit_timestamp_origin({_L}.xmin)"
        return sql.SQL(f"({call}).timestamp, ({call}).roident")
    if stamps is Stamps.TIME:
        return sql.SQL(f"pg_catalog.pg_xact_commit_timestamp({_L}.xmin), NULL::oid")
    return sql.SQL("NULL::timestamptz, NULL::oid")


@dataclass(frozen=True)
class UniqueIndex:
    """A unique index whose key columns are all replicated (so a change's values
    can be checked against it)."""

    name: str
    #: Remote positions of its key columns.
    positions: tuple[int, ...]
    nulls_not_distinct: bool = False
    #: Its predicate (a partial index), as ``pg_get_expr`` prints it.
    predicate: str | None = None


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
    #: The unique indexes conflicts are detected on (immediate ones; see build_map).
    uniques: tuple[UniqueIndex, ...] = ()
    #: INSERT ... ON CONFLICT DO NOTHING detects exactly the unique conflicts: no
    #: deferrable unique index, exclusion constraint or index we cannot check.
    on_conflict_ok: bool = True
    stamps: Stamps = Stamps.NONE
    #: A trigger fires on the table (or a partition) in the apply session
    #: (``ENABLE ALWAYS`` or ``ENABLE REPLICA``): it must see every row change.
    fires_triggers: bool = False
    #: The apply session's replication origin id (rows it wrote are no conflict).
    origin_id: int = 0
    #: Set by the applier: this table's conflict policies are native's.
    native_policies: bool | None = None
    #: The subscriber connection (quoting and encoding of the statements).
    context: psycopg.Connection[Any] | None = None
    #: Statements by shape, rendered once: psycopg would render a Composed again
    #: at every execution.
    _cache: dict[Any, bytes] = field(default_factory=dict)
    _other_uniques: bool | None = None

    @property
    def other_uniques(self) -> bool:
        """A unique index other than the replica identity's (so an UPDATE that
        keeps its identity may still collide); every one under FULL."""
        value = self._other_uniques
        if value is None:
            key = set(self.key)
            value = self._other_uniques = any(
                self.full or set(ix.positions) != key for ix in self.uniques
            )
        return value

    def _bytes(self, query: sql.Composed) -> bytes:
        return query.as_bytes(self.context)

    @property
    def display(self) -> str:
        return f"{self.relation.namespace}.{self.relation.name}"

    # -- statements ------------------------------------------------------------------

    def _value(self, i: int) -> sql.Composed:
        return sql.SQL("%s::{}").format(sql.SQL(self.types[i]))

    def insert(
        self, values: tuple[Value, ...], *, skip_conflicts: bool = False
    ) -> tuple[bytes, list[str | None]]:
        """INSERT; with ``skip_conflicts``, ``ON CONFLICT DO NOTHING`` (rowcount 0:
        a unique conflict, to be resolved by the caller)."""
        present = tuple(i for i, v in enumerate(values) if v is not UNCHANGED_TOAST)
        shape = ("i", present, skip_conflicts)
        query = self._cache.get(shape)
        if query is None:
            # The publisher's value wins over a local GENERATED ALWAYS identity,
            # as it does when native writes the row directly.
            overriding = any(i in self.identity_always for i in present)
            if not present:
                # A row of no columns (a table without any, or none sent).
                composed = sql.SQL("INSERT INTO {} DEFAULT VALUES{}").format(
                    self.target, sql.SQL(" ON CONFLICT DO NOTHING" if skip_conflicts else "")
                )
                query = self._cache[shape] = self._bytes(composed)
                return query, []
            composed = sql.SQL("INSERT INTO {} ({}){} VALUES ({}){}").format(
                self.target,
                sql.SQL(", ").join(sql.Identifier(self.names[i]) for i in present),
                sql.SQL(" OVERRIDING SYSTEM VALUE" if overriding else ""),
                sql.SQL(", ").join(self._value(i) for i in present),
                sql.SQL(" ON CONFLICT DO NOTHING" if skip_conflicts else ""),
            )
            query = self._cache[shape] = self._bytes(composed)
        return query, [text_value(values[i]) for i in present]

    def _match(self, identity: tuple[Value, ...]) -> tuple[tuple[int, ...], list[str | None]]:
        """Positions of the columns that locate the row, and their values.

        Key columns, or every column under FULL; unchanged-TOAST values were not
        sent and cannot take part.
        """
        positions = range(len(self.names)) if self.full else self.key
        used = tuple(i for i in positions if identity[i] is not UNCHANGED_TOAST)
        return used, [text_value(identity[i]) for i in used]

    def _locate(self, used: tuple[int, ...]) -> sql.Composable:
        cond = self._conds(used, None)
        if not self.full:
            return cond
        # FULL may match several identical rows; touch one, as native does.
        return sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(self.target, cond)

    def _conds(self, used: tuple[int, ...], alias: str | None) -> sql.Composable:
        conds: list[sql.Composable] = []
        for i in used:
            column = (
                sql.Identifier(alias, self.names[i]) if alias else sql.Identifier(self.names[i])
            )
            if not self.full:
                conds.append(sql.SQL("{} = {}").format(column, self._value(i)))
            elif self.names[i] in self.no_equality:
                conds.append(sql.SQL("{}::text IS NOT DISTINCT FROM %s::text").format(column))
            else:
                conds.append(sql.SQL("{} IS NOT DISTINCT FROM {}").format(column, self._value(i)))
        return sql.SQL(" AND ").join(conds)

    def update(
        self, old: tuple[Value, ...] | None, new: tuple[Value, ...]
    ) -> tuple[bytes, list[str | None]]:
        """UPDATE the row the identity finds to ``new``: every column sent (not
        unchanged TOAST), the key's included, except a GENERATED ALWAYS identity
        key that did not change. Under a nondeterministic collation the row found
        may hold other key bytes; it takes the publisher's, as native writes the
        whole new tuple."""
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
            composed = sql.SQL("UPDATE {} SET {} WHERE {}").format(
                self.target,
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(self.names[i]), self._value(i))
                    for i in present
                ),
                self._locate(used),
            )
            query = self._cache[shape] = self._bytes(composed)
        return query, [text_value(new[i]) for i in present] + key_params

    def delete(self, old: tuple[Value, ...]) -> tuple[bytes, list[str | None]]:
        used, params = self._match(old)
        query = self._cache.get(("d", used))
        if query is None:
            composed = sql.SQL("DELETE FROM {} WHERE {}").format(self.target, self._locate(used))
            query = self._cache[("d", used)] = self._bytes(composed)
        return query, params

    # -- statements for conflict detection and resolution ---------------------------

    def _set_list(self, new: tuple[Value, ...], skip: frozenset[int]) -> tuple[int, ...]:
        return tuple(i for i, v in enumerate(new) if v is not UNCHANGED_TOAST and i not in skip)

    def _row_columns(self, *, only_differing: bool = False) -> sql.Composed:
        """Address, commit time, origin id and the whole row of ``pgferry_l``;
        with ``only_differing`` the row only when another origin wrote it (the
        statements that change every row they find do not pay for the rest)."""
        row: sql.Composable = sql.SQL("pg_catalog.to_jsonb({l}.*)").format(l=sql.Identifier(_L))
        if only_differing:
            if self.stamps is Stamps.ORIGIN:
                call = f"pg_catalog.pg_xact_commit_timestamp_origin({_L}.xmin)"
                row = sql.SQL("CASE WHEN ({}).roident <> {} THEN {} END").format(
                    sql.SQL(call), sql.Literal(self.origin_id), row
                )
            else:
                row = sql.SQL("NULL::jsonb")
        return sql.SQL("{l}.tableoid, {l}.ctid::text, {stamps}, {row}").format(
            l=sql.Identifier(_L), stamps=_stamp_columns(self.stamps), row=row
        )

    def locate_row(self, identity: tuple[Value, ...]) -> tuple[bytes, list[str | None]]:
        """The local row the identity finds, locked, as (tableoid, ctid, commit time,
        origin id, row as jsonb); no row: missing."""
        used, params = self._match(identity)
        shape = ("locate", used)
        query = self._cache.get(shape)
        if query is None:
            composed = sql.SQL("SELECT {} FROM {} AS {} WHERE {} LIMIT 1 FOR UPDATE").format(
                self._row_columns(), self.target, sql.Identifier(_L), self._conds(used, _L)
            )
            query = self._cache[shape] = self._bytes(composed)
        return query, params

    def find_conflicts(
        self, values: tuple[Value, ...], exclude: tuple[int, str] | None = None
    ) -> tuple[bytes, list[Any]] | None:
        """The local rows (other than ``exclude``) that ``values`` collide with on a
        unique index, locked, as :meth:`locate_row`'s columns plus the names of the
        indexes each collides on; None when no index can collide."""
        checks: list[tuple[UniqueIndex, tuple[int, ...]]] = []
        for index in self.uniques:
            if any(values[i] is UNCHANGED_TOAST for i in index.positions):
                continue
            if not index.nulls_not_distinct and any(values[i] is None for i in index.positions):
                continue  # NULLs never collide
            checks.append((index, index.positions))
        if not checks:
            return None
        shape = ("conflicts", tuple(ix.name for ix, _ in checks), exclude is not None)
        query = self._cache.get(shape)
        alias = sql.Identifier(_L)
        if query is None:
            conds: list[sql.Composable] = []
            for index, positions in checks:
                op = "IS NOT DISTINCT FROM" if index.nulls_not_distinct else "="
                parts: list[sql.Composable] = [
                    sql.SQL("{} {} {}").format(
                        sql.Identifier(_L, self.names[i]), sql.SQL(op), self._value(i)
                    )
                    for i in positions
                ]
                if index.predicate:
                    # From pg_get_expr: trusted SQL; its column names resolve to the
                    # only table in the query.
                    parts.append(sql.SQL("(" + index.predicate + ")"))
                conds.append(sql.SQL("({})").format(sql.SQL(" AND ").join(parts)))
            names = sql.SQL(", ").join(
                sql.SQL("CASE WHEN {} THEN {} END").format(cond, sql.Literal(index.name))
                for cond, (index, _) in zip(conds, checks, strict=True)
            )
            exclusion = sql.SQL(
                " AND ({l}.tableoid, {l}.ctid) <> (%s::oid, %s::tid)" if exclude else ""
            ).format(l=alias)
            composed = sql.SQL(
                "SELECT {}, pg_catalog.array_remove(ARRAY[{}], NULL) FROM {} AS {}"
                " WHERE ({}){} FOR UPDATE"
            ).format(
                self._row_columns(),
                names,
                self.target,
                alias,
                sql.SQL(" OR ").join(conds),
                exclusion,
            )
            query = self._cache[shape] = self._bytes(composed)
        params: list[Any] = []
        for _index, positions in checks:
            params += [text_value(values[i]) for i in positions]
        # The CASE list repeats the conditions: their parameters come first there.
        params = params + params
        if exclude is not None:
            params += [exclude[0], exclude[1]]
        return query, params

    def update_row(
        self, new: tuple[Value, ...], address: tuple[int, str], *, key_unchanged: bool = False
    ) -> tuple[bytes, list[Any]]:
        """UPDATE the row at ``address`` to ``new`` (a GENERATED ALWAYS identity
        column is left out when ``key_unchanged``: it may not be set)."""
        skip = frozenset(self.identity_always) if key_unchanged else frozenset()
        present = self._set_list(new, skip)
        shape = ("u@", present)
        query = self._cache.get(shape)
        if query is None:
            composed = sql.SQL(
                "UPDATE {} SET {} WHERE tableoid = %s::oid AND ctid = %s::tid"
            ).format(
                self.target,
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(self.names[i]), self._value(i))
                    for i in present
                ),
            )
            query = self._cache[shape] = self._bytes(composed)
        return query, [text_value(new[i]) for i in present] + [address[0], address[1]]

    def delete_row(self, address: tuple[int, str]) -> tuple[bytes, list[Any]]:
        query = self._cache.get("d@")
        if query is None:
            composed = sql.SQL("DELETE FROM {} WHERE tableoid = %s::oid AND ctid = %s::tid").format(
                self.target
            )
            query = self._cache["d@"] = self._bytes(composed)
        return query, [address[0], address[1]]

    def _old_row(self, used: tuple[int, ...]) -> sql.Composed:
        """``WITH pgferry_old AS (...)``: the row the identity finds, locked."""
        return sql.SQL(
            "WITH pgferry_old AS (SELECT {row} FROM {t} AS {l} WHERE {conds} LIMIT 1 FOR UPDATE)"
        ).format(
            row=self._row_columns(only_differing=True),
            t=self.target,
            l=sql.Identifier(_L),
            conds=self._conds(used, _L),
        )

    def update_returning(
        self, old: tuple[Value, ...] | None, new: tuple[Value, ...]
    ) -> tuple[bytes, list[str | None]]:
        """UPDATE in one statement that also returns the old row's commit time,
        origin id and jsonb (no row: missing): for when the outcome does not depend
        on them."""
        used, key_params = self._match(old if old is not None else new)
        unchanged_key = self.identity_always.intersection(self.key) if old is None else ()
        present = tuple(
            i for i, v in enumerate(new) if v is not UNCHANGED_TOAST and i not in unchanged_key
        )
        shape = ("u*", present, used)
        query = self._cache.get(shape)
        if query is None:
            composed = sql.SQL(
                "{old} UPDATE {t} AS pgferry_u SET {sets} FROM pgferry_old AS o"
                " WHERE pgferry_u.tableoid = o.tableoid AND pgferry_u.ctid = o.ctid::tid"
                " RETURNING o.*"
            ).format(
                old=self._old_row(used),
                t=self.target,
                sets=sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(self.names[i]), self._value(i))
                    for i in present
                ),
            )
            query = self._cache[shape] = self._bytes(composed)
        return query, key_params + [text_value(new[i]) for i in present]

    def delete_returning(self, old: tuple[Value, ...]) -> tuple[bytes, list[str | None]]:
        """DELETE in one statement returning what :meth:`update_returning` does."""
        used, params = self._match(old)
        shape = ("d*", used)
        query = self._cache.get(shape)
        if query is None:
            composed = sql.SQL(
                "{old} DELETE FROM {t} AS pgferry_d USING pgferry_old AS o"
                " WHERE pgferry_d.tableoid = o.tableoid AND pgferry_d.ctid = o.ctid::tid"
                " RETURNING o.*"
            ).format(old=self._old_row(used), t=self.target)
            query = self._cache[shape] = self._bytes(composed)
        return query, params

    def row_json(
        self, values: tuple[Value, ...] | None, *, key_only: bool = False
    ) -> dict[str, Any] | None:
        """A remote tuple as a JSON object of text values (unchanged TOAST left out)."""
        if values is None:
            return None
        positions = self.key if key_only and not self.full else range(len(self.names))
        return {
            self.names[i]: text_value(values[i])
            for i in positions
            if values[i] is not UNCHANGED_TOAST
        }

    def index_keys(
        self, names: Iterable[str], values: tuple[Value, ...]
    ) -> list[tuple[str, dict[str, str | None]]]:
        """For each of the unique indexes ``names`` (in the table's order), its
        name and its key columns with ``values``: what a collision on it is about,
        as PostgreSQL's ``Key (col)=(value)`` reports it."""
        wanted = set(names)
        return [
            (ix.name, {self.names[i]: text_value(values[i]) for i in ix.positions})
            for ix in self.uniques
            if ix.name in wanted
        ]

    def failing_column(
        self, conn: psycopg.Connection[Any], values: tuple[Value, ...]
    ) -> str | None:
        """The first column whose value its local type refuses (error path only)."""
        for i, value in enumerate(values):
            if value is UNCHANGED_TOAST or value is None:
                continue
            try:
                conn.execute(sql.SQL("SELECT {}").format(self._value(i)), [text_value(value)])
            except psycopg.DataError:
                return self.names[i]
        return None


def text_value(value: Value) -> str | None:
    if value is None:
        return None
    assert isinstance(value, bytes)
    return value.decode()


_UNIQUE_INDEXES = """
SELECT ic.relname, i.indimmediate, i.indexprs IS NOT NULL,
    pg_catalog.pg_get_expr(i.indpred, i.indrelid),
    coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false),
    ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE k.n <= i.indnkeyatts ORDER BY k.n)::text[],
    i.indnkeyatts
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indisready
ORDER BY ic.relname
"""


# Triggers of the table and its partitions (pg_partition_tree lists nothing for a
# table that is not partitioned) that fire under session_replication_role
# = replica (A: always, R: replica). A partition's clone of a trigger of its
# parent is "internal" before PostgreSQL 15, hence tgparentid.
_FIRING_TRIGGERS = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_trigger t
    WHERE (t.tgrelid = %(t)s::regclass
           OR t.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree(%(t)s::regclass)))
      AND (NOT t.tgisinternal OR t.tgparentid <> 0) AND t.tgenabled IN ('A', 'R'))
"""


def _unique_indexes(
    conn: psycopg.Connection[Any], target: str, names: tuple[str, ...]
) -> tuple[tuple[UniqueIndex, ...], bool]:
    """The table's immediate unique indexes on replicated columns, and whether
    ON CONFLICT DO NOTHING would detect exactly the conflicts on them."""
    exclusion = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'x')",
        (target,),
    ).fetchone()
    exact = not (exclusion and exclusion[0])
    position = {n: i for i, n in enumerate(names)}
    uniques = []
    for name, immediate, expressions, predicate, nnd, columns, nkeys in conn.execute(
        _UNIQUE_INDEXES, (target,)
    ):
        if not immediate:
            # Native does not treat deferrable indexes as conflicts either; but
            # ON CONFLICT refuses them.
            exact = False
            continue
        if expressions or len(columns) != nkeys or any(c not in position for c in columns):
            exact = False  # cannot be checked with the remote values
            continue
        uniques.append(
            UniqueIndex(
                str(name),
                tuple(position[c] for c in columns),
                bool(nnd),
                str(predicate) if predicate else None,
            )
        )
    return tuple(uniques), exact


def build_map(
    conn: psycopg.Connection[Any],
    relation: Relation,
    stamps: Stamps = Stamps.NONE,
    origin_id: int = 0,
) -> TableMap:
    """Resolve ``relation`` against the subscriber's catalog."""
    target = sql.SQL("{}.{}").format(
        sql.Identifier(relation.namespace), sql.Identifier(relation.name)
    )
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
        " NOT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprname = '='"
        "   AND o.oprleft = a.atttypid AND o.oprright = a.atttypid),"
        " a.attidentity = 'a'"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        # (A table may have no columns: then one row of NULLs.)
        " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid"
        "   AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (relation.namespace, relation.name),
    ).fetchall()
    if not rows:
        raise MappingError(
            f'logical replication target relation "{relation.namespace}.{relation.name}"'
            " does not exist"
        )
    local = {str(r[0]): (str(r[1]), bool(r[2]), bool(r[3])) for r in rows if r[0] is not None}
    missing = tuple(c for c in relation.columns if c.name not in local)
    if missing:
        listed = ", ".join(f'"{m.name}"' for m in missing)
        raise ColumnsMissing(
            f'logical replication target relation "{relation.namespace}.{relation.name}"'
            f" is missing replicated column{'s' if len(missing) > 1 else ''}: {listed}",
            relation,
            missing,
        )
    names = tuple(c.name for c in relation.columns)
    uniques, exact = _unique_indexes(conn, target.as_string(conn), names)
    triggers = conn.execute(_FIRING_TRIGGERS, {"t": target.as_string(conn)}).fetchone()
    return TableMap(
        relation=relation,
        target=target,
        types=tuple(local[n][0] for n in names),
        names=names,
        key=tuple(i for i, c in enumerate(relation.columns) if c.is_key),
        full=relation.replica_identity == "f",
        no_equality=frozenset(n for n in names if local[n][1]),
        identity_always=frozenset(i for i, n in enumerate(names) if local[n][2]),
        uniques=uniques,
        on_conflict_ok=exact,
        stamps=stamps,
        fires_triggers=bool(triggers and triggers[0]),
        origin_id=origin_id,
        context=conn,
    )
