"""A replicated DDL on a table whose initial sync is under way: the copy starts over.

A table's rows reach the subscriber through its sync worker (the copy at the
slot's consistent point C, then the catch-up) until the handover, and through
the apply worker after it (see :mod:`pgferry.catalog.handover`). Its *shape* has
one owner only, the apply worker, which runs each DDL at its place in the stream.
A statement that alters or drops a table the apply worker does not own yet at
that place (any state but ready, or handed over at an H after the statement)
would meet a copy taken in the other shape, or a catch-up applying rows of the
other shape: the statement would be replayed on top of a copy that already has
it, or a catch-up would skip it. So, in the apply worker's local transaction and
before the statement runs (:func:`restart`):

* the table's row is locked (``FOR UPDATE``: a sync worker's state change waits
  for this transaction), and its state decides what else happens;
* the sync worker's session on the subscriber is ended (its copy rolls back, its
  locks go), its slot on the publisher is dropped once inactive (bounded by
  :data:`SLOT_WAIT`) and its origin is dropped in the transaction;
* rows a finished copy left in the table are removed (``TRUNCATE``, or ``DELETE``
  where a foreign key forbids it), and columns the statement adds that the table
  has already are dropped: ``missing_columns = add`` added them before a copy
  taken after the statement, or a refresh's schema copy had them; the statement
  adds them again with the publisher's definition;
* the table goes back to ``i``: after the commit a new sync worker copies it in a
  snapshot taken after the statement, in the statement's shape.

Statements that only add to a table (an index, a comment) are not restarts: they
run when the copy's locks allow. A slot drop outside the transaction is not
undone if the transaction fails: the table is restarted again when it is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from pgferry import connect, origins
from pgferry.catalog.model import TableState
from pgferry.catalog.store import SubscriptionTable
from pgferry.protocol.lsn import Lsn

from .classify import DdlCommand, Token, tokens

logger = logging.getLogger("pgferry.ddl")

#: Command tags that may change a table's shape or remove it.
RESHAPING = frozenset({"ALTER TABLE", "DROP TABLE"})
#: The longest the restart waits for the old sync worker's slot to be released.
SLOT_WAIT = 10.0


def syncing_tables(
    conn: psycopg.Connection[Any], subscription: str, command: DdlCommand, commit_lsn: Lsn
) -> list[SubscriptionTable]:
    """The subscribed tables ``command`` reshapes that the apply worker does not
    own at ``commit_lsn``; their catalog rows stay locked until the transaction ends."""
    if command.command_tag.upper() not in RESHAPING:
        return []
    found_oids = local_tables(conn, command)
    if not found_oids:
        return []
    rows = conn.execute(
        "SELECT t.remote_schema, t.remote_name, t.local_schema, t.local_name, t.state,"
        " t.state_lsn::text"
        " FROM pgferry.subscription_table t"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = t.local_schema"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.local_name"
        " WHERE t.subscription = %s AND c.oid = ANY(%s::oid[])"
        " ORDER BY t.remote_schema, t.remote_name"
        " FOR UPDATE OF t",
        (subscription, found_oids),
    ).fetchall()
    found = []
    for rschema, rname, lschema, lname, letter, lsn in rows:
        state = TableState.parse(str(letter))
        if state == TableState.READY:
            continue
        if state == TableState.SYNCDONE and lsn is not None and Lsn.parse(lsn) <= commit_lsn:
            continue
        found.append(
            SubscriptionTable(subscription, rschema, rname, lschema, lname, state, _lsn(lsn))
        )
    return found


def local_tables(conn: psycopg.Connection[Any], command: DdlCommand) -> list[int]:
    """The OIDs of the subscriber's tables ``command`` names: the tables among
    its objects and those its objects belong to, and the table an ``ALTER
    TABLE`` names (a RENAME's object has the new name, the table here the old)."""
    names = {o.identity for o in command.objects if o.type == "table" and o.identity}
    names |= {o.table for o in command.objects if o.table}
    oids = [_oid(conn, name, "") for name in sorted(names)]
    named = altered_table(command.command)
    if named is not None:
        oids.append(_oid(conn, named, command.search_path))
    return sorted({oid for oid in oids if oid is not None})


def _lsn(text: str | None) -> Lsn | None:
    return None if text is None else Lsn.parse(text)


def _oid(conn: psycopg.Connection[Any], name: str, search_path: str) -> int | None:
    """The local table ``name`` names under ``search_path`` (the session's is
    empty again afterwards)."""
    conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (search_path,))
    try:
        row = conn.execute("SELECT pg_catalog.to_regclass(%s)::oid::int8", (name,)).fetchone()
    finally:
        conn.execute("SELECT pg_catalog.set_config('search_path', '', true)")
    return None if row is None or row[0] is None else int(row[0])


def restart(
    conn: psycopg.Connection[Any],
    subscription: str,
    conninfo: str,
    tables: Sequence[SubscriptionTable],
    command: DdlCommand,
) -> None:
    """Start the sync of ``tables`` over (see the module docstring), in ``conn``'s
    transaction, before ``command`` runs."""
    for table in tables:
        slot = origins.sync_origin(subscription, table.remote_schema, table.remote_name)
        if table.state in (TableState.DATA, TableState.FINISHED):
            _end_sync_sessions(conn, slot)
        _drop_slot(conninfo, slot)
        origins.drop(conn, [slot])
        target = sql.Identifier(table.local_schema, table.local_name)
        if table.state in (TableState.FINISHED, TableState.SYNCDONE):
            _empty(conn, target, table)
        _drop_added(conn, target, table, added_columns(command.command))
        conn.execute(
            "UPDATE pgferry.subscription_table SET state = 'i', state_lsn = NULL,"
            " catchup_lsn = NULL"
            " WHERE subscription = %s AND remote_schema = %s AND remote_name = %s",
            (subscription, table.remote_schema, table.remote_name),
        )
        logger.info(
            "subscription %s: table %s.%s: DDL during its initial sync (state %s);"
            " the copy starts over after it",
            subscription,
            table.remote_schema,
            table.remote_name,
            table.state.value,
        )


