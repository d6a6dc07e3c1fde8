"""Creating on the subscriber what the published tables need, from a publisher dump.

:func:`plan` reads the dump's entries (:mod:`.dump`) and keeps those the
subscription needs (:mod:`.needed`; with ``copy_schema=all`` every entry but
pgferry's own schema), less the objects that already exist on the subscriber:
an existing table is left alone (with its indexes and constraints) when its
columns match the publisher's, and is an error listing the differences
otherwise; other existing objects (schemas, types, functions, sequences,
extensions) are left alone.

:func:`create_before_data` runs the part before the data (schemas, types,
functions, sequences, tables, defaults) in the caller's transaction, one
savepoint per object: nothing is created half way. An object whose ownership
cannot be given (the role is missing, or the subscriber's role may not) is
created without it; a comment, grant, security label or extension that fails,
and any object named in ``schema_skip``, is left out. Each of those is reported,
named as ``schema_skip`` takes it; any other failure aborts the whole copy,
naming the object and what was left out before it (an extension the
subscriber lacks shows there, when an object needs it).

The part after the data becomes steps in ``pgferry.schema_step``
(:func:`store_steps`), so that a table's indexes are built once, after its copy,
rather than maintained row by row during it:

(:mod:`.steps` runs them):

* phase 1, after the table's copy, in parallel sessions: its indexes; a primary
  key or unique constraint is built as a unique index first;
* phase 2, then, in order: those constraints added ``USING INDEX``, the other
  constraints, triggers, rules and policies (the replica-identity index exists
  before the table's catch-up needs it);
* phase 3, once every table is ready: what spans tables (foreign keys, added
  ``NOT VALID``; partitioned indexes and their attachments);
* phase 4: ``VALIDATE CONSTRAINT`` of those foreign keys (a lock that does not
  stop the apply worker).

Each step is deleted in the transaction that runs it, so a crash resumes with
the first step not done.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog.steps import (
    PHASE_FINAL,
    PHASE_INDEX,
    PHASE_TABLE,
    PHASE_VALIDATE,
    Step,
    TableName,
    store_steps,
)
from pgferry.schema import needed
from pgferry.schema.dump import Chunk, Dump, DumpTools, Entry, SchemaCopyError
from pgferry.schema.needed import PG_CLASS, PG_CONSTRAINT, Needed, column_comment_table
from pgferry.sqltext import ident, qualified, quote_literal

logger = logging.getLogger("pgferry.schema")

Conn = psycopg.Connection[Any]

#: Longest wait for a lock of each schema statement on the subscriber.
LOCK_TIMEOUT = "30s"


# "DESC SCHEMA ...": an entry of schema pgferry (DESC is upper-case words).
_IN_PGFERRY = re.compile(r"^[A-Z][A-Z ]*? pgferry ")

# Entries that may fail without failing the copy (reported, left out; an object
# that needs a missing extension fails in its turn, naming it).
_OPTIONAL = ("COMMENT ", "ACL ", "SECURITY LABEL ", "DEFAULT ACL ", "EXTENSION ")
# Errors of an ownership statement: no such role, or not allowed to give it.
_OWNER_ERRORS = ("42704", "42501")

# Each post-data constraint, as the steps rebuild it.
_CONSTRAINTS = """
SELECT c.oid::int8, c.contype, c.conname, t.relkind, n.nspname, t.relname,
       pg_catalog.pg_get_constraintdef(c.oid), c.condeferrable, c.condeferred,
       c.convalidated, i.relname, pg_catalog.pg_get_indexdef(c.conindid)
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_catalog.pg_class i ON i.oid = c.conindid
WHERE c.oid = ANY(%s::oid[])
"""


@dataclass
class Plan:
    """What the schema copy creates (see the module docstring)."""

    before: list[Chunk] = field(default_factory=list)
    #: The same entries without ownership statements, by dump id.
    unowned: dict[int, Chunk] = field(default_factory=dict)
    after: list[Step] = field(default_factory=list)
    #: Objects that exist on the subscriber already, left alone.
    existing: list[str] = field(default_factory=list)
    #: Published tables that exist already (their data is still copied).
    existing_tables: list[TableName] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What :func:`create_before_data` did, object by object."""

    created: int = 0
    existing: list[str] = field(default_factory=list)
    #: Objects left out or created without their owner, each with the reason.
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"schema copy: left out {p}" for p in self.problems]
        out += [f"schema copy: skipped {s} (schema_skip)" for s in self.skipped]
        out += [f"schema copy: {n}" for n in self.notes]
        return out


