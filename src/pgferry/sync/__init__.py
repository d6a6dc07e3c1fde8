"""Initial table synchronisation: the table sync worker and its handover to the
apply worker (see :mod:`pgferry.sync.worker`)."""

from pgferry.sync.worker import TableSyncWorker

__all__ = ["TableSyncWorker"]
