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

Lines go to a binary file object; :attr:`JsonLinesWriter.written_lsn` is the end
LSN of the last transaction fully written, which the runner confirms only after
flushing the file.
"""

from __future__ import annotations

import json
from typing import IO, Any

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

_UNCHANGED = {"unchanged_toast": True}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _value(value: Value) -> Any:
    if value is None:
        return None
    if type(value) is bytes:
        return value.decode()
    if isinstance(value, UnchangedToast):
        return _UNCHANGED
    if isinstance(value, BinaryValue):
        return {"binary": value.hex()}
    raise TypeError(f"unexpected column value {value!r}")  # pragma: no cover


def _check(relation: Relation, values: tuple[Value, ...]) -> None:
    if len(values) != len(relation.columns):
        raise ProtocolError(
            f"a row of {relation.namespace}.{relation.name} has {len(values)} columns, "
            f"its Relation message lists {len(relation.columns)}",
            offset=0,
        )


def _row(relation: Relation, values: tuple[Value, ...]) -> dict[str, Any]:
    _check(relation, values)
    return {c.name: _value(v) for c, v in zip(relation.columns, values, strict=True)}


def _key(relation: Relation, values: tuple[Value, ...]) -> dict[str, Any]:
    _check(relation, values)
    return {c.name: _value(v) for c, v in zip(relation.columns, values, strict=True) if c.is_key}


def iso_time(pg_us: int) -> str:
    return to_datetime(pg_us).isoformat()


class JsonLinesWriter:
    """A :class:`~pgferry.assembler.TransactionConsumer` writing JSON lines."""

    def __init__(self, out: IO[bytes], relations: RelationCache, *, with_tx: bool = False) -> None:
        self.out = out
        self.relations = relations
        self.with_tx = with_tx
        self.written_lsn: Lsn = INVALID_LSN
        self.lines = 0
        self._tx_head: dict[str, Any] = {}

    def begin(self, tx: Transaction) -> None:
        self._tx_head = {
            "xid": tx.xid,
            "lsn": str(tx.commit_lsn),
            "commit_time": iso_time(tx.commit_time),
            "origin": tx.origin,
        }
        if self.with_tx:
            line = {"op": "begin", **self._tx_head}
            if tx.gid is not None:
                line["gid"] = tx.gid
            self._write(line)

    def change(self, tx: Transaction, change: Change) -> None:
        line: dict[str, Any]
        if isinstance(change, Insert):
            rel = self.relations.relation(change.relation_id)
            line = {"op": "insert", "schema": rel.namespace, "table": rel.name}
            line["new"] = _row(rel, change.new)
            line["old"] = None
            line.update(self._tx_head)
        elif isinstance(change, Update):
            rel = self.relations.relation(change.relation_id)
            line = {"op": "update", "schema": rel.namespace, "table": rel.name}
            line["new"] = _row(rel, change.new)
            line["old"] = self._old(rel, change.old_kind, change.old)
            line.update(self._tx_head)
        elif isinstance(change, Delete):
            rel = self.relations.relation(change.relation_id)
            line = {"op": "delete", "schema": rel.namespace, "table": rel.name}
            line["new"] = None
            line["old"] = self._old(rel, change.old_kind, change.old)
            line.update(self._tx_head)
        elif isinstance(change, Truncate):
            tables = []
            for relid in change.relation_ids:
                rel = self.relations.relation(relid)
                tables.append({"schema": rel.namespace, "table": rel.name})
            line = {
                "op": "truncate",
                "schema": None,
                "table": None,
                "new": None,
                "old": None,
                "tables": tables,
                "cascade": change.cascade,
                "restart_identity": change.restart_identity,
                **self._tx_head,
            }
        else:
            line = self._message_line(change)
            line.update(self._tx_head)
        self._write(line)

    @staticmethod
    def _old(
        rel: Relation, kind: str | None, old: tuple[Value, ...] | None
    ) -> dict[str, Any] | None:
        if old is None:
            return None
        return _key(rel, old) if kind == "K" else _row(rel, old)

    def commit(self, tx: Transaction, end_lsn: Lsn) -> None:
        if self.with_tx:
            self._write({"op": "commit", **self._tx_head, "end_lsn": str(end_lsn)})
        self.written_lsn = end_lsn

    def message(self, message: LogicalMessage) -> None:
        line = self._message_line(message)
        line.update({"xid": None, "lsn": str(message.lsn), "commit_time": None, "origin": None})
        self._write(line)

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

    def _write(self, line: dict[str, Any]) -> None:
        self.out.write(_dumps(line).encode())
        self.out.write(b"\n")
        self.lines += 1
