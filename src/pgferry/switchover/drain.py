"""The exact drain: wait until the subscription has applied everything the old
primary committed before the fence.

Once the fence holds, :func:`mark` commits one transaction on the old primary
that writes a transactional logical message (``pg_logical_emit_message``, prefix
:data:`MARKER_PREFIX`) with ``synchronous_commit = on``: its commit flushes every
commit before it, and its position **M** is after every transaction committed
before the fence. The message is not published (pgoutput leaves messages out
unless asked), so the walsender skips that empty transaction, reaches **M**, and
tells the apply worker its WAL end in a keepalive; the apply worker confirms a
keepalive's position past its own at once (:mod:`pgferry.apply.worker`: not at
its next idle look, up to half a second later), once everything before it is
durably applied: the slot's ``confirmed_flush_lsn`` on the old primary shows it
at once. (The worker's row, ``pgferry.worker.committed_lsn``, shows it at the
worker's next report, about a second later: a keepalive alone writes no row, see
:mod:`pgferry.apply.progress`.) :func:`wait_applied` polls both, the row every
:data:`POLL_INTERVAL` seconds and the slot every :data:`SLOT_EVERY` looks, until
one reaches **M**: then every transaction committed on the old primary before
the fence is durably applied on the new one, not "lag looks like zero".
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pgferry.protocol.lsn import INVALID_LSN, Lsn

from .fence import FenceFailed

#: The logical message's prefix.
MARKER_PREFIX = "pgferry.switchover"
#: Seconds between two looks at the apply worker's position.
POLL_INTERVAL = 0.002
#: Looks at the worker's row per look at the slot (a second server).
SLOT_EVERY = 2

Conn = psycopg.Connection[Any]


class DrainTimeout(FenceFailed):
    """The subscription did not apply up to the fence's position in time."""


def mark(old: Conn) -> Lsn:
    """Commit the marker on the old primary; its position (see the module docstring)."""
    with old.transaction():
        old.execute("SET LOCAL synchronous_commit = on")
        old.execute("SET LOCAL transaction_read_only = off")
        row = old.execute(
            "SELECT pg_catalog.pg_logical_emit_message(true, %s, '')::text", (MARKER_PREFIX,)
        ).fetchone()
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


def wait_applied(
    new: Conn, old: Conn, subscription: str, slot: str, target: Lsn, timeout: float
) -> Lsn:
    """Poll until ``subscription`` has applied up to ``target``; the position seen."""
    deadline = time.monotonic() + timeout
    looks = 0
    seen = INVALID_LSN
    while True:
        seen = max(seen, applied(new, subscription))
        if seen < target and looks % SLOT_EVERY == SLOT_EVERY - 1:
            seen = max(seen, confirmed(old, slot))
        if seen >= target:
            return seen
        if time.monotonic() > deadline:
            behind = int(target) - int(seen) if seen != INVALID_LSN else None
            raise DrainTimeout(
                f"subscription {subscription!r} did not apply up to the fence's position"
                f" {target} within {timeout:g} s (applied: {seen or 'unknown'}"
                + (f", {behind} bytes behind" if behind is not None else "")
                + ")",
                hint="check that `pgferry run` runs for the new primary and the subscription"
                " has no error (pgferry status); --phase-timeout sets the wait",
            )
        looks += 1
        time.sleep(POLL_INTERVAL)
