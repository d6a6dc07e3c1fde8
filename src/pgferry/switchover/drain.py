"""The exact drain: wait until the subscription has applied everything the old
primary committed before the fence, and hold it there.

Once the fence holds, :func:`mark` commits one transaction on the old primary
that writes a transactional logical message (``pg_logical_emit_message``, prefix
:data:`MARKER_PREFIX`) with ``synchronous_commit = on``: its commit flushes every
commit before it, and its position **M** is after every transaction committed
before the fence. :func:`hold_at` asks the forward apply worker for an apply hold
at **M** (:mod:`pgferry.catalog.hold`, in one step since **M** is known; owner
:data:`OWNER`): it applies every transaction that commits before **M** and none
at or after it. The message is not published (pgoutput leaves messages out
unless asked), so the walsender skips that empty transaction, reaches **M**, and
tells the worker its WAL end in a keepalive; the worker, between transactions
with everything before it committed, acknowledges ``held`` at **M**.
:func:`wait_held` polls that acknowledgement every :data:`POLL_INTERVAL`
seconds: then every transaction committed on the old primary before the fence
is applied and committed on the new one, not "lag looks like zero". (Durably:
the next step commits the forward subscription's switch on the new primary with
``synchronous_commit = on``, which flushes the WAL of every commit before it,
whatever the subscription's own ``synchronous_commit``.) And the forward worker
applies nothing more while the hold lasts,
even before it has stopped, which lets the reverse subscription go on without
waiting for it to exit
(:mod:`pgferry.switchover.reverse`). The hold is released once the forward
worker is gone (:func:`release`), or by a later switchover of the same
subscription (the same owner replaces it).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pgferry.catalog import hold as catalog_hold
from pgferry.protocol.lsn import INVALID_LSN, Lsn

from . import reverse
from .fence import FenceFailed

#: The logical message's prefix.
MARKER_PREFIX = "pgferry.switchover"
#: Seconds between two looks at the hold's acknowledgement.
POLL_INTERVAL = 0.002
#: The owner of the holds the switchover takes (see :func:`pgferry.catalog.hold.request`).
OWNER = reverse.HOLD_OWNER

Conn = psycopg.Connection[Any]


class DrainTimeout(FenceFailed):
    """The subscription did not apply up to the fence's position in time."""


def mark(old: Conn) -> Lsn:
    """Commit the marker on the old primary; its position (see the module docstring)."""
    # One round trip (a pipeline): inside the fence each one counts.
    with old.pipeline(), old.transaction():
        old.execute("SET LOCAL synchronous_commit = on")
        old.execute("SET LOCAL transaction_read_only = off")
        cur = old.execute(
            "SELECT pg_catalog.pg_logical_emit_message(true, %s, '')::text", (MARKER_PREFIX,)
        )
    row = cur.fetchone()
    assert row is not None
    return Lsn.parse(row[0])


def applied(new: Conn, subscription: str) -> Lsn:
    """The apply worker's committed position (INVALID_LSN: no worker row)."""
    row = new.execute(
        "SELECT committed_lsn::text FROM pgferry.worker WHERE subscription = %s AND relation = ''",
        (subscription,),
    ).fetchone()
    return Lsn.parse(row[0]) if row and row[0] else INVALID_LSN


def confirmed(old: Conn, slot: str) -> Lsn:
    row = old.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots"
        " WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    return Lsn.parse(row[0]) if row and row[0] else INVALID_LSN


class DrainFailed(FenceFailed):
    """The forward apply worker could not be held at the fence's position."""


def hold_at(new: Conn, subscription: str, target: Lsn, lease: float) -> str:
    """The apply hold at ``target`` on ``subscription`` (its token); ``new`` in
    autocommit (the request is one statement, its own transaction)."""
    token = catalog_hold.request(new, subscription, lease, target=target, owner=OWNER)
    if token is None:
        raise DrainFailed(
            f"subscription {subscription!r} is held by another request (a pgferry verify"
            " running?): it cannot be held at the fence's position",
            hint="let the verify end and try again",
        )
    return token


def wait_held(
    new: Conn,
    old: Conn,
    subscription: str,
    slot: str,
    token: str,
    target: Lsn,
    timeout: float,
) -> Lsn:
    """Poll until the apply worker of ``subscription`` acknowledges the hold
    ``token`` at ``target``; the position acknowledged."""
    deadline = time.monotonic() + timeout
    while True:
        state, acked, present = catalog_hold.acknowledged(new, subscription, token)
        if state == catalog_hold.HELD and acked is not None and acked >= target:
            return acked
        if not present:
            raise DrainFailed(
                f"the apply hold of subscription {subscription!r} at the fence's position was"
                " taken away (replaced or deleted)",
                hint="see who else holds it (pgferry.apply_hold) and try again",
            )
        if time.monotonic() > deadline:
            seen = max(applied(new, subscription), confirmed(old, slot))
            behind = int(target) - int(seen) if seen != INVALID_LSN else None
            raise DrainTimeout(
                f"subscription {subscription!r} did not apply up to the fence's position"
                f" {target} within {timeout:g} s (applied: {seen or 'unknown'}"
                + (f", {behind} bytes behind" if behind is not None else "")
                + ")",
                hint="check that `pgferry run` runs for the new primary and the subscription"
                " has no error (pgferry status); --fence-timeout sets the wait",
            )
        time.sleep(POLL_INTERVAL)


def release(new: Conn, subscription: str, token: str) -> None:
    """The hold :func:`hold_at` took, released (a no-op once replaced)."""
    with new.transaction():
        catalog_hold.release(new, subscription, token)
