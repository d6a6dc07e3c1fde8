"""Replication origins: their names, and creating, binding, advancing and dropping them.

The subscriber's replication origins make apply exactly-once (see
``docs/design.md``): one per subscription (:func:`subscription_origin`), and one
per table while its sync worker copies and catches up (:func:`sync_origin`, the
same name as that worker's slot on the publisher). Origins belong to the whole
cluster, not to a database, so their names carry the subscription's.

* :func:`ensure` creates one if missing, :func:`progress` reads its flushed
  position, :func:`bind` / :func:`release` set up and reset the session's origin
  (one session at a time), :func:`drop` drops those that exist;
* :func:`commit_with_origin` is the statement that commits a local transaction
  together with the remote commit it applies, and records that position in
  ``pgferry.origin_commit`` in the same transaction;
* :func:`rewind_aborted` puts back an origin that an aborted commit moved (see
  there), before a session binds it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgferry.protocol.lsn import Lsn

logger = logging.getLogger("pgferry.origins")

#: Names of the table sync workers' origins (and slots) start with this.
SYNC_PREFIX = "pgferry_sync_"
#: How long :func:`bind` waits for the session of a worker that just stopped.
BIND_WAIT = 5.0

Conn = psycopg.Connection[Any]


def subscription_origin(subscription: str) -> str:
    """The origin of ``subscription`` (``pg_`` is reserved, so not that)."""
    return f"pgferry_{subscription}"


def sync_origin(subscription: str, schema: str, name: str) -> str:
    """A table sync worker's origin (and slot) name: short, [a-z0-9_], stable per table."""
    digest = hashlib.sha256(f"{subscription}\0{schema}\0{name}".encode()).hexdigest()[:16]
    return f"{SYNC_PREFIX}{digest}"


def repair_origin(subscription: str) -> str:
    """The origin ``pgferry verify --repair`` writes its fixes under (not the
    subscription's own, which its apply worker holds; still not local, so peers
    filtering on ``origin = none`` leave the fixes out)."""
    return f"pgferry_repair_{subscription}"


def is_sync(origin: str) -> bool:
    """Whether ``origin`` is a table sync worker's."""
    return origin.startswith(SYNC_PREFIX)


def exists(conn: Conn, origin: str) -> bool:
    row = conn.execute(
        "SELECT pg_catalog.pg_replication_origin_oid(%s) IS NOT NULL", (origin,)
    ).fetchone()
    return bool(row and row[0])


def ensure(conn: Conn, origin: str) -> None:
    """Create ``origin`` unless it exists."""
    if not exists(conn, origin):
        conn.execute("SELECT pg_catalog.pg_replication_origin_create(%s)", (origin,))


def progress(conn: Conn, origin: str) -> Lsn:
    """The origin's flushed progress (0/0 when it has none)."""
    row = conn.execute(
        "SELECT pg_catalog.pg_replication_origin_progress(%s, false)::text", (origin,)
    ).fetchone()
    return Lsn.parse(row[0]) if row and row[0] else Lsn(0)


def bind(conn: Conn, origin: str) -> None:
    """Bind the session to ``origin``; the session of a worker that just stopped
    may still hold it for a moment while its backend exits: wait for it, briefly."""
    deadline = time.monotonic() + BIND_WAIT
    while True:
        try:
            conn.execute("SELECT pg_catalog.pg_replication_origin_session_setup(%s)", (origin,))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def release(conn: Conn) -> None:
    """Unbind the session from its origin, if it is bound."""
    conn.execute(
        "SELECT pg_catalog.pg_replication_origin_session_reset()"
        " WHERE pg_catalog.pg_replication_origin_session_is_setup()"
    )


def drop(conn: Conn, origins: Iterable[str]) -> None:
    """Drop those of ``origins`` that exist (an origin bound by a live session
    raises ``ObjectInUse``)."""
    names = list(origins)
    if names:
        conn.execute(
            "SELECT pg_catalog.pg_replication_origin_drop(roname)"
            " FROM pg_catalog.pg_replication_origin WHERE roname = ANY(%s)",
            (names,),
        )


