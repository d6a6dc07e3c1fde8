"""Checks run on the publisher before and while a publication is changed.

Contract:

* :func:`parse_with` turns ``--with KEY=VALUE`` items into
  :class:`PublicationOptions`; keys are ``publish`` (a comma-separated subset of
  insert, update, delete, truncate; empty publishes nothing) and
  ``publish_via_partition_root`` (a PostgreSQL boolean). Anything else is an
  :class:`~pgferry.errors.InterfaceError` listing the valid keys.
* :func:`require_features` refuses column lists, row filters and
  ``TABLES IN SCHEMA`` on a server older than PostgreSQL 15
  (:class:`~pgferry.errors.FeatureNotSupported`); :func:`check_wal_level`
  refuses a publisher whose ``wal_level`` is not ``logical``.
* :func:`resolve_tables` / :func:`resolve_schemas` find the named tables and
  schemas as the server will (``search_path`` for unqualified names), raising
  :class:`TableNotFound` / :class:`SchemaNotFound` naming every missing one.
* :func:`identity_issues` lists the tables on which UPDATE or DELETE will fail
  *on the publisher* because of the publication (PostgreSQL raises "cannot
  update table ... because it does not have a replica identity and publishes
  updates" and friends), reading the catalogs in the caller's transaction so the
  publication's new state is seen before it is committed. The rules mirror
  PostgreSQL's ``CheckCmdReplicaIdentity``: only publications that publish
  UPDATE or DELETE matter; the table needs REPLICA IDENTITY FULL or a usable
  identity index (the primary key for DEFAULT, the chosen index for USING INDEX;
  valid, unique, not deferrable, no predicate); and from PostgreSQL 15 a row
  filter may use only replica identity columns and a column list must cover
  them (and is not allowed at all with FULL). Partitioned tables are checked
  through their leaf partitions, which is where the server checks them.

Not checked: the PostgreSQL 18 rules on generated columns in the replica
identity, and the effect of *other* publications the table is in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import QueryNoTemplate
from psycopg.rows import tuple_row

from pgferry.errors import FeatureNotSupported, InterfaceError, ServerError, WalLevelNotLogical
from pgferry.publisher.spec import TableSpec
from pgferry.sqltext import bare_or_quoted, printable

#: The change kinds a publication can publish, in PostgreSQL's order.
PUBLISH_ACTIONS = ("insert", "update", "delete", "truncate")
#: The ``--with`` keys pgferry accepts.
WITH_KEYS = ("publish", "publish_via_partition_root")
#: First major with column lists, row filters and TABLES IN SCHEMA.
FILTERS_MAJOR = 15

_TRUE = ("true", "on", "yes", "1", "t", "y")
_FALSE = ("false", "off", "no", "0", "f", "n")

Conn = psycopg.Connection[Any]


class TableNotFound(ServerError):
    """Tables named for a publication do not exist on the publisher."""


class SchemaNotFound(ServerError):
    """Schemas named for ``TABLES IN SCHEMA`` do not exist on the publisher."""


class PublicationAlreadyExists(ServerError):
    """``create`` was asked for a publication name already taken."""


def shown(name: str) -> str:
    """A publication or schema name as messages show it: quoted, one line."""
    return printable(repr(name))


@dataclass(frozen=True)
class PublicationOptions:
    """``WITH (...)`` parameters; ``None`` leaves the server's default / current value."""

    publish: tuple[str, ...] | None = None
    via_root: bool | None = None

    @property
    def empty(self) -> bool:
        return self.publish is None and self.via_root is None

    def to_sql(self) -> sql.Composable:
        """``publish = '...', publish_via_partition_root = ...`` (no parentheses)."""
        items: list[sql.Composable] = []
        if self.publish is not None:
            items.append(sql.SQL("publish = {}").format(sql.Literal(", ".join(self.publish))))
        if self.via_root is not None:
            items.append(
                sql.SQL("publish_via_partition_root = {}").format(
                    sql.SQL("true" if self.via_root else "false")
                )
            )
        return sql.SQL(", ").join(items)


