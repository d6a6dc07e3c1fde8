"""Subscriptions: create, alter, drop and list them in the subscriber's catalog.

See :mod:`pgferry.subscription.manage` for the behaviour,
:mod:`pgferry.subscription.options` for the ``--with`` keys and
:mod:`pgferry.subscription.tables` for the checks of published tables.
"""

from pgferry.publisher.shape import ColumnListConflict, PublishedTable
from pgferry.subscription.manage import (
    AlterRequest,
    AlterResult,
    CreateResult,
    DropResult,
    SubscriptionInfo,
    alter_subscription,
    create_subscription,
    drop_subscription,
    list_subscriptions,
    to_json,
)
from pgferry.subscription.tables import SubscriberTablesMissing

__all__ = [
    "AlterRequest",
    "AlterResult",
    "ColumnListConflict",
    "CreateResult",
    "DropResult",
    "PublishedTable",
    "SubscriberTablesMissing",
    "SubscriptionInfo",
    "alter_subscription",
    "create_subscription",
    "drop_subscription",
    "list_subscriptions",
    "to_json",
]