# -- choosing the entries ------------------------------------------------------------


def _is_pgferry(entry: Entry) -> bool:
    """Whether the entry is pgferry's own catalog schema or in it."""
    text = entry.text
    return bool(
        _IN_PGFERRY.match(text)
        or text.startswith("SCHEMA - pgferry ")
        or " SCHEMA pgferry " in text
    )


def _table_of(entry: Entry, needed: Needed) -> int | bool | None:
    """The table an entry belongs to (None: to none); False: not needed."""
    if entry.catalog:
        key = (entry.catalog, entry.oid)
        if key in needed.member_of:
            return needed.member_of[key]
        if entry.catalog == PG_CLASS and entry.oid in needed.tables:
            return entry.oid
        return None if key in needed.objects else False
    if entry.text in needed.keyed:
        return needed.keyed[entry.text]
    return column_comment_table(needed, entry.text)


def _select(
    entries: Iterable[Entry], needed: Needed, everything: bool
) -> list[tuple[Entry, int | None]]:
    chosen = []
    for entry in entries:
        table = _table_of(entry, needed)
        if table is False:
            if not everything or _is_pgferry(entry):
                continue
            table = None
        assert table is not True
        chosen.append((entry, table))
    return chosen


# -- what exists on the subscriber -----------------------------------------------------

_EXISTING = """
SELECT k, CASE t.kind
  WHEN 'SCHEMA' THEN EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = t.name)
  WHEN 'EXTENSION' THEN EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = t.name)
  WHEN 'TYPE' THEN pg_catalog.to_regtype(pg_catalog.quote_ident(t.schema) || '.'
                                          || pg_catalog.quote_ident(t.name)) IS NOT NULL
  WHEN 'DOMAIN' THEN pg_catalog.to_regtype(pg_catalog.quote_ident(t.schema) || '.'
                                            || pg_catalog.quote_ident(t.name)) IS NOT NULL
  WHEN 'COLLATION' THEN pg_catalog.to_regcollation(pg_catalog.quote_ident(t.schema) || '.'
                                                  || pg_catalog.quote_ident(t.name)) IS NOT NULL
  WHEN 'FUNCTION' THEN EXISTS (SELECT FROM pg_catalog.pg_proc p
       JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = t.schema
       AND p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')' = t.name)
  ELSE EXISTS (SELECT FROM pg_catalog.pg_class c
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = t.schema AND c.relname = t.name)
END
FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[]) AS t(k, kind, schema, name)
"""


def _existing(local: Conn, objects: Sequence[tuple[str, str, str]]) -> set[int]:
    """Indexes of ``objects`` ((kind, schema, name)) that exist on the subscriber."""
    if not objects:
        return set()
    rows = local.execute(
        _EXISTING,
        (
            list(range(len(objects))),
            [o[0] for o in objects],
            [o[1] for o in objects],
            [o[2] for o in objects],
        ),
    ).fetchall()
    return {int(k) for k, found in rows if found}


# -- the plan ------------------------------------------------------------------------