def parse_with(items: Iterable[str]) -> PublicationOptions:
    """``["publish=insert,update", "publish_via_partition_root=true"]`` -> options."""
    publish: tuple[str, ...] | None = None
    via_root: bool | None = None
    seen: set[str] = set()
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise InterfaceError(
                f"--with {printable(item)!r}: expected KEY=VALUE",
                hint=f"valid keys: {', '.join(WITH_KEYS)}",
            )
        if key not in WITH_KEYS:
            raise InterfaceError(
                f"--with: unknown key {printable(key)!r}",
                hint=f"valid keys: {', '.join(WITH_KEYS)}",
            )
        if key in seen:
            raise InterfaceError(f"--with: {key} given more than once")
        seen.add(key)
        value = value.strip()
        if key == "publish":
            actions = [a.strip().lower() for a in value.split(",")] if value else []
            bad = [a for a in actions if a not in PUBLISH_ACTIONS]
            if bad:
                raise InterfaceError(
                    f"--with publish: unknown action {printable(bad[0])!r}",
                    hint=f"publish is a comma-separated list of {', '.join(PUBLISH_ACTIONS)}",
                )
            # Canonical order, no duplicates: what pg_publication will show.
            publish = tuple(a for a in PUBLISH_ACTIONS if a in actions)
        else:
            lowered = value.lower()
            if lowered in _TRUE:
                via_root = True
            elif lowered in _FALSE:
                via_root = False
            else:
                raise InterfaceError(
                    f"--with publish_via_partition_root: {printable(value)!r} is not a boolean",
                    hint="use true or false",
                )
    return PublicationOptions(publish, via_root)


# -- small query helpers ---------------------------------------------------------


def rows(conn: Conn, query: QueryNoTemplate, params: Any = None) -> list[Any]:
    """All rows of ``query`` as tuples, whatever the connection's row factory."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def server_major(conn: Conn) -> int:
    return conn.info.server_version // 10000


# -- checks before any change -----------------------------------------------------


def require_features(conn: Conn, specs: Sequence[TableSpec], schemas: Sequence[str] = ()) -> None:
    """FeatureNotSupported when the server is too old for what is asked."""
    major = server_major(conn)
    if major >= FILTERS_MAJOR:
        return
    wanted: list[str] = []
    if any(s.columns is not None for s in specs):
        wanted.append("column lists")
    if any(s.row_filter is not None for s in specs):
        wanted.append("row filters (WHERE)")
    if schemas:
        wanted.append("--tables-in-schema")
    if wanted:
        raise FeatureNotSupported(
            f"{' and '.join(wanted)} need PostgreSQL {FILTERS_MAJOR} or later; "
            f"the publisher runs PostgreSQL {major}",
            hint="publish whole tables (no column list or WHERE), or upgrade the publisher",
        )


def check_wal_level(conn: Conn) -> None:
    (level,) = rows(conn, "SHOW wal_level")[0]
    if level != "logical":
        raise WalLevelNotLogical(
            f"the publisher runs with wal_level = {level}; logical replication needs logical",
            hint="set wal_level = logical in postgresql.conf on the publisher and restart it",
        )


@dataclass(frozen=True)
class ResolvedTable:
    """A table spec found on the server."""

    spec: TableSpec
    oid: int
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return printable(f"{bare_or_quoted(self.schema)}.{bare_or_quoted(self.name)}")


_RELKINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "a partitioned index",
    "c": "a composite type",
    "t": "a TOAST table",
}


def _regclass_text(conn: Conn, spec: TableSpec) -> str:
    ident = (
        sql.Identifier(spec.name) if spec.schema is None else sql.Identifier(spec.schema, spec.name)
    )
    return ident.as_string(conn)


def resolve_tables(conn: Conn, specs: Sequence[TableSpec]) -> list[ResolvedTable]:
    """Find every spec's table; TableNotFound naming all missing ones."""
    if not specs:
        return []
    names = [_regclass_text(conn, s) for s in specs]
    found = rows(
        conn,
        """
        SELECT i, c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text
        FROM unnest(%s::text[]) WITH ORDINALITY AS s(name, i)
        LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(s.name)
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        ORDER BY i
        """,
        (names,),
    )
    missing = [specs[i - 1] for i, oid, *_ in found if oid is None]
    if missing:
        listed = ", ".join(printable(s.qualified) for s in missing)
        plural = "s do" if len(missing) > 1 else " does"
        raise TableNotFound(
            f"table{plural} not exist on the publisher: {listed}",
            hint="check the names (unqualified names follow the search_path; "
            'quote mixed-case names: "Name")',
        )
    resolved: list[ResolvedTable] = []
    for i, oid, schema, name, relkind in found:
        table = ResolvedTable(specs[i - 1], oid, schema, name)
        if relkind not in ("r", "p"):
            raise InterfaceError(
                f"{table.qualified} is {_RELKINDS.get(relkind, 'not a table')}; "
                "only tables can be published"
            )
        resolved.append(table)
    return resolved


