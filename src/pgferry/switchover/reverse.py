"""Reverse replication: from the new primary back to the old one.

Prepared before the fence (:func:`prepare`), switched on inside it
(:func:`switch`), switched back if the switchover fails (:func:`undo`):

* **Publication.** On the new primary, each publication the forward subscription
  uses gets a publication of the same name (``FOR TABLE`` the subscription's
  tables, whole) when it has none yet; one that exists is used as it is.
* **Subscription.** In the old primary's database (its pgferry catalog, created
  if needed), the reverse subscription (``--reverse-name``, default
  ``<NAME>_reverse``) with ``origin = none``, ``copy_data = false``, disabled,
  its slot created now on the new primary: every change made there from then on
  is kept for it, and what the forward subscription applies there carries its
  origin and is not sent back. A reverse subscription that exists already (a
  switchover back, ``--rollback``) must be disabled and have its slot.
* **Switch.** In one transaction of each catalog: the forward subscription is
  disabled, with ``origin = none`` (so that, enabled again by a ``--rollback``,
  it does not bring back what the reverse subscription applied on the old
  primary), and the reverse one enabled; the launcher of the old primary's
  database (``pgferry run -d OLD``) starts its apply worker. :func:`undo`
  restores both.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgferry import connect
from pgferry.catalog import ensure_catalog, store
from pgferry.catalog.model import SubscriptionOptions
from pgferry.catalog.store import Subscription
from pgferry.errors import PgferryError
from pgferry.subscription.manage import create_subscription, shown

logger = logging.getLogger("pgferry.switchover")

Conn = psycopg.Connection[Any]

#: The reverse subscription's options when pgferry creates it.
REVERSE_OPTIONS = ("copy_data=false", "origin=none", "enabled=false", "create_slot=true")


class ReverseNotPossible(PgferryError):
    """Reverse replication cannot be put in place."""


def default_name(name: str) -> str:
    suffix = "_reverse"
    raw = name.encode()[: 63 - len(suffix)].decode(errors="ignore")
    return raw + suffix


@dataclass(frozen=True)
class Prepared:
    name: str
    created: bool
    publications: tuple[str, ...]


def ensure_publications(
    new: Conn, forward: Subscription, tables: Sequence[tuple[str, str]]
) -> None:
    """The forward subscription's publication names on the new primary."""
    for pub in forward.publications:
        exists = new.execute(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (pub,)
        ).fetchone()
        if exists:
            continue
        listed = sql.SQL(", ").join(sql.Identifier(s, n) for s, n in tables)
        new.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(pub), listed)
        )
        logger.info("created publication %s on the new primary", pub)


def prepare(
    new: Conn, forward: Subscription, old_dsn: str, reverse_name: str, new_conninfo: str
) -> Prepared:
    """Publication, reverse subscription and its slot (see the module docstring)."""
    tables = [(t.local_schema, t.local_name) for t in store.tables(new, forward.name)]
    with connect.subscriber(old_dsn) as old:
        ensure_catalog(old)
        existing = store.subscription_exists(old, reverse_name)
        if existing:
            reverse = store.get_subscription(old, reverse_name)
            if reverse.enabled:
                raise ReverseNotPossible(
                    f"the reverse subscription {shown(reverse_name)} on the old primary is"
                    " enabled: it would replicate into the primary",
                    hint=f"disable it there (pgferry subscription alter {reverse_name}"
                    " --disable) or choose another --reverse-name",
                )
            if reverse.slot_name is None:
                raise ReverseNotPossible(
                    f"the reverse subscription {shown(reverse_name)} has no slot",
                    hint="drop it on the old primary (pgferry subscription drop) and try again",
                )
            return Prepared(reverse_name, False, reverse.publications)
    try:
        ensure_publications(new, forward, tables)
        create_subscription(
            old_dsn, reverse_name, new_conninfo, forward.publications, REVERSE_OPTIONS
        )
    except PgferryError as exc:
        raise ReverseNotPossible(
            f"cannot prepare reverse replication {shown(reverse_name)}: {exc.message}",
            hint=exc.hint,
        ) from None
    return Prepared(reverse_name, True, forward.publications)


@dataclass
class Switched:
    forward: Subscription
    reverse: str
    forward_done: bool = False
    reverse_done: bool = False


def _set_options(conn: Conn, name: str, options: SubscriptionOptions) -> None:
    store.set_options(conn, name, options)


def switch_forward(new: Conn, state: Switched) -> None:
    """Disable the forward subscription, with ``origin = none``."""
    forward = state.forward
    with new.transaction():
        store.set_enabled(new, forward.name, False)
        _set_options(new, forward.name, dataclasses.replace(forward.options, origin="none"))
    state.forward_done = True


def switch_reverse(old: Conn, state: Switched) -> None:
    """Enable the reverse subscription."""
    with old.transaction():
        store.set_enabled(old, state.reverse, True)
    state.reverse_done = True


def undo(new: Conn, old: Conn | None, state: Switched) -> None:
    """Put both subscriptions back as they were."""
    if state.reverse_done and old is not None:
        with old.transaction():
            store.set_enabled(old, state.reverse, False)
        state.reverse_done = False
    if state.forward_done:
        with new.transaction():
            store.set_enabled(new, state.forward.name, state.forward.enabled)
            _set_options(new, state.forward.name, state.forward.options)
        state.forward_done = False
