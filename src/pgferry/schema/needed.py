"""Which of the publisher's objects the published tables need.

Read on the publisher in a few set-based queries (in the dump's snapshot):

* the **tables**: the published ones, the partitioned tables above them and every
  partition below a partitioned one (a partitioned table keeps its partitions);
* their **members**: column defaults, constraints, indexes, triggers, rules,
  policies and owned (serial, identity) sequences. A foreign key to a table the
  subscription does not have is left out, and said so;
* what those depend on, followed through ``pg_depend``: schemas, types (with a
  domain's constraints and a composite type's attributes), functions, collations,
  sequences used by defaults, and extensions (whose members ``pg_dump`` does not
  dump: the extension stands for them). Built-in objects are not followed.

Each object is known by its ``(catalog, OID)``, which is how ``pg_dump``'s table of
contents names it; entries about another object (a comment, a grant, a
partition's attachment) are matched by the text ``pg_restore --list`` shows for
them (:attr:`Needed.keyed`). :attr:`Needed.holder` tells, for each table and
member, the published table whose copy it follows (None: it waits until every
table is ready).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]
#: ``(catalog OID, object OID)``.
ObjectId = tuple[int, int]

PG_CLASS = 1259
PG_TYPE = 1247
PG_PROC = 1255
PG_NAMESPACE = 2615
PG_CONSTRAINT = 2606
PG_EXTENSION = 3079
PG_COLLATION = 3456

_TABLES = """
WITH RECURSIVE published(oid) AS (
    SELECT c.oid FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS t(s, n)
    JOIN pg_catalog.pg_namespace ns ON ns.nspname = t.s
    JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n
), up(oid) AS (
    SELECT oid FROM published
    UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid
    JOIN pg_catalog.pg_class p ON p.oid = i.inhparent AND p.relkind = 'p'
), down(oid) AS (
    SELECT oid FROM up
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN down ON i.inhparent = down.oid
    JOIN pg_catalog.pg_class p ON p.oid = i.inhparent AND p.relkind = 'p'
)
SELECT c.oid::int8, n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner),
       c.oid IN (SELECT oid FROM published),
       (SELECT i.inhparent::int8 FROM pg_catalog.pg_inherits i
        WHERE i.inhrelid = c.oid AND c.relispartition)
FROM down JOIN pg_catalog.pg_class c ON c.oid = down.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
"""

# (catalog, oid, table, name, detail): detail is a foreign key's referenced table.
_MEMBERS = """
SELECT 'pg_catalog.pg_attrdef'::regclass::int8, oid::int8, adrelid::int8, '', NULL::int8
FROM pg_catalog.pg_attrdef WHERE adrelid = ANY(%(tables)s::oid[])
UNION ALL
SELECT 'pg_catalog.pg_constraint'::regclass::int8, oid::int8, conrelid::int8, conname,
       CASE WHEN contype = 'f' THEN confrelid::int8 END
