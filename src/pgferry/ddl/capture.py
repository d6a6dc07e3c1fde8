"""DDL capture on the publisher: a published queue table filled by event triggers.

Contract:

* :func:`install` creates (or brings up to date) schema ``pgferry_ddl`` in the
  publisher database: the queue table ``pgferry_ddl.queue``, the table of
  publications that asked for DDL (``pgferry_ddl.publication``) and two event
  triggers (``ddl_command_end``, ``sql_drop``). Everything is idempotent and
  works on PostgreSQL 13 to 18; event triggers need a superuser.
* :func:`enable` / :func:`disable` (``publication create --ddl``,
  ``publication alter NAME --ddl on|off``) add the queue table to the
  publication and record it in ``pgferry_ddl.publication``, or undo both. The
  queue's inserts then travel in the same transaction as the row changes around
  them and in WAL order, on every major (pgoutput before 14 has no logical
  messages); a ``FOR ALL TABLES`` publication has the queue already.
* A queue row is one DDL statement (one ``current_query()`` and statement
  start: a statement that runs several commands, a ``DO`` block, a function,
  is one row holding the whole text; see :mod:`.classify`), with the command tag,
  the ``search_path`` and role it ran under, the session's settings that change
  what it computes (:data:`~.classify.SETTINGS`: ``TimeZone``, ``DateStyle``,
  ``IntervalStyle``, ``extra_float_digits``, as JSON), the objects it touched (type,
  identity, schema, the published table each belongs to, and the DDL
  publications that concern it) and the publications it is for. Only statements
  touching a DDL publication's objects are recorded: a published table or what
  belongs to it (index, constraint, default, trigger, owned sequence, a
  partition of it), a table the statement creates that the publication already
  publishes (``FOR ALL TABLES``, ``TABLES IN SCHEMA``), a dropped table the
  publication published, or another object (type, view, function, sequence) in
  a schema that holds one of its tables. Temporary objects, commands of an
  extension, ``GRANT``/``REVOKE`` and the queue's own schema are never recorded.
* Sessions applying replication (a replication origin is set up, or
  ``session_replication_role = replica``) are not recorded: a two-way setup does
  not echo DDL (event triggers do not fire in replica sessions anyway).
* An install over an older one brings its queue table up to date in place
  (``ADD COLUMN IF NOT EXISTS``); the subscriber reads rows of an older queue
  too (without settings: none are set).
* The queue stays bounded: each insert deletes the rows older than
  :data:`KEEP` (the subscriber ignores the queue's deletes).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgferry.errors import PgferryError
from pgferry.sqltext import printable

from .classify import SETTINGS

QUEUE_SCHEMA = "pgferry_ddl"
QUEUE_TABLE = "queue"
#: How long a queue row stays on the publisher (a slot behind by more than this
#: still receives it: the row is in the WAL, deleting it later changes nothing).
KEEP = "1 hour"

#: Bumped whenever INSTALL changes (recorded as the schema's comment).
VERSION = 2

#: The JSON object of the session's :data:`~.classify.SETTINGS` (a queue row's ``settings``).
_SETTINGS_JSON = "pg_catalog.json_build_object({})::text".format(
    ", ".join(f"'{name}', pg_catalog.current_setting('{name}')" for name in SETTINGS)
)

INSTALL = f"""
CREATE SCHEMA IF NOT EXISTS pgferry_ddl;
REVOKE ALL ON SCHEMA pgferry_ddl FROM PUBLIC;
CREATE TABLE IF NOT EXISTS pgferry_ddl.publication (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS pgferry_ddl.queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    xid bigint NOT NULL,
    started timestamptz NOT NULL,
    publications text NOT NULL,
    command_tag text NOT NULL,
    command text NOT NULL,
    search_path text NOT NULL,
    role text NOT NULL,
    objects text NOT NULL,
    settings text
);
ALTER TABLE pgferry_ddl.queue ADD COLUMN IF NOT EXISTS settings text;
CREATE INDEX IF NOT EXISTS queue_at ON pgferry_ddl.queue (at);
REVOKE ALL ON ALL TABLES IN SCHEMA pgferry_ddl FROM PUBLIC;

