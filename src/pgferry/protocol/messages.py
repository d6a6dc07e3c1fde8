"""Typed, immutable pgoutput messages (protocol versions 1-4).

One class per message of the PostgreSQL docs' "Logical Replication Message
Formats". They are ``NamedTuple``s: immutable, typed, and cheap to build, which
matters because the decoder creates hundreds of thousands per second.

Conventions:

* LSNs are :class:`~pgferry.protocol.lsn.Lsn`; times are raw protocol integers
  (microseconds since 2000-01-01 UTC, see :mod:`pgferry.protocol.timestamps`).
* ``xid`` on a change message is the transaction id the change belongs to when it
  arrives inside a streamed block (Stream Start .. Stream Stop), otherwise ``None``.
  Inside a stream it may be a subtransaction's id.
* Column values (:data:`Value`): ``None`` is SQL NULL, :data:`UNCHANGED_TOAST` is a
  TOASTed value the UPDATE did not change (not sent), ``bytes`` is the text form
  (in the connection's client encoding, UTF-8 for pgferry), and
  :class:`BinaryValue` is the type's binary send form (``binary`` option).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from pgferry.protocol.lsn import Lsn


class UnchangedToast:
    """The single marker for "TOASTed value not sent because it did not change"."""

    __slots__ = ()
    _instance: UnchangedToast | None = None

    def __new__(cls) -> UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = UnchangedToast()


class BinaryValue(bytes):
    """A column value in the type's binary (send/recv) format."""

    __slots__ = ()


Value = bytes | None | UnchangedToast
"""A column value in a tuple: text bytes, :class:`BinaryValue`, NULL, or unchanged TOAST."""


# Replica identity settings as sent in the Relation message (pg_class.relreplident).
REPLICA_IDENTITY_DEFAULT: Final = "d"
REPLICA_IDENTITY_NOTHING: Final = "n"
REPLICA_IDENTITY_FULL: Final = "f"
REPLICA_IDENTITY_INDEX: Final = "i"

# Truncate option bits.
TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


class Column(NamedTuple):
    """A column of a Relation message."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


class Begin(NamedTuple):
    """Start of a (non-streamed) transaction; ``final_lsn`` is its commit record's LSN."""

    final_lsn: Lsn
    commit_time: int
    xid: int


class Commit(NamedTuple):
    """End of a transaction; ``end_lsn`` is just past its commit record."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


class Origin(NamedTuple):
    """The transaction was originally committed elsewhere (a replication origin)."""

    origin_lsn: Lsn
    name: str


class Relation(NamedTuple):
    """Describes a table before the first change to it (re-sent after ALTER TABLE)."""

    xid: int | None
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


class Type(NamedTuple):
    """Describes a non-built-in data type used by a later Relation."""

    xid: int | None
    type_oid: int
    namespace: str
    name: str


class Insert(NamedTuple):
    xid: int | None
    relation_id: int
    new: tuple[Value, ...]


class Update(NamedTuple):
    """``old`` holds the old key (``old_kind`` "K") or the whole old row ("O"), or is None."""

    xid: int | None
    relation_id: int
    old_kind: str | None
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


class Delete(NamedTuple):
    """``old_kind`` is "K" (replica identity key columns) or "O" (whole old row)."""

    xid: int | None
    relation_id: int
    old_kind: str
    old: tuple[Value, ...]


class Truncate(NamedTuple):
    xid: int | None
    options: int
    relation_ids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


class LogicalMessage(NamedTuple):
    """``pg_logical_emit_message`` output; ``transactional`` ones belong to a transaction."""

    xid: int | None
    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes


class StreamStart(NamedTuple):
    xid: int
    first_segment: bool


class StreamStop(NamedTuple):
    pass


class StreamCommit(NamedTuple):
    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


class StreamAbort(NamedTuple):
    """Abort of a streamed (sub)transaction: the whole one when ``subxid == xid``.

    ``abort_lsn`` and ``abort_time`` are only sent with protocol 4 and
    ``streaming = parallel``; otherwise they are ``None``.
    """

    xid: int
    subxid: int
    abort_lsn: Lsn | None
    abort_time: int | None


class BeginPrepare(NamedTuple):
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


class Prepare(NamedTuple):
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


class CommitPrepared(NamedTuple):
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int
    xid: int
    gid: str


class RollbackPrepared(NamedTuple):
    flags: int
    prepare_end_lsn: Lsn
    rollback_end_lsn: Lsn
    prepare_time: int
    rollback_time: int
    xid: int
    gid: str


class StreamPrepare(NamedTuple):
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)
"""Any decoded pgoutput message."""

Change = Insert | Update | Delete | Truncate | LogicalMessage
"""A message that carries data (as opposed to transaction framing or metadata)."""
