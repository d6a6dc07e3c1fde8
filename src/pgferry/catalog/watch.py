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
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog import handover
from pgferry.catalog.schema import WAKE_CHANNEL


class CatalogWatch:
    """A LISTEN connection to the subscriber database (close it when done)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        # A notification that arrives while a query runs on this connection is
        # taken by psycopg, not left for changed(): remember it.
        self._noticed = False
        conn.add_notify_handler(self._notice)
        conn.execute(f"LISTEN {WAKE_CHANNEL}")

    def _notice(self, _notify: psycopg.Notify) -> None:
        self._noticed = True

    @classmethod
    def connect(cls, dsn: str) -> CatalogWatch:
        return cls(connect.subscriber(dsn))

    def changed(self) -> bool:
        """Whether a notification arrived since the last call (never waits)."""
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        found, self._noticed = self._noticed, False
        while pgconn.notifies() is not None:
            found = True
        return found

    def states(self, subscription: str) -> dict[tuple[str, str], handover.TableState]:
        """The subscription's table states, read on the watch's own connection."""
        return handover.states(self._conn, subscription)

    def close(self) -> None:
        self._conn.close()
