"""A subscription's name and owner: ``alter --rename NEW`` and ``alter --owner ROLE``
(native's ``ALTER SUBSCRIPTION ... RENAME TO`` / ``OWNER TO``).

What depends on a subscription's name, and what a rename does with it:

* the catalog rows that reference it (its tables, statistics, workers, retries,
  conflicts, schema steps, sequence states, apply hold) follow in the same
  transaction: their foreign keys cascade the update;
* its replication origin keeps its name and so its progress: the name is stored in
  the catalog (``origin_name``, ``pgferry_<NAME>`` at creation), as native's
  ``pg_<oid>`` does not change with the name. Nothing is received twice, nothing
  is lost;
* its slot keeps its name (the default slot name is the name at creation), as
  native;
* table sync workers name their slots and origins after the subscription
  (:func:`pgferry.origins.sync_origin`), and a sync worker that is starting
  would write its table's state under the old name: a rename is refused while a
  table is not ready (state ``r``) or schema copy steps are left, with a hint to
  wait for them (``pgferry subscription wait``);
* a worker reads its subscription's rows by name: one still running under the
  old name would find no table to apply and move the origin past changes it
  did not apply. So the workers stop first, as native's apply worker restarts
  when its subscription is renamed: an enabled subscription is disabled (``pgferry
  run`` stops its workers), renamed once its origin is free and its slot streams
  to nobody, and enabled again in the rename's transaction; ``pgferry run``
  then starts the workers of the new name, and the apply worker resumes from
  the origin. A worker that does not stop within ``STOP_TIMEOUT`` leaves the
  subscription as it was (enabled again) with an error saying so;
* status, metrics labels and logs carry the new name from then on;
* a new subscription may take the old name: its origin is then
  ``pgferry_<NAME>_<N>``, the first free one (see :func:`origin_for`).

The owner is the role responsible for the subscription: recorded in the catalog
(the role of the subscriber DSN that created it, by default), shown by ``list``
and changed by ``--owner``, which takes an existing role the caller can SET ROLE
to (native's rule). It is not the role the workers apply changes as: pgferry
applies as the role of the DSN ``pgferry run`` connects with (see
``docs/reference.md``).
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import psycopg

from pgferry import connect, origins
from pgferry.catalog import TableState, ensure_catalog, store
from pgferry.catalog.store import SubscriptionExists
from pgferry.errors import InterfaceError, PgferryError
from pgferry.sqltext import ident, printable, qualified, quote_literal
from pgferry.stream import ReplicationConnection

Conn = psycopg.Connection[Any]

#: How long a rename waits for the workers of the old name to stop (seconds).
STOP_TIMEOUT = 30.0
_POLL = 0.1
#: SET ROLE is a membership option of its own from 16 on.
_SET_OPTION_MAJOR = 16


def _shown(name: str) -> str:
    return printable(repr(name))


def rename_subscription(
    dsn: str, name: str, new: str, *, stop_timeout: float = STOP_TIMEOUT
) -> tuple[str, ...]:
    """Rename subscription ``name`` to ``new`` (see the module docstring); the
    warnings. Its workers are stopped first: an enabled subscription is disabled,
    renamed once no worker of the old name runs (:func:`_wait_stopped`), and
    enabled again in the same transaction as the rename."""
    warnings: list[str] = []
    deadline = time.monotonic() + stop_timeout
    with connect.subscriber(dsn) as local:
        ensure_catalog(local)
        with local.transaction():
            sub = store.lock_subscription(local, name)
            _check_renamable(local, sub, new)
            if sub.enabled:
                store.set_enabled(local, name, False)
        renamed = False
        try:
            _wait_stopped(local, sub, deadline, warnings)
            with local.transaction():
                current = store.lock_subscription(local, name)
                if current.enabled or current.slot_name != sub.slot_name:
                    raise InterfaceError(
                        f"subscription {_shown(name)} was changed concurrently", hint="try again"
                    )
                _check_renamable(local, current, new)
                local.execute(
                    "UPDATE pgferry.subscription SET name = %s WHERE name = %s", (new, name)
                )
                if sub.enabled:
                    store.set_enabled(local, new, True)
            renamed = True
        finally:
            if sub.enabled and not renamed and not local.closed:
                store.set_enabled(local, name, True)
    return tuple(warnings)


def _check_renamable(local: Conn, sub: store.Subscription, new: str) -> None:
    name = sub.name
    if new == name:
        raise InterfaceError(f"subscription {_shown(name)} is already called {_shown(new)}")
    if store.subscription_exists(local, new):
        raise SubscriptionExists(
            f"subscription {_shown(new)} already exists",
            hint="choose another name, or drop that one first",
        )
    copying = [
        f"{qualified(t.remote_schema, t.remote_name)} ({t.state})"
        for t in store.tables(local, name)
        if t.state != TableState.READY
    ]
    if copying:
        listed = ", ".join(copying[:5]) + (
            f" and {len(copying) - 5} more" if len(copying) > 5 else ""
        )
        raise InterfaceError(
            f"cannot rename subscription {_shown(name)} while tables are being synchronised:"
            f" {listed}",
            hint=f"the table sync workers' slots and origins carry the name: wait until every"
            f" table is ready (pgferry subscription wait {shlex.quote(name)}), then rename",
        )
    row = local.execute(
        "SELECT count(*) FROM pgferry.schema_step WHERE subscription = %s", (name,)
    ).fetchone()
    if row and row[0]:
        raise InterfaceError(
            f"cannot rename subscription {_shown(name)} while its schema copy has steps left",
            hint="pgferry run finishes them once every table is ready; rename after that",
        )


def _wait_stopped(
    local: Conn, sub: store.Subscription, deadline: float, warnings: list[str]
) -> None:
    """Return once no apply worker of ``sub`` runs: its replication origin is free
    (no session has it set up) and its slot has no walsender on the publisher. A
    worker between two sessions may leave the origin free for a moment, but never
    its stream, hence both. Without a slot no worker runs; an unreachable publisher
    streams to nobody (a warning says the slot was not checked)."""
    repl: ReplicationConnection | None = None
    if sub.slot_name is not None:
        try:
            repl = ReplicationConnection.connect(
                sub.conninfo, application_name=f"pgferry_{sub.name}"[:63]
            )
        except PgferryError as exc:
            warnings.append(
                f"could not connect to the publisher to check that slot {_shown(sub.slot_name)}"
                f" is no longer streaming ({exc.message}); renamed once the origin was free"
            )
    try:
        while True:
            if _origin_free(local, sub.origin_name) and (
                repl is None or sub.slot_name is None or not _slot_active(repl, sub.slot_name)
            ):
                return
            if time.monotonic() >= deadline:
                raise InterfaceError(
                    f"cannot rename subscription {_shown(sub.name)}: a worker still streams"
                    f" from its slot or has its replication origin {_shown(sub.origin_name)}",
                    hint="it is disabled meanwhile, so pgferry run stops its workers; try again"
                    " once they stopped (or stop whatever else streams from the slot)",
                )
            time.sleep(_POLL)
    finally:
        if repl is not None:
            repl.close()


def _origin_free(local: Conn, origin: str) -> bool:
    """Whether no session has ``origin`` set up: set it up in ours, and reset it."""
    if not origins.exists(local, origin):
        return True
    try:
        local.execute("SELECT pg_catalog.pg_replication_origin_session_setup(%s)", (origin,))
    except psycopg.errors.ObjectInUse:
        return False
    origins.release(local)
    return True


def _slot_active(repl: ReplicationConnection, slot: str) -> bool:
    rows = repl.execute(
        "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = "
        + quote_literal(slot),
        context="checking the slot",
    )
    return bool(rows) and rows[0][0] == "t"


def set_owner(local: Conn, name: str, role: str) -> str:
    """Make ``role`` the owner of subscription ``name``; the previous owner."""
    found = local.execute(
        "SELECT r.rolname::text, pg_catalog.pg_has_role(r.oid, %s)"
        " FROM pg_catalog.pg_roles r WHERE r.rolname = %s",
        ("SET" if local.info.server_version >= _SET_OPTION_MAJOR * 10000 else "MEMBER", role),
    ).fetchone()
    if found is None:
        raise InterfaceError(
            f"role {ident(role)} does not exist",
            hint="the owner is a role of the subscriber cluster (CREATE ROLE first)",
        )
    if not found[1]:
        raise InterfaceError(
            f"permission denied to change the owner of subscription {_shown(name)}",
            hint=f"the new owner must be a role you can SET ROLE to: GRANT {ident(role)} TO"
            " the role of -d, or run as a superuser",
        )
    previous = local.execute(
        "SELECT owner FROM pgferry.subscription WHERE name = %s", (name,)
    ).fetchone()
    local.execute("UPDATE pgferry.subscription SET owner = %s WHERE name = %s", (role, name))
    return str(previous[0]) if previous else ""


def owners(local: Conn) -> dict[str, str]:
    """{subscription: owner} for every subscription of the catalog."""
    rows = local.execute("SELECT name, owner FROM pgferry.subscription").fetchall()
    return {str(n): str(o) for n, o in rows}


def origin_for(local: Conn, name: str) -> str:
    """The replication origin for a new subscription ``name``: ``pgferry_<NAME>``,
    or, when a subscription of this catalog renamed from ``name`` keeps that origin,
    the first free ``pgferry_<NAME>_<N>``. An origin of that name that this
    catalog does not know (another database's subscription, a leftover) is refused
    by the caller, as before."""
    origin = origins.subscription_origin(name)
    taken = {
        str(r[0])
        for r in local.execute(
            "SELECT origin_name FROM pgferry.subscription"
            " WHERE origin_name = %s OR origin_name LIKE %s",
            (origin, _like_prefix(origin + "_") + "%"),
        ).fetchall()
    }
    if origin not in taken:
        return origin
    number = 2
    while f"{origin}_{number}" in taken or origins.exists(local, f"{origin}_{number}"):
        number += 1
    return f"{origin}_{number}"


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
