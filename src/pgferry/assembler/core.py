"""The transaction assembler: decoded pgoutput messages -> whole transactions.

Contract: feed every decoded message, in arrival order, to :meth:`Assembler.feed`
(with its raw payload and WAL position). The assembler calls its
:class:`TransactionConsumer` with committed transactions only, in commit order,
each as ``begin(tx)``, its changes, ``commit(tx, end_lsn)``:

* plain transactions pass straight through (the publisher sends them only after
  their commit), so nothing is buffered;
* streamed transactions (Stream Start .. Stream Stop chunks) are spooled and
  replayed at Stream Commit, or dropped at Stream Abort; a subtransaction's abort
  (ROLLBACK TO SAVEPOINT) drops just its changes. With a :class:`StreamConsumer`
  that takes it at its first chunk, a streamed transaction is instead handed over
  as it arrives (its changes, its subtransactions' aborts, its end), not spooled;
* two-phase transactions (Begin Prepare .. Prepare, or Stream Prepare) are spooled
  and replayed at COMMIT PREPARED with that commit's LSN and time, or dropped at
  ROLLBACK PREPARED;
* non-transactional logical messages go to ``message()`` at once.

Relation and Type messages update :attr:`Assembler.relations` when pgoutput counts
them as delivered: at once outside streaming (even inside a prepared transaction:
pgoutput describes a relation once per session whatever that transaction's fate),
and at replay for a streamed transaction (pgoutput marks them sent only at Stream
Commit; after Stream Prepare or an abort, later transactions get their own). So
the consumer can always resolve a change's columns when it receives it.

Spools are bounded in memory (see :mod:`.spool`). :meth:`Assembler.restart_floor`
tells how far a consumer may confirm: never past the start of a transaction that is
still pending, so a restart gets it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from pgferry.errors import ProtocolError
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import (
    Begin,
    BeginPrepare,
    Change,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from pgferry.protocol.pgoutput import PgoutputDecoder
from pgferry.protocol.relations import RelationCache

from .spool import DEFAULT_MEMORY_LIMIT, Spool

logger = logging.getLogger("pgferry.assembler")


class Transaction(NamedTuple):
    """A committed remote transaction as the consumer sees it.

    ``commit_lsn`` and ``commit_time`` are those of the commit record (for a
    two-phase transaction, of COMMIT PREPARED); ``gid`` is set for two-phase ones.
    """

    xid: int
    commit_lsn: Lsn
    commit_time: int
    origin: str | None
    origin_lsn: Lsn | None
    gid: str | None
    streamed: bool


class StreamConsumer(Protocol):
    """Takes streamed transactions while they arrive, before their outcome is known.

    ``stream_open`` is asked at a transaction's first chunk; if it says no, that
    transaction is spooled and replayed to the :class:`TransactionConsumer` as
    usual. Otherwise every later chunk starts with ``stream_resume``, its messages
    (Origin, Relation, Type and changes, whose ``xid`` is the subtransaction's) go
    to ``stream_message``, and it ends with ``stream_commit`` or, for the
    transaction (``subxid == xid``) or one of its subtransactions, ``stream_abort``.
    """

    def stream_open(self, xid: int, lsn: Lsn) -> bool: ...

    def stream_resume(self, xid: int) -> None: ...

    def stream_message(self, xid: int, msg: Message) -> None: ...

    def stream_abort(self, xid: int, subxid: int) -> None: ...

    def stream_commit(self, tx: Transaction, end_lsn: Lsn) -> None: ...


class TransactionConsumer(Protocol):
    def begin(self, tx: Transaction) -> None: ...

    def change(self, tx: Transaction, change: Change) -> None: ...

    def commit(self, tx: Transaction, end_lsn: Lsn) -> None: ...

    def message(self, message: LogicalMessage) -> None:
        """A non-transactional logical message."""
        ...


@dataclass
class _Pending:
    """A transaction whose outcome is not known yet (streamed or prepared)."""

    xid: int
    first_lsn: Lsn
    spool: Spool
    streamed: bool
    origin: str | None = None
    origin_lsn: Lsn | None = None
    gid: str | None = None
    subxids: set[int] = field(default_factory=set)
    #: Handed to the StreamConsumer as it arrives (not spooled).
    live: bool = False
    #: Its Relation and Type messages, for the cache at its commit (live only).
    metadata: list[Relation | Type] = field(default_factory=list)


class Assembler:
    """See the module docstring. One instance per replication session."""

    def __init__(
        self,
        consumer: TransactionConsumer,
        protocol_version: int,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        relations: RelationCache | None = None,
        streams: StreamConsumer | None = None,
    ) -> None:
        self.consumer = consumer
        self.streams = streams
        self.protocol_version = protocol_version
        self.memory_limit = memory_limit
        self.relations = relations if relations is not None else RelationCache()
        # The plain transaction being received: its Begin, and whether begin() was
        # called yet (it waits for a possible Origin message right after Begin).
        self._begin: Begin | None = None
        self._tx: Transaction | None = None
        self._origin: Origin | None = None
        # Streamed transactions by toplevel xid, prepared ones by gid.
        self._streams: dict[int, _Pending] = {}
        self._stream_xid: int | None = None
        self._prepare: _Pending | None = None  # Begin Prepare .. Prepare in progress
        self._prepared: dict[str, _Pending] = {}
        self._handlers: dict[type, Callable[[Any, Lsn], None]] = {
            Insert: self._change,
            Update: self._change,
            Delete: self._change,
            Truncate: self._change,
            LogicalMessage: self._logical_message,
            Begin: self._open_plain,
            Commit: self._commit_plain,
            Relation: self._metadata,
            Type: self._metadata,
            Origin: self._origin_message,
            StreamStart: self._stream_start,
            StreamStop: self._stream_stop,
            StreamCommit: self._stream_commit,
            StreamAbort: self._stream_abort,
            BeginPrepare: self._begin_prepare,
            Prepare: self._end_prepare,
            StreamPrepare: self._stream_prepare,
            CommitPrepared: self._commit_prepared,
            RollbackPrepared: self._rollback_prepared,
        }

    # -- state the consumer's progress depends on ------------------------------

    @property
    def idle(self) -> bool:
        """No transaction is being received or waits for its outcome."""
        return (
            self._begin is None
            and self._prepare is None
            and not self._streams
            and not self._prepared
        )

    @property
    def between_transactions(self) -> bool:
        """No message of any transaction is being received right now (pending
        streamed or prepared transactions may still wait for their outcome)."""
        return self._begin is None and self._prepare is None and self._stream_xid is None

    @property
    def spooled_bytes(self) -> int:
        """The bytes held in spools by pending streamed and prepared transactions."""
        pending = [*self._streams.values(), *self._prepared.values()]
        if self._prepare is not None:
            pending.append(self._prepare)
        return sum(p.spool.nbytes for p in pending)

    def restart_floor(self) -> Lsn | None:
        """The lowest position a restart must replay from, if anything is pending."""
        firsts = [p.first_lsn for p in self._streams.values()]
        firsts += [p.first_lsn for p in self._prepared.values()]
        if self._prepare is not None:
            firsts.append(self._prepare.first_lsn)
        return min(firsts) if firsts else None

    @property
    def pending_prepared(self) -> list[str]:
        return list(self._prepared)

    # -- input -----------------------------------------------------------------

    def feed(self, msg: Message, payload: bytes, lsn: Lsn) -> None:
        """Take the next message (its raw ``payload`` and XLogData position)."""
        kind = type(msg)
        # Inside a streamed block or a prepared transaction, everything but the
        # closing framing message is spooled.
        if self._stream_xid is not None and kind is not StreamStop:
            self._feed_stream(msg, payload)
        elif self._prepare is not None and kind is not Prepare:
            self._feed_prepare(msg, payload)
        else:
            self._handlers[kind](msg, lsn)

    def _change(self, msg: Change, lsn: Lsn) -> None:
        self.consumer.change(self._tx or self._current(msg), msg)

    def _logical_message(self, msg: LogicalMessage, lsn: Lsn) -> None:
        if msg.transactional:
            self._change(msg, lsn)
        else:
            self.consumer.message(msg)

    def _metadata(self, msg: Relation | Type, lsn: Lsn) -> None:
        self.relations.update(msg)

    def _origin_message(self, msg: Origin, lsn: Lsn) -> None:
        if self._begin is None or self._tx is not None:
            raise ProtocolError("Origin message outside the start of a transaction", offset=0)
        self._origin = msg

    def _stream_stop(self, msg: StreamStop, lsn: Lsn) -> None:
        self._stream_xid = None

    # -- plain transactions ------------------------------------------------------

    def _open_plain(self, msg: Begin, lsn: Lsn) -> None:
        if self._begin is not None:
            raise ProtocolError(
                f"Begin of xid {msg.xid} inside transaction {self._begin.xid}", offset=0
            )
        self._begin = msg
        self._tx = None
        self._origin = None

    def _current(self, msg: Message) -> Transaction:
        tx = self._tx
        if tx is not None:
            return tx
        begin = self._begin
        if begin is None:
            raise ProtocolError(f"{type(msg).__name__} outside a transaction", offset=0)
        origin = self._origin
        tx = Transaction(
            begin.xid,
            begin.final_lsn,
            begin.commit_time,
            origin.name if origin else None,
            origin.origin_lsn if origin else None,
            None,
            False,
        )
        self._tx = tx
        self.consumer.begin(tx)
        return tx

    def _commit_plain(self, msg: Commit, lsn: Lsn) -> None:
        tx = self._current(msg)
        self.consumer.commit(tx, msg.end_lsn)
        self._begin = None
        self._tx = None
        self._origin = None

    # -- streamed transactions ---------------------------------------------------

    def _stream_start(self, msg: StreamStart, lsn: Lsn) -> None:
        if self._begin is not None:
            raise ProtocolError("Stream Start inside a plain transaction", offset=0)
        pending = self._streams.get(msg.xid)
        if pending is None:
            pending = _Pending(msg.xid, lsn, Spool(self.memory_limit), streamed=True)
            # Only from its first chunk: a stream picked up in its middle (never
            # the case after a clean start) is spooled.
            pending.live = (
                self.streams is not None
                and msg.first_segment
                and self.streams.stream_open(msg.xid, lsn)
            )
            self._streams[msg.xid] = pending
        elif pending.live:
            assert self.streams is not None
            self.streams.stream_resume(msg.xid)
        self._stream_xid = msg.xid

    def _feed_stream(self, msg: Message, payload: bytes) -> None:
        assert self._stream_xid is not None
        pending = self._streams[self._stream_xid]
        if type(msg) is Origin:
            pending.origin = msg.name
            pending.origin_lsn = msg.origin_lsn
            if pending.live:
                assert self.streams is not None
                self.streams.stream_message(pending.xid, msg)
            return
        xid = getattr(msg, "xid", None)
        if xid is None or not isinstance(
            msg, (Insert, Update, Delete, Truncate, LogicalMessage, Relation, Type)
        ):
            raise ProtocolError(
                f"{type(msg).__name__} message inside the streamed block of xid {self._stream_xid}",
                offset=0,
            )
        pending.subxids.add(xid)
        if pending.live:
            assert self.streams is not None
            if isinstance(msg, (Relation, Type)):
                pending.metadata.append(msg)
            self.streams.stream_message(pending.xid, msg)
        else:
            pending.spool.append(xid, payload)

    def _stream_commit(self, msg: StreamCommit, lsn: Lsn) -> None:
        pending = self._streams.pop(msg.xid, None)
        if pending is None:
            raise ProtocolError(f"Stream Commit of unknown xid {msg.xid}", offset=0)
        tx = Transaction(
            msg.xid,
            msg.commit_lsn,
            msg.commit_time,
            pending.origin,
            pending.origin_lsn,
            None,
            True,
        )
        if pending.live:
            assert self.streams is not None
            self.streams.stream_commit(tx, msg.end_lsn)
            # As at a replay: its descriptions count as sent once it commits.
            for meta in pending.metadata:
                self.relations.update(meta)
            return
        self._replay(pending, tx, msg.end_lsn)

    def _stream_abort(self, msg: StreamAbort, lsn: Lsn) -> None:
        pending = self._streams.get(msg.xid)
        if pending is None:
            return  # nothing of it was streamed to us (e.g. before a restart)
        if pending.live:
            assert self.streams is not None
            self.streams.stream_abort(msg.xid, msg.subxid)
        if msg.subxid == msg.xid:
            pending.spool.close()
            del self._streams[msg.xid]
        else:
            pending.spool.abort_subtransaction(msg.subxid)

    # -- two-phase transactions ---------------------------------------------------

    def _begin_prepare(self, msg: BeginPrepare, lsn: Lsn) -> None:
        if self._begin is not None:
            raise ProtocolError("Begin Prepare inside a plain transaction", offset=0)
        self._prepare = _Pending(
            msg.xid, msg.prepare_lsn, Spool(self.memory_limit), streamed=False, gid=msg.gid
        )

    def _feed_prepare(self, msg: Message, payload: bytes) -> None:
        assert self._prepare is not None
        if type(msg) is Origin:
            self._prepare.origin = msg.name
            self._prepare.origin_lsn = msg.origin_lsn
            return
        if isinstance(msg, (Relation, Type)):
            # Outside streaming, pgoutput sends a relation's description once per
            # session, whatever becomes of the transaction that carried it: later
            # transactions rely on it even if this one is rolled back.
            self.relations.update(msg)
            return
        if not isinstance(msg, (Insert, Update, Delete, Truncate, LogicalMessage)):
            raise ProtocolError(
                f"{type(msg).__name__} message inside prepared transaction {self._prepare.gid!r}",
                offset=0,
            )
        self._prepare.spool.append(self._prepare.xid, payload)

    def _end_prepare(self, msg: Prepare, lsn: Lsn) -> None:
        pending = self._prepare
        if pending is None or pending.gid != msg.gid:
            raise ProtocolError(f"Prepare of {msg.gid!r} without its Begin Prepare", offset=0)
        self._prepare = None
        self._prepared[msg.gid] = pending

    def _stream_prepare(self, msg: StreamPrepare, lsn: Lsn) -> None:
        pending = self._streams.pop(msg.xid, None)
        if pending is None:
            raise ProtocolError(f"Stream Prepare of unknown xid {msg.xid}", offset=0)
        if pending.live:
            # A stream consumer is only used by sessions without two_phase.
            raise ProtocolError(f"Stream Prepare of xid {msg.xid} applied as it streamed", offset=0)
        pending.gid = msg.gid
        pending.first_lsn = min(pending.first_lsn, msg.prepare_lsn)
        self._prepared[msg.gid] = pending

    def _commit_prepared(self, msg: CommitPrepared, lsn: Lsn) -> None:
        pending = self._prepared.pop(msg.gid, None)
        if pending is None:
            # Its PREPARE lies before this session's start point. The consumer never
            # confirms past a pending prepare, so this means someone started the
            # stream past it by hand: its changes cannot be had any more.
            logger.warning(
                "COMMIT PREPARED %r at %s: its PREPARE was not received in this session "
                "(started after it); its changes are not available",
                msg.gid,
                msg.commit_lsn,
            )
            return
        tx = Transaction(
            msg.xid,
            msg.commit_lsn,
            msg.commit_time,
            pending.origin,
            pending.origin_lsn,
            msg.gid,
            pending.streamed,
        )
        self._replay(pending, tx, msg.end_lsn)

    def _rollback_prepared(self, msg: RollbackPrepared, lsn: Lsn) -> None:
        pending = self._prepared.pop(msg.gid, None)
        if pending is not None:
            pending.spool.close()

    # -- replay ----------------------------------------------------------------------

    def _replay(self, pending: _Pending, tx: Transaction, end_lsn: Lsn) -> None:
        decoder = PgoutputDecoder(self.protocol_version)
        if pending.streamed:
            decoder.stream_xid = pending.xid  # spooled payloads carry the xid prefix
        consumer = self.consumer
        relations = self.relations
        try:
            consumer.begin(tx)
            for _subxid, payload in pending.spool:
                msg = decoder.decode(payload)
                if isinstance(msg, (Relation, Type)):
                    relations.update(msg)
                elif isinstance(msg, (Insert, Update, Delete, Truncate, LogicalMessage)):
                    consumer.change(tx, msg)
                else:
                    raise ProtocolError(f"unexpected spooled {type(msg).__name__}", offset=0)
            consumer.commit(tx, end_lsn)
        finally:
            pending.spool.close()


_DELIVERING = frozenset({Begin, StreamCommit, CommitPrepared, LogicalMessage})


def delivery_position(msg: Message) -> Lsn | None:
    """The commit LSN at which ``msg`` makes a transaction reach the consumer.

    That is Begin's final LSN, Stream Commit's or Commit Prepared's commit LSN, or a
    non-transactional message's own LSN; None for any other message. Workers that
    stop at a position (``--end-lsn``, the table sync handover) test it before
    feeding the message, so that they never deliver half a transaction.
    """
    kind = type(msg)
    if kind not in _DELIVERING:
        return None
    if isinstance(msg, Begin):
        return msg.final_lsn
    if isinstance(msg, (StreamCommit, CommitPrepared)):
        return msg.commit_lsn
    if isinstance(msg, LogicalMessage) and not msg.transactional:
        return msg.lsn
    return None
