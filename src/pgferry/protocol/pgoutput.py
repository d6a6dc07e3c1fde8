"""Decoder for the pgoutput logical replication protocol, versions 1-4.

Contract: :meth:`PgoutputDecoder.decode` takes the payload of one XLogData
message (exactly one pgoutput message) and returns one typed message from
:mod:`pgferry.protocol.messages`. It never does I/O. Any input that is not a
valid message - unknown type byte, short buffer, trailing bytes, bad UTF-8, a
message the negotiated protocol version cannot carry - raises
:class:`~pgferry.errors.ProtocolError` naming the byte offset; no other
exception escapes.

The decoder is stateful in one respect, as the protocol is: between Stream Start
and Stream Stop (protocol >= 2) the change and metadata messages carry an extra
leading Int32 transaction id. Layouts follow the PostgreSQL docs, "Logical
Replication Message Formats" (and ``src/backend/replication/logical/proto.c``).

Speed matters here (goal: 500k messages/s on one core), so decoding works on
``bytes`` with precompiled ``struct`` formats, and bounds errors are caught once
per message rather than checked before every read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pgferry._cmodule import SPEEDUPS, unknown_kind
from pgferry._cmodule import ShortValue as _Short
from pgferry.errors import ProtocolError
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.lsn import lsn_from_wire as _lsn
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
    Update,
    Value,
)

_I32 = struct.Struct(">I")
_I16 = struct.Struct(">H")
_BEGIN = struct.Struct(">QqI")  # final LSN, commit time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_ORIGIN_LSN = struct.Struct(">Q")
_REL_HEAD = struct.Struct(">I")
_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, typmod
_TRUNC_HEAD = struct.Struct(">IB")  # nrelations, options
_MSG_HEAD = struct.Struct(">BQ")  # flags, LSN
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_STREAM_ABORT_V4 = struct.Struct(">IIQq")
_BEGIN_PREPARE = struct.Struct(">QQqI")  # prepare LSN, end LSN, prepare time, xid
_PREPARE = struct.Struct(">BQQqI")  # flags, prepare LSN, end LSN, time, xid
_ROLLBACK_PREPARED = struct.Struct(">BQQqqI")

_KIND_TEXT = 0x74  # 't'
_KIND_NULL = 0x6E  # 'n'
_KIND_UNCHANGED = 0x75  # 'u'
_KIND_BINARY = 0x62  # 'b'
_NEW = 0x4E  # 'N'
_KEY = 0x4B  # 'K'
_OLD = 0x4F  # 'O'

SUPPORTED_PROTOCOL_VERSIONS = (1, 2, 3, 4)

# NamedTuple classes get a generated Python __new__; building the hot messages
# with tuple.__new__ directly skips that call and halves the construction cost.
_new = tuple.__new__

Tuple = tuple[Value, ...]


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string", offset=pos)
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"string is not valid UTF-8: {exc.reason}", offset=pos) from None


def _py_read_tuple(buf: bytes, pos: int) -> tuple[Tuple, int]:
    """TupleData: Int16 column count, then per column a kind byte and maybe a value."""
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    size = len(buf)
    values: list[Value] = []
    append = values.append
    for _ in range(ncols):
        kind = buf[pos]
        if kind == _KIND_TEXT:
            (length,) = _I32.unpack_from(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > size:
                raise _Short(start)
            append(buf[start:pos])
        elif kind == _KIND_NULL:
            append(None)
            pos += 1
        elif kind == _KIND_UNCHANGED:
            append(UNCHANGED_TOAST)
            pos += 1
        elif kind == _KIND_BINARY:
            (length,) = _I32.unpack_from(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > size:
                raise _Short(start)
            append(BinaryValue(buf[start:pos]))
        else:
            raise unknown_kind(kind, pos)
    return tuple(values), pos


#: The C decoder of the hottest messages (Begin, Commit, Insert, Update, Delete;
#: the flag: inside a streamed block), or None; it returns None for anything else,
#: the malformed included, which :meth:`PgoutputDecoder.decode` then decodes itself.
_decode_hot: Callable[[bytes, bool], Message | None] | None = None
_read_tuple = SPEEDUPS.read_tuple if SPEEDUPS is not None else _py_read_tuple
if SPEEDUPS is not None:
    SPEEDUPS.configure(UNCHANGED_TOAST, BinaryValue, _Short, unknown_kind)
    SPEEDUPS.configure_decoder(Begin, Commit, Insert, Update, Delete)
    _decode_hot = SPEEDUPS.decode_hot


class PgoutputDecoder:
    """Turns pgoutput payloads into typed messages for one replication session.

    ``protocol_version`` is the ``proto_version`` given to START_REPLICATION; a
    message that version cannot carry is a :class:`ProtocolError`.
    """

    def __init__(self, protocol_version: int = 1) -> None:
        if protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
            raise ProtocolError(
                f"unsupported pgoutput protocol version {protocol_version}", offset=0
            )
        self.protocol_version = protocol_version
        #: xid of the streamed transaction whose block is open, or None.
        self.stream_xid: int | None = None
        self._dispatch: dict[int, Callable[[bytes], Message]] = {
            0x42: self._begin,  # B
            0x43: self._commit,  # C
            0x4F: self._origin,  # O
            0x52: self._relation,  # R
            0x59: self._type,  # Y
            0x49: self._insert,  # I
            0x55: self._update,  # U
            0x44: self._delete,  # D
            0x54: self._truncate,  # T
            0x4D: self._message,  # M
            0x53: self._stream_start,  # S
            0x45: self._stream_stop,  # E
            0x63: self._stream_commit,  # c
            0x41: self._stream_abort,  # A
            0x62: self._begin_prepare,  # b
            0x50: self._prepare,  # P
            0x4B: self._commit_prepared,  # K
            0x72: self._rollback_prepared,  # r
            0x70: self._stream_prepare,  # p
        }

    def reset(self) -> None:
        """Forget stream state (call when a new START_REPLICATION begins)."""
        self.stream_xid = None

    def decode(self, data: bytes) -> Message:
        """Decode exactly one pgoutput message; see the module docstring."""
        if _decode_hot is not None:
            msg = _decode_hot(data, self.stream_xid is not None)
            if msg is not None:
                return msg
        if not data:
            raise ProtocolError("empty pgoutput message", offset=0)
        handler = self._dispatch.get(data[0])
        if handler is None:
            raise ProtocolError(f"unknown pgoutput message type {data[:1]!r}", offset=0)
        try:
            return handler(data)
        except _Short as exc:
            raise ProtocolError(
                f"{_name(data)} message is truncated ({len(data)} bytes)", offset=exc.offset
            ) from None
        except (struct.error, IndexError):
            raise ProtocolError(
                f"{_name(data)} message is truncated ({len(data)} bytes)", offset=len(data)
            ) from None

    # -- helpers --------------------------------------------------------------------

    def _need_version(self, data: bytes, version: int) -> None:
        if self.protocol_version < version:
            raise ProtocolError(
                f"{_name(data)} message needs pgoutput protocol {version}, "
                f"session uses {self.protocol_version}",
                offset=0,
            )

    def _stream_prefix(self, data: bytes) -> tuple[int | None, int]:
        """The leading xid of a change inside a streamed block, and the next offset."""
        if self.stream_xid is None:
            return None, 1
        return _I32.unpack_from(data, 1)[0], 5

    @staticmethod
    def _end(data: bytes, pos: int) -> None:
        if pos > len(data):
            raise _Short(len(data))
        if pos != len(data):
            raise ProtocolError(
                f"{_name(data)} message has {len(data) - pos} unexpected trailing bytes",
                offset=pos,
            )

    def _outside_stream(self, data: bytes) -> None:
        if self.stream_xid is not None:
            raise ProtocolError(
                f"{_name(data)} message inside the streamed block of xid {self.stream_xid}",
                offset=0,
            )

    # -- transaction framing -----------------------------------------------------------

    def _begin(self, data: bytes) -> Begin:
        self._outside_stream(data)
        self._end(data, 21)
        lsn, ts, xid = _BEGIN.unpack_from(data, 1)
        return _new(Begin, (_lsn(lsn), ts, xid))

    def _commit(self, data: bytes) -> Commit:
        self._outside_stream(data)
        self._end(data, 26)
        flags, lsn, end, ts = _COMMIT.unpack_from(data, 1)
        return _new(Commit, (flags, _lsn(lsn), _lsn(end), ts))

    def _origin(self, data: bytes) -> Origin:
        (lsn,) = _ORIGIN_LSN.unpack_from(data, 1)
        name, pos = _read_string(data, 9)
        self._end(data, pos)
        return Origin(_lsn(lsn), name)

    # -- metadata ----------------------------------------------------------------------

    def _relation(self, data: bytes) -> Relation:
        xid, pos = self._stream_prefix(data)
        (relid,) = _REL_HEAD.unpack_from(data, pos)
        namespace, pos = _read_string(data, pos + 4)
        name, pos = _read_string(data, pos)
        ident = chr(data[pos])
        if ident not in "dnfi":
            raise ProtocolError(f"unknown replica identity {ident!r}", offset=pos)
        (ncols,) = _I16.unpack_from(data, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = data[pos]
            colname, pos = _read_string(data, pos + 1)
            type_oid, typmod = _COLUMN_TAIL.unpack_from(data, pos)
            pos += 8
            columns.append(Column(colname, type_oid, typmod, bool(flags & 1)))
        self._end(data, pos)
        return Relation(xid, relid, namespace, name, ident, tuple(columns))

    def _type(self, data: bytes) -> Type:
        xid, pos = self._stream_prefix(data)
        (oid,) = _I32.unpack_from(data, pos)
        namespace, pos = _read_string(data, pos + 4)
        name, pos = _read_string(data, pos)
        self._end(data, pos)
        return Type(xid, oid, namespace, name)

    # -- changes -----------------------------------------------------------------------

    def _insert(self, data: bytes) -> Insert:
        xid, pos = self._stream_prefix(data)
        (relid,) = _I32.unpack_from(data, pos)
        if data[pos + 4] != _NEW:
            raise ProtocolError("Insert without a new tuple ('N')", offset=pos + 4)
        new, pos = _read_tuple(data, pos + 5)
        if pos != len(data):
            self._end(data, pos)
        return _new(Insert, (xid, relid, new))

    def _update(self, data: bytes) -> Update:
        xid, pos = self._stream_prefix(data)
        (relid,) = _I32.unpack_from(data, pos)
        pos += 4
        kind = data[pos]
        old: Tuple | None = None
        old_kind: str | None = None
        if kind in (_KEY, _OLD):
            old_kind = "K" if kind == _KEY else "O"
            old, pos = _read_tuple(data, pos + 1)
            kind = data[pos]
        if kind != _NEW:
            raise ProtocolError("Update without a new tuple ('N')", offset=pos)
        new, pos = _read_tuple(data, pos + 1)
        if pos != len(data):
            self._end(data, pos)
        return _new(Update, (xid, relid, old_kind, old, new))

    def _delete(self, data: bytes) -> Delete:
        xid, pos = self._stream_prefix(data)
        (relid,) = _I32.unpack_from(data, pos)
        kind = data[pos + 4]
        if kind != _KEY and kind != _OLD:
            raise ProtocolError("Delete without an old key or tuple ('K'/'O')", offset=pos + 4)
        old, pos = _read_tuple(data, pos + 5)
        self._end(data, pos)
        return _new(Delete, (xid, relid, "K" if kind == _KEY else "O", old))

    def _truncate(self, data: bytes) -> Truncate:
        xid, pos = self._stream_prefix(data)
        nrels, options = _TRUNC_HEAD.unpack_from(data, pos)
        pos += 5
        end = pos + 4 * nrels
        if end > len(data):
            raise ProtocolError(
                f"Truncate lists {nrels} relations but the message is too short", offset=pos
            )
        relids = struct.unpack_from(f">{nrels}I", data, pos)
        self._end(data, end)
        return Truncate(xid, options, relids)

    def _message(self, data: bytes) -> LogicalMessage:
        xid, pos = self._stream_prefix(data)
        flags, lsn = _MSG_HEAD.unpack_from(data, pos)
        prefix, pos = _read_string(data, pos + 9)
        (length,) = _I32.unpack_from(data, pos)
        pos += 4
        end = pos + length
        if end > len(data):
            raise _Short(pos)
        self._end(data, end)
        return LogicalMessage(xid, bool(flags & 1), _lsn(lsn), prefix, data[pos:end])

    # -- streaming of in-progress transactions (protocol >= 2) -------------------------

    def _stream_start(self, data: bytes) -> StreamStart:
        self._need_version(data, 2)
        self._outside_stream(data)
        self._end(data, 6)
        xid, first = _STREAM_START.unpack_from(data, 1)
        self.stream_xid = xid
        return StreamStart(xid, first == 1)

    def _stream_stop(self, data: bytes) -> StreamStop:
        self._need_version(data, 2)
        if self.stream_xid is None:
            raise ProtocolError("Stream Stop without Stream Start", offset=0)
        self._end(data, 1)
        self.stream_xid = None
        return StreamStop()

    def _stream_commit(self, data: bytes) -> StreamCommit:
        self._need_version(data, 2)
        self._outside_stream(data)
        self._end(data, 30)
        xid, flags, lsn, end, ts = _STREAM_COMMIT.unpack_from(data, 1)
        return StreamCommit(xid, flags, _lsn(lsn), _lsn(end), ts)

    def _stream_abort(self, data: bytes) -> StreamAbort:
        self._need_version(data, 2)
        self._outside_stream(data)
        # Protocol 4 with streaming = parallel adds the abort LSN and time; the
        # message length is the only thing that tells the two layouts apart.
        if len(data) == 25 and self.protocol_version >= 4:
            xid, subxid, lsn, ts = _STREAM_ABORT_V4.unpack_from(data, 1)
            return StreamAbort(xid, subxid, _lsn(lsn), ts)
        self._end(data, 9)
        xid, subxid = _STREAM_ABORT.unpack_from(data, 1)
        return StreamAbort(xid, subxid, None, None)

    # -- two-phase commit (protocol >= 3) ----------------------------------------------

    def _begin_prepare(self, data: bytes) -> BeginPrepare:
        self._need_version(data, 3)
        self._outside_stream(data)
        lsn, end, ts, xid = _BEGIN_PREPARE.unpack_from(data, 1)
        gid, pos = _read_string(data, 29)
        self._end(data, pos)
        return BeginPrepare(_lsn(lsn), _lsn(end), ts, xid, gid)

    def _prepare_like(self, data: bytes) -> tuple[int, Lsn, Lsn, int, int, str]:
        self._need_version(data, 3)
        self._outside_stream(data)
        flags, lsn, end, ts, xid = _PREPARE.unpack_from(data, 1)
        gid, pos = _read_string(data, 30)
        self._end(data, pos)
        return flags, _lsn(lsn), _lsn(end), ts, xid, gid

    def _prepare(self, data: bytes) -> Prepare:
        return Prepare(*self._prepare_like(data))

    def _commit_prepared(self, data: bytes) -> CommitPrepared:
        return CommitPrepared(*self._prepare_like(data))

    def _stream_prepare(self, data: bytes) -> StreamPrepare:
        return StreamPrepare(*self._prepare_like(data))

    def _rollback_prepared(self, data: bytes) -> RollbackPrepared:
        self._need_version(data, 3)
        self._outside_stream(data)
        flags, prep_end, end, prep_ts, ts, xid = _ROLLBACK_PREPARED.unpack_from(data, 1)
        gid, pos = _read_string(data, 38)
        self._end(data, pos)
        return RollbackPrepared(flags, _lsn(prep_end), _lsn(end), prep_ts, ts, xid, gid)


_NAMES = {
    0x42: "Begin",
    0x43: "Commit",
    0x4F: "Origin",
    0x52: "Relation",
    0x59: "Type",
    0x49: "Insert",
    0x55: "Update",
    0x44: "Delete",
    0x54: "Truncate",
    0x4D: "Message",
    0x53: "Stream Start",
    0x45: "Stream Stop",
    0x63: "Stream Commit",
    0x41: "Stream Abort",
    0x62: "Begin Prepare",
    0x50: "Prepare",
    0x4B: "Commit Prepared",
    0x72: "Rollback Prepared",
    0x70: "Stream Prepare",
}


def _name(data: bytes) -> str:
    return _NAMES.get(data[0], "unknown") if data else "empty"