def plan(
    dump: Dump,
    needed: Needed,
    remote: Conn,
    local: Conn,
    *,
    everything: bool = False,
    compare: Callable[[Sequence[TableName]], dict[TableName, list[str]]] | None = None,
) -> Plan:
    """What to create (see the module docstring); ``compare`` gives the column
    differences of existing tables (an error lists them)."""
    result = Plan()
    result.notes += [
        f"foreign key {name} of {table} left out: it references {target}, which the"
        " subscription does not have"
        for table, name, target in needed.dropped_foreign_keys
    ]
    # Which needed tables and objects exist on the subscriber already.
    tables = list(needed.tables.values())
    named = list(needed.named.items())
    probes = [("TABLE", t.schema, t.name) for t in tables]
    probes += [(n.kind if n.kind != "PROCEDURE" and n.kind != "AGGREGATE" else "FUNCTION",
                n.schema, n.name) for _, n in named]  # fmt: skip
    found = _existing(local, probes)
    existing_tables = {tables[i].oid for i in found if i < len(tables)}
    existing_named = {named[i - len(tables)][0] for i in found if i >= len(tables)}
    result.existing_tables = [
        (t.schema, t.name) for t in tables if t.oid in existing_tables and t.published
    ]
    if compare is not None and result.existing_tables:
        differences = compare(result.existing_tables)
        if any(differences.values()):
            listed = "; ".join(
                f"{qualified(*table)}: {', '.join(found_)}"
                for table, found_ in differences.items()
                if found_
            )
            raise SchemaCopyError(
                f"tables exist on the subscriber with a different definition: {listed}",
                hint="make them match the publisher's (pgferry schema diff shows how), or drop"
                " them so that the schema copy creates them",
            )
    result.existing += [
        f"TABLE {qualified(t.schema, t.name)}" for t in tables if t.oid in existing_tables
    ]
    result.existing += [
        f"{named_.kind} {named_.schema} {named_.name}"
        for key, named_ in named
        if key in existing_named
    ]

    def keep(entry: Entry, table: int | None) -> bool:
        if table is not None and table in existing_tables:
            return False
        return (entry.catalog, entry.oid) not in existing_named

    before = [
        (e, t) for e, t in _select(dump.entries("pre-data"), needed, everything) if keep(e, t)
    ]
    owned = dump.chunks(e for e, _ in before)
    result.unowned = dump.chunks((e for e, _ in before), owners=False)
    result.before = [owned[e.dump_id] for e, _ in before if e.dump_id in owned]
    after = [
        (e, t) for e, t in _select(dump.entries("post-data"), needed, everything) if keep(e, t)
    ]
    result.after = _steps(after, dump.chunks(e for e, _ in after), needed, remote)
    return result


def _steps(
    entries: list[tuple[Entry, int | None]], chunks: dict[int, Chunk], needed: Needed, remote: Conn
) -> list[Step]:
    constraint_oids = [e.oid for e, _ in entries if e.catalog == PG_CONSTRAINT]
    remote.execute("SELECT pg_catalog.set_config('search_path', '', true)")
    constraints = {
        int(row[0]): row for row in remote.execute(_CONSTRAINTS, (constraint_oids,)).fetchall()
    }
    steps: list[Step] = []
    for entry, table_oid in entries:
        chunk = chunks.get(entry.dump_id)
        if chunk is None:
            continue
        holder = needed.holder(table_oid)
        table = (holder.schema, holder.name) if holder is not None else None
        row = constraints.get(entry.oid) if entry.catalog == PG_CONSTRAINT else None
        if row is not None:
            steps += _constraint_steps(chunk, table, row)
        elif table is None:
            steps.append(Step(None, PHASE_FINAL, chunk.object, chunk.sql))
        elif entry.catalog == PG_CLASS and chunk.object.startswith("INDEX "):
            steps.append(Step(table, PHASE_INDEX, chunk.object, chunk.sql))
        else:
            steps.append(Step(table, PHASE_TABLE, chunk.object, chunk.sql))
    return steps


def _constraint_steps(chunk: Chunk, table: TableName | None, row: tuple[Any, ...]) -> list[Step]:
    _, contype, name, relkind, schema, relname, definition, deferrable, deferred, valid = row[:10]
    index_name, index_def = row[10], row[11]
    target = f"ALTER TABLE ONLY {qualified(schema, relname)}"
    if contype == "f":
        if relkind == "p" or not valid:
            return [Step(None, PHASE_FINAL, chunk.object, chunk.sql)]
        return [
            Step(None, PHASE_FINAL, chunk.object,
                 f"{target} ADD CONSTRAINT {ident(name)} {definition} NOT VALID;"),
            Step(None, PHASE_VALIDATE, chunk.object,
                 f"{target} VALIDATE CONSTRAINT {ident(name)};"),
        ]  # fmt: skip
    if table is None:
        return [Step(None, PHASE_FINAL, chunk.object, chunk.sql)]
    if contype in ("p", "u") and relkind == "r" and index_def and index_name:
        kind = "PRIMARY KEY" if contype == "p" else "UNIQUE"
        timing = (" DEFERRABLE" + (" INITIALLY DEFERRED" if deferred else "")) if deferrable else ""
        return [
            Step(table, PHASE_INDEX, chunk.object, f"{index_def};"),
            Step(table, PHASE_TABLE, chunk.object,
                 f"{target} ADD CONSTRAINT {ident(name)} {kind} USING INDEX"
                 f" {ident(index_name)}{timing};"),
        ]  # fmt: skip
    return [Step(table, PHASE_TABLE, chunk.object, chunk.sql)]


