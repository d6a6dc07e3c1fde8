"""What subscriptions are doing: ``pgferry status`` and ``pgferry subscription wait``.

* :func:`collect` reads the status of every subscription of a subscriber database
  (catalog, apply worker, lag, sequence drift, the publisher's slot);
  :mod:`.report` documents every field and the ``--json`` keys;
* :func:`render_text` and :func:`to_json` print it (:mod:`.render`);
  :mod:`.watch` shows it again and again (``status --watch``, ``top``);
* :mod:`.activity` reads the table sync workers, their copy's progress and the
  launcher's retries;
* :func:`wait_ready` waits until a subscription has caught up (:mod:`.wait`),
  showing its progress through :mod:`.progress`.
"""

from pgferry.status.activity import CopyProgress, RetryStatus, SyncWorkerStatus
from pgferry.status.render import render_table, render_text, to_document, to_json
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
from pgferry.status.wait import WaitFailed, WaitProgress, WaitResult, WaitTimeout, wait_ready

__all__ = [
    "STALE_AFTER",
    "CopyProgress",
    "PublisherStatus",
    "RetryStatus",
    "SequenceStatus",
    "SlotStatus",
    "SubscriptionStatus",
    "SyncWorkerStatus",
    "TableStatus",
    "WaitFailed",
    "WaitProgress",
    "WaitResult",
    "WaitTimeout",
    "WorkerStatus",
    "collect",
    "render_table",
    "render_text",
    "to_document",
    "to_json",
    "wait_ready",
]
