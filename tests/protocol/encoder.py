"""A test-side pgoutput *encoder*: the inverse of the decoder under test.

Written from the layouts in the PostgreSQL docs ("Logical Replication Message
Formats", protocol versions 1-4), not from ``pgferry.protocol.pgoutput``: every
field is packed here by hand, one primitive at a time, so a layout mistake in the
decoder is not mirrored here.

Two layers:

* one function per message (``begin``, ``insert``, ``stream_abort`` ...) taking the
  fields as arguments; change and metadata messages take ``xid``: when it is not
  ``None`` the message is written as it appears inside a streamed block (Stream
  Start .. Stream Stop), with the leading Int32 transaction id;
* :func:`encode` takes a decoded-message value (the ``NamedTuple``s of
  :mod:`pgferry.protocol.messages`) and writes it with the functions above; the
  ``in_stream`` flag decides whether the xid prefix is written.

It also holds the hypothesis strategies for valid messages and :func:`typed`, the
exact-comparison helper the protocol and assembler tests share.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hypothesis import strategies as st

from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryValue,
    Column,
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
    UnchangedToast,
    Update,
    Value,
)

# -- primitives (PostgreSQL protocol: big-endian, strings NUL-terminated) ------------------


def byte1(char: str) -> bytes:
    """A message or kind byte given as a one-character string."""
    data = char.encode("ascii")
    assert len(data) == 1
    return data


def int8(value: int) -> bytes:
    return struct.pack(">B", value)


def int16(value: int) -> bytes:
    return struct.pack(">H", value)


def int32(value: int) -> bytes:
    """Int32 for OIDs, xids, counts and lengths (unsigned on the wire)."""
    return struct.pack(">I", value)


def sint32(value: int) -> bytes:
    """Signed Int32 (type modifiers: -1 means none)."""
    return struct.pack(">i", value)


def int64(value: int) -> bytes:
    """Unsigned Int64 (LSNs)."""
    return struct.pack(">Q", value)


def sint64(value: int) -> bytes:
    """Signed Int64 (timestamps: microseconds since 2000-01-01, may be negative)."""
    return struct.pack(">q", value)


def string(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def _xid_prefix(xid: int | None) -> bytes:
    return b"" if xid is None else int32(xid)


# -- TupleData -----------------------------------------------------------------------------


def tuple_data(values: Sequence[Value]) -> bytes:
    """Int16 column count, then per column: 'n' | 'u' | 't' Int32 len bytes | 'b' ..."""
    out = [int16(len(values))]
    for value in values:
        if value is None:
            out.append(byte1("n"))
        elif isinstance(value, UnchangedToast):
            out.append(byte1("u"))
        elif isinstance(value, BinaryValue):
            out.append(byte1("b") + int32(len(value)) + bytes(value))
        else:
            out.append(byte1("t") + int32(len(value)) + bytes(value))
    return b"".join(out)


# -- transaction framing -------------------------------------------------------------------


def begin(final_lsn: int, commit_time: int, xid: int) -> bytes:
    return byte1("B") + int64(final_lsn) + sint64(commit_time) + int32(xid)


def commit(flags: int, commit_lsn: int, end_lsn: int, commit_time: int) -> bytes:
    return byte1("C") + int8(flags) + int64(commit_lsn) + int64(end_lsn) + sint64(commit_time)


def origin(origin_lsn: int, name: str) -> bytes:
    return byte1("O") + int64(origin_lsn) + string(name)


# -- metadata ------------------------------------------------------------------------------


def relation(
    relation_id: int,
    namespace: str,
    name: str,
    replica_identity: str,
    columns: Sequence[Column],
    *,
    xid: int | None = None,
) -> bytes:
    out = [
        byte1("R"),
        _xid_prefix(xid),
        int32(relation_id),
        string(namespace),
        string(name),
        byte1(replica_identity),
        int16(len(columns)),
    ]
    for column in columns:
        out.append(int8(1 if column.is_key else 0))
        out.append(string(column.name))
        out.append(int32(column.type_oid))
        out.append(sint32(column.type_modifier))
    return b"".join(out)


def type_(type_oid: int, namespace: str, name: str, *, xid: int | None = None) -> bytes:
    return byte1("Y") + _xid_prefix(xid) + int32(type_oid) + string(namespace) + string(name)


# -- changes -------------------------------------------------------------------------------


def insert(relation_id: int, new: Sequence[Value], *, xid: int | None = None) -> bytes:
    return byte1("I") + _xid_prefix(xid) + int32(relation_id) + byte1("N") + tuple_data(new)


def update(
    relation_id: int,
    new: Sequence[Value],
    *,
    old_kind: str | None = None,
    old: Sequence[Value] | None = None,
    xid: int | None = None,
) -> bytes:
    """``old_kind`` "K" (old key) or "O" (old row) with ``old``, or neither."""
    out = [byte1("U"), _xid_prefix(xid), int32(relation_id)]
    if old_kind is not None:
        assert old is not None and old_kind in ("K", "O")
        out.append(byte1(old_kind) + tuple_data(old))
    out.append(byte1("N") + tuple_data(new))
    return b"".join(out)


def delete(
    relation_id: int, old_kind: str, old: Sequence[Value], *, xid: int | None = None
) -> bytes:
    assert old_kind in ("K", "O")
    return byte1("D") + _xid_prefix(xid) + int32(relation_id) + byte1(old_kind) + tuple_data(old)


def truncate(options: int, relation_ids: Sequence[int], *, xid: int | None = None) -> bytes:
    return (
        byte1("T")
        + _xid_prefix(xid)
        + int32(len(relation_ids))
        + int8(options)
        + b"".join(int32(r) for r in relation_ids)
    )


def message(
    transactional: bool, lsn: int, prefix: str, content: bytes, *, xid: int | None = None
) -> bytes:
    return (
        byte1("M")
        + _xid_prefix(xid)
        + int8(1 if transactional else 0)
        + int64(lsn)
        + string(prefix)
        + int32(len(content))
        + content
    )


# -- streaming (protocol >= 2) -------------------------------------------------------------


def stream_start(xid: int, first_segment: bool) -> bytes:
    return byte1("S") + int32(xid) + int8(1 if first_segment else 0)


def stream_stop() -> bytes:
    return byte1("E")


def stream_commit(xid: int, flags: int, commit_lsn: int, end_lsn: int, commit_time: int) -> bytes:
    return (
        byte1("c")
        + int32(xid)
        + int8(flags)
        + int64(commit_lsn)
        + int64(end_lsn)
        + sint64(commit_time)
    )


def stream_abort(
    xid: int, subxid: int, abort_lsn: int | None = None, abort_time: int | None = None
) -> bytes:
    """With ``abort_lsn``/``abort_time``: the protocol 4 (streaming = parallel) form."""
    out = byte1("A") + int32(xid) + int32(subxid)
    if abort_lsn is not None or abort_time is not None:
        assert abort_lsn is not None and abort_time is not None
        out += int64(abort_lsn) + sint64(abort_time)
    return out


# -- two-phase commit (protocol >= 3) ------------------------------------------------------


def begin_prepare(prepare_lsn: int, end_lsn: int, prepare_time: int, xid: int, gid: str) -> bytes:
    return (
        byte1("b")
        + int64(prepare_lsn)
        + int64(end_lsn)
        + sint64(prepare_time)
        + int32(xid)
        + string(gid)
    )


def _prepare_like(
    kind: str, flags: int, lsn: int, end_lsn: int, time: int, xid: int, gid: str
) -> bytes:
    return (
        byte1(kind)
        + int8(flags)
        + int64(lsn)
        + int64(end_lsn)
        + sint64(time)
        + int32(xid)
        + string(gid)
    )


def prepare(
    flags: int, prepare_lsn: int, end_lsn: int, prepare_time: int, xid: int, gid: str
) -> bytes:
    return _prepare_like("P", flags, prepare_lsn, end_lsn, prepare_time, xid, gid)


def commit_prepared(
    flags: int, commit_lsn: int, end_lsn: int, commit_time: int, xid: int, gid: str
) -> bytes:
    return _prepare_like("K", flags, commit_lsn, end_lsn, commit_time, xid, gid)


def stream_prepare(
    flags: int, prepare_lsn: int, end_lsn: int, prepare_time: int, xid: int, gid: str
) -> bytes:
    return _prepare_like("p", flags, prepare_lsn, end_lsn, prepare_time, xid, gid)


def rollback_prepared(
    flags: int,
    prepare_end_lsn: int,
    rollback_end_lsn: int,
    prepare_time: int,
    rollback_time: int,
    xid: int,
    gid: str,
) -> bytes:
    return (
        byte1("r")
        + int8(flags)
        + int64(prepare_end_lsn)
        + int64(rollback_end_lsn)
        + sint64(prepare_time)
        + sint64(rollback_time)
        + int32(xid)
        + string(gid)
    )


# -- message values -> bytes ---------------------------------------------------------------


def _stream_xid(xid: int | None, in_stream: bool | None) -> int | None:
    """The xid prefix to write: by default iff the message carries an xid."""
    if in_stream is None:
        return xid
    if not in_stream:
        return None
    assert xid is not None, "a message inside a streamed block needs its xid"
    return xid


def encode(msg: Message, *, in_stream: bool | None = None) -> bytes:
    """Encode a message value. ``in_stream`` (default: ``msg.xid is not None`` for the
    change and metadata messages) writes the leading xid of a streamed block."""
    if isinstance(msg, Begin):
        return begin(msg.final_lsn, msg.commit_time, msg.xid)
    if isinstance(msg, Commit):
        return commit(msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_time)
    if isinstance(msg, Origin):
        return origin(msg.origin_lsn, msg.name)
    if isinstance(msg, Relation):
        return relation(
            msg.relation_id,
            msg.namespace,
            msg.name,
            msg.replica_identity,
            msg.columns,
            xid=_stream_xid(msg.xid, in_stream),
        )
    if isinstance(msg, Type):
        return type_(msg.type_oid, msg.namespace, msg.name, xid=_stream_xid(msg.xid, in_stream))
    if isinstance(msg, Insert):
        return insert(msg.relation_id, msg.new, xid=_stream_xid(msg.xid, in_stream))
    if isinstance(msg, Update):
        return update(
            msg.relation_id,
            msg.new,
            old_kind=msg.old_kind,
            old=msg.old,
            xid=_stream_xid(msg.xid, in_stream),
        )
    if isinstance(msg, Delete):
        return delete(msg.relation_id, msg.old_kind, msg.old, xid=_stream_xid(msg.xid, in_stream))
    if isinstance(msg, Truncate):
        return truncate(msg.options, msg.relation_ids, xid=_stream_xid(msg.xid, in_stream))
    if isinstance(msg, LogicalMessage):
        return message(
            msg.transactional,
            msg.lsn,
            msg.prefix,
            msg.content,
            xid=_stream_xid(msg.xid, in_stream),
        )
    if isinstance(msg, StreamStart):
        return stream_start(msg.xid, msg.first_segment)
    if isinstance(msg, StreamStop):
        return stream_stop()
    if isinstance(msg, StreamCommit):
        return stream_commit(msg.xid, msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_time)
    if isinstance(msg, StreamAbort):
        return stream_abort(msg.xid, msg.subxid, msg.abort_lsn, msg.abort_time)
    if isinstance(msg, BeginPrepare):
        return begin_prepare(msg.prepare_lsn, msg.end_lsn, msg.prepare_time, msg.xid, msg.gid)
    if isinstance(msg, Prepare):
        return prepare(msg.flags, msg.prepare_lsn, msg.end_lsn, msg.prepare_time, msg.xid, msg.gid)
    if isinstance(msg, CommitPrepared):
        return commit_prepared(
            msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_time, msg.xid, msg.gid
        )
    if isinstance(msg, RollbackPrepared):
        return rollback_prepared(
            msg.flags,
            msg.prepare_end_lsn,
            msg.rollback_end_lsn,
            msg.prepare_time,
            msg.rollback_time,
            msg.xid,
            msg.gid,
        )
    if isinstance(msg, StreamPrepare):
        return stream_prepare(
            msg.flags, msg.prepare_lsn, msg.end_lsn, msg.prepare_time, msg.xid, msg.gid
        )
    raise TypeError(f"cannot encode {msg!r}")


#: The protocol version that introduced each message type (by class).
MIN_VERSION: dict[type, int] = {
    Begin: 1,
    Commit: 1,
    Origin: 1,
    Relation: 1,
    Type: 1,
    Insert: 1,
    Update: 1,
    Delete: 1,
    Truncate: 1,
    LogicalMessage: 1,
    StreamStart: 2,
    StreamStop: 2,
    StreamCommit: 2,
    StreamAbort: 2,
    BeginPrepare: 3,
    Prepare: 3,
    CommitPrepared: 3,
    RollbackPrepared: 3,
    StreamPrepare: 3,
}

#: Messages that may carry the streamed-block xid prefix.
STREAMABLE: tuple[type, ...] = (Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage)


# -- hypothesis strategies for valid messages ----------------------------------------------

U32 = st.integers(min_value=0, max_value=2**32 - 1)
I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
U8 = st.integers(min_value=0, max_value=255)
LSNS = st.integers(min_value=0, max_value=2**64 - 1).map(Lsn)
TIMES = st.integers(min_value=-(2**63), max_value=2**63 - 1)
#: Protocol strings: any UTF-8 text without NUL (the terminator).
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
VALUES: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.binary(max_size=16),
    st.binary(max_size=16).map(BinaryValue),
)
TUPLES = st.lists(VALUES, max_size=6).map(tuple)
COLUMNS = st.builds(Column, NAMES, U32, I32, st.booleans())


def _old_and_new(
    xid: int | None,
) -> st.SearchStrategy[Update]:
    plain = st.builds(Update, st.just(xid), U32, st.none(), st.none(), TUPLES)
    with_old = st.builds(Update, st.just(xid), U32, st.sampled_from(["K", "O"]), TUPLES, TUPLES)
    return st.one_of(plain, with_old)


def streamable_messages(xid: int | None) -> st.SearchStrategy[Message]:
    """Change and metadata messages; ``xid`` None outside a streamed block."""
    x = st.just(xid)
    return st.one_of(
        st.builds(
            Relation,
            x,
            U32,
            NAMES,
            NAMES,
            st.sampled_from(list("dnfi")),
            st.lists(COLUMNS, max_size=5).map(tuple),
        ),
        st.builds(Type, x, U32, NAMES, NAMES),
        st.builds(Insert, x, U32, TUPLES),
        _old_and_new(xid),
        st.builds(Delete, x, U32, st.sampled_from(["K", "O"]), TUPLES),
        st.builds(Truncate, x, U8, st.lists(U32, max_size=5).map(tuple)),
        st.builds(LogicalMessage, x, st.booleans(), LSNS, NAMES, st.binary(max_size=32)),
    )


def framing_messages(version: int) -> st.SearchStrategy[Message]:
    """Messages that are valid outside a streamed block with protocol ``version``
    (Stream Stop excluded: it is valid only inside one)."""
    options: list[st.SearchStrategy[Message]] = [
        st.builds(Begin, LSNS, TIMES, U32),
        st.builds(Commit, U8, LSNS, LSNS, TIMES),
        st.builds(Origin, LSNS, NAMES),
    ]
    if version >= 2:
        abort_tail = st.tuples(st.none(), st.none())
        if version >= 4:
            abort_tail = st.one_of(abort_tail, st.tuples(LSNS, TIMES))
        options += [
            st.builds(StreamStart, U32, st.booleans()),
            st.builds(StreamCommit, U32, U8, LSNS, LSNS, TIMES),
            st.builds(
                lambda xid, subxid, tail: StreamAbort(xid, subxid, tail[0], tail[1]),
                U32,
                U32,
                abort_tail,
            ),
        ]
    if version >= 3:
        options += [
            st.builds(BeginPrepare, LSNS, LSNS, TIMES, U32, NAMES),
            st.builds(Prepare, U8, LSNS, LSNS, TIMES, U32, NAMES),
            st.builds(CommitPrepared, U8, LSNS, LSNS, TIMES, U32, NAMES),
            st.builds(RollbackPrepared, U8, LSNS, LSNS, TIMES, TIMES, U32, NAMES),
            st.builds(StreamPrepare, U8, LSNS, LSNS, TIMES, U32, NAMES),
        ]
    return st.one_of(*options)


def outside_stream_messages(version: int) -> st.SearchStrategy[Message]:
    """Any message a fresh decoder of ``version`` accepts (no streamed block open)."""
    return st.one_of(framing_messages(version), streamable_messages(None))


def typed(value: object) -> object:
    """``value`` with the type of every leaf made part of it, for exact comparisons:
    ``BinaryValue(b"x") == b"x"`` and ``Lsn(1) == 1`` are true, ``typed`` of them not."""
    if isinstance(value, tuple):
        return (type(value).__name__, tuple(typed(v) for v in value))
    return (type(value).__name__, value)
