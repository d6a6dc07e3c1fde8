"""The apply worker's side of the table sync handover (see
:mod:`pgferry.catalog.handover` for the protocol).

:class:`HandoverServer` runs between two remote transactions, with everything
applied so far committed: for each table whose sync worker finished its copy
(``f``), it gives the apply worker's position A (the end of the last remote
transaction processed, or a keepalive's position received between transactions)
and waits until the sync worker has caught up to it and handed the table over
(``s``); a table handed over at H becomes ready (``r``) once the apply worker's
position has reached H. Then the table filter reads the states again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pgferry.catalog import TableState, handover, store
from pgferry.protocol.lsn import Lsn
from pgferry.stream import ReplicationStream

from .applier import Applier
from .tables import SubscribedTables

logger = logging.getLogger("pgferry.apply")

#: Seconds between two looks at the handovers (and at the stream when it is
#: quiet), and while a table syncs: its handover is on the sync's critical path.
IDLE_INTERVAL = 0.5
SYNCING_INTERVAL = 0.1


class HandoverServer:
    def __init__(
        self,
        local: psycopg.Connection[Any],
        subscription: str,
        applier: Applier,
        tables: SubscribedTables,
        stream: ReplicationStream,
        position: Callable[[], Lsn],
        stopping: Callable[[], bool],
    ) -> None:
        """``position()``: the apply worker's position once everything applied so
        far is committed (see :meth:`serve`)."""
        self.local = local
        self.subscription = subscription
        self.applier = applier
        self.tables = tables
        self.stream = stream
        self.position = position
        self.stopping = stopping

    @property
    def interval(self) -> float:
        """Seconds between two looks at the handovers: shorter while a table syncs."""
        return SYNCING_INTERVAL if self.tables.syncing else IDLE_INTERVAL

    def serve(self) -> None:
        """Between transactions: serve the sync workers' handovers."""
        # The position given out must be committed: flush first, then ask. Every
        # remote transaction ending up to it is processed (applied, or skipped for
        # a table not ready), none after; a position taken before the flush would
        # leave the flushed transactions' changes of a syncing table to nobody.
        self.applier.flush()
        position = self.position()
        local, name = self.local, self.subscription
        for key, state in handover.states(local, name).items():
            if state.state != TableState.FINISHED:
                continue
            if state.catchup_lsn is None:
                # Give our position and wait for the sync worker to catch up to
                # it: meanwhile nothing of that table may pass us by.
                handover.set_catchup(local, name, key[0], key[1], position)
                logger.info(
                    "subscription %s: table %s.%s catches up to %s",
                    name,
                    key[0],
                    key[1],
                    position,
                    extra={"lsn": str(position)},
                )
            # With the position given before (by this worker's predecessor, which
            # stopped right there), wait all the same.
            self._wait(key)
        # Read again: a table just handed over is ready now, not at the next look.
        for key, state in handover.states(local, name).items():
            lsn = state.state_lsn
            if state.state == TableState.SYNCDONE and lsn is not None and position >= lsn:
                store.set_table_state(local, name, key[0], key[1], TableState.READY, position)
        self.tables.reload()
        self.applier.refilter()

    def _wait(self, key: tuple[str, str]) -> None:
        """Until the sync worker of ``key`` has handed the table over (``s``),
        keeping the publisher connection alive with status updates."""
        stream = self.stream
        while not self.stopping():
            state = handover.states(self.local, self.subscription).get(key)
            if state is None or state.state in (TableState.SYNCDONE, TableState.READY):
                return
            if time.monotonic() >= stream.next_status_time:
                stream.send_status()
            time.sleep(handover.POLL)
