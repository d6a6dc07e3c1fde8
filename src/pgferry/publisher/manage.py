"""Publications on the publisher: create, alter, drop, list.

Contract:

* Everything runs on an ordinary (not replication) psycopg connection in
  autocommit mode, as :func:`connect` opens it; each change is one transaction,
  so a failed check or statement leaves the publication as it was.
* Every statement is built with :mod:`psycopg.sql`: names are always
  ``Identifier`` (any character works); a row filter is the user's own SQL,
  sent verbatim inside ``WHERE (...)`` after :mod:`pgferry.publisher.spec`
  checked that it cannot leave those parentheses.
* :func:`create_publication` checks first (feature support, ``wal_level``, the
  name is free, the tables and schemas exist), creates, then reads the
  replica-identity problems of the new publication in the same transaction
  (:func:`pgferry.publisher.validate.identity_issues`) and commits. Warnings come
  back in :class:`ChangeResult`, one line each; callers decide how to show them.
* :func:`alter_publication` applies, in one transaction and in this order:
  ``SET (options)``, ``SET TABLE``, ``DROP TABLE``, ``ADD TABLE``, ``OWNER TO``,
  ``RENAME TO``. It warns about the tables it added or set; when the options
  changed (``publish`` may now include UPDATE or DELETE) about every table of the
  publication; after a rename, when the database has pgoutput slots, that their
  subscriptions must name the new publication (subscribers name publications).
* ``ddl`` (``create --ddl``, ``alter --ddl on|off``): the DDL capture of
  :mod:`pgferry.ddl.capture` is installed if needed and the queue table joins
  the publication (or leaves it), in the same transaction as the rest.
* A missing publication is :class:`~pgferry.errors.PublicationNotFound`, a taken
  name :class:`~pgferry.publisher.validate.PublicationAlreadyExists`; other
  server errors become :class:`~pgferry.errors.ServerError` with PostgreSQL's
  message (and detail) on one line.

``list --json`` prints :func:`to_json` of :func:`list_publications`: a JSON array,
one object per publication ordered by name, with exactly these keys:

* ``name`` (string), ``owner`` (string), ``all_tables`` (bool),
* ``publish``: the published actions, a subset of ``["insert", "update",
  "delete", "truncate"]`` in that order,
* ``via_root`` (bool): ``publish_via_partition_root``,
* ``ddl`` (bool): it carries its tables' DDL (``--ddl``; the DDL queue, one of
  its tables, is not listed in ``tables``),
* ``schemas``: names of the ``TABLES IN SCHEMA`` schemas (always ``[]`` before 15),
* ``tables``: one object per published table, ordered by schema then table, as
  ``pg_publication_tables`` lists them (all tables for FOR ALL TABLES; partitions
  or roots depending on ``via_root``), with keys ``schema``, ``table``,
  ``columns`` (the column list, or ``null`` when all columns are published) and
  ``row_filter`` (the filter as PostgreSQL deparses it, or ``null``). Before
  PostgreSQL 15 ``columns`` and ``row_filter`` are always ``null``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgferry.connect import publisher as connect_publisher
from pgferry.ddl import capture
from pgferry.errors import (
    ConnectionFailed,
    InterfaceError,
    PgferryError,
    PublicationNotFound,
    ServerError,
)
from pgferry.publisher.spec import MAX_IDENTIFIER_BYTES, TableSpec, strip_outer_parens
from pgferry.publisher.validate import (
    FILTERS_MAJOR,
    PUBLISH_ACTIONS,
    Conn,
    PublicationAlreadyExists,
    PublicationOptions,
    check_wal_level,
    identity_issues,
    leaves_of,
    publication_exists,
    published_leaves,
    require_features,
    resolve_schemas,
    resolve_tables,
    rows,
    server_major,
    shown,
)
from pgferry.sqltext import printable

_LIST_HINT = "pgferry publication list shows the publications of this database"


@dataclass(frozen=True)
class ChangeResult:
    """What a change did: the publication and the warnings to show (one line each)."""

    publication: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedTable:
    """One row of ``pg_publication_tables``."""

    schema: str
    table: str
    columns: tuple[str, ...] | None = None
    row_filter: str | None = None

    @property
    def spec(self) -> TableSpec:
        """As a table spec (the form ``--table`` takes), for display."""
        return TableSpec(
            self.schema,
            self.table,
            self.columns,
            None if self.row_filter is None else strip_outer_parens(self.row_filter),
        )


@dataclass(frozen=True)
class PublicationInfo:
    """A publication as :func:`list_publications` reports it."""

    name: str
    owner: str
    all_tables: bool
    publish: tuple[str, ...]
    via_root: bool
    schemas: tuple[str, ...] = ()
    tables: tuple[PublishedTable, ...] = field(default=())
    #: It carries its tables' DDL (``--ddl``: the DDL queue is one of its tables,
    #: not listed in ``tables``).
    ddl: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "all_tables": self.all_tables,
            "publish": list(self.publish),
            "via_root": self.via_root,
            "ddl": self.ddl,
            "schemas": list(self.schemas),
            "tables": [
                {
                    "schema": t.schema,
                    "table": t.table,
                    "columns": None if t.columns is None else list(t.columns),
                    "row_filter": t.row_filter,
                }
                for t in self.tables
            ],
        }


def to_json(publications: Sequence[PublicationInfo]) -> str:
    """The ``list --json`` document (see the module docstring)."""
    return json.dumps([p.to_json() for p in publications], indent=2)


# -- connection and errors -----------------------------------------------------------


def connect(dsn: str = "", *, application_name: str = "pgferry") -> Conn:
    """An autocommit connection to the publisher; ``dsn`` empty means PG* variables."""
    return connect_publisher(dsn, application_name=application_name)


def _server_error(exc: psycopg.Error, context: str, publication: str) -> PgferryError:
    diag = exc.diag
    primary = " ".join((diag.message_primary or str(exc) or type(exc).__name__).split())
    sqlstate = diag.sqlstate
    if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
        return ConnectionFailed(f"{context}: {primary}")
    # Another session may win the race between our check and our statement.
    # (Other errors share these codes: "relation ... is already member of
    # publication" is 42710 too, hence the look at the message.)
    if sqlstate == "42710" and primary.startswith("publication "):
        return _already_exists(publication)
    if sqlstate == "42704" and primary.startswith("publication "):
        return _not_found(publication)
    detail = " ".join((diag.message_detail or "").split())
    message = f"{context}: {primary}" + (f" ({detail})" if detail else "")
    return ServerError(printable(message), sqlstate=sqlstate, hint=diag.message_hint)


def _already_exists(name: str) -> PublicationAlreadyExists:
    return PublicationAlreadyExists(
        f"publication {shown(name)} already exists",
        sqlstate="42710",
        hint="choose another name, change it with pgferry publication alter, "
        "or drop it first (pgferry publication drop)",
    )


def _not_found(name: str) -> PublicationNotFound:
    return PublicationNotFound(
        f"publication {shown(name)} does not exist", sqlstate="42704", hint=_LIST_HINT
    )


def _check_name(name: str) -> None:
    if not name:
        raise InterfaceError("the publication name is empty")
    if "\0" in name:
        raise InterfaceError("the publication name contains a NUL character")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        raise InterfaceError(f"publication name {shown(name)} is not valid UTF-8") from None
    if len(encoded) > MAX_IDENTIFIER_BYTES:
        # PostgreSQL would truncate it, silently creating another name.
        raise InterfaceError(
            f"publication name {shown(name)} is longer than {MAX_IDENTIFIER_BYTES} bytes"
        )


def _check_autocommit(conn: Conn) -> None:
    if not conn.autocommit:
        raise InterfaceError("the connection must be in autocommit mode (see connect())")


def _run(conn: Conn, statement: sql.Composed, context: str, publication: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        raise _server_error(exc, context, publication) from None


# -- statements ------------------------------------------------------------------------


def _table_sql(spec: TableSpec) -> sql.Composable:
    name = (
        sql.Identifier(spec.name) if spec.schema is None else sql.Identifier(spec.schema, spec.name)
    )
    parts: list[sql.Composable] = [name]
    if spec.columns is not None:
        parts.append(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in spec.columns))
        )
    if spec.row_filter is not None:
        # The user's own expression on their own publisher; the spec parser made
        # sure it is balanced, so it stays inside these parentheses.
        parts.append(sql.SQL("WHERE ({})").format(sql.SQL(spec.row_filter)))
    return sql.SQL(" ").join(parts)


def _tables_sql(specs: Sequence[TableSpec]) -> sql.Composable:
    return sql.SQL(", ").join(_table_sql(s) for s in specs)


def _with_sql(options: PublicationOptions) -> sql.Composable:
    if options.empty:
        return sql.SQL("")
    return sql.SQL(" WITH ({})").format(options.to_sql())


def _warnings(conn: Conn, name: str, only: set[int] | None) -> list[str]:
    return [issue.message for issue in identity_issues(conn, name, only)]


# -- commands ------------------------------------------------------------------------


def create_publication(
    conn: Conn,
    name: str,
    *,
    tables: Sequence[TableSpec] = (),
    schemas: Sequence[str] = (),
    all_tables: bool = False,
    options: PublicationOptions | None = None,
    ddl: bool = False,
) -> ChangeResult:
    """``CREATE PUBLICATION name FOR ...``; see the module docstring."""
    options = options or PublicationOptions()
    _check_name(name)
    _check_autocommit(conn)
    if all_tables and (tables or schemas):
        raise InterfaceError("--all-tables cannot be combined with --table or --tables-in-schema")
    if not (all_tables or tables or schemas):
        raise InterfaceError("nothing to publish: give --table, --tables-in-schema or --all-tables")
    require_features(conn, tables, schemas)
    check_wal_level(conn)
    if publication_exists(conn, name):
        raise _already_exists(name)
    resolve_tables(conn, tables)
    resolve_schemas(conn, schemas)

    targets: list[sql.Composable] = []
    if all_tables:
        targets.append(sql.SQL("ALL TABLES"))
    if tables:
        targets.append(sql.SQL("TABLE {}").format(_tables_sql(tables)))
    if schemas:
        targets.append(
            sql.SQL("TABLES IN SCHEMA {}").format(
                sql.SQL(", ").join(sql.Identifier(s) for s in schemas)
            )
        )
    statement = sql.SQL("CREATE PUBLICATION {} FOR {}{}").format(
        sql.Identifier(name), sql.SQL(", ").join(targets), _with_sql(options)
    )
    warnings: list[str] = []
    with conn.transaction():
        _run(conn, statement, "cannot create the publication", name)
        if ddl:
            _ddl(conn, name, True)
        if all_tables:
            warnings.append(
                f"publication {shown(name)} is FOR ALL TABLES: every table created in this "
                "database from now on is replicated too"
            )
        warnings += _warnings(conn, name, None)
    return ChangeResult(name, tuple(warnings))


def alter_publication(
    conn: Conn,
    name: str,
    *,
    add: Sequence[TableSpec] = (),
    drop: Sequence[TableSpec] = (),
    set_tables: Sequence[TableSpec] = (),
    options: PublicationOptions | None = None,
    owner: str | None = None,
    rename: str | None = None,
    ddl: bool | None = None,
) -> ChangeResult:
    """``ALTER PUBLICATION``: options, then set, drop and add tables, then ``OWNER
    TO`` and ``RENAME TO``; one transaction."""
    options = options or PublicationOptions()
    _check_name(name)
    _check_autocommit(conn)
    if rename is not None:
        _check_name(rename)
        if rename == name:
            raise InterfaceError(f"publication {shown(name)} is already called {shown(rename)}")
    if owner is not None and (not owner or "\0" in owner):
        raise InterfaceError("invalid role name for --owner")
    if set_tables and (add or drop):
        raise InterfaceError(
            "--set-table replaces the table list: do not combine it with "
            "--add-table or --drop-table"
        )
    renaming = owner is not None or rename is not None
    if not (add or drop or set_tables or renaming or ddl is not None) and options.empty:
        raise InterfaceError(
            "nothing to change: give --add-table, --drop-table, --set-table, --with,"
            " --ddl, --owner or --rename"
        )
    if any(s.columns is not None or s.row_filter is not None for s in drop):
        raise InterfaceError("--drop-table takes a table name only")
    require_features(conn, [*add, *set_tables])
    if not publication_exists(conn, name):
        raise _not_found(name)
    if rename is not None and publication_exists(conn, rename):
        raise _already_exists(rename)
    new_tables = resolve_tables(conn, [*set_tables, *add])
    resolve_tables(conn, drop)

    pub = sql.Identifier(name)
    context = "cannot alter the publication"
    with conn.transaction():
        before = published_leaves(conn, name)
        if not options.empty:
            _run(
                conn,
                sql.SQL("ALTER PUBLICATION {} SET ({})").format(pub, options.to_sql()),
                context,
                name,
            )
        if set_tables:
            _run(
                conn,
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, _tables_sql(set_tables)),
                context,
                name,
            )
        if drop:
            _run(
                conn,
                sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(pub, _tables_sql(drop)),
                context,
                name,
            )
        if add:
            _run(
                conn,
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(pub, _tables_sql(add)),
                context,
                name,
            )
        warnings: list[str] = []
        if add or drop or set_tables or not options.empty:
            only: set[int] | None = None
            if options.empty:
                # Tables newly reached, and those named (their filter or list may be new).
                only = (published_leaves(conn, name) - before) | leaves_of(
                    conn, (t.oid for t in new_tables)
                )
            warnings = _warnings(conn, name, only)
        if ddl is not None:
            _ddl(conn, name, ddl)
        if owner is not None:
            _run(
                conn,
                sql.SQL("ALTER PUBLICATION {} OWNER TO {}").format(pub, sql.Identifier(owner)),
                context,
                name,
            )
        if rename is not None:
            _run(
                conn,
                sql.SQL("ALTER PUBLICATION {} RENAME TO {}").format(pub, sql.Identifier(rename)),
                context,
                name,
            )
            capture.renamed(conn, name, rename)
            warnings += _rename_warnings(conn, name, rename)
    return ChangeResult(name if rename is None else rename, tuple(warnings))


def _ddl(conn: Conn, name: str, on: bool) -> None:
    """Capture DDL for the publication, or stop (see :mod:`pgferry.ddl.capture`)."""
    try:
        if on:
            capture.enable(conn, name)
        else:
            capture.disable(conn, name)
    except psycopg.Error as exc:
        raise _server_error(exc, "cannot set up the DDL capture", name) from None


def _rename_warnings(conn: Conn, old: str, new: str) -> list[str]:
    """Subscribers name publications: with logical slots in this database, say
    that each subscription of ``old`` must now ask for ``new``."""
    slots = rows(
        conn,
        "SELECT slot_name::text FROM pg_catalog.pg_replication_slots"
        " WHERE database = pg_catalog.current_database() AND plugin = 'pgoutput'"
        " ORDER BY 1",
    )
    if not slots:
        return []
    return [
        f"subscribers name their publications: each subscription of {shown(old)} (this"
        f" database has pgoutput slots: {', '.join(shown(str(r[0])) for r in slots[:5])}"
        f"{' ...' if len(slots) > 5 else ''}) must now subscribe to {shown(new)}: pgferry"
        f" subscription alter SUB --drop-publication {shlex.quote(old)} --add-publication"
        f" {shlex.quote(new)} --with refresh=false (natively: ALTER SUBSCRIPTION ... SET"
        " PUBLICATION)"
    ]


def drop_publication(conn: Conn, name: str, *, if_exists: bool = False) -> bool:
    """``DROP PUBLICATION``; False when it did not exist and ``if_exists``."""
    _check_name(name)
    _check_autocommit(conn)
    with conn.transaction():
        if not publication_exists(conn, name):
            if if_exists:
                return False
            raise _not_found(name)
        _run(
            conn,
            sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)),
            "cannot drop the publication",
            name,
        )
        capture.dropped(conn, name)
    return True


def list_publications(conn: Conn) -> list[PublicationInfo]:
    """Every publication of the connected database, ordered by name."""
    major = server_major(conn)
    pubs = rows(
        conn,
        """
        SELECT pubname::text, pg_catalog.pg_get_userbyid(pubowner)::text, puballtables,
               pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot
        FROM pg_catalog.pg_publication
        """,
    )
    tables: dict[str, list[PublishedTable]] = {}
    schemas: dict[str, list[str]] = {}
    if major >= FILTERS_MAJOR:
        # attnames lists every column when there is no column list: whether there
        # is one is read from pg_publication_rel.prattrs.
        found = rows(
            conn,
            """
            SELECT pt.pubname::text, pt.schemaname::text, pt.tablename::text,
                   CASE WHEN pr.prattrs IS NULL THEN NULL ELSE pt.attnames::text[] END,
                   pt.rowfilter
            FROM pg_catalog.pg_publication_tables pt
            JOIN pg_catalog.pg_publication p ON p.pubname = pt.pubname
            JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
            JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
            LEFT JOIN pg_catalog.pg_publication_rel pr
              ON pr.prpubid = p.oid AND pr.prrelid = c.oid
            """,
        )
        for pubname, schema, table, columns, row_filter in found:
            tables.setdefault(pubname, []).append(
                PublishedTable(
                    schema, table, None if columns is None else tuple(columns), row_filter
                )
            )
        for pubname, schema in rows(
            conn,
            """
            SELECT p.pubname::text, n.nspname::text
            FROM pg_catalog.pg_publication_namespace pn
            JOIN pg_catalog.pg_publication p ON p.oid = pn.pnpubid
            JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
            """,
        ):
            schemas.setdefault(pubname, []).append(schema)
    else:
        found = rows(
            conn,
            "SELECT pubname::text, schemaname::text, tablename::text "
            "FROM pg_catalog.pg_publication_tables",
        )
        for pubname, schema, table in found:
            tables.setdefault(pubname, []).append(PublishedTable(schema, table))

    infos: list[PublicationInfo] = []
    # Sorted here, not in SQL: the order must not depend on the database collation.
    for name, owner, all_tables, ins, upd, dele, trunc, via_root in sorted(pubs):
        flags = dict(zip(PUBLISH_ACTIONS, (ins, upd, dele, trunc), strict=True))
        published = tables.get(name, [])
        queue = [t for t in published if t.schema == capture.QUEUE_SCHEMA]
        infos.append(
            PublicationInfo(
                name=name,
                owner=owner,
                all_tables=all_tables,
                publish=tuple(a for a in PUBLISH_ACTIONS if flags[a]),
                via_root=via_root,
                schemas=tuple(sorted(schemas.get(name, []))),
                tables=tuple(
                    sorted(
                        (t for t in published if t not in queue),
                        key=lambda t: (t.schema, t.table),
                    )
                ),
                ddl=bool(queue),
            )
        )
    return infos
