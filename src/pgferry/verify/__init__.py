"""``pgferry verify``: the publisher's and the subscriber's data compared at exactly
the same LSN, while replication goes on.

Two entry points:

* :func:`verify_subscription` ``(subscriber_dsn, subscription, *, tables=None,
  jobs=4, limit=1000, repair=False, lease=30.0, timeout=60.0) -> VerifyReport``:
  takes a consistent pair of snapshots by holding the apply worker at a slot's
  consistent point L for a moment (see :mod:`.consistent`), compares them after
  the release (see :mod:`.compare`), and with ``repair`` fixes what differs,
  publisher winning (see :mod:`.repair`);
* :func:`compare_snapshots` ``(subscriber_dsn, subscription, publisher_snapshot,
  subscriber_snapshot, *, tables=None, jobs=4, limit=1000, lsn=None,
  timeout=None) -> VerifyReport``: the comparison alone, for a caller that
  exported the two snapshots itself (``pg_export_snapshot()`` in a ``REPEATABLE
  READ`` transaction on each side, kept open until this returns), e.g. a
  switchover inside its write fence. ``subscriber_dsn`` is the subscriber
  database (the catalog's); the publisher is reached with the subscription's
  conninfo, each connection attempt waiting at most ``timeout`` seconds (at least
  2) when given; ``lsn`` is only reported.

``timeout`` of :func:`verify_subscription` bounds every connection attempt to
the publisher (the held pair's, the comparing sessions', the repair's) as well as
each wait for the apply worker.

:class:`VerifyReport` (see :mod:`.report`) holds per table the rows compared,
the ranges hashed, the differing keys (missing, extra, different; ``limit`` listed
per kind, all counted) and the time; ``identical`` says whether there is nothing
to report.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .compare import DEFAULT_LIMIT, compare_snapshots
from .consistent import DEFAULT_LEASE, DEFAULT_TIMEOUT, held_pair
from .repair import repair as repair_differences
from .report import TableReport, VerifyReport, render_text, to_json

__all__ = [
    "TableReport",
    "VerifyReport",
    "compare_snapshots",
    "render_text",
    "to_json",
    "verify_subscription",
]


def verify_subscription(
    subscriber_dsn: str,
    subscription: str,
    *,
    tables: Sequence[str] | None = None,
    jobs: int = 4,
    limit: int = DEFAULT_LIMIT,
    repair: bool = False,
    lease: float = DEFAULT_LEASE,
    timeout: float = DEFAULT_TIMEOUT,
) -> VerifyReport:
    """See the module docstring. With ``repair`` every differing key is listed
    (the repair needs them all), whatever ``limit`` says."""
    with held_pair(subscriber_dsn, subscription, lease=lease, timeout=timeout) as pair:
        report = compare_snapshots(
            subscriber_dsn,
            subscription,
            pair.publisher_snapshot,
            pair.subscriber_snapshot,
            tables=tables,
            jobs=jobs,
            limit=sys.maxsize if repair else limit,
            lsn=pair.lsn,
            timeout=timeout,
        )
        report.held_seconds = pair.held_seconds
    if repair and not report.identical:
        repair_differences(subscriber_dsn, report, lease=lease, timeout=timeout)
    return report
