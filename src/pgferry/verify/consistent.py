"""A consistent pair of snapshots under a running load: the publisher's at a slot's
consistent point L, the subscriber's with exactly the transactions committed
before L applied.

:func:`held_pair` (a context manager; the protocol is in
:mod:`pgferry.catalog.hold`):

1. checks the subscription: enabled, every table ready, its publisher reachable
   (each connection attempt, the replication one too, waits at most
   ``timeout``, at least libpq's 2 s, unless the conninfo sets
   ``connect_timeout``; an unreachable publisher is one error naming the
   subscription, with nothing held), then not in error;
2. asks its apply worker to pause at its next transaction boundary and waits for
   the acknowledgement;
3. creates a TEMPORARY logical slot with an exported snapshot on the publisher
   (a replication connection): its consistent point is L, its snapshot holds
   exactly the transactions whose commit LSN is < L. A publisher session imports
   it and exports it again, so the slot's connection can close at once;
4. sets the hold's target to L and waits until the worker acknowledges it is held
   at L;
5. exports a snapshot in a subscriber session;
6. releases the hold (at once, unless ``keep_held``: then when the block ends),
   and yields the :class:`Pair`; the exporting sessions stay open until the block
   ends, so the snapshot names stay importable.

Every wait has a timeout; on any failure the hold is released before the error
goes up, and a requester that dies leaves at most the lease behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog import TableState, ensure_catalog, store
from pgferry.catalog import hold as catalog_hold
from pgferry.errors import ConnectionFailed, InterfaceError, PgferryError
from pgferry.protocol.lsn import Lsn
from pgferry.sqltext import quote_literal
from pgferry.stream import ReplicationConnection

from .compare import bounded, unreachable

#: Seconds a hold lives without renewal (a requester that died holds no longer).
DEFAULT_LEASE = 30.0
#: Seconds to wait for each acknowledgement of the apply worker.
DEFAULT_TIMEOUT = 60.0
#: Seconds between two looks at the acknowledgement.
_POLL = 0.01
#: Renew the lease when less than this share of it is left.
_RENEW_SHARE = 0.5


@dataclass
class Pair:
    lsn: Lsn
    publisher_snapshot: str
    subscriber_snapshot: str
    #: Seconds the apply worker was held (from the pause to the release).
    held_seconds: float = 0.0
    #: Renews the hold's lease (``keep_held``: call it during long work).
    renew: Callable[[], None] = field(default=lambda: None)
    #: The hold's token (``keep_held``: see :func:`pgferry.catalog.hold.still_held`).
    token: str = ""


def check_subscription(conn: psycopg.Connection[Any], name: str) -> store.Subscription:
    """The subscription, if it is enabled and ready (else one clear error)."""
    sub = store.get_subscription(conn, name)
    if not sub.enabled:
        raise InterfaceError(
            f"subscription {name!r} is disabled: nothing applies, so nothing can be held",
            hint=f"pgferry subscription enable {name}, then verify again",
        )
    waiting = [t for t in store.tables(conn, name) if t.state != TableState.READY]
    if waiting:
        listed = ", ".join(f"{t.remote_schema}.{t.remote_name}" for t in waiting[:5])
        raise InterfaceError(
            f"subscription {name!r} is not ready: {len(waiting)} tables still synchronising"
            f" ({listed})",
            hint=f"pgferry subscription wait {name}, then verify again",
        )
    return sub


def check_not_in_error(sub: store.Subscription) -> None:
    if sub.last_error is not None:
        raise InterfaceError(
            f"subscription {sub.name!r} is in error: {sub.last_error}",
            hint=f"fix the error (pgferry status {sub.name}); verify once it applies again",
        )


def _publisher_session(
    stack: contextlib.ExitStack, sub: store.Subscription, timeout: float
) -> tuple[psycopg.Connection[Any], ReplicationConnection]:
    """The publisher's session and replication connection of step 3, each
    attempt bounded by ``timeout`` (see :func:`~.compare.bounded`), so a
    publisher that does not answer is found within it. Failing, one error
    naming the subscription."""
    name = "pgferry verify"
    conninfo = bounded(sub.conninfo, timeout)
    try:
        holder = stack.enter_context(
            connect.open_connection(
                conninfo,
                side="publisher",
                application_name=name,
                params={"client_encoding": connect.CLIENT_ENCODING},
            )
        )
        repl = stack.enter_context(ReplicationConnection.connect(conninfo, application_name=name))
    except ConnectionFailed as exc:
        raise unreachable(sub.name, exc, "nothing was held") from None
    return holder, repl


class _Requester:
    def __init__(
        self, conn: psycopg.Connection[Any], name: str, lease: float, timeout: float
    ) -> None:
        self.conn = conn
        self.name = name
        self.lease = lease
        self.timeout = timeout
        token = catalog_hold.request(conn, name, lease)
        if token is None:
            raise PgferryError(
                f"subscription {name!r} is held by another verify or switchover",
                hint="run it again once that one is done (a hold lasts at most its lease)",
            )
        self.token = token
        self._renewed = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self._renewed > self.lease * _RENEW_SHARE:
            catalog_hold.renew(self.conn, self.name, self.token, self.lease)
            self._renewed = time.monotonic()

    def wait_for(self, state: str, what: str) -> Lsn | None:
        deadline = time.monotonic() + self.timeout
        while True:
            acked, lsn, present = catalog_hold.acknowledged(self.conn, self.name, self.token)
            if not present:
                raise PgferryError(
                    f"subscription {self.name!r}: the apply hold was replaced or released"
                    " by someone else",
                    hint="run one verify or switchover of a subscription at a time",
                )
            if acked == state:
                return lsn
            if time.monotonic() >= deadline:
                raise PgferryError(
                    f"subscription {self.name!r}: the apply worker did not {what} within"
                    f" {self.timeout:g} s; the hold is released",
                    hint="is pgferry run running for this subscriber database, and the"
                    " subscription replicating (pgferry status)? --timeout waits longer",
                )
            self.renew_if_due()
            time.sleep(_POLL)

    def release(self) -> None:
        with contextlib.suppress(psycopg.Error):
            catalog_hold.release(self.conn, self.name, self.token)


def _publisher_snapshot(
    repl: ReplicationConnection, holder: psycopg.Connection[Any], timeout: float
) -> tuple[Lsn, str]:
    """Step 3: L, and a snapshot name ``holder`` keeps importable. The slot's
    creation waits for the publisher's running transactions: at most ``timeout``."""
    slot = f"pgferry_verify_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    cancel = repl.pgconn.get_cancel()
    timer = threading.Timer(timeout, cancel.cancel)
    timer.start()
    try:
        info = repl.create_slot(slot, temporary=True, snapshot="export")
    except PgferryError as exc:
        if timer.is_alive():
            raise
        raise PgferryError(
            f"creating a temporary slot on the publisher took longer than {timeout:g} s"
            f" ({exc.message}); the hold is released",
            hint="it waits for the publisher's running transactions to end: look for long"
            " ones in pg_stat_activity; --timeout and --lease wait longer",
        ) from None
    finally:
        timer.cancel()
    assert info.snapshot_name is not None
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    holder.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(info.snapshot_name)}".encode())
    row = holder.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
    assert row is not None
    # (Closing the replication connection drops the temporary slot.)
    repl.close()
    return info.consistent_point, str(row[0])


