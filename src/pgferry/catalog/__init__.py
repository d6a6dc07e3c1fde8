"""The catalog in the subscriber database (schema ``pgferry``).

See :mod:`pgferry.catalog.schema` for the tables and migrations,
:mod:`pgferry.catalog.store` for reading and writing them and
:mod:`pgferry.catalog.model` for what their rows hold (table states, options).
"""

from pgferry.catalog.model import SubscriptionOptions, TableState
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
    "SubscriptionOptions",
    "SubscriptionTable",
    "TableState",
    "current_version",
    "ensure_catalog",
]
