"""Committed transactions -> one JSON object per line (the ``pgferry stream`` format).

Every change line has the keys ``op`` (insert, update, delete, truncate, message;
begin and commit too when ``with_tx``), ``schema``, ``table``, ``new``, ``old``,
``xid``, ``lsn`` (the commit LSN as ``X/Y``), ``commit_time`` (ISO 8601, UTC) and
``origin``. Values are PostgreSQL's text output as strings, SQL NULL is ``null``,
a TOASTed value the UPDATE did not change is ``{"unchanged_toast": true}``, and a
value received in binary form (``--binary``) is ``{"binary": "<hex>"}``.

``old`` is ``null`` when the publisher sent no old row (UPDATE that did not change
the replica identity), the replica identity columns for ``K`` (DEFAULT or USING
INDEX), or the whole old row for ``O`` (REPLICA IDENTITY FULL).

Lines go to a binary file object, in batches; :attr:`JsonLinesWriter.written_lsn`
is the end LSN of the last transaction whose lines were all produced, and the
runner confirms it only after :meth:`JsonLinesWriter.flush`.

This is the hot path of ``pgferry stream``: row lines are assembled from JSON
fragments encoded once per relation (keys, schema, table) and once per
transaction (xid, LSN, time, origin); only the values are escaped per row, with
the json module's C string encoder. The output is the same as ``json.dumps``
would give for the equivalent object.
"""

from __future__ import annotations

import json
from typing import IO, Any, cast

from pgferry.assembler import Transaction
from pgferry.errors import ProtocolError
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.messages import (
    BinaryValue,
    Change,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    UnchangedToast,
    Update,
    Value,
)
from pgferry.protocol.relations import RelationCache
from pgferry.protocol.timestamps import to_datetime

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_string: Any = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring
_UNCHANGED_JSON = '{"unchanged_toast":true}'


def _value_json(value: Value) -> str:
    """The JSON text of one column value (the slow path: not a plain text value)."""
    if value is None:
        return "null"
    if isinstance(value, UnchangedToast):
        return _UNCHANGED_JSON
    if isinstance(value, BinaryValue):
        return '{"binary":"' + value.hex() + '"}'
    return str(_string(value.decode()))


class _Shape:
    """JSON fragments of one Relation message, built once."""

    __slots__ = (
        "delete_head",
        "insert_head",
        "is_key",
        "keys",
        "relation",
        "update_head",
    )

    def __init__(self, relation: Relation) -> None:
        self.relation = relation
        where = f'"schema":{_dumps(relation.namespace)},"table":{_dumps(relation.name)}'
        self.insert_head = '{"op":"insert",' + where + ',"new":'
        self.update_head = '{"op":"update",' + where + ',"new":'
        self.delete_head = '{"op":"delete",' + where + ',"new":null,"old":'
        self.keys = tuple(_dumps(c.name) + ":" for c in relation.columns)
        self.is_key = tuple(c.is_key for c in relation.columns)

    def row(self, values: tuple[Value, ...]) -> str:
        keys = self.keys
        if len(values) != len(keys):
            self._mismatch(values)
        parts = []
        for key, value in zip(keys, values, strict=True):
            if type(value) is bytes:
                parts.append(key + _string(value.decode()))
            else:
                parts.append(key + _value_json(value))
        return "{" + ",".join(parts) + "}"

    def key(self, values: tuple[Value, ...]) -> str:
        if len(values) != len(self.keys):
            self._mismatch(values)
        parts = [
            key + _value_json(value)
            for key, is_key, value in zip(self.keys, self.is_key, values, strict=True)
            if is_key
        ]
        return "{" + ",".join(parts) + "}"

    def old(self, kind: str | None, values: tuple[Value, ...] | None) -> str:
        if values is None:
            return "null"
        return self.key(values) if kind == "K" else self.row(values)

    def _mismatch(self, values: tuple[Value, ...]) -> None:
        rel = self.relation
        raise ProtocolError(
            f"a row of {rel.namespace}.{rel.name} has {len(values)} columns, "
            f"its Relation message lists {len(rel.columns)}",
            offset=0,
        )


def iso_time(pg_us: int) -> str:
    return to_datetime(pg_us).isoformat()


