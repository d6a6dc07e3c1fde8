"""Reverse replication: from the new primary back to the old one.

Prepared before the fence (:func:`prepare`), switched on inside it
(:func:`switch`), switched back if the switchover fails (:func:`undo`):

* **Publication.** On the new primary, each publication the forward subscription
  uses gets a publication of the same name (``FOR TABLE`` the subscription's
  tables, whole) when it has none yet; one that exists is used as it is. When the
  forward publication captures DDL on the old primary
  (:func:`pgferry.ddl.capture.enabled`), the new one does too
  (:func:`pgferry.ddl.capture.enable`, in the same transaction: it needs a
  superuser on the new primary, for the event triggers), so that a schema change
  made on the new primary reaches the old one. Neither side echoes the other's
  DDL: statements run by an apply worker (a replication origin is set up) are
  not captured.
* **Slot.** Created on the new primary with ``pg_create_logical_replication_slot``
  on a session whose ``statement_timeout`` is the prepare's bound (it waits for
  the transactions running there to end): :class:`ReverseNotPossible` after that
  long, with nothing left behind. Every change made there from then on is kept
  for the reverse subscription, and what the forward subscription applies there
  carries its origin and is not sent back.
* **Subscription.** In the old primary's database (its pgferry catalog, created
  if needed), the reverse subscription (``--reverse-name``, default
  ``<NAME>_reverse``) with ``origin = none``, ``copy_data = false``, disabled,
  on that slot. A reverse subscription that exists already (a switchover back,
  ``--rollback``) must be disabled and have its slot.
* **Switch.** In one transaction of each catalog: the forward subscription is
  disabled, with ``origin = none`` (so that, enabled again by a ``--rollback``,
  it does not bring back what the reverse subscription applied on the old
  primary); :func:`wait_stopped` waits (bounded) until its apply worker is gone
  (no row in ``pgferry.worker``, its slot inactive on the old primary); then the
  reverse one is enabled and the launcher of the old primary's database
  (``pgferry run -d OLD``) starts its apply worker. :func:`undo` restores both.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgferry import connect
from pgferry.catalog import ensure_catalog, store
from pgferry.catalog.model import SubscriptionOptions
from pgferry.catalog.store import Subscription
from pgferry.ddl import capture
from pgferry.errors import PgferryError
from pgferry.sqltext import printable
from pgferry.subscription.manage import create_subscription, shown
from pgferry.subscription.options import create_options

logger = logging.getLogger("pgferry.switchover")

Conn = psycopg.Connection[Any]

#: The reverse subscription's options when pgferry creates it (its slot, named
#: after it, is created first: :func:`create_slot`).
REVERSE_OPTIONS = ("copy_data=false", "origin=none", "enabled=false", "create_slot=false")
#: Seconds between two looks at the forward apply worker while it stops.
STOP_POLL = 0.005
#: Seconds the forward apply worker has to stop by itself (the launcher's SIGTERM
#: ends its wait for the stream at once: :func:`pgferry.stream.waiting.wake_on_signals`)
#: before the walsender serving it is ended (a worker busy elsewhere, or a
#: launcher slow to notice).
NUDGE_AFTER = 0.3


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
    new: Conn,
    forward: Subscription,
    tables: Sequence[tuple[str, str]],
    ddl: Sequence[str] = (),
) -> None:
    """The forward subscription's publication names on the new primary; those
    named in ``ddl`` capture DDL."""
    for pub in forward.publications:
        exists = new.execute(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (pub,)
        ).fetchone()
        if exists:
            continue
        listed = sql.SQL(", ").join(sql.Identifier(s, n) for s, n in tables)
        with new.transaction():
            new.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(pub), listed)
            )
            if pub in ddl:
                capture.enable(new, pub)
        logger.info(
            "created publication %s on the new primary%s", pub, " (with DDL)" if pub in ddl else ""
        )


def create_slot(conninfo: str, slot: str, timeout: float) -> None:
    """The reverse subscription's slot on the new primary, within ``timeout`` seconds."""
    try:
        conn = connect.publisher(
            conninfo, application_name="pgferry switchover", timeout=math.ceil(timeout)
        )
    except PgferryError as exc:
        raise ReverseNotPossible(
            f"cannot connect to the new primary to create the reverse slot: {exc.message}",
            hint=exc.hint,
        ) from None
    with conn:
        conn.execute(
            "SELECT pg_catalog.set_config('statement_timeout', %s, false)",
            (str(max(1, int(timeout * 1000))),),
        )
        try:
            conn.execute(
                "SELECT pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
            )
        except psycopg.errors.QueryCanceled:
            raise ReverseNotPossible(
                f"creating the reverse replication slot {shown(slot)} on the new primary did"
                f" not finish within {timeout:g} s (it waits for the transactions running"
                " there)",
                hint="end the long transactions on the new primary (pg_stat_activity,"
                " backend_xid) and try again; --phase-timeout sets the bound",
            ) from None
        except psycopg.errors.DuplicateObject:
            raise ReverseNotPossible(
                f"a replication slot {shown(slot)} exists already on the new primary",
                hint=f"drop it there (SELECT pg_drop_replication_slot({printable(repr(slot))}))"
                " or choose another --reverse-name",
            ) from None
        except psycopg.Error as exc:
            raise ReverseNotPossible(
                f"cannot create the reverse replication slot {shown(slot)} on the new primary:"
                f" {' '.join(str(exc).split())}",
                hint="the role of --reverse-conninfo (or -d) needs REPLICATION there",
            ) from None