-- The published table an object belongs to (itself for a table), or NULL.
CREATE OR REPLACE FUNCTION pgferry_ddl.owner_table(classid oid, objid oid) RETURNS oid
LANGUAGE sql STABLE AS $fn$
    SELECT CASE classid
        WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN (
            SELECT CASE WHEN c.relkind IN ('r', 'p') THEN c.oid
                        WHEN c.relkind IN ('i', 'I') THEN
                            (SELECT i.indrelid FROM pg_catalog.pg_index i
                             WHERE i.indexrelid = c.oid)
                        WHEN c.relkind = 'S' THEN
                            (SELECT d.refobjid FROM pg_catalog.pg_depend d
                             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                               AND d.objid = c.oid
                               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                               AND d.deptype IN ('a', 'i') LIMIT 1)
                   END
            FROM pg_catalog.pg_class c WHERE c.oid = objid)
        WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN (
            SELECT NULLIF(conrelid, 0::oid) FROM pg_catalog.pg_constraint WHERE oid = objid)
        WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN (
            SELECT adrelid FROM pg_catalog.pg_attrdef WHERE oid = objid)
        WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN (
            SELECT tgrelid FROM pg_catalog.pg_trigger WHERE oid = objid)
        WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN (
            SELECT polrelid FROM pg_catalog.pg_policy WHERE oid = objid)
        WHEN 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass THEN (
            SELECT stxrelid FROM pg_catalog.pg_statistic_ext WHERE oid = objid)
    END
$fn$;

-- The DDL publications that publish table rel (or a partition above or below it).
CREATE OR REPLACE FUNCTION pgferry_ddl.table_publications(rel oid) RETURNS text[]
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(pg_catalog.array_agg(p.name ORDER BY p.name), '{{}}')
    FROM pgferry_ddl.publication p
    -- (one dropped outside pgferry is left out: its name is never looked up)
    JOIN pg_catalog.pg_publication pp ON pp.pubname = p.name
    WHERE EXISTS (
        SELECT 1 FROM pg_catalog.pg_get_publication_tables(pp.pubname::text) g
        WHERE g.relid = rel
           OR g.relid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(rel) a)
           OR g.relid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree(rel) t))
$fn$;

-- The DDL publications that list table rel itself (the subscriber's table).
CREATE OR REPLACE FUNCTION pgferry_ddl.listed_publications(rel oid) RETURNS text[]
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(pg_catalog.array_agg(p.name ORDER BY p.name), '{{}}')
    FROM pgferry_ddl.publication p
    -- (one dropped outside pgferry is left out: its name is never looked up)
    JOIN pg_catalog.pg_publication pp ON pp.pubname = p.name
    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_get_publication_tables(pp.pubname::text) g
                  WHERE g.relid = rel)
$fn$;

-- The DDL publications that publish every table of schema nsp: FOR ALL TABLES,
-- or (15+) FOR TABLES IN SCHEMA nsp. (plpgsql: pg_publication_namespace is
-- looked up only where it exists.)
CREATE OR REPLACE FUNCTION pgferry_ddl.schema_wide_publications(nsp text) RETURNS text[]
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    found text[];
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        EXECUTE 'SELECT coalesce(pg_catalog.array_agg(p.name ORDER BY p.name), ''{{}}'')'
            ' FROM pgferry_ddl.publication p'
            ' JOIN pg_catalog.pg_publication pp ON pp.pubname = p.name'
            ' WHERE pp.puballtables OR EXISTS (SELECT 1'
            '  FROM pg_catalog.pg_publication_namespace pn'
            '  JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid'
            '  WHERE pn.pnpubid = pp.oid AND n.nspname = $1)'
            INTO found USING nsp;
    ELSE
        SELECT coalesce(pg_catalog.array_agg(p.name ORDER BY p.name), '{{}}') INTO found
        FROM pgferry_ddl.publication p
        JOIN pg_catalog.pg_publication pp ON pp.pubname = p.name
        WHERE pp.puballtables;
    END IF;
    RETURN found;
END
$fn$;

-- The DDL publications with a table in schema nsp (or FOR ALL TABLES).
CREATE OR REPLACE FUNCTION pgferry_ddl.schema_publications(nsp text) RETURNS text[]
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(pg_catalog.array_agg(p.name ORDER BY p.name), '{{}}')
    FROM pgferry_ddl.publication p
    JOIN pg_catalog.pg_publication pp ON pp.pubname = p.name
    WHERE pp.puballtables OR EXISTS (
        SELECT 1 FROM pg_catalog.pg_get_publication_tables(pp.pubname::text) g
        JOIN pg_catalog.pg_class c ON c.oid = g.relid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = nsp)
$fn$;

