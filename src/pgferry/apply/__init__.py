"""Applying remote transactions to the subscriber: table mapping, the applier
(exactly-once through a replication origin) and the apply worker loop."""

from pgferry.apply.applier import Applier
from pgferry.apply.mapping import MappingError, TableMap, build_map
from pgferry.apply.worker import ApplyWorker

__all__ = ["Applier", "ApplyWorker", "MappingError", "TableMap", "build_map"]
