"""The apply worker's side of the apply hold (``pgferry verify``; the protocol is in
:mod:`pgferry.catalog.hold`).

Contract (:class:`ApplyHold`, asked once per turn of the worker's loop):

* no catalog read on the hot path: the hold row is read again only when its
  channel notified the worker's :class:`~pgferry.catalog.watch.CatalogWatch`
  (no round trip to find out), or when the lease read last has run out;
* while a hold is requested, the pump's gate stops before the next remote
  transaction (no target yet) or before the first one whose commit LSN is at or
  after the target L: what stops is kept by the pump and delivered first once the
  hold is gone (see :class:`~pgferry.pump.Pump`). The hold is on commits: a
  transaction streamed as it arrives (``streaming = parallel``) may go on
  receiving changes on its side session, its commit waits. Batch and exact apply
  alike commit everything applied before acknowledging;
* ``paused`` is acknowledged between transactions with everything applied
  committed; ``held`` at L once the pump stopped before a transaction at or after
  L, or a keepalive between transactions, or the last applied commit, reached L;
* while held, the worker sleeps on the watch (a release or a renewal wakes it),
  keeps the walsender's status going, and goes on at once when the row is gone,
  replaced, or its lease ran out (a requester that died holds nothing longer
  than the lease); a request whose lease ran out is never honoured again, even
  renewed (what it waited for is applied past), so its requester times out
  rather than compare a pair that is not one.
"""

from __future__ import annotations

import logging
import time

from pgferry.catalog import hold as catalog_hold
from pgferry.catalog.watch import CatalogWatch
from pgferry.protocol.lsn import Lsn
from pgferry.pump import Pump

from .applier import Applier

logger = logging.getLogger("pgferry.apply")

#: Longest sleep while held before looking at the lease and the stream again.
HELD_SLEEP = 0.2


class ApplyHold:
    def __init__(self, watch: CatalogWatch, subscription: str) -> None:
        self.watch = watch
        self.subscription = subscription
        self.request: catalog_hold.Hold | None = None
        self._expires = 0.0
        #: (token, target) acknowledged, and how.
        self._acked: tuple[str, Lsn | None, str] | None = None
        #: Requests whose lease ran out: never honoured again.
        self._lapsed: set[str] = set()
        self._read()

    def _read(self) -> None:
        self.request = catalog_hold.current(self.watch.conn, self.subscription)
        if self.request is not None and self.request.token in self._lapsed:
            # Applied on after its lease ran out: this request's pair is lost.
            self.request = None
        if self.request is not None:
            self._expires = time.monotonic() + self.request.remaining
            logger.debug(
                "subscription %s: apply hold %s (target %s)",
                self.subscription,
                self.request.token,
                self.request.target,
            )

    def stops(self, position: Lsn) -> bool:
        """The pump's gate: whether a transaction delivered at ``position`` waits."""
        request = self.request
        return request is not None and (request.target is None or position >= request.target)

    def held(self, pump: Pump, applier: Applier) -> bool:
        """Look at the hold (see the module docstring); True while the worker is
        held and has nothing to do (it slept a little on the watch)."""
        if self.watch.hold_changed():
            self._read()
        elif self.request is not None and time.monotonic() >= self._expires:
            logger.warning(
                "subscription %s: the apply hold's lease ran out; applying again",
                self.subscription,
            )
            self._lapsed.add(self.request.token)
            self.request = None
        request = self.request
        if request is None:
            pump.gate = None
            return False
        pump.gate = self.stops
        between = pump.assembler.between_transactions
        state = self._reached(request, pump, applier) if between else None
        if state is None:
            if pump.held_at is None or not self.stops(pump.held_at):
                return False
            # Stopped where nothing can be acknowledged: wait for the requester.
            self._sleep(pump)
            return True
        acked = (request.token, request.target, state)
        if self._acked != acked:
            applier.flush()
            position = request.target if request.target is not None else applier.applied_lsn
            catalog_hold.acknowledge(
                self.watch.conn, self.subscription, request.token, state, position
            )
            self._acked = acked
            logger.info(
                "subscription %s: apply %s at %s",
                self.subscription,
                state,
                position or "its start position",
            )
        self._sleep(pump)
        return True

    def _sleep(self, pump: Pump) -> None:
        pump.stream.send_status_if_due()
        self.watch.wait(min(HELD_SLEEP, max(0.0, self._expires - time.monotonic())))

    @staticmethod
    def _reached(request: catalog_hold.Hold, pump: Pump, applier: Applier) -> str | None:
        target = request.target
        if target is None:
            return catalog_hold.PAUSED
        if pump.held_at is not None and pump.held_at >= target:
            return catalog_hold.HELD
        if pump.idle_lsn >= target:
            return catalog_hold.HELD
        if applier.applied_lsn is not None and applier.applied_lsn >= target:
            return catalog_hold.HELD
        return None