def _end_sync_sessions(conn: psycopg.Connection[Any], slot: str) -> None:
    """End the sync worker's subscriber session (named like its slot) and wait
    for it to exit (14+; before, the statement's lock wait does)."""
    wait = ", 5000" if conn.info.server_version >= 140000 else ""
    conn.execute(
        f"SELECT pg_catalog.pg_terminate_backend(pid{wait}) FROM pg_catalog.pg_stat_activity"
        " WHERE application_name = %s AND pid <> pg_catalog.pg_backend_pid()",
        (slot,),
    )


def _drop_slot(conninfo: str, slot: str) -> None:
    """Drop the sync slot on the publisher once its walsender is gone; after
    :data:`SLOT_WAIT`, end that walsender."""
    deadline = time.monotonic() + SLOT_WAIT
    with connect.publisher(conninfo, application_name="pgferry ddl") as remote:
        while True:
            row = remote.execute(
                "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                (slot,),
            ).fetchone()
            if row is None:
                return
            if row[0] is None:
                try:
                    remote.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
                    return
                except psycopg.errors.ObjectInUse:
                    pass
            elif time.monotonic() > deadline:
                remote.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.05)


def _empty(conn: psycopg.Connection[Any], target: sql.Composable, table: SubscriptionTable) -> None:
    """Remove the rows a finished copy (and its catch-up) left."""
    kind = conn.execute(
        "SELECT c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (table.local_schema, table.local_name),
    ).fetchone()
    only = sql.SQL("" if kind and kind[0] == "p" else "ONLY ")
    conn.execute("SAVEPOINT pgferry_restart")
    try:
        conn.execute(sql.SQL("TRUNCATE {}{}").format(only, target))
    except psycopg.errors.FeatureNotSupported:
        # Referenced by a foreign key: rows one by one (replica role: no RI checks).
        conn.execute("ROLLBACK TO SAVEPOINT pgferry_restart")
        conn.execute(sql.SQL("DELETE FROM {}{}").format(only, target))
    conn.execute("RELEASE SAVEPOINT pgferry_restart")


def _drop_added(
    conn: psycopg.Connection[Any],
    target: sql.Composable,
    table: SubscriptionTable,
    added: Sequence[str],
) -> None:
    """Drop the columns the statement adds that the table has already."""
    if not added:
        return
    have = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = ANY(%s)"
        " AND a.attnum > 0 AND NOT a.attisdropped",
        (table.local_schema, table.local_name, list(added)),
    ).fetchall()
    for (column,) in have:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(target, sql.Identifier(str(column)))
        )


_NOT_COLUMNS = frozenset({"constraint", "primary", "unique", "check", "foreign", "exclude"})


def added_columns(statement: str) -> list[str]:
    """The columns an ``ALTER TABLE`` statement adds (``ADD [COLUMN] [IF NOT
    EXISTS] name``), by their names as stored (unquoted names fold to lower case)."""
    words = tokens(statement)
    at = _first_action(words)
    if at is None:
        return []
    found = []
    for clause in _clauses(words[at:]):
        if clause and _word(clause[0], "add"):
            name = _added_name(clause[1:])
            if name is not None:
                found.append(name)
    return found


def altered_table(statement: str) -> str | None:
    """The table an ``ALTER TABLE`` statement names, as ``to_regclass`` takes it."""
    words = tokens(statement)
    at = _first_action(words)
    if at is None:
        return None
    name = [t for t in words[:at] if t.kind == "word"][2:]
    while name and not name[0].quoted and name[0].text in ("if", "exists", "only"):
        name = name[1:]
    if not name:
        return None
    return ".".join('"' + t.text.replace('"', '""') + '"' for t in name)


def _word(token: Token, word: str) -> bool:
    return token.kind == "word" and not token.quoted and token.text == word


def _first_action(words: Sequence[Token]) -> int | None:
    """Where ``ALTER TABLE [IF EXISTS] [ONLY] name [*]``'s first action starts."""
    if len(words) < 3 or not (_word(words[0], "alter") and _word(words[1], "table")):
        return None
    i = 2
    if i + 1 < len(words) and _word(words[i], "if") and _word(words[i + 1], "exists"):
        i += 2
    if i < len(words) and _word(words[i], "only"):
        i += 1
    i += 1  # the name
    while i + 1 < len(words) and words[i].kind == "punct" and words[i].text == ".":
        i += 2
    if i < len(words) and words[i].kind == "punct" and words[i].text == "*":
        i += 1
    return i


def _clauses(words: Sequence[Token]) -> list[list[Token]]:
    """``words`` split at the commas outside parentheses."""
    clauses: list[list[Token]] = [[]]
    depth = 0
    for token in words:
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
        elif depth == 0 and token.kind == "punct" and token.text in ",;":
            clauses.append([])
            continue
        clauses[-1].append(token)
    return clauses


def _added_name(rest: Sequence[Token]) -> str | None:
    words = list(rest)
    if words and _word(words[0], "column"):
        words = words[1:]
    if len(words) >= 3 and _word(words[0], "if") and _word(words[1], "not"):
        words = words[3:]
    if not words or words[0].kind != "word":
        return None
    if not words[0].quoted and words[0].text in _NOT_COLUMNS:
        return None
    return words[0].text
