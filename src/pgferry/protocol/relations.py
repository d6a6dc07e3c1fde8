"""The relation and type cache a pgoutput consumer must keep.

Change messages name their table only by OID; the publisher sends a Relation
message before the first change to a table in a session, and again whenever the
table's definition changed (ALTER TABLE) or after a reconnect. Type messages
describe non-built-in types the same way. The cache keeps the latest of each, so
a consumer can always resolve a change's columns.
"""

from __future__ import annotations

from collections.abc import Callable

from pgferry.errors import ProtocolError
from pgferry.protocol.messages import Relation, Type


class RelationCache:
    """Latest Relation and Type message seen per OID."""

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._types: dict[int, Type] = {}
        #: The table of a relation OID, or None: for a hot path that checks it
        #: has the latest (a C call, no frame of its own).
        self.get: Callable[[int], Relation | None] = self._relations.get

    def update(self, message: Relation | Type) -> None:
        if isinstance(message, Relation):
            self._relations[message.relation_id] = message
        else:
            self._types[message.type_oid] = message

    def relation(self, relation_id: int) -> Relation:
        """The table a change refers to; a change before its Relation is a protocol error."""
        try:
            return self._relations[relation_id]
        except KeyError:
            raise ProtocolError(
                f"change for relation OID {relation_id} arrived before its Relation message",
                offset=0,
            ) from None

    def type(self, type_oid: int) -> Type | None:
        """The Type message for a non-built-in type, if one was sent."""
        return self._types.get(type_oid)

    def __contains__(self, relation_id: int) -> bool:
        return relation_id in self._relations

    def __len__(self) -> int:
        return len(self._relations)
