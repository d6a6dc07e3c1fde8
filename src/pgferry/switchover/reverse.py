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
* **Standby.** Still before the fence (:func:`standby`), the reverse
  subscription is enabled together with an apply hold without a target
  (:mod:`pgferry.catalog.hold`, in one transaction of the old primary's
  catalog): the launcher of the old primary's database (``pgferry run -d OLD``)
  starts its apply worker, which connects, streams from the reverse slot and
  stops before its first transaction. :func:`standby` waits (bounded) until the
  worker acknowledges that pause, so the fence does not wait for a worker to
  start. Held, it applies nothing. The hold's lease covers the cutover (a
  switchover that died leaves nothing held for longer).
* **Switch.** In one transaction of each catalog: the forward subscription is
  disabled, with ``origin = none`` (so that, enabled again by a ``--rollback``,
  it does not bring back what the reverse subscription applied on the old
  primary); :func:`wait_stopped` waits (bounded) until its apply worker is gone
  (no row in ``pgferry.worker``, its slot inactive on the old primary); only
  then is the reverse worker's hold released (:func:`switch_reverse`), checked
  in the same transaction to be the standby's own with its lease unexpired, so
  the reverse worker never applies while the forward one may still run.
  :func:`undo` restores both (the hold released, the reverse subscription
  disabled).
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
from pgferry.catalog import hold as catalog_hold
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
#: Seconds between two looks at the forward apply worker while it stops (after
#: the write pause: the clients reconnecting to the new primary come first).
STOP_POLL = 0.02
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
    #: The reverse subscription enabled (held while ``hold`` is set).
    reverse_done: bool = False
    #: The token of the standby's apply hold on the reverse subscription.
    hold: str | None = None
    #: The token of the forward subscription's hold at the fence's position
    #: (:func:`pgferry.switchover.drain.hold_at`).
    forward_hold: str | None = None


def _set_options(conn: Conn, name: str, options: SubscriptionOptions) -> None:
    store.set_options(conn, name, options)


def switch_forward(new: Conn, state: Switched) -> None:
    """Disable the forward subscription, with ``origin = none``, in a transaction
    committed with ``synchronous_commit = on``."""
    forward = state.forward
    with new.pipeline(), new.transaction():
        # Flushes the WAL of what the worker applied before (see .drain).
        new.execute("SET LOCAL synchronous_commit = on")
        store.set_enabled(new, forward.name, False)
        _set_options(new, forward.name, dataclasses.replace(forward.options, origin="none"))
    state.forward_done = True


class ForwardStillRunning(PgferryError):
    """The forward apply worker did not stop in time."""


def _worker_pid(conn: Conn, subscription: str) -> int | None:
    """The pid in the apply worker's row of ``pgferry.worker`` (None: no row)."""
    row = conn.execute(
        "SELECT pid FROM pgferry.worker WHERE subscription = %s AND relation = ''",
        (subscription,),
    ).fetchone()
    return None if row is None else int(row[0])


def forward_running(new: Conn, old: Conn, forward: Subscription) -> str | None:
    """What shows the forward apply worker still running (None: it is gone): its
    row in the subscriber's ``pgferry.worker``, or its slot active on its publisher."""
    pid = _worker_pid(new, forward.name)
    if pid is not None:
        return f"its row in pgferry.worker (pid {pid})"
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
                " not stop); --phase-timeout sets the wait",
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


#: The owner of the switchover's apply holds (:mod:`pgferry.switchover.drain`).
HOLD_OWNER = "switchover"
#: Seconds between two looks at the reverse apply worker while it starts.
STANDBY_POLL = 0.01


