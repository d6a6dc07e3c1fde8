"""Conflicts between remote changes and local rows: types, policies, decisions.

See :mod:`.policy`. Detection and resolution happen in :mod:`pgferry.apply`; the
conflict log and its counters live in the catalog (:mod:`pgferry.catalog.conflict_log`).
"""

from .policy import CONFLICT_TYPES, ConflictType, Outcome, Policy, Resolution, Stamp, decide

__all__ = [
    "CONFLICT_TYPES",
    "ConflictType",
    "Outcome",
    "Policy",
    "Resolution",
    "Stamp",
    "decide",
]
