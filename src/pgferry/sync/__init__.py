"""Initial table synchronisation: the table sync worker and its handover to the
apply worker (see :mod:`pgferry.sync.worker`)."""

from pgferry.sync.worker import TableSyncWorker, sync_slot_name

__all__ = ["TableSyncWorker", "sync_slot_name"]
