"""The pump: one replication stream into an assembler, and how far it may be confirmed.

Every stream consumer (the apply worker, a table sync worker's catch-up,
``pgferry stream``) is the same pipeline, stream → pump → assembler → consumer →
progress; :class:`Pump` is the part they share:

* :meth:`Pump.pump` reads what has arrived (waiting up to a timeout for the
  first message), decodes each XLogData and feeds it to the assembler, and
  remembers the WAL end of every keepalive received between two transactions
  (:attr:`Pump.idle_lsn`): nothing before it is pending, so it may be confirmed
  once what was applied before it is durable;
* with a :class:`Bound`, it delivers only the transactions that reach the
  consumer up to the bound (tested before a transaction's first message, see
  :func:`~pgferry.assembler.delivery_position`, so half a transaction is never
  delivered), and sets :attr:`Pump.finished` once the stream has passed the
  bound between two transactions;
* with a :attr:`Pump.gate` (the apply hold, see :mod:`pgferry.apply.hold`), it
  stops before a transaction whose delivery position the gate refuses, keeps it
  and the rest of what was read (:attr:`Pump.held_at` says where), reads nothing
  more while the gate refuses it, and delivers it first once the gate allows it
  or is removed;
* :meth:`Pump.confirm` tells the publisher a position the consumer has made
  durable, never past :meth:`~pgferry.assembler.Assembler.restart_floor` (a
  streamed or prepared transaction still waiting for its outcome is received
  again after a restart).

What "durable" means is the consumer's business (a local commit flushed, lines
written and flushed); the pump only keeps the rules every consumer shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from pgferry.assembler import Assembler, delivery_position
from pgferry.protocol.envelope import PrimaryKeepalive, XLogData
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.messages import Message
from pgferry.protocol.pgoutput import PgoutputDecoder
from pgferry.stream import ReplicationStream

#: Most stream messages fed in one call of :meth:`Pump.pump`.
READ_BATCH = 2000


@dataclass(frozen=True)
class Bound:
    """Where a bounded stream ends: the transactions delivered at ``lsn`` or before
    (``inclusive``), or strictly before it."""

    lsn: Lsn
    inclusive: bool

    def excludes(self, position: Lsn) -> bool:
        """Whether a transaction delivered at ``position`` lies beyond the bound."""
        return position > self.lsn if self.inclusive else position >= self.lsn


class Pumped(NamedTuple):
    """What one :meth:`Pump.pump` call read."""

    #: Stream messages read (XLogData and keepalives).
    items: int
    #: Some of them were XLogData.
    data: bool


class Pump:
    def __init__(
        self, stream: ReplicationStream, assembler: Assembler, *, bound: Bound | None = None
    ) -> None:
        self.stream = stream
        self.assembler = assembler
        self.decoder = PgoutputDecoder(stream.protocol_version)
        self.bound = bound
        #: A keepalive's WAL end received between two transactions.
        self.idle_lsn = INVALID_LSN
        #: The bound is passed: nothing more is delivered.
        self.finished = False
        #: Says whether a transaction delivered at a position must wait (True).
        self.gate: Callable[[Lsn], bool] | None = None
        self._held: list[XLogData | PrimaryKeepalive] = []
        self._held_msg: Message | None = None
        #: The delivery position of the transaction the gate stopped, if any.
        self.held_at: Lsn | None = None

    def pump(self, timeout: float, max_items: int = READ_BATCH) -> Pumped:
        """Read and feed what has arrived, waiting up to ``timeout`` s for it."""
        if self.finished:
            return Pumped(0, False)
        gate = self.gate
        if self.held_at is not None:
            if gate is not None and gate(self.held_at):
                return Pumped(0, False)
            batch, first = self._held, self._held_msg
            self._held, self._held_msg, self.held_at = [], None, None
            return self._feed_gated(batch, gate or _never, first)
        batch = self.stream.read_batch(timeout=timeout, max_items=max_items)
        if gate is not None and self.bound is None:
            return self._feed_gated(batch, gate, None)
        if self.bound is not None:
            return self._feed_bounded(batch, self.bound)
        assembler = self.assembler
        feed, decode = assembler.feed, self.decoder.decode
        data = False
        for item in batch:
            if type(item) is XLogData:
                payload = item.payload
                feed(decode(payload), payload, item.data_start)
                data = True
            elif assembler.between_transactions:
                assert isinstance(item, PrimaryKeepalive)
                self.idle_lsn = item.wal_end
        return Pumped(len(batch), data)

    def _feed_gated(
        self,
        batch: list[XLogData | PrimaryKeepalive],
        gate: Callable[[Lsn], bool],
        first: Message | None,
    ) -> Pumped:
        """Feed ``batch`` (its first message already decoded as ``first``, if
        given) up to a transaction the gate stops; keep that one and the rest."""
        assembler = self.assembler
        data = False
        for index, item in enumerate(batch):
            if type(item) is XLogData:
                payload = item.payload
                msg = first if index == 0 and first is not None else self.decoder.decode(payload)
                position = delivery_position(msg)
                if position is not None and gate(position):
                    self._held, self._held_msg, self.held_at = batch[index:], msg, position
                    return Pumped(index, data)
                assembler.feed(msg, payload, item.data_start)
                data = True
            elif assembler.between_transactions:
                assert isinstance(item, PrimaryKeepalive)
                self.idle_lsn = item.wal_end
        return Pumped(len(batch), data)

    def _feed_bounded(self, batch: list[XLogData | PrimaryKeepalive], bound: Bound) -> Pumped:
        assembler = self.assembler
        data = False
        for item in batch:
            if type(item) is XLogData:
                payload = item.payload
                msg = self.decoder.decode(payload)
                position = delivery_position(msg)
                if position is not None and bound.excludes(position):
                    self.finished = True
                    break
                assembler.feed(msg, payload, item.data_start)
                data = True
                # (A Commit's data_start is the transaction's end LSN.)
                if assembler.between_transactions and item.data_start >= bound.lsn:
                    self.finished = True
                    break
            elif assembler.between_transactions:
                assert isinstance(item, PrimaryKeepalive)
                self.idle_lsn = item.wal_end
                if item.wal_end >= bound.lsn:
                    self.finished = True
                    break
        return Pumped(len(batch), data)

    def confirm(self, durable: Lsn, *, idle: bool = True) -> Lsn:
        """Confirm ``durable`` (and, with ``idle``, the keepalive position if it is
        further), but never past the restart floor; sends the status at once when
        the position moved. Returns the position before the floor: every
        transaction committed before it is durable."""
        candidate = durable
        if idle and self.idle_lsn > candidate:
            candidate = self.idle_lsn
        committed = candidate
        floor = self.assembler.restart_floor()
        if floor is not None and floor < candidate:
            candidate = floor
        stream = self.stream
        if candidate > stream.flush_lsn:
            stream.confirm(candidate)
            # Now (at most once per confirm interval), not at the next status
            # interval: the slot releases WAL sooner, a restart re-sends less.
            stream.send_status()
        return committed


def _never(_position: Lsn) -> bool:
    return False