class JsonLinesWriter:
    """A :class:`~pgferry.assembler.TransactionConsumer` writing JSON lines."""

    def __init__(
        self,
        out: IO[bytes],
        relations: RelationCache,
        *,
        with_tx: bool = False,
    ) -> None:
        self.out = out
        self.relations = relations
        self.with_tx = with_tx
        self.written_lsn: Lsn = INVALID_LSN
        self.lines = 0
        self._tx_fields: dict[str, Any] = {}
        self._tail = "}"  # ',"xid":...,"origin":...}' of the current transaction
        self._shapes: dict[int, _Shape] = {}
        self._buffer: list[str] = []  # lines not yet handed to ``out``

    def _shape(self, relation_id: int) -> _Shape:
        relation = self.relations.relation(relation_id)
        shape = self._shapes.get(relation_id)
        if shape is None or shape.relation is not relation:
            shape = self._shapes[relation_id] = _Shape(relation)
        return shape

    def begin(self, tx: Transaction) -> None:
        fields = {
            "xid": tx.xid,
            "lsn": str(tx.commit_lsn),
            "commit_time": iso_time(tx.commit_time),
            "origin": tx.origin,
        }
        self._tx_fields = fields
        self._tail = "," + _dumps(fields)[1:]
        if self.with_tx:
            line = {"op": "begin", **fields}
            if tx.gid is not None:
                line["gid"] = tx.gid
            self._write(_dumps(line))

    def change(self, tx: Transaction, change: Change) -> None:
        t = type(change)
        # Exact type tests first: the common row changes take the shortest path.
        if t is Update:
            upd = cast(Update, change)
            shape = self._shape(upd.relation_id)
            text = (
                shape.update_head
                + shape.row(upd.new)
                + ',"old":'
                + shape.old(upd.old_kind, upd.old)
                + self._tail
            )
        elif t is Insert:
            ins = cast(Insert, change)
            shape = self._shape(ins.relation_id)
            text = shape.insert_head + shape.row(ins.new) + ',"old":null' + self._tail
        elif isinstance(change, Delete):
            shape = self._shape(change.relation_id)
            text = shape.delete_head + shape.old(change.old_kind, change.old) + self._tail
        elif isinstance(change, Truncate):
            tables = []
            for relid in change.relation_ids:
                rel = self.relations.relation(relid)
                tables.append({"schema": rel.namespace, "table": rel.name})
            text = _dumps(
                {
                    "op": "truncate",
                    "schema": None,
                    "table": None,
                    "new": None,
                    "old": None,
                    "tables": tables,
                    "cascade": change.cascade,
                    "restart_identity": change.restart_identity,
                    **self._tx_fields,
                }
            )
        else:
            assert isinstance(change, LogicalMessage)
            text = _dumps({**self._message_line(change), **self._tx_fields})
        self._write(text)

    def commit(self, tx: Transaction, end_lsn: Lsn) -> None:
        if self.with_tx:
            self._write(_dumps({"op": "commit", **self._tx_fields, "end_lsn": str(end_lsn)}))
        self.written_lsn = end_lsn

    def message(self, message: LogicalMessage) -> None:
        line = self._message_line(message)
        line.update({"xid": None, "lsn": str(message.lsn), "commit_time": None, "origin": None})
        self._write(_dumps(line))

    @staticmethod
    def _message_line(message: LogicalMessage) -> dict[str, Any]:
        try:
            content: Any = message.content.decode()
        except UnicodeDecodeError:
            content = {"binary": message.content.hex()}
        return {
            "op": "message",
            "schema": None,
            "table": None,
            "new": None,
            "old": None,
            "transactional": message.transactional,
            "prefix": message.prefix,
            "content": content,
            "message_lsn": str(message.lsn),
        }

    def _write(self, text: str) -> None:
        buffer = self._buffer
        buffer.append(text)
        if len(buffer) >= 1024:
            self._drain()

    def _drain(self) -> None:
        if self._buffer:
            self.lines += len(self._buffer)
            self._buffer.append("")  # the last line's newline
            self.out.write("\n".join(self._buffer).encode())
            self._buffer = []

    def flush(self) -> None:
        """Write out buffered lines and flush the file: everything up to
        :attr:`written_lsn` has then reached the output."""
        self._drain()
        self.out.flush()