def drop_slot(conninfo: str, slot: str) -> None:
    """Drop the slot :func:`create_slot` made (a later step failed)."""
    try:
        with connect.publisher(conninfo, application_name="pgferry switchover") as conn:
            conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
    except (psycopg.Error, PgferryError) as exc:
        logger.error(
            "could not drop the reverse replication slot %s on the new primary again (%s):"
            " drop it there, it retains WAL",
            slot,
            exc,
        )


def prepare(
    new: Conn,
    forward: Subscription,
    old_dsn: str,
    reverse_name: str,
    new_conninfo: str,
    timeout: float,
) -> Prepared:
    """Publication, reverse subscription and its slot (see the module docstring);
    the slot is created within ``timeout`` seconds."""
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
        ddl = [pub for pub in forward.publications if capture.enabled(old, pub)]
    slot = create_options(reverse_name, REVERSE_OPTIONS).slot_name
    assert slot is not None
    try:
        ensure_publications(new, forward, tables, ddl)
    except PgferryError as exc:
        raise ReverseNotPossible(
            f"cannot prepare reverse replication {shown(reverse_name)}: {exc.message}",
            hint=exc.hint,
        ) from None
    except psycopg.Error as exc:
        raise ReverseNotPossible(
            f"cannot create the reverse publication on the new primary:"
            f" {' '.join(str(exc).split())}",
            hint="the role of -d must be allowed to create publications there (DDL"
            " capture: a superuser)",
        ) from None
    create_slot(new_conninfo, slot, timeout)
    try:
        create_subscription(
            old_dsn,
            reverse_name,
            new_conninfo,
            forward.publications,
            (*REVERSE_OPTIONS, f"slot_name={slot}"),
        )
    except PgferryError as exc:
        drop_slot(new_conninfo, slot)
        raise ReverseNotPossible(
            f"cannot prepare reverse replication {shown(reverse_name)}: {exc.message}",
            hint=exc.hint,
        ) from None
    except BaseException:
        drop_slot(new_conninfo, slot)
        raise
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


class ForwardStillRunning(PgferryError):
    """The forward apply worker did not stop in time."""


def forward_running(new: Conn, old: Conn, forward: Subscription) -> str | None:
    """What shows the forward apply worker still running (None: it is gone): its
    row in the subscriber's ``pgferry.worker``, or its slot active on its publisher."""
    row = new.execute(
        "SELECT pid FROM pgferry.worker WHERE subscription = %s AND relation = ''",
        (forward.name,),
    ).fetchone()
    if row is not None:
        return f"its row in pgferry.worker (pid {row[0]})"
    row = old.execute(
        "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND active",
        (forward.slot_name,),
    ).fetchone()
    if row is not None:
        return f"its slot {shown(forward.slot_name or '')} active on the old primary (pid {row[0]})"
    return None


def wait_stopped(new: Conn, old: Conn, state: Switched, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the forward apply worker to be gone,
    after :func:`switch_forward`; after :data:`NUDGE_AFTER` seconds its walsender
    on the old primary is ended (everything up to the fence is applied already)."""
    started = time.monotonic()
    deadline = started + timeout
    nudged = False
    while True:
        running = forward_running(new, old, state.forward)
        if running is None:
            return
        if not nudged and time.monotonic() > started + NUDGE_AFTER:
            nudged = True
            _end_walsender(old, state.forward)
        if time.monotonic() > deadline:
            raise ForwardStillRunning(
                f"the apply worker of {shown(state.forward.name)} still runs {timeout:g} s"
                f" after the subscription was disabled ({running})",
                hint="check the log of `pgferry run` for the new primary (why its worker did"
                " not stop) and try again; --fence-timeout sets the wait",
            )
        time.sleep(STOP_POLL)


def _end_walsender(old: Conn, forward: Subscription) -> None:
    try:
        old.execute(
            "SELECT pg_catalog.pg_terminate_backend(active_pid)"
            " FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND active",
            (forward.slot_name,),
        )
    except psycopg.Error as exc:
        logger.info("could not end the walsender of slot %s: %s", forward.slot_name, exc)


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
