"""A watch on the catalog: has anything changed since the last look?

The catalog's triggers notify :data:`~pgferry.catalog.schema.WAKE_CHANNEL` at the
commit of every change to a subscription or its tables (see
:mod:`pgferry.catalog.schema`). :class:`CatalogWatch` listens on a connection of
its own, which stays idle between looks, so the server delivers each notification
to it as the change commits. :meth:`CatalogWatch.changed` then answers without a
round trip (it reads what already arrived on the socket), cheaply enough to ask
before every remote transaction, as native's apply worker takes in catalog
invalidations at the start of each one: a table added by a refresh, or removed,
is known before a transaction committed on the publisher after that refresh is
applied. The watch connection also reads the table states, so the worker's own
session (maybe busy with a batch) is not needed for that.

It listens on :data:`~pgferry.catalog.hold.HOLD_CHANNEL` too (verify's apply
hold): :meth:`CatalogWatch.hold_changed` answers for that channel alone, the
same way, and :meth:`CatalogWatch.wait` sleeps until a notification arrives.
The apply worker's wait for the publisher's data also ends when one arrives
(:meth:`CatalogWatch.fileno`), so an apply hold or a catalog change is taken in
at once, not at the end of that wait.
"""

from __future__ import annotations

import selectors
from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog import handover
from pgferry.catalog.hold import HOLD_CHANNEL
from pgferry.catalog.schema import WAKE_CHANNEL
from pgferry.stream import waiting


class CatalogWatch:
    """A LISTEN connection to the subscriber database (close it when done)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        # A notification that arrives while a query runs on this connection is
        # taken by psycopg, not left for changed(): remember it.
        self._noticed = False
        self._hold_noticed = False
        conn.add_notify_handler(self._notice)
        conn.execute(f"LISTEN {WAKE_CHANNEL}")
        conn.execute(f"LISTEN {HOLD_CHANNEL}")

    def _notice(self, notify: psycopg.Notify) -> None:
        self._mark(notify.channel)

    def _mark(self, channel: str) -> None:
        if channel == HOLD_CHANNEL:
            self._hold_noticed = True
        else:
            self._noticed = True

    def _drain(self) -> None:
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        while (notify := pgconn.notifies()) is not None:
            self._mark(notify.relname.decode())

    @classmethod
    def connect(cls, dsn: str) -> CatalogWatch:
        return cls(connect.subscriber(dsn))

    def changed(self) -> bool:
        """Whether a notification arrived since the last call (never waits)."""
        self._drain()
        found, self._noticed = self._noticed, False
        return found

    def hold_changed(self) -> bool:
        """Whether an apply hold changed since the last call (never waits)."""
        self._drain()
        found, self._hold_noticed = self._hold_noticed, False
        return found

    def wait(self, timeout: float) -> None:
        """Sleep until a notification arrives on the watch, or a handled signal
        (a worker's stop request, see :func:`pgferry.stream.waiting.wake_on_signals`),
        at most ``timeout`` s."""
        interrupt = waiting.interrupt_fd()
        with selectors.DefaultSelector() as sel:
            sel.register(self._conn.pgconn.socket, selectors.EVENT_READ)
            if interrupt is not None:
                sel.register(interrupt, selectors.EVENT_READ)
            ready = sel.select(max(0.0, timeout))
        if interrupt is not None and any(key.fd == interrupt for key, _ in ready):
            waiting.take_interrupt()

    def fileno(self) -> int:
        """The watch connection's socket: readable when a notification arrived
        (a replication stream's wait can end on it, see
        :meth:`pgferry.stream.connection.ReplicationStream.wake_on`)."""
        return self._conn.pgconn.socket

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The watch's connection (autocommit, idle between looks)."""
        return self._conn

    def states(self, subscription: str) -> dict[tuple[str, str], handover.TableState]:
        """The subscription's table states, read on the watch's own connection."""
        return handover.states(self._conn, subscription)

    def close(self) -> None:
        self._conn.close()
