"""The replication connection: commands, COPY BOTH streaming and feedback.

See :mod:`pgferry.stream.connection` for the contract.
"""

from pgferry.stream.commands import PgoutputOptions, max_protocol_version
from pgferry.stream.connection import (
    ReplicationConnection,
    ReplicationStream,
    SlotInfo,
    SystemInfo,
)

__all__ = [
    "PgoutputOptions",
    "ReplicationConnection",
    "ReplicationStream",
    "SlotInfo",
    "SystemInfo",
    "max_protocol_version",
]
