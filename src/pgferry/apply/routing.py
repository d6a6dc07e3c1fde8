"""Routing: the local table a remote relation's change goes to, if it is applied.

The applier asks a :data:`TableFilter` whether this worker applies a table's
changes in a transaction (the table sync handover decides that, see
:mod:`.tables`), and resolves the remote relation against the subscriber's
catalog (:func:`~.mapping.build_map`). :class:`Routing` keeps both per relation
id: the filter's answer for one transaction, or for every transaction until
:meth:`Routing.refilter` (:attr:`Applies.ALWAYS`), and the relation's
:class:`~.mapping.TableMap`, built again when the publisher describes the
relation anew. So the filter is asked once per relation and transaction (once at
all for ALWAYS), and the catalog once per relation shape.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from pgferry.assembler import Transaction
from pgferry.protocol.messages import Relation
from pgferry.protocol.relations import RelationCache

from .mapping import TableMap


class Applies(enum.IntEnum):
    """What a :data:`TableFilter` may answer besides True and False."""

    #: In this transaction and every later one, until :meth:`Routing.refilter`:
    #: the applier does not ask again (it asks once per relation and transaction
    #: otherwise, which costs as much as the change when transactions are small).
    ALWAYS = 2


#: Decides whether this worker applies a table's change in a given transaction
#: (the table sync handover uses it); default: every table, always.
TableFilter = Callable[[Relation, Transaction], bool | Applies]


def all_tables(relation: Relation, tx: Transaction) -> Applies:
    return Applies.ALWAYS


#: A relation id's decision: (the relation, the transaction it was asked for or
#: None when it always applies, the table or None when not applied).
Decision = tuple[Relation, Transaction | None, TableMap | None]


class Routing:
    def __init__(self, relations: RelationCache, applies: TableFilter = all_tables) -> None:
        self.relations = relations
        self.applies = applies
        #: The decisions by relation id (the applier's hot path reads them).
        self.decided: dict[int, Decision] = {}
        self._maps: dict[int, TableMap] = {}

    def table(
        self,
        tx: Transaction,
        relation_id: int,
        build: Callable[[Relation], TableMap],
        reshaped: Callable[[int], None],
    ) -> TableMap | None:
        """The local table of the relation in ``tx``, None when ``tx`` does not
        apply it. ``build`` makes the map of a relation not mapped yet (or mapped
        in an older shape, after ``reshaped(relation_id)``)."""
        relation = self.relations.relation(relation_id)
        decided = self.decided.get(relation_id)
        if (
            decided is not None
            and decided[0] is relation
            and (decided[1] is None or decided[1] is tx)
        ):
            return decided[2]
        applies = self.applies(relation, tx)
        if not applies:
            self.decided[relation_id] = (relation, tx, None)
            return None
        table = self._maps.get(relation_id)
        if table is None or table.relation is not relation:
            if table is not None:
                reshaped(relation_id)
            table = self._maps[relation_id] = build(relation)
        self.decided[relation_id] = (relation, None if applies is Applies.ALWAYS else tx, table)
        return table

    def refilter(self) -> None:
        """The table filter may answer otherwise now: ask it again."""
        self.decided.clear()

    def reset(self) -> None:
        """Local tables may have changed (a replicated DDL): ask the filter again
        and map every relation anew."""
        self.decided.clear()
        self._maps.clear()