FROM pg_catalog.pg_constraint WHERE conrelid = ANY(%(tables)s::oid[])
UNION ALL
SELECT 'pg_catalog.pg_class'::regclass::int8, x.indexrelid::int8, x.indrelid::int8, c.relname, NULL
FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
WHERE x.indrelid = ANY(%(tables)s::oid[])
UNION ALL
SELECT 'pg_catalog.pg_trigger'::regclass::int8, oid::int8, tgrelid::int8, tgname, NULL
FROM pg_catalog.pg_trigger WHERE tgrelid = ANY(%(tables)s::oid[]) AND NOT tgisinternal
UNION ALL
SELECT 'pg_catalog.pg_rewrite'::regclass::int8, oid::int8, ev_class::int8, rulename, NULL
FROM pg_catalog.pg_rewrite WHERE ev_class = ANY(%(tables)s::oid[])
UNION ALL
SELECT 'pg_catalog.pg_policy'::regclass::int8, oid::int8, polrelid::int8, polname, NULL
FROM pg_catalog.pg_policy WHERE polrelid = ANY(%(tables)s::oid[])
UNION ALL
SELECT 'pg_catalog.pg_class'::regclass::int8, d.objid::int8, d.refobjid::int8, s.relname, NULL
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid = ANY(%(tables)s::oid[]) AND d.deptype IN ('a', 'i')
"""

# Followed from the tables and members: what they depend on, of the kinds that
# pg_dump dumps as objects of their own (built-in objects, below 16384, left out).
_DEPENDENCIES = """
WITH RECURSIVE edge(classid, objid, refclassid, refobjid) AS (
    SELECT classid, objid, refclassid, refobjid FROM pg_catalog.pg_depend
    WHERE refobjid >= 16384 AND deptype IN ('n', 'a', 'i', 'e')
    UNION ALL
    SELECT 'pg_catalog.pg_type'::regclass, contypid, 'pg_catalog.pg_constraint'::regclass, oid
    FROM pg_catalog.pg_constraint WHERE contypid <> 0
    UNION ALL
    SELECT 'pg_catalog.pg_type'::regclass, t.oid, 'pg_catalog.pg_class'::regclass, t.typrelid
    FROM pg_catalog.pg_type t WHERE t.typtype = 'c' AND t.typrelid <> 0
), needed(classid, objid) AS (
    SELECT * FROM unnest(%(classes)s::oid[], %(objects)s::oid[])
    UNION
    SELECT e.refclassid, e.refobjid FROM edge e JOIN needed ON
        e.classid = needed.classid AND e.objid = needed.objid
    WHERE e.refclassid IN ('pg_catalog.pg_type'::regclass, 'pg_catalog.pg_proc'::regclass,
        'pg_catalog.pg_collation'::regclass, 'pg_catalog.pg_namespace'::regclass,
        'pg_catalog.pg_extension'::regclass, 'pg_catalog.pg_constraint'::regclass)
       OR (e.refclassid = 'pg_catalog.pg_class'::regclass AND EXISTS (
           SELECT FROM pg_catalog.pg_class r WHERE r.oid = e.refobjid AND r.relkind IN ('S', 'c')))
)
SELECT n.classid::int8, n.objid::int8,
       CASE n.classid
         WHEN 'pg_catalog.pg_namespace'::regclass THEN
           (SELECT '-' || E'\\t' || nspname || E'\\t' || pg_catalog.pg_get_userbyid(nspowner)
            FROM pg_catalog.pg_namespace WHERE oid = n.objid)
         WHEN 'pg_catalog.pg_extension'::regclass THEN
           (SELECT '-' || E'\\t' || extname || E'\\t' || pg_catalog.pg_get_userbyid(extowner)
            FROM pg_catalog.pg_extension WHERE oid = n.objid)
         WHEN 'pg_catalog.pg_type'::regclass THEN
           (SELECT s.nspname || E'\\t' || t.typname || E'\\t'
                   || pg_catalog.pg_get_userbyid(t.typowner) || E'\\t'
                   || CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END
            FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace s ON s.oid = t.typnamespace
            WHERE t.oid = n.objid)
         WHEN 'pg_catalog.pg_proc'::regclass THEN
           (SELECT s.nspname || E'\\t' || p.proname || '('
                   || pg_catalog.oidvectortypes(p.proargtypes) || ')' || E'\\t'
                   || pg_catalog.pg_get_userbyid(p.proowner) || E'\\t'
                   || CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
                      ELSE 'FUNCTION' END
            FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace s ON s.oid = p.pronamespace
            WHERE p.oid = n.objid)
         WHEN 'pg_catalog.pg_class'::regclass THEN
           (SELECT s.nspname || E'\\t' || c.relname || E'\\t'
                   || pg_catalog.pg_get_userbyid(c.relowner) || E'\\t'
                   || CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TYPE' END
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
            WHERE c.oid = n.objid)
         WHEN 'pg_catalog.pg_collation'::regclass THEN
           (SELECT s.nspname || E'\\t' || c.collname || E'\\t'
                   || pg_catalog.pg_get_userbyid(c.collowner) || E'\\tCOLLATION'
            FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace s
            ON s.oid = c.collnamespace WHERE c.oid = n.objid)
       END,
       EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = n.classid
               AND d.objid = n.objid AND d.deptype = 'e')
FROM needed n
"""


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    owner: str
    published: bool
    parent: int | None


@dataclass(frozen=True)
class Named:
    """A needed object other than a table: ``kind`` as pg_dump's tags say it."""

    kind: str
    schema: str
    name: str
    owner: str


@dataclass
class Needed:
    """What the published tables need (see the module docstring)."""

    tables: dict[int, Table] = field(default_factory=dict)
    #: Every needed object, tables and members included.
    objects: set[ObjectId] = field(default_factory=set)
    #: Non-table objects by id (schemas, types, functions, sequences...).
    named: dict[ObjectId, Named] = field(default_factory=dict)
    #: Table OID of each member.
    member_of: dict[ObjectId, int] = field(default_factory=dict)
    #: ``pg_restore --list`` text of entries about another object -> that
    #: object's table (None when it belongs to no table).
    keyed: dict[str, int | None] = field(default_factory=dict)
    #: Foreign keys left out: (table, constraint, referenced table).
    dropped_foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)

    def holder(self, table_oid: int | None) -> Table | None:
        """The published table whose copy the table's objects follow: itself, or
        the published partitioned table above it; None: none (they wait until
        every table is ready)."""
        seen = 0
        while table_oid is not None and seen < 100:
            table = self.tables.get(table_oid)
            if table is None:
                return None
            if table.published:
                return table
            table_oid = table.parent
            seen += 1
        return None


