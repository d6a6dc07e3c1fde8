"""The catalog in the subscriber database (schema ``pgferry``).

See :mod:`pgferry.catalog.schema` for the tables and migrations and
:mod:`pgferry.catalog.store` for reading and writing them.
"""

from pgferry.catalog.schema import SCHEMA, current_version, ensure_catalog
from pgferry.catalog.store import (
    Subscription,
    SubscriptionExists,
    SubscriptionNotFound,
    SubscriptionTable,
)

__all__ = [
    "SCHEMA",
    "Subscription",
    "SubscriptionExists",
    "SubscriptionNotFound",
    "SubscriptionTable",
    "current_version",
    "ensure_catalog",
]