def commit_with_origin(remote_lsn: Lsn, remote_time: datetime | str, origin: str) -> sql.Composed:
    """``SET CONSTRAINTS ALL IMMEDIATE; INSERT INTO pgferry.origin_commit ...;
    SELECT pg_replication_origin_xact_setup(...); COMMIT`` as ONE message, for the
    session bound to ``origin``.

    The server may advance the session's replication origin to the LSN given to
    ``pg_replication_origin_xact_setup`` at the end of the transaction *whether
    it commits or aborts* (from 16 ``RecordTransactionAbort`` moves it; a 15
    whose session was ended during the COMMIT was seen to have moved it too).
    Sent as two round trips, a worker killed between them leaves a backend that
    aborts the transaction yet records it as replayed: that remote transaction
    would be lost. In one simple-query message the server receives both or
    neither. For the same reason nothing may fail at COMMIT once the origin is
    set up: deferred constraints and constraint triggers are checked first, by
    SET CONSTRAINTS ALL IMMEDIATE (an error there skips the rest of the message).
    The server can still end the session between the two (a fast shutdown,
    ``pg_terminate_backend``): the transaction aborts and the origin moves. So
    the position is also written, transactionally, in ``pgferry.origin_commit``:
    it moves only when the commit happens, and :func:`rewind_aborted` puts the
    origin back to it.
    """
    return sql.SQL(
        "SET CONSTRAINTS ALL IMMEDIATE;"
        " INSERT INTO pgferry.origin_commit AS c (origin, remote_lsn) VALUES ({o}, {l}::pg_lsn)"
        " ON CONFLICT (origin) DO UPDATE SET remote_lsn = excluded.remote_lsn;"
        " SELECT pg_catalog.pg_replication_origin_xact_setup({l}::pg_lsn, {t}::timestamptz);"
        " COMMIT"
    ).format(o=sql.Literal(origin), l=sql.Literal(str(remote_lsn)), t=sql.Literal(remote_time))


def rewind_aborted(conn: Conn, origin: str) -> Lsn:
    """The origin's progress, after putting it back where its last commit left
    it if an aborted commit moved it further (see :func:`commit_with_origin`);
    call it before a session binds the origin.

    ``pgferry.origin_commit`` holds that position; where it has none, or one past
    the origin (an origin created again), it starts from the origin's progress
    (without a catalog, nothing is checked).
    An origin moved forward by hand (``pg_replication_origin_advance``) is moved
    back too: ``subscription alter --skip`` is the way to skip a transaction.
    """
    current = progress(conn, origin)
    row = conn.execute("SELECT pg_catalog.to_regclass('pgferry.origin_commit') IS NOT NULL")
    if row.fetchone() != (True,):
        return current  # no catalog (a bare session): nothing recorded
    found = conn.execute(
        "SELECT remote_lsn::text FROM pgferry.origin_commit WHERE origin = %s", (origin,)
    ).fetchone()
    committed = Lsn.parse(found[0]) if found else None
    if committed is not None and committed < current:
        logger.warning(
            "replication origin %s is at %s but its last commit at %s: a transaction"
            " aborted after setting it up (the server ended the session during a commit);"
            " moving it back, so that the transactions after %s are received again",
            origin,
            current,
            committed,
            committed,
        )
        conn.execute(
            "SELECT pg_catalog.pg_replication_origin_advance(%s, %s::pg_lsn)",
            (origin, str(committed)),
        )
        return committed
    if committed != current:
        conn.execute(
            "INSERT INTO pgferry.origin_commit AS c (origin, remote_lsn) VALUES (%s, %s::pg_lsn)"
            " ON CONFLICT (origin) DO UPDATE SET remote_lsn = excluded.remote_lsn",
            (origin, str(current)),
        )
    return current
