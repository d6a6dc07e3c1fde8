"""The streaming replication envelope carried inside CopyData (COPY BOTH mode).

After START_REPLICATION the server sends CopyData messages whose first byte says
what they hold (PostgreSQL docs, "Streaming Replication Protocol"):

* ``w`` XLogData: Int64 WAL start of the payload, Int64 current WAL end on the
  server, Int64 send time, then the output plugin's bytes (pgoutput here);
* ``k`` Primary keepalive: Int64 current WAL end, Int64 send time, Byte1 1 if the
  client must reply at once (else the server may time the client out).

The client sends ``r`` Standby status update: Int64 written, Int64 flushed, Int64
applied positions, Int64 client time, Byte1 1 to ask the server to reply.

Pure functions, no I/O: bytes in, typed messages out (and the reverse).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from pgferry._cmodule import SPEEDUPS
from pgferry.errors import ProtocolError
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.lsn import lsn_from_wire as _lsn

_XLOG_HEAD = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")
_new = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


class XLogData(NamedTuple):
    """A chunk of output plugin data starting at WAL position ``data_start``."""

    data_start: Lsn
    wal_end: Lsn
    send_time: int
    payload: bytes


class PrimaryKeepalive(NamedTuple):
    """The server's heartbeat; ``reply_requested`` demands a status update now."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


def _py_parse_copy_data(data: bytes | memoryview) -> XLogData | PrimaryKeepalive:
    """Decode one CopyData payload received in COPY BOTH mode.

    ``data`` may be a memoryview over libpq's buffer: the payload is copied out.
    """
    if not data:
        raise ProtocolError("empty CopyData message", offset=0)
    kind = data[0]
    if kind == 0x77:  # 'w'
        if len(data) < 25:
            raise ProtocolError(
                f"XLogData header needs 25 bytes, got {len(data)}", offset=len(data)
            )
        start, end, sent = _XLOG_HEAD.unpack_from(data, 1)
        return _new(XLogData, (_lsn(start), _lsn(end), sent, bytes(data[25:])))
    if kind == 0x6B:  # 'k'
        if len(data) != 18:
            raise ProtocolError(
                f"primary keepalive must be 18 bytes, got {len(data)}", offset=min(len(data), 18)
            )
        end, sent, reply = _KEEPALIVE.unpack_from(data, 1)
        return PrimaryKeepalive(_lsn(end), sent, reply != 0)
    raise ProtocolError(f"unknown CopyData message type {bytes([kind])!r}", offset=0)


parse_copy_data: Callable[[bytes | memoryview], XLogData | PrimaryKeepalive]
if SPEEDUPS is not None:  # its C twin (see pgferry._cmodule)
    SPEEDUPS.configure_envelope(XLogData, Lsn, _py_parse_copy_data)
    parse_copy_data = SPEEDUPS.parse_copy_data
else:
    parse_copy_data = _py_parse_copy_data


def encode_standby_status(
    write: int, flush: int, apply: int, client_time: int, *, reply_requested: bool = False
) -> bytes:
    """Encode a Standby status update (``r``) to send with put_copy_data."""
    return _STATUS.pack(b"r", write, flush, apply, client_time, 1 if reply_requested else 0)