-- Record one statement (once: a statement's later commands find its row).
CREATE OR REPLACE FUNCTION pgferry_ddl.record(tag text, objs jsonb, caller_path text)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    pubs text[];
BEGIN
    SELECT coalesce(pg_catalog.array_agg(DISTINCT p ORDER BY p), '{{}}') INTO pubs
    FROM pg_catalog.jsonb_array_elements(objs) o,
         pg_catalog.jsonb_array_elements_text(o->'publications') p;
    IF pg_catalog.cardinality(pubs) = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pgferry_ddl.queue q
               WHERE q.xid = pg_catalog.txid_current()
                 AND q.started = pg_catalog.statement_timestamp()
                 AND q.command = pg_catalog.current_query()) THEN
        RETURN;
    END IF;
    DELETE FROM pgferry_ddl.queue
    WHERE at < pg_catalog.clock_timestamp() - interval '{KEEP}';
    INSERT INTO pgferry_ddl.queue
        (xid, started, publications, command_tag, command, search_path, role, objects,
         settings)
    VALUES (pg_catalog.txid_current(), pg_catalog.statement_timestamp(),
            pg_catalog.to_json(pubs)::text, tag, pg_catalog.current_query(), caller_path,
            session_user, objs::text, {_SETTINGS_JSON});
END
$fn$;

CREATE OR REPLACE FUNCTION pgferry_ddl.capture() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    caller_path text := pg_catalog.current_setting('search_path');
    objs jsonb;
BEGIN
    IF pg_catalog.pg_replication_origin_session_is_setup()
       OR pg_catalog.current_setting('session_replication_role') = 'replica'
       OR tg_tag IN ('GRANT', 'REVOKE')
       OR NOT EXISTS (SELECT 1 FROM pgferry_ddl.publication) THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT coalesce(jsonb_agg(o), '[]') INTO objs FROM (
        SELECT c.object_type AS type, c.object_identity AS identity, c.schema_name AS schema,
               t.rel::regclass::text AS "table",
               CASE WHEN t.rel IS NOT NULL THEN pgferry_ddl.table_publications(t.rel)
                    WHEN c.object_type = 'schema' THEN pgferry_ddl.schema_publications(NULL)
                    -- Objects of no schema (publications, extensions, event
                    -- triggers, casts...) are the database's, not the tables'.
                    WHEN c.schema_name IS NULL THEN '{{}}'
                    ELSE pgferry_ddl.schema_publications(c.schema_name) END AS publications,
               CASE WHEN t.rel = c.objid THEN pgferry_ddl.listed_publications(t.rel)
                    ELSE '{{}}' END AS listed,
               false AS dropped
        FROM pg_event_trigger_ddl_commands() c,
             LATERAL (SELECT pgferry_ddl.owner_table(c.classid, c.objid) AS rel) t
        WHERE NOT c.in_extension
          AND c.schema_name IS DISTINCT FROM 'pgferry_ddl'
          AND c.object_identity IS DISTINCT FROM 'pgferry_ddl'
          AND coalesce(c.schema_name NOT LIKE 'pg\\_temp%', true)
    ) o;
    PERFORM pgferry_ddl.record(tg_tag, objs, caller_path);
    PERFORM pg_catalog.set_config('search_path', caller_path, true);
END
$fn$;

CREATE OR REPLACE FUNCTION pgferry_ddl.capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    caller_path text := pg_catalog.current_setting('search_path');
    objs jsonb;
BEGIN
    IF pg_catalog.pg_replication_origin_session_is_setup()
       OR pg_catalog.current_setting('session_replication_role') = 'replica'
       OR NOT EXISTS (SELECT 1 FROM pgferry_ddl.publication) THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    WITH dropped AS (
        SELECT * FROM pg_event_trigger_dropped_objects() d
        WHERE NOT d.is_temporary
          AND d.schema_name IS DISTINCT FROM 'pgferry_ddl'
          AND d.object_identity IS DISTINCT FROM 'pgferry_ddl'
    ), pubrel AS (
        -- "publication relation": the table was in the publication's table list.
        SELECT d.address_names[1] AS schema, d.address_names[2] AS name,
               d.address_args[1] AS pub
        FROM dropped d WHERE d.object_type = 'publication relation'
    )
    SELECT coalesce(jsonb_agg(o), '[]') INTO objs FROM (
        SELECT d.object_type AS type, d.object_identity AS identity, d.schema_name AS schema,
               NULL::text AS "table",
               CASE WHEN d.object_type = 'table' THEN (
                        SELECT coalesce(pg_catalog.array_agg(DISTINCT x ORDER BY x), '{{}}')
                        FROM (SELECT r.pub AS x FROM pubrel r
                              WHERE r.schema = d.schema_name AND r.name = d.object_name
                                AND r.pub IN (SELECT name FROM pgferry_ddl.publication)
                              UNION ALL
                              SELECT pg_catalog.unnest(
                                  pgferry_ddl.schema_wide_publications(d.schema_name))) s)
                    WHEN d.object_type = 'schema' THEN pgferry_ddl.schema_publications(NULL)
                    WHEN d.schema_name IS NULL THEN '{{}}'
                    -- A part of a table that stays (a column, constraint, trigger,
                    -- policy, rule): that table's publications, not its schema's.
                    WHEN d.object_type IN ('table column', 'table constraint', 'trigger',
                                           'policy', 'rule')
                         AND pg_catalog.cardinality(d.address_names) >= 2 THEN
                        coalesce(pgferry_ddl.table_publications(pg_catalog.to_regclass(
                            pg_catalog.quote_ident(d.address_names[1]) || '.'
                            || pg_catalog.quote_ident(d.address_names[2]))), '{{}}')
                    ELSE pgferry_ddl.schema_publications(d.schema_name) END AS publications,
               '{{}}'::text[] AS listed,
               true AS dropped
        FROM dropped d
        WHERE d.original AND d.object_type <> 'publication relation'
    ) o;
    PERFORM pgferry_ddl.record(tg_tag, objs, caller_path);
    PERFORM pg_catalog.set_config('search_path', caller_path, true);
