"""PostgreSQL timestamps on the replication protocol.

The protocol sends times as microseconds since 2000-01-01 00:00:00 UTC (the
PostgreSQL epoch). Messages keep the raw integer; these helpers convert.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000


def to_datetime(pg_us: int) -> datetime:
    """Microseconds since the PostgreSQL epoch -> aware UTC datetime."""
    return PG_EPOCH + timedelta(microseconds=pg_us)


def from_datetime(value: datetime) -> int:
    """Aware datetime -> microseconds since the PostgreSQL epoch."""
    delta = value - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def now_pg_us() -> int:
    """The current time in protocol form (used in standby status updates)."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US
