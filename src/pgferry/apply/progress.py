"""Durable progress of the apply worker: what may be confirmed to the publisher.

The publisher is told "flushed" only for remote transactions whose local commit
is durable (see :mod:`pgferry.pump` for the rules every consumer shares):

* with ``synchronous_commit`` on (or local, remote_write, remote_apply) a local
  commit is durable when it returns: the last applied remote LSN is confirmable;
* with it off (native's default for subscriptions), :class:`DurableProgress`
  pairs each applied remote LSN with the local WAL insert position after its
  commit and confirms it once the local WAL is flushed past that position, as
  native does; when the stream is idle it flushes that WAL itself (one small
  commit with ``synchronous_commit`` on: the worker's statistics row) rather than
  wait for the WAL writer, so the publisher learns the position at once;
* between transactions, with nothing waiting to be flushed, a keepalive's WAL
  end is confirmable too, so the slot does not hold WAL that carries nothing for
  the subscription.

It also writes the worker's statistics row (``pgferry.worker``, like
``pg_stat_subscription``), with the committed position ``subscription wait``
reads: every remote transaction committed before it is durably applied, even
when the slot's position is held back by a transaction kept whole; the same
statement adds the transactions and rows the applier committed since the last
report to the subscription's counters (see :mod:`pgferry.catalog.workers`), and
so does :meth:`DurableProgress.stopped` when the worker's row goes.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import psycopg

from pgferry.assembler import Assembler
from pgferry.catalog import workers
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.timestamps import to_datetime
from pgferry.pump import Pump

from .applier import Applier

_DURABLE_ON_COMMIT = {"on", "local", "remote_write", "remote_apply"}


def _wal_positions(local: psycopg.Connection[Any]) -> tuple[Lsn, Lsn]:
    """The subscriber's WAL insert and flush positions."""
    row = local.execute(
        "SELECT pg_catalog.pg_current_wal_insert_lsn()::text,"
        " pg_catalog.pg_current_wal_flush_lsn()::text"
    ).fetchone()
    assert row is not None
    return Lsn.parse(row[0]), Lsn.parse(row[1])


class DurableProgress:
    def __init__(
        self,
        local: psycopg.Connection[Any],
        subscription: str,
        applier: Applier,
        assembler: Assembler,
        pump: Pump,
        synchronous_commit: str,
    ) -> None:
        self.local = local
        self.subscription = subscription
        self.applier = applier
        self.assembler = assembler
        self.pump = pump
        self.durable_on_commit = synchronous_commit in _DURABLE_ON_COMMIT
        #: (remote end LSN, local WAL position at or after its commit), oldest first.
        self._unflushed: deque[tuple[Lsn, Lsn]] = deque()
        #: Every remote transaction committed before it is durably applied.
        self.committed = INVALID_LSN
        #: Changes were received since the last idle confirm.
        self.unconfirmed = False
        #: The applier's (transactions, rows) counters as last written.
        self._counted = (0, 0)

    def _totals(self) -> tuple[int, int]:
        return self.applier.transactions_applied, self.applier.rows_applied

    def _since(self, totals: tuple[int, int]) -> tuple[int, int]:
        """What the applier counted since the counters were last written."""
        return totals[0] - self._counted[0], totals[1] - self._counted[1]

    def report(self) -> None:
        """Write the worker's statistics row (and the counters)."""
        stream = self.pump.stream
        totals = self._totals()
        workers.report_worker(
            self.local,
            self.subscription,
            "",
            os.getpid(),
            stream.received_lsn,
            to_datetime(stream.last_server_time) if stream.last_server_time else None,
            stream.flush_lsn,
            max(self.committed, stream.flush_lsn),
            self._since(totals),
            self.assembler.spooled_bytes,
        )
        self._counted = totals

    def stopped(self) -> None:
        """The worker stops: remove its statistics row, writing the last counts."""
        totals = self._totals()
        workers.forget_worker(self.local, self.subscription, "", self._since(totals))
        self._counted = totals

    def confirm(self, idle: bool = False, report: bool = True) -> None:
        """Tell the publisher what is durably applied; ``idle``: nothing more has
        arrived, so flush the local WAL for it now; ``report``: also write the
        worker's row (not for a keepalive alone: that write is WAL, which a peer
        subscribed to this database would be told of in a keepalive, confirm and
        write in turn, and two such workers would keep each other busy)."""
        applier = self.applier
        if self.assembler.between_transactions:
            applier.flush()  # what is applied gets confirmed, and the worker row written
        applier.wait()  # the connection is used here
        durable = self._durable(idle)
        self.committed = max(self.committed, self.pump.confirm(durable, idle=not self._unflushed))
        if report and not applier.in_transaction:
            self.report()
        if idle:
            self.unconfirmed = bool(self._unflushed)

    def _durable(self, idle: bool) -> Lsn:
        """The last applied remote LSN whose local commit is durable."""
        applied = self.applier.applied_lsn
        if applied is None:
            return INVALID_LSN
        if self.durable_on_commit:
            return applied
        unflushed = self._unflushed
        inserted, flushed = _wal_positions(self.local)
        if not unflushed or unflushed[-1][0] != applied:
            unflushed.append((applied, inserted))
        if idle and not self.applier.in_transaction and unflushed[-1][1] > flushed:
            # Nothing more to apply: make what was applied durable now instead of
            # when the WAL writer gets to it. A commit flushes the WAL before it
            # only if it wrote some itself (an xid alone is not enough): the row.
            with self.local.transaction():
                self.local.execute("SET LOCAL synchronous_commit = on")
                self.report()
            flushed = _wal_positions(self.local)[1]
        durable = INVALID_LSN
        while unflushed and unflushed[0][1] <= flushed:
            durable = unflushed.popleft()[0]
        return durable
