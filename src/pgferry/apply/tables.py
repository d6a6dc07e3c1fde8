"""Which tables the apply worker applies, in which transactions: the table filter.

:class:`SubscribedTables` holds the subscription's table states (see
:mod:`pgferry.catalog.handover`) and answers the applier's
:data:`~pgferry.apply.routing.TableFilter`:

* a ready table (``r``): always, until the states are read again;
* a table just handed over by its sync worker (``s`` at LSN H): in the
  transactions that end at or after H;
* any other table, or one the subscription does not have: not.

The states are read again before a remote transaction whenever the catalog
changed since the last look (:class:`~pgferry.catalog.watch.CatalogWatch`,
without a round trip), and once per transaction for a table not known at all (a
refresh may have added it just now), so a change committed on the publisher after
a refresh is applied as the refresh says, as native's apply worker takes in
catalog invalidations at the start of each transaction.
"""

from __future__ import annotations

from pgferry.assembler import Transaction
from pgferry.catalog import TableState, handover
from pgferry.catalog.watch import CatalogWatch
from pgferry.protocol.messages import Relation

from .routing import Applies


class SubscribedTables:
    def __init__(self, watch: CatalogWatch, subscription: str) -> None:
        self.watch = watch
        self.subscription = subscription
        self.states = watch.states(subscription)
        self._reread_for: Transaction | None = None

    @property
    def syncing(self) -> bool:
        """Some table is not ready yet."""
        return any(s.state != TableState.READY for s in self.states.values())

    def reload(self) -> None:
        self.states = self.watch.states(self.subscription)

    def adopt(self, states: dict[tuple[str, str], handover.TableState]) -> None:
        """Take the states the apply session wrote itself and has not committed
        yet (a replicated DDL that created, renamed or dropped a table): the
        watch would not see them before the commit."""
        self.states = states

    def changed(self) -> bool:
        """Before a remote transaction: True when the states were read again
        because the catalog changed (the applier then asks the filter again)."""
        if not self.watch.changed():
            return False
        self.reload()
        return True

    def applies(self, relation: Relation, tx: Transaction) -> bool | Applies:
        key = (relation.namespace, relation.name)
        state = self.states.get(key)
        if state is None and self._reread_for is not tx:
            # Not ours as far as we know: read again, once per transaction.
            self._reread_for = tx
            self.reload()
            state = self.states.get(key)
        if state is None:
            return False
        if state.state == TableState.READY:
            return Applies.ALWAYS
        return (
            state.state == TableState.SYNCDONE
            and state.state_lsn is not None
            and tx.commit_lsn >= state.state_lsn
        )
