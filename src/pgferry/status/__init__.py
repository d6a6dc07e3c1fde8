"""What subscriptions are doing: ``pgferry status`` and ``pgferry subscription wait``.

* :func:`collect` reads the status of every subscription of a subscriber database
  (catalog, apply worker, lag, sequence drift, the publisher's slot);
  :mod:`.report` documents every field and the ``--json`` keys;
* :func:`render_table` (rich) and :func:`to_json` print it (:mod:`.render`);
* :func:`wait_ready` waits until a subscription has caught up (:mod:`.wait`).
"""

from pgferry.status.render import render_table, to_document, to_json
from pgferry.status.report import (
    STALE_AFTER,
    PublisherStatus,
    SequenceStatus,
    SlotStatus,
    SubscriptionStatus,
    TableStatus,
    WorkerStatus,
    collect,
)
from pgferry.status.wait import WaitFailed, WaitResult, WaitTimeout, wait_ready

__all__ = [
    "STALE_AFTER",
    "PublisherStatus",
    "SequenceStatus",
    "SlotStatus",
    "SubscriptionStatus",
    "TableStatus",
    "WaitFailed",
    "WaitResult",
    "WaitTimeout",
    "WorkerStatus",
    "collect",
    "render_table",
    "to_document",
    "to_json",
    "wait_ready",
]
