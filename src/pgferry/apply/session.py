"""The apply session: how a worker's connection to the subscriber is set up to apply.

As native's apply workers: ``session_replication_role = replica`` (only ENABLE
REPLICA and ENABLE ALWAYS triggers fire, foreign keys are not checked, so rows
may arrive in any order across tables), ``search_path = ''`` (every name in the
statements is qualified; no user function shadows a built-in), the
subscription's ``synchronous_commit``, and the session bound to the replication
origin whose progress commits with each applied remote transaction (see
:mod:`pgferry.origins`); an origin moved by a commit that aborted is put back
before it is bound (:func:`~pgferry.origins.rewind_aborted`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgferry import origins
from pgferry.protocol.lsn import Lsn


def prepare(
    conn: psycopg.Connection[Any], origin: str, synchronous_commit: str, *, bind: bool = True
) -> Lsn:
    """Set up the apply session; returns the origin's flushed progress.

    Creates the replication origin if missing and (unless not ``bind``) binds the
    session to it, after putting it back where its last commit left it.
    """
    conn.execute("SET session_replication_role = replica")
    conn.execute("SET search_path = ''")
    conn.execute(sql.SQL("SET synchronous_commit = {}").format(sql.Literal(synchronous_commit)))
    origins.ensure(conn, origin)
    if not bind:
        return origins.progress(conn, origin)
    start = origins.rewind_aborted(conn, origin)
    origins.bind(conn, origin)
    return start