@contextlib.contextmanager
def held_pair(
    subscriber_dsn: str,
    subscription: str,
    *,
    lease: float = DEFAULT_LEASE,
    timeout: float = DEFAULT_TIMEOUT,
    keep_held: bool = False,
) -> Iterator[Pair]:
    """See the module docstring."""
    with contextlib.ExitStack() as stack:
        catalog = stack.enter_context(connect.subscriber(subscriber_dsn))
        ensure_catalog(catalog)
        sub = check_subscription(catalog, subscription)
        # Every connection is opened before the worker is asked for anything: an
        # unreachable publisher is said at once, and the hold is not lengthened.
        holder_pub, repl = _publisher_session(stack, sub, timeout)
        check_not_in_error(sub)
        holder_sub = stack.enter_context(
            connect.session(subscriber_dsn, application_name="pgferry verify")
        )
        started = time.monotonic()
        requester = _Requester(catalog, subscription, lease, timeout)
        released = False
        try:
            requester.wait_for(catalog_hold.PAUSED, "pause")
            # (Within half the lease: it cannot be renewed meanwhile.)
            lsn, pub_snapshot = _publisher_snapshot(repl, holder_pub, min(timeout, lease / 2))
            if not catalog_hold.set_target(catalog, subscription, requester.token, lsn, lease):
                requester.wait_for(catalog_hold.HELD, "hold")  # (raises: it is gone)
            requester.wait_for(catalog_hold.HELD, f"reach {lsn}")
            holder_sub.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = holder_sub.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
            assert row is not None
            pair = Pair(
                lsn, pub_snapshot, str(row[0]), renew=requester.renew_if_due, token=requester.token
            )
            if not keep_held:
                requester.release()
                released = True
            pair.held_seconds = time.monotonic() - started
            try:
                yield pair
            finally:
                if not released:
                    requester.release()
                    released = True
                    pair.held_seconds = time.monotonic() - started
        finally:
            if not released:
                requester.release()