END
$fn$;

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgferry_ddl_capture')
    THEN
        CREATE EVENT TRIGGER pgferry_ddl_capture ON ddl_command_end
            EXECUTE FUNCTION pgferry_ddl.capture();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgferry_ddl_drop')
    THEN
        CREATE EVENT TRIGGER pgferry_ddl_drop ON sql_drop
            EXECUTE FUNCTION pgferry_ddl.capture_drop();
    END IF;
END
$do$;
COMMENT ON SCHEMA pgferry_ddl IS 'pgferry DDL capture, version {VERSION}';
"""


class DdlCaptureError(PgferryError):
    """The publisher cannot capture DDL (rights, an old server)."""


def _queue() -> sql.Composable:
    return sql.Identifier(QUEUE_SCHEMA, QUEUE_TABLE)


def install(conn: psycopg.Connection[Any]) -> None:
    """Create or update the capture in the connected database (in the caller's
    transaction)."""
    try:
        conn.execute(INSTALL)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DdlCaptureError(
            f"cannot install the DDL capture: {exc.diag.message_primary}",
            hint="run it as a superuser (event triggers need one), or use"
            " --with missing_columns=add on the subscriber instead",
        ) from None


def enable(conn: psycopg.Connection[Any], publication: str) -> None:
    """Capture DDL for ``publication`` (installing the capture if needed); the
    queue table joins the publication unless it is FOR ALL TABLES. The
    publication must publish inserts: the statements travel as the queue's."""
    row = conn.execute(
        "SELECT pubinsert FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    if row is not None and not row[0]:
        raise DdlCaptureError(
            f"publication {printable(repr(publication))} does not publish inserts: its DDL could"
            " not travel (each statement is an insert into pgferry_ddl.queue)",
            hint="add insert to its publish option (--with publish=insert,update,delete,truncate)",
        )
    install(conn)
    conn.execute(
        "INSERT INTO pgferry_ddl.publication (name) VALUES (%s) ON CONFLICT DO NOTHING",
        (publication,),
    )
    if not _has_queue(conn, publication):
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), _queue()
            )
        )


def disable(conn: psycopg.Connection[Any], publication: str) -> None:
    """Stop capturing DDL for ``publication``; the capture stays installed."""
    if not installed(conn):
        return
    conn.execute("DELETE FROM pgferry_ddl.publication WHERE name = %s", (publication,))
    row = conn.execute(
        "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    if row is not None and not row[0] and _has_queue(conn, publication):
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                sql.Identifier(publication), _queue()
            )
        )


def renamed(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    """The publication ``old`` is now called ``new``: its DDL capture follows."""
    if installed(conn):
        conn.execute("UPDATE pgferry_ddl.publication SET name = %s WHERE name = %s", (new, old))


def dropped(conn: psycopg.Connection[Any], publication: str) -> None:
    """The publication is gone: nothing is captured for it any more."""
    if installed(conn):
        conn.execute("DELETE FROM pgferry_ddl.publication WHERE name = %s", (publication,))


def installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('pgferry_ddl.publication') IS NOT NULL").fetchone()
    return bool(row and row[0])


def enabled(conn: psycopg.Connection[Any], publication: str) -> bool:
    """Whether DDL is captured for ``publication``."""
    if not installed(conn):
        return False
    row = conn.execute(
        "SELECT 1 FROM pgferry_ddl.publication WHERE name = %s", (publication,)
    ).fetchone()
    return row is not None


def _has_queue(conn: psycopg.Connection[Any], publication: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_get_publication_tables(%s) g"
        " WHERE g.relid = 'pgferry_ddl.queue'::regclass",
        (publication,),
    ).fetchone()
    return row is not None