def standby(old: Conn, state: Switched, lease: float, timeout: float) -> None:
    """Enable the reverse subscription held before its first transaction, and wait
    up to ``timeout`` seconds for its apply worker to acknowledge the hold (see
    the module docstring); the hold's lease is ``lease`` seconds."""
    name = state.reverse
    with old.transaction():
        # (A hold an earlier switchover left on it is replaced.)
        token = catalog_hold.request(old, name, lease, owner=HOLD_OWNER)
        if token is None:
            raise ReverseNotPossible(
                f"the reverse subscription {shown(name)} is held by another request (a"
                " pgferry verify running on the old primary's database)",
                hint="let it end and try again",
            )
        store.set_enabled(old, name, True)
    state.hold = token
    state.reverse_done = True
    deadline = time.monotonic() + timeout
    while True:
        acked, _, present = catalog_hold.acknowledged(old, name, token)
        if acked == catalog_hold.PAUSED:
            logger.info("reverse subscription %s: apply worker started and held", name)
            return
        if not present:
            raise ReverseNotPossible(f"the standby hold of {shown(name)} was taken away")
        if time.monotonic() > deadline:
            raise ReverseNotPossible(
                f"the apply worker of the reverse subscription {shown(name)} did not start"
                f" within {timeout:g} s",
                hint="see the log of `pgferry run` for the old primary's database (it starts"
                " that worker) and `pgferry status` there; --phase-timeout sets the wait",
            )
        time.sleep(STANDBY_POLL)


def renew(old: Conn, state: Switched, lease: float) -> None:
    """The standby hold's lease from now on (before the fence)."""
    if state.hold is not None:
        catalog_hold.renew(old, state.reverse, state.hold, lease)


def switch_reverse(old: Conn, state: Switched, margin: float = 0.0) -> None:
    """Let the reverse apply worker go on: its standby hold is released, in a
    transaction that first checks the hold is still the standby's, with at least
    ``margin`` seconds of lease left (else the worker may have gone on by
    itself: :class:`ReverseNotPossible`). Without a standby, the subscription
    is enabled."""
    with old.pipeline(), old.transaction():
        if state.hold is not None:
            row = old.execute(
                "SELECT 1 FROM pgferry.apply_hold WHERE subscription = %s AND token = %s"
                " AND expires_at > pg_catalog.clock_timestamp() + make_interval(secs => %s)"
                " FOR UPDATE",
                (state.reverse, state.hold, margin),
            ).fetchone()  # (BEGIN and this in one round trip, the rest with COMMIT)
            if row is None:
                raise ReverseNotPossible(
                    f"the standby hold of the reverse subscription {shown(state.reverse)} ran"
                    " out before the forward subscription stopped",
                    hint="try again; --phase-timeout and --fence-timeout set the bounds",
                )
            catalog_hold.release(old, state.reverse, state.hold)
        store.set_enabled(old, state.reverse, True)
    state.hold = None
    state.reverse_done = True


#: Seconds :func:`undo` waits for a held reverse worker to be gone before it
#: removes the hold (else the hold is left to its lease).
UNDO_WAIT = 3.0


def undo(new: Conn, old: Conn | None, state: Switched) -> None:
    """Put both subscriptions back as they were. A held reverse subscription is
    disabled first; its hold is removed only once its worker is gone (released
    before, the worker could apply a transaction before it is stopped)."""
    if state.reverse_done and old is not None:
        with old.transaction():
            store.set_enabled(old, state.reverse, False)
        state.reverse_done = False
        if state.hold is not None:
            deadline = time.monotonic() + UNDO_WAIT
            while _worker_pid(old, state.reverse) is not None:
                if time.monotonic() > deadline:
                    logger.info(
                        "the held apply worker of %s is still stopping; its hold ends with"
                        " its lease",
                        state.reverse,
                    )
                    break
                time.sleep(STOP_POLL)
            else:
                catalog_hold.release(old, state.reverse, state.hold)
            state.hold = None
    if state.forward_done or state.forward_hold is not None:
        with new.transaction():
            if state.forward_done:
                store.set_enabled(new, state.forward.name, state.forward.enabled)
                _set_options(new, state.forward.name, state.forward.options)
            if state.forward_hold is not None:
                catalog_hold.release(new, state.forward.name, state.forward_hold)
        state.forward_done = False
        state.forward_hold = None
