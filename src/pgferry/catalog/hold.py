"""The apply hold: a row asking a subscription's apply worker to stop at an LSN.

``pgferry verify`` needs the subscriber exactly at a publisher position L. The
protocol, one row per subscription in ``pgferry.apply_hold`` (see
:mod:`pgferry.apply.hold` for the worker's side):

1. the requester inserts a row with a fresh ``token``, no target and a lease
   (``expires_at``); the worker stops at its next transaction boundary, commits
   what it applied and acknowledges ``paused``;
2. the requester sets ``target_lsn`` = L; the worker applies every remote
   transaction whose commit LSN is < L, stops before any at or after L (or once
   its received position passed L with nothing pending), commits and
   acknowledges ``held`` with ``acked_lsn`` = L;
3. the requester deletes the row (release): the worker goes on at once.

Every change by the requester notifies :data:`HOLD_CHANNEL` (a trigger), which the
worker's :class:`~pgferry.catalog.watch.CatalogWatch` takes in without a round
trip; the worker's own acknowledgements do not notify. A row whose lease has run
out is ignored by the worker, so a requester that died leaves nothing held for
longer than the lease; the requester renews it (:func:`renew`) while it waits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from pgferry.protocol.lsn import Lsn

#: The channel the hold's trigger notifies (payload: the subscription).
HOLD_CHANNEL = "pgferry_hold"

PAUSED = "paused"
HELD = "held"


@dataclass(frozen=True)
class Hold:
    """A hold request as the worker reads it."""

    token: str
    #: None: stop at the next transaction boundary (step 1).
    target: Lsn | None
    #: Seconds left on the lease when it was read.
    remaining: float
    #: What the worker acknowledged for this token and target (None, paused, held).
    state: str | None


def request(
    conn: psycopg.Connection[Any],
    subscription: str,
    lease: float,
    *,
    target: Lsn | None = None,
    owner: str = "",
) -> str | None:
    """Ask for a pause (step 1), or with ``target`` for a hold at that LSN at once
    (steps 1 and 2 in one: a requester that knows L already); returns the
    request's token, or None while another request's lease runs. A row whose
    lease ran out is replaced, and so is one of the same ``owner`` (its token
    starts with ``owner-``: a request its owner left behind)."""
    token = f"{owner}-{uuid.uuid4().hex}" if owner else uuid.uuid4().hex
    row = conn.execute(
        "INSERT INTO pgferry.apply_hold (subscription, token, target_lsn, expires_at)"
        " VALUES (%s, %s, %s::pg_lsn, now() + make_interval(secs => %s))"
        " ON CONFLICT (subscription) DO UPDATE SET token = EXCLUDED.token,"
        " target_lsn = EXCLUDED.target_lsn, expires_at = EXCLUDED.expires_at, state = NULL,"
        " acked_lsn = NULL, acked_at = NULL"
        " WHERE pgferry.apply_hold.expires_at <= now()"
        " OR (%s <> '' AND pg_catalog.starts_with(pgferry.apply_hold.token, %s || '-'))"
        " RETURNING token",
        (
            subscription,
            token,
            None if target is None else str(target),
            lease,
            owner,
            owner,
        ),
    ).fetchone()
    return None if row is None else str(row[0])


def set_target(
    conn: psycopg.Connection[Any], subscription: str, token: str, target: Lsn, lease: float
) -> bool:
    """Step 2; False when the request is gone (released or replaced)."""
    cur = conn.execute(
        "UPDATE pgferry.apply_hold SET target_lsn = %s::pg_lsn, state = NULL,"
        " expires_at = now() + make_interval(secs => %s)"
        " WHERE subscription = %s AND token = %s",
        (str(target), lease, subscription, token),
    )
    return cur.rowcount == 1


def renew(conn: psycopg.Connection[Any], subscription: str, token: str, lease: float) -> None:
    conn.execute(
        "UPDATE pgferry.apply_hold SET expires_at = now() + make_interval(secs => %s)"
        " WHERE subscription = %s AND token = %s",
        (lease, subscription, token),
    )


def still_held(conn: psycopg.Connection[Any], subscription: str, token: str, margin: float) -> bool:
    """Whether the worker still holds for ``token`` with at least ``margin`` seconds
    of lease left, by the clock now (not the transaction's start): what a
    requester writing under the hold checks in its transaction before it commits."""
    row = conn.execute(
        "SELECT 1 FROM pgferry.apply_hold WHERE subscription = %s AND token = %s"
        " AND state = %s"
        " AND expires_at > pg_catalog.clock_timestamp() + make_interval(secs => %s)",
        (subscription, token, HELD, margin),
    ).fetchone()
    return row is not None


def release(conn: psycopg.Connection[Any], subscription: str, token: str) -> None:
    """Step 3: the worker goes on (a no-op when the row is gone or replaced)."""
    conn.execute(
        "DELETE FROM pgferry.apply_hold WHERE subscription = %s AND token = %s",
        (subscription, token),
    )


def acknowledged(
    conn: psycopg.Connection[Any], subscription: str, token: str
) -> tuple[str | None, Lsn | None, bool]:
    """What the worker acknowledged: (state, LSN, whether the row is still there)."""
    row = conn.execute(
        "SELECT state, acked_lsn::text FROM pgferry.apply_hold"
        " WHERE subscription = %s AND token = %s",
        (subscription, token),
    ).fetchone()
    if row is None:
        return None, None, False
    return row[0], Lsn.parse(row[1]) if row[1] else None, True


def current(conn: psycopg.Connection[Any], subscription: str) -> Hold | None:
    """The worker's read: the subscription's hold unless its lease ran out."""
    row = conn.execute(
        "SELECT token, target_lsn::text, extract(epoch FROM expires_at - now())::float8, state"
        " FROM pgferry.apply_hold WHERE subscription = %s AND expires_at > now()",
        (subscription,),
    ).fetchone()
    if row is None:
        return None
    token, target, remaining, state = row
    return Hold(token, Lsn.parse(target) if target else None, float(remaining), state)


def acknowledge(
    conn: psycopg.Connection[Any], subscription: str, token: str, state: str, lsn: Lsn | None
) -> None:
    """The worker's acknowledgement (does not notify the worker itself)."""
    conn.execute(
        "UPDATE pgferry.apply_hold SET state = %s, acked_lsn = %s::pg_lsn, acked_at = now()"
        " WHERE subscription = %s AND token = %s",
        (state, None if lsn is None else str(lsn), subscription, token),
    )