def resolve_schemas(conn: Conn, names: Sequence[str]) -> None:
    """SchemaNotFound naming every schema of ``names`` that does not exist."""
    if not names:
        return
    found = {
        r[0]
        for r in rows(
            conn,
            "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s::text[])",
            (list(names),),
        )
    }
    missing = [n for n in names if n not in found]
    if missing:
        listed = ", ".join(printable(bare_or_quoted(n)) for n in missing)
        raise SchemaNotFound(
            f"schema{'s' if len(missing) > 1 else ''} not found on the publisher: {listed}",
            hint='quote mixed-case names: "Name"',
        )


def publication_exists(conn: Conn, name: str) -> bool:
    return bool(rows(conn, "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (name,)))


# -- which tables a publication reaches -------------------------------------------

# The heap tables (leaf partitions for partitioned ones) behind a set of relations:
# UPDATE and DELETE run, and are checked, on those.
_LEAVES_OF = """
    SELECT DISTINCT leaf.oid::int8
    FROM ({source}) AS src(relid)
    JOIN pg_catalog.pg_class c ON c.oid = src.relid
    CROSS JOIN LATERAL (
        SELECT c.oid WHERE c.relkind = 'r'
        UNION ALL
        SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t
        WHERE c.relkind = 'p' AND t.isleaf
    ) AS l(relid)
    JOIN pg_catalog.pg_class leaf ON leaf.oid = l.relid AND leaf.relkind = 'r'
"""


def published_leaves(conn: Conn, publication: str) -> set[int]:
    """The tables whose changes ``publication`` publishes (leaf partitions)."""
    source = sql.SQL(
        """
        SELECT c.oid FROM pg_catalog.pg_publication_tables pt
        JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
        JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        WHERE pt.pubname = {}
        """
    ).format(sql.Literal(publication))
    return {r[0] for r in rows(conn, sql.SQL(_LEAVES_OF).format(source=source))}


def leaves_of(conn: Conn, oids: Iterable[int]) -> set[int]:
    """The heap tables behind tables ``oids`` (partitioned ones expanded)."""
    listed = list(oids)
    if not listed:
        return set()
    source = sql.SQL("SELECT unnest({}::oid[])").format(sql.Literal(listed))
    return {r[0] for r in rows(conn, sql.SQL(_LEAVES_OF).format(source=source))}


# -- replica identity --------------------------------------------------------------


@dataclass(frozen=True)
class IdentityIssue:
    """A table on which UPDATE/DELETE (``actions``) will fail on the publisher."""

    schema: str
    table: str
    publication: str
    actions: tuple[str, ...]
    problem: str
    fix: str

    @property
    def qualified(self) -> str:
        return printable(f"{bare_or_quoted(self.schema)}.{bare_or_quoted(self.table)}")

    @property
    def message(self) -> str:
        """One line: which table, why, what fails, and how to fix it."""
        return (
            f"table {self.qualified} {self.problem}, so {' and '.join(self.actions)} on it "
            f"will fail on the publisher while publication {shown(self.publication)} "
            f"publishes {'them' if len(self.actions) > 1 else 'it'}; fix: {self.fix}"
        )


@dataclass(frozen=True)
class _Leaf:
    oid: int
    schema: str
    name: str
    replident: str
    identity: tuple[str, ...] | None  # identity index key columns; None: no usable index
    has_pk: bool


@dataclass(frozen=True)
class _Entry:
    """A pg_publication_rel row: its column list and the columns its filter uses."""

    columns: tuple[str, ...] | None
    filter_columns: tuple[str, ...] | None


def _leaves(conn: Conn, oids: Sequence[int]) -> list[_Leaf]:
    found = rows(
        conn,
        """
        SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relreplident::text,
               CASE WHEN idx.indexrelid IS NULL THEN NULL ELSE ARRAY(
                   SELECT a.attname::text
                   FROM generate_series(0, idx.indnkeyatts - 1) AS k
                   JOIN pg_catalog.pg_attribute a
                     ON a.attrelid = c.oid AND a.attnum = idx.indkey[k]
                   ORDER BY k) END,
               EXISTS (SELECT 1 FROM pg_catalog.pg_index p
                       WHERE p.indrelid = c.oid AND p.indisprimary)
        FROM unnest(%s::oid[]) AS l(relid)
        JOIN pg_catalog.pg_class c ON c.oid = l.relid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        -- The identity index as the relation cache picks it (RelationGetIndexList).
        LEFT JOIN LATERAL (
            SELECT i.indexrelid, i.indkey, i.indnkeyatts FROM pg_catalog.pg_index i
            WHERE i.indrelid = c.oid AND i.indisvalid AND i.indisunique
              AND i.indimmediate AND i.indpred IS NULL
              AND ((c.relreplident = 'd' AND i.indisprimary)
                   OR (c.relreplident = 'i' AND i.indisreplident))
            LIMIT 1
        ) idx ON true
        ORDER BY n.nspname, c.relname
        """,
        (list(oids),),
    )
    return [
        _Leaf(oid, schema, name, replident, None if ident is None else tuple(ident), has_pk)
        for oid, schema, name, replident, ident, has_pk in found
    ]


def _entries(conn: Conn, pubid: int) -> dict[int, _Entry]:
    # The row filter is stored as a node tree whose Vars all belong to the table
    # (row filters cannot reference anything else); ":varattno N" is how each
    # column reference is written out. A whole-row reference (0) has no name and
    # shows as "*", which is never an identity column, as the server judges it.
    found = rows(
        conn,
        r"""
        SELECT pr.prrelid::int8,
               CASE WHEN pr.prattrs IS NULL THEN NULL ELSE ARRAY(
                   SELECT a.attname::text FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs)
                   ORDER BY a.attnum) END,
               CASE WHEN pr.prqual IS NULL THEN NULL ELSE ARRAY(
                   SELECT DISTINCT COALESCE(a.attname::text, '*')
                   FROM regexp_matches(pr.prqual::text, ':varattno (-?[0-9]+)', 'g') AS m
                   LEFT JOIN pg_catalog.pg_attribute a
                     ON a.attrelid = pr.prrelid AND a.attnum = m[1]::int2
                   ORDER BY 1) END
        FROM pg_catalog.pg_publication_rel pr
        WHERE pr.prpubid = %s
        """,
        (pubid,),
    )
    return {
        relid: _Entry(None if cols is None else tuple(cols), None if used is None else tuple(used))
        for relid, cols, used in found
    }


def _source_relations(
    conn: Conn, pubid: int, leaves: Sequence[_Leaf], via_root: bool, entries: dict[int, _Entry]
) -> dict[int, int]:
    """For each leaf, the relation whose column list and row filter apply to it:
    with publish_via_partition_root its topmost ancestor in the publication
    (GetTopMostAncestorInPublication), else the leaf itself."""
    sources = {leaf.oid: leaf.oid for leaf in leaves}
    if not via_root or not leaves:
        return sources
    schemas = {
        r[0]
        for r in rows(
            conn,
            "SELECT pnnspid::int8 FROM pg_catalog.pg_publication_namespace WHERE pnpubid = %s",
            (pubid,),
        )
    }
    ancestry = rows(
        conn,
        """
        SELECT l.relid::int8, a.relid::int8, c.relnamespace::int8
        FROM unnest(%s::oid[]) AS l(relid)
        CROSS JOIN LATERAL pg_catalog.pg_partition_ancestors(l.relid)
            WITH ORDINALITY AS a(relid, ord)
        JOIN pg_catalog.pg_class c ON c.oid = a.relid
        WHERE a.relid <> l.relid
        ORDER BY l.relid, a.ord
        """,
        ([leaf.oid for leaf in leaves],),
    )
    for leaf_oid, ancestor, namespace in ancestry:  # parent first, root last
        if ancestor in entries or namespace in schemas:
            sources[leaf_oid] = ancestor
    return sources


def _actions(update: bool, delete: bool) -> tuple[str, ...]:
    return tuple(a for a, on in (("UPDATE", update), ("DELETE", delete)) if on)


def identity_issues(
    conn: Conn, publication: str, only: set[int] | None = None
) -> list[IdentityIssue]:
    """The tables of ``publication`` (or of those in ``only``, leaf oids) on which
    UPDATE or DELETE will fail on the publisher; see the module docstring."""
    pub = rows(
        conn,
        """
        SELECT oid::int8, puballtables, pubupdate, pubdelete, pubviaroot
        FROM pg_catalog.pg_publication WHERE pubname = %s
        """,
        (publication,),
    )
    if not pub:
        return []
    pubid, all_tables, update, delete, via_root = pub[0]
    actions = _actions(update, delete)
    if not actions:
        return []  # INSERT and TRUNCATE need no replica identity
    candidates = published_leaves(conn, publication)
    if only is not None:
        candidates &= only
    leaves = _leaves(conn, sorted(candidates))
    # FOR ALL TABLES has no column lists or row filters; before 15 nothing has.
    filters = server_major(conn) >= FILTERS_MAJOR and not all_tables
    entries = _entries(conn, pubid) if filters else {}
    sources = _source_relations(conn, pubid, leaves, via_root, entries) if filters else {}

    issues: list[IdentityIssue] = []
    for leaf in leaves:

        def issue(problem: str, fix: str, leaf: _Leaf = leaf) -> None:
            issues.append(IdentityIssue(leaf.schema, leaf.name, publication, actions, problem, fix))

        table = printable(f"{bare_or_quoted(leaf.schema)}.{bare_or_quoted(leaf.name)}")
        full = leaf.replident == "f"
        identity = set(leaf.identity or ())
        entry = entries.get(sources.get(leaf.oid, leaf.oid))
        # The order of PostgreSQL's own checks: row filter, column list, identity.
        if entry is not None and entry.filter_columns is not None and not full:
            outside = [c for c in entry.filter_columns if c not in identity]
            if outside:
                issue(
                    "has a row filter on column(s) "
                    + ", ".join(printable(bare_or_quoted(c)) for c in outside)
                    + " outside its replica identity",
                    "filter on replica identity columns only, or "
                    f"ALTER TABLE {table} REPLICA IDENTITY FULL",
                )
        if entry is not None and entry.columns is not None:
            if full:
                issue(
                    "has a column list but REPLICA IDENTITY FULL (FULL needs every column)",
                    "drop the column list, or give the table a primary key and "
                    f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT",
                )
            else:
                uncovered = [c for c in leaf.identity or () if c not in entry.columns]
                if uncovered:
                    issue(
                        "has a column list without its replica identity column(s) "
                        + ", ".join(printable(bare_or_quoted(c)) for c in uncovered),
                        "add them to the column list",
                    )
        if full or leaf.identity is not None:
            continue
        if leaf.replident == "n":
            issue(
                "has REPLICA IDENTITY NOTHING",
                f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT (with a primary key), "
                "USING INDEX (a unique index on NOT NULL columns) or FULL",
            )
        elif leaf.replident == "i":
            issue(
                "has REPLICA IDENTITY USING INDEX but that index is gone or unusable",
                f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX (a valid unique index "
                "on NOT NULL columns), DEFAULT (with a primary key) or FULL",
            )
        else:
            problem = (
                "has a deferrable or invalid primary key, unusable as REPLICA IDENTITY DEFAULT"
                if leaf.has_pk
                else "has no primary key (REPLICA IDENTITY DEFAULT)"
            )
            issue(
                problem,
                "add a primary key, or "
                f"ALTER TABLE {table} REPLICA IDENTITY FULL / USING INDEX "
                "(a unique index on NOT NULL columns)",
            )
    return issues
