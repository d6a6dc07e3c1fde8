"""The pure protocol layer: bytes in, typed messages out; no sockets, no I/O.

* :mod:`.lsn` - :class:`Lsn`, WAL positions;
* :mod:`.envelope` - the streaming replication envelope (XLogData, keepalive,
  standby status update);
* :mod:`.messages` - typed pgoutput messages;
* :mod:`.pgoutput` - :class:`PgoutputDecoder`, strict and fast;
* :mod:`.relations` - :class:`RelationCache`;
* :mod:`.timestamps` - protocol time <-> datetime.

Every malformed input raises :class:`pgferry.errors.ProtocolError` (which this
package re-exports) and nothing else.
"""

from pgferry.errors import ProtocolError
from pgferry.protocol.envelope import (
    PrimaryKeepalive,
    XLogData,
    encode_standby_status,
    parse_copy_data,
)
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.messages import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryValue,
    Change,
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
from pgferry.protocol.pgoutput import SUPPORTED_PROTOCOL_VERSIONS, PgoutputDecoder
from pgferry.protocol.relations import RelationCache

__all__ = [
    "INVALID_LSN",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "UNCHANGED_TOAST",
    "Begin",
    "BeginPrepare",
    "BinaryValue",
    "Change",
    "Column",
    "Commit",
    "CommitPrepared",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Lsn",
    "Message",
    "Origin",
    "PgoutputDecoder",
    "Prepare",
    "PrimaryKeepalive",
    "ProtocolError",
    "Relation",
    "RelationCache",
    "RollbackPrepared",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "UnchangedToast",
    "Update",
    "Value",
    "XLogData",
    "encode_standby_status",
    "parse_copy_data",
]