# -- before the data -----------------------------------------------------------------


def prepare_session(conn: Conn) -> None:
    """The settings pg_dump's scripts expect (names are always qualified)."""
    conn.execute(
        "SELECT pg_catalog.set_config('search_path', '', false),"
        " pg_catalog.set_config('check_function_bodies', 'false', false),"
        " pg_catalog.set_config('client_min_messages', 'warning', false),"
        f" pg_catalog.set_config('lock_timeout', '{LOCK_TIMEOUT}', false)"
    )


def create_before_data(local: Conn, subscription: str, copy: Plan, skip: Iterable[str]) -> Report:
    """Run the plan's part before the data in ``local``'s open transaction."""
    report = Report(existing=list(copy.existing), notes=list(copy.notes))
    skipped = {s.strip() for s in skip if s.strip()}
    local.execute("SELECT pg_catalog.set_config('search_path', '', true)")
    local.execute("SELECT pg_catalog.set_config('check_function_bodies', 'false', true)")
    local.execute(f"SELECT pg_catalog.set_config('lock_timeout', '{LOCK_TIMEOUT}', true)")
    for chunk in copy.before:
        if chunk.object in skipped:
            report.skipped.append(chunk.object)
            continue
        error = _try(local, chunk.sql)
        if error is None:
            report.created += 1
            continue
        unowned = copy.unowned.get(chunk.dump_id)
        if (
            error.sqlstate in _OWNER_ERRORS
            and unowned is not None
            and unowned.sql != chunk.sql
            and _try(local, unowned.sql) is None
        ):
            report.created += 1
            report.problems.append(f"the owner of {chunk.object} ({chunk.owner}): {_reason(error)}")
            continue
        if chunk.object.startswith(_OPTIONAL):
            report.problems.append(f"{chunk.object}: {_reason(error)}")
            continue
        earlier = f" (earlier: {'; '.join(report.problems)})" if report.problems else ""
        raise SchemaCopyError(
            f"subscription {subscription!r}: schema copy: cannot create {chunk.object}:"
            f" {_reason(error)}{earlier}",
            hint="nothing was created; create it on the subscriber yourself, or leave it out"
            f" with --with schema_skip='{chunk.object}' (objects that need it fail then)",
        )
    return report


def _try(local: Conn, statement: str) -> psycopg.Error | None:
    try:
        with local.transaction():
            local.execute(statement.encode())
    except psycopg.Error as exc:
        return exc
    return None


def _reason(error: psycopg.Error) -> str:
    return " ".join((error.diag.message_primary or str(error)).split())


# -- from the subscription's side ----------------------------------------------------


def prepare(
    tools: DumpTools,
    conninfo: str,
    local: Conn,
    tables: Sequence[TableName],
    *,
    everything: bool,
    snapshot: str | None = None,
    compare: Callable[[Sequence[TableName]], dict[TableName, list[str]]] | None = None,
) -> Plan:
    """Dump the publisher's schema (in ``snapshot``, if given) and plan the copy
    of what ``tables`` need; nothing is created yet."""
    with tempfile.TemporaryDirectory(prefix="pgferry-schema-") as directory:
        dump = Dump.take(tools, conninfo, Path(directory), snapshot=snapshot)
        with connect.session(
            conninfo, side="publisher", application_name="pgferry schema copy"
        ) as remote:
            remote.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot is not None:
                remote.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot)}")
            try:
                found = needed.find(remote, tables)
                return plan(dump, found, remote, local, everything=everything, compare=compare)
            finally:
                remote.execute("ROLLBACK")


def create(local: Conn, subscription: str, copy: Plan, skip: str) -> Report:
    """In ``local``'s open transaction: the part before the data, and the steps
    after it stored for the workers."""
    report = create_before_data(local, subscription, copy, skip.split(";"))
    store_steps(local, subscription, copy.after)
    return report