def find(conn: Conn, published: Sequence[tuple[str, str]]) -> Needed:
    """The objects ``published`` (schema, name) tables need, read on ``conn``."""
    needed = Needed()
    rows = conn.execute(
        _TABLES,
        {"schemas": [s for s, _ in published], "names": [n for _, n in published]},
    ).fetchall()
    for oid, schema, name, owner, is_published, parent in rows:
        needed.tables[int(oid)] = Table(
            int(oid),
            schema,
            name,
            owner,
            bool(is_published),
            None if parent is None else int(parent),
        )
    oids = list(needed.tables)
    start: set[ObjectId] = {(PG_CLASS, oid) for oid in oids}
    index_names: dict[int, str] = {}
    for catalog, oid, table, name, referenced in conn.execute(
        _MEMBERS, {"tables": oids}
    ).fetchall():
        if referenced is not None and int(referenced) not in needed.tables:
            owner = needed.tables[int(table)]
            target = conn.execute("SELECT %s::oid::regclass::text", (int(referenced),)).fetchone()
            needed.dropped_foreign_keys.append(
                (f"{owner.schema}.{owner.name}", name, str(target[0]) if target else "?")
            )
            continue
        start.add((int(catalog), int(oid)))
        needed.member_of[(int(catalog), int(oid))] = int(table)
        if int(catalog) == PG_CLASS and name:
            index_names[int(oid)] = name
    classes = [c for c, _ in start]
    objects = [o for _, o in start]
    for catalog, oid, described, member in conn.execute(
        _DEPENDENCIES, {"classes": classes, "objects": objects}
    ).fetchall():
        key = (int(catalog), int(oid))
        if member:
            continue  # an extension's member: pg_dump dumps the extension instead
        needed.objects.add(key)
        if (
            described is not None
            and key not in needed.member_of
            and not (key[0] == PG_CLASS and key[1] in needed.tables)
        ):
            parts = str(described).split("\t")
            kind = {PG_NAMESPACE: "SCHEMA", PG_EXTENSION: "EXTENSION"}.get(key[0])
            needed.named[key] = Named(kind or parts[3], parts[0], parts[1], parts[2])
    needed.objects |= start
    _key_entries(needed, index_names)
    return needed


def _key_entries(needed: Needed, index_names: dict[int, str]) -> None:
    """The ``--list`` texts of comments, grants and attachments of needed objects."""

    def about(kind: str, schema: str, tag: str, owner: str, table: int | None) -> None:
        for desc in ("COMMENT", "ACL", "SECURITY LABEL"):
            needed.keyed[f"{desc} {schema} {kind} {tag} {owner}"] = table

    for table in needed.tables.values():
        about("TABLE", table.schema, table.name, table.owner, table.oid)
        needed.keyed[f"TABLE ATTACH {table.schema} {table.name} {table.owner}"] = None
        needed.keyed[f"ROW SECURITY {table.schema} {table.name} {table.owner}"] = table.oid
    for (catalog, oid), table_oid in needed.member_of.items():
        if catalog == PG_CLASS and oid in index_names:
            table = needed.tables[table_oid]
            name = index_names[oid]
            needed.keyed[f"INDEX ATTACH {table.schema} {name} {table.owner}"] = None
            needed.keyed[f"SEQUENCE OWNED BY {table.schema} {name} {table.owner}"] = table_oid
            about("INDEX", table.schema, name, table.owner, table_oid)
            about("SEQUENCE", table.schema, name, table.owner, table_oid)
    for named in needed.named.values():
        schema = "-" if named.kind in ("SCHEMA", "EXTENSION") else named.schema
        # (A sequence owned by a table the subscription does not have is created
        # without its OWNED BY: that table is not there.)
        about(named.kind, schema, named.name, named.owner, None)


def column_comment_table(needed: Needed, text: str) -> int | bool | None:
    """For a comment on a column (``COMMENT s COLUMN t.c owner``): its table's OID
    (or None); False when ``text`` is not about a needed table's column."""
    for table in needed.tables.values():
        prefix = f"COMMENT {table.schema} COLUMN {table.name}."
        if text.startswith(prefix) and text.endswith(f" {table.owner}"):
            return table.oid
        prefix = f"COMMENT {table.schema} CONSTRAINT "
        if text.startswith(prefix) and text.endswith(f" ON {table.name} {table.owner}"):
            return table.oid
        prefix = f"COMMENT {table.schema} TRIGGER "
        if text.startswith(prefix) and text.endswith(f" ON {table.name} {table.owner}"):
            return table.oid
    return False
