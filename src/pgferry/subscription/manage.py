"""Subscriptions in the subscriber's catalog: create, alter, drop, list.

Every function takes the subscriber DSN (where the catalog, schema ``pgferry``,
lives) and works on an autocommit connection: each change to the catalog is one
short transaction, and no transaction is ever open on the subscriber while pgferry
talks to the publisher. That is what lets a publisher and a subscriber live in the
same cluster: creating a slot waits for every running transaction of the cluster,
which is why native ``CREATE SUBSCRIPTION`` hangs there and this does not.

:func:`create_subscription`, in order (nothing is created before every check passed):

1. checks the name, publications, conninfo and ``--with`` options
   (:mod:`pgferry.subscription.options`); creates or upgrades the catalog; refuses
   a name already in the catalog;
2. unless ``connect=false``: connects to the publisher over a replication
   connection (which needs the REPLICATION attribute), checks ``wal_level``, that
   every publication exists (naming the missing ones) and that the publisher
   supports the options asked for; lists the published tables and checks that the
   subscriber has every published table and column (:mod:`.tables`); with
   ``copy_data`` (or the schema copy), that the publisher's role may read every
   published table (:func:`check_readable`: one error listing those it cannot);
3. with ``create_slot``: creates the slot (pgoutput, permanent, no snapshot) on a
   replication connection of its own;
4. in one subscriber transaction: the catalog row (origin ``pgferry_<NAME>``),
   the replication origin, and the tables in state ``i`` (``copy_data``) or ``r``.
   If that fails, the slot created in step 3 is dropped again.

:func:`drop_subscription` connects to the publisher, disables the subscription (so
that ``pgferry run`` stops its workers, as native stops them), drops the sync
slots of tables still being copied and the subscription's slot (a slot already
gone is a warning; one still in use is retried until ``stop_timeout``), then, in
one transaction, the replication origins and the catalog row. A publisher it
cannot reach is an error saying to detach the slot first (``alter NAME --disable
--with slot_name=NONE``), as native says; nothing is changed then.

:func:`alter_subscription` applies, in one subscriber transaction and in this
order: ``--disable``, ``--connection``, the publication list, ``--with`` options,
the refreshed table list, ``--skip``, ``--enable``. Native's rules apply:
``slot_name=NONE`` only while disabled, no enabling without a slot, ``two_phase``
only while disabled, a publication change refreshes unless ``refresh=false``,
``--skip`` takes an LSN after the origin's progress (``NONE`` clears it); and,
pgferry's own rule, only the finish LSN of the transaction the last apply error
is about (``store.failed_lsn``): a mistyped LSN would skip nothing, or one day
another transaction.
Everything that needs the publisher (the refresh) happens before that
transaction.

Deliberate differences from native:

* ``create`` checks the publications exist and that the subscriber has every
  published table and column, and refuses options the publisher's version cannot
  honour (``binary`` before 14, ``two_phase`` before 15); native finds out later
  or silently does without. ``streaming`` (``on`` or ``parallel``) is asked of a
  publisher from 14 on, as native does; ``parallel`` needs nothing more of it
  (pgferry applies a streamed transaction as it arrives by itself);
* ``alter --refresh-publication`` (and a publication change) works on a disabled
  subscription too: pgferry connects to the publisher for the refresh itself;
* the replication origin is named ``pgferry_<NAME>``, not after an OID as native's
  ``pg_<oid>``; origins are shared by all databases of a cluster, so ``create``
  refuses a name whose origin already exists (another database of the subscriber
  cluster may have a subscription of that name) before creating anything. A
  renamed subscription keeps its origin; a new subscription of its old name gets
  ``pgferry_<NAME>_<N>`` (see :mod:`.naming`).

``list --json`` prints :func:`to_json`: a JSON array, one object per subscription
ordered by name, with exactly these keys: ``name``, ``owner``, ``enabled`` (bool),
``conninfo`` (password masked), ``publications`` (array), ``slot_name`` (string or
null), ``origin_name``, ``options`` (object: every stored option with its
effective value), ``skip_lsn`` (string or null), ``tables`` (object: state letter
-> number of tables, states with no table left out, in the order r s f d i),
``last_error`` (string or null), ``last_error_lsn`` (the finish LSN of the remote
transaction it is about, the one ``--skip`` takes, or null) and
``last_error_hint`` (the next action, see :func:`error_hint`, or null).

``alter --owner ROLE`` comes last in the transaction; ``alter --rename NEW`` goes
alone (as native's RENAME TO), stopping the workers first. What they mean and
what a rename keeps is in :mod:`.naming`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgferry import connect, origins
from pgferry import conninfo as ci
from pgferry.catalog import (
    Subscription,
    SubscriptionOptions,
    SubscriptionTable,
    TableState,
    conflict_log,
    ensure_catalog,
    store,
)
from pgferry.catalog.schema import current_version
from pgferry.catalog.store import SubscriptionExists, SubscriptionNotFound
from pgferry.conflict import Resolution
from pgferry.errors import (
    ConnectionFailed,
    InterfaceError,
    PgferryError,
    PublicationNotFound,
    ServerError,
    SlotAlreadyExists,
    SlotInUse,
    SlotNotFound,
)
from pgferry.hints import error_hint
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.publisher.shape import PublishedTable
from pgferry.publisher.spec import parse_table_name
from pgferry.schema import copy as schema_copy
from pgferry.schema.dump import DumpTools, find_tools
from pgferry.sqltext import ident, printable, qualified, quote_literal
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.stream.commands import streaming_for
from pgferry.subscription import naming
from pgferry.subscription.options import (
    ALTER_KEYS,
    REFRESH_KEYS,
    CreateOptions,
    create_options,
    parse_pairs,
)
from pgferry.subscription.tables import (
    check_subscriber,
    column_differences,
    existing_tables,
    published_tables,
    table_sizes,
)

logger = logging.getLogger("pgferry.subscription")

#: Longest subscription name: PostgreSQL's identifier limit (NAMEDATALEN - 1 bytes).
MAX_NAME_BYTES = 63
#: Table states as ``list`` shows them: ready first, then back through native's
#: i -> d -> f -> s -> r progression.
STATE_ORDER = (
    TableState.READY,
    TableState.SYNCDONE,
    TableState.FINISHED,
    TableState.DATA,
    TableState.INIT,
)

Conn = psycopg.Connection[Any]


def shown(name: str) -> str:
    """A subscription, slot or publication name for a message: quoted, one line."""
    return printable(repr(name))


# -- connections ----------------------------------------------------------------------


def _publisher(conninfo: str, name: str) -> ReplicationConnection:
    return ReplicationConnection.connect(conninfo, application_name=f"pgferry_{name}"[:63])


def _catalog_subscription(local: Conn, name: str) -> Subscription | None:
    """The subscription, None when there is no catalog or no such row."""
    if current_version(local) == 0:
        return None
    ensure_catalog(local)
    try:
        return store.get_subscription(local, name)
    except SubscriptionNotFound:
        return None


def _not_found(name: str) -> SubscriptionNotFound:
    return SubscriptionNotFound(
        f"subscription {shown(name)} does not exist",
        hint="pgferry subscription list shows the subscriptions of this database",
    )


# -- argument checks --------------------------------------------------------------------


def check_name(name: str) -> str:
    if not name:
        raise InterfaceError("the subscription name is empty")
    if "\0" in name:
        raise InterfaceError("the subscription name contains a NUL character")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InterfaceError(
            f"subscription name {shown(name)} is longer than {MAX_NAME_BYTES} bytes"
        )
    return name


def check_publications(publications: Iterable[str]) -> tuple[str, ...]:
    names = tuple(publications)
    if not names:
        raise InterfaceError("at least one publication is needed", hint="--publication PUB")
    seen: set[str] = set()
    for pub in names:
        if not pub or "\0" in pub or len(pub.encode()) > MAX_NAME_BYTES:
            raise InterfaceError(f"invalid publication name {shown(pub)}")
        if pub in seen:
            raise InterfaceError(f"publication name {shown(pub)} used more than once")
        seen.add(pub)
    return names


def _check_publisher(
    repl: ReplicationConnection,
    publications: tuple[str, ...],
    options: SubscriptionOptions | None,
) -> list[PublishedTable]:
    """wal_level, publications exist, options supported; the published tables."""
    repl.check_wal_level()
    missing = repl.missing_publications(publications)
    if missing:
        listed = ", ".join(shown(p) for p in missing)
        raise PublicationNotFound(
            f"publication{'s' if len(missing) > 1 else ''} {listed}"
            f" do{'' if len(missing) > 1 else 'es'} not exist on the publisher",
            hint="create them on the publisher first (pgferry publication create)",
        )
    if options is not None:
        PgoutputOptions(
            publication_names=publications,
            binary=options.binary,
            streaming=streaming_for(options.streaming, repl.major),
            two_phase=options.two_phase,
            # Before 16 the publisher cannot filter; the apply worker does.
            origin="none" if options.origin == "none" and repl.major >= 16 else None,
        ).resolve_protocol(repl.server_version)
    return published_tables(repl, publications)


class PublisherCannotRead(ServerError):
    """The publisher's role lacks SELECT on published tables (the copy needs it)."""


def check_readable(repl: ReplicationConnection, tables: Sequence[PublishedTable]) -> None:
    """Raise :class:`PublisherCannotRead` naming the ``tables`` whose published
    columns the connection's role may not read: the initial copy reads them with
    its credentials, so without SELECT it would fail in the sync worker, table
    after table. (SELECT on every published column is enough, as for the copy.)"""
    if not tables:
        return
    values = ", ".join(
        f"({quote_literal(t.schema)}, {quote_literal(t.name)},"
        f" ARRAY[{', '.join(quote_literal(c) for c in t.columns)}]::text[])"
        for t in tables
    )
    rows = repl.execute(
        "SELECT v.s, v.n, current_user FROM (VALUES " + values + ") AS v(s, n, cols)"
        " JOIN pg_catalog.pg_namespace ns ON ns.nspname = v.s"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = v.n"
        " WHERE NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')"
        " AND NOT (SELECT coalesce(pg_catalog.bool_and("
        "   pg_catalog.has_column_privilege(c.oid, col, 'SELECT')), false)"
        "   FROM pg_catalog.unnest(v.cols) AS col)"
        " ORDER BY 1, 2",
        context="checking the publisher's privileges",
    )
    if not rows:
        return
    role = str(rows[0][2])
    names = [qualified(str(r[0]), str(r[1])) for r in rows]
    listed = ", ".join(names)
    raise PublisherCannotRead(
        f"the publisher's role {ident(role)} cannot read published"
        f" table{'s' if len(names) > 1 else ''} {listed}: the initial copy needs SELECT",
        hint=f"on the publisher: GRANT SELECT ON {listed} TO {ident(role)};"
        " or subscribe without copying (--with copy_data=false)",
    )


def _replicated_on_publisher(
    repl: ReplicationConnection, publications: tuple[str, ...]
) -> list[str]:
    """Published tables the publisher itself subscribes to (natively or with
    pgferry): their rows may have come from another origin."""
    pubs = ", ".join(quote_literal(p) for p in publications)
    published = (
        "SELECT DISTINCT gpt.relid, n.nspname, c.relname FROM pg_catalog.pg_publication p,"
        " LATERAL pg_catalog.pg_get_publication_tables(p.pubname) gpt"
        " JOIN pg_catalog.pg_class c ON c.oid = gpt.relid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE p.pubname IN ({pubs})"
    )
    rows = repl.execute(
        f"SELECT t.nspname, t.relname FROM ({published}) t WHERE EXISTS"
        " (SELECT 1 FROM pg_catalog.pg_subscription_rel r WHERE r.srrelid = t.relid)"
    )
    found = {(str(r[0]), str(r[1])) for r in rows}
    readable = repl.execute(
        "SELECT pg_catalog.to_regclass('pgferry.subscription_table') IS NOT NULL AND"
        " pg_catalog.has_table_privilege('pgferry.subscription_table', 'SELECT')"
    )
    if readable and readable[0][0] == "t":
        rows = repl.execute(
            f"SELECT t.nspname, t.relname FROM ({published}) t WHERE EXISTS"
            " (SELECT 1 FROM pgferry.subscription_table s"
            "  WHERE s.local_schema = t.nspname AND s.local_name = t.relname)"
        )
        found |= {(str(r[0]), str(r[1])) for r in rows}
    return [qualified(schema, name) for schema, name in sorted(found)]


def _origin_warning(
    name: str, repl: ReplicationConnection, publications: tuple[str, ...]
) -> str | None:
    """Native's warning for ``copy_data`` with ``origin = none``."""
    tables = _replicated_on_publisher(repl, publications)
    if not tables:
        return None
    listed = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    return (
        f"subscription {shown(name)} requested copy_data with origin = none but might copy"
        f" data that had a different origin: published tables {listed} are written to by"
        " subscriptions on the publisher; verify that the initial data copied from them did"
        " not come from other origins"
    )


def _table_row(sub: str, table: PublishedTable, state: TableState) -> SubscriptionTable:
    return SubscriptionTable(
        sub, table.schema, table.name, table.schema, table.name, state, None,
        table.column_list, table.row_filter,
    )  # fmt: skip


# -- create ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateResult:
    name: str
    slot_name: str | None
    slot_created: bool
    enabled: bool
    tables: tuple[SubscriptionTable, ...]
    warnings: tuple[str, ...] = ()


def create_subscription(
    dsn: str,
    name: str,
    conninfo: str,
    publications: Sequence[str],
    with_options: Iterable[str] = (),
) -> CreateResult:
    """Create subscription ``name`` (see the module docstring for the steps)."""
    check_name(name)
    pubs = check_publications(publications)
    ci.parse(conninfo)
    opts = create_options(name, with_options)
    warnings: list[str] = []
    copying_schema = opts.connect and opts.options.copy_schema != "false"
    with connect.subscriber(dsn) as local:
        ensure_catalog(local)
        if store.subscription_exists(local, name):
            raise SubscriptionExists(
                f"subscription {shown(name)} already exists",
                hint=f"drop it first (pgferry subscription drop {name}) or choose another name",
            )
        _check_origin_free(local, name)
        published: list[PublishedTable] = []
        sizes: dict[tuple[str, str], int] = {}
        tools: DumpTools | None = None
        if opts.connect:
            with _publisher(conninfo, name) as repl:
                published = _check_publisher(repl, pubs, opts.options)
                if opts.copy_data or copying_schema:
                    check_readable(repl, published)
                if copying_schema:
                    # Before anything is created: a pg_dump that can dump it.
                    tools = find_tools(repl.major)
                sizes = table_sizes(repl, published)
                if opts.copy_data and opts.options.origin == "none":
                    warning = _origin_warning(name, repl, pubs)
                    if warning:
                        warnings.append(warning)
                if (
                    not opts.create_slot
                    and opts.slot_name is not None
                    and not repl.slot_exists(opts.slot_name)
                ):
                    warnings.append(
                        f"replication slot {shown(opts.slot_name)} does not exist on the"
                        " publisher; create it before enabling the subscription"
                    )
            _check_tables(local, published, copying=copying_schema)
        copy: Callable[[str | None], schema_copy.Plan] | None = None
        if tools is not None:
            found_tools = tools

            def copy(snapshot: str | None) -> schema_copy.Plan:
                return _plan_schema(found_tools, conninfo, local, published, opts.options, snapshot)

        slot_created = False
        schema: schema_copy.Plan | None = None
        try:
            if opts.create_slot:
                assert opts.slot_name is not None
                two_phase = bool(opts.get("two_phase")) and not opts.copy_data
                schema = _create_slot(conninfo, name, opts.slot_name, two_phase, copy)
                slot_created = True
            elif copy is not None:
                schema = copy(None)
            rows = _register(
                local, name, conninfo, pubs, opts.slot_name, opts, published, sizes, schema,
                warnings,
            )  # fmt: skip
        except BaseException as exc:
            if slot_created:
                assert opts.slot_name is not None
                _drop_created_slot(conninfo, name, opts.slot_name, exc)
            raise
    return CreateResult(
        name, opts.slot_name, slot_created, opts.enabled, tuple(rows), tuple(warnings)
    )


def _check_tables(local: Conn, published: list[PublishedTable], *, copying: bool) -> None:
    """The subscriber has every published table and column; with the schema copy,
    only the tables it has already are checked (it creates the others)."""
    if copying:
        present = existing_tables(local, published)
        published = [t for t in published if t.key in present]
    check_subscriber(local, published)


def _plan_schema(
    tools: DumpTools,
    conninfo: str,
    local: Conn,
    tables: Sequence[PublishedTable],
    options: SubscriptionOptions,
    snapshot: str | None,
) -> schema_copy.Plan:
    return schema_copy.prepare(
        tools,
        conninfo,
        local,
        [(t.schema, t.name) for t in tables],
        everything=options.copy_schema == "all",
        snapshot=snapshot,
        compare=lambda existing: column_differences(local, conninfo, existing),
    )


def _create_slot(
    conninfo: str,
    name: str,
    slot_name: str,
    two_phase: bool,
    then: Callable[[str | None], schema_copy.Plan] | None = None,
) -> schema_copy.Plan | None:
    """Create the slot; with ``then``, export its snapshot and return what ``then``
    makes of it while it is valid (the schema copy's plan)."""
    # Its own connection, and nothing open on the subscriber: in a shared cluster
    # the slot waits for every running transaction, ours included.
    with _publisher(conninfo, name) as repl:
        try:
            slot = repl.create_slot(
                slot_name, snapshot="export" if then else "nothing", two_phase=two_phase
            )
        except SlotAlreadyExists as exc:
            exc.message = f"replication slot {shown(slot_name)} already exists on the publisher"
            exc.hint = (
                "use it with --with create_slot=false, or choose another slot with"
                " --with slot_name=NAME"
            )
            raise
        if then is None:
            return None
        try:
            return then(slot.snapshot_name)
        except BaseException as exc:
            # The caller drops the slot: it does not know it was created.
            _drop_created_slot_on(repl, slot_name, exc)
            raise


def _drop_created_slot_on(
    repl: ReplicationConnection, slot_name: str, cause: BaseException
) -> None:
    """Undo the slot of a create that failed, on its own connection (which may
    still hold the exported snapshot); ``cause`` gets a hint if that fails too."""
    try:
        repl.execute("SELECT 1")  # ends the snapshot export
        repl.drop_slot(slot_name)
        logger.info("dropped replication slot %s again", slot_name)
    except PgferryError as exc:
        _slot_left(slot_name, exc, cause)


def _drop_created_slot(conninfo: str, name: str, slot_name: str, cause: BaseException) -> None:
    """Undo the slot of a create that failed; ``cause`` gets a hint if that fails too."""
    try:
        repl = _publisher(conninfo, name)
    except PgferryError as exc:
        _slot_left(slot_name, exc, cause)
        return
    with repl:
        _drop_created_slot_on(repl, slot_name, cause)


def _slot_left(slot_name: str, failure: PgferryError, cause: BaseException) -> None:
    logger.error("could not drop replication slot %s again: %s", slot_name, failure)
    if isinstance(cause, PgferryError):
        cause.hint = (
            f"the replication slot {shown(slot_name)} created on the publisher could not be"
            f" dropped again ({failure.message}); drop it there, it retains WAL"
        )


def _register(
    local: Conn,
    name: str,
    conninfo: str,
    pubs: tuple[str, ...],
    slot_name: str | None,
    opts: CreateOptions,
    published: list[PublishedTable],
    sizes: dict[tuple[str, str], int],
    schema: schema_copy.Plan | None,
    warnings: list[str],
) -> list[SubscriptionTable]:
    origin = naming.origin_for(local, name)
    state = TableState.INIT if opts.copy_data else TableState.READY
    rows = [_table_row(name, t, state) for t in published]
    with local.transaction():
        store.create_subscription(
            local,
            Subscription(
                name,
                conninfo,
                pubs,
                slot_name,
                origin,
                enabled=opts.enabled,
                options=opts.options,
            ),
        )
        origins.ensure(local, origin)
        if schema is not None:
            warnings += schema_copy.create(local, name, schema, opts.options.schema_skip).lines()
        for row in rows:
            store.upsert_table(local, row)
        store.set_table_sizes(local, name, sizes)
    return rows


def _check_origin_free(local: Conn, name: str) -> None:
    origin = naming.origin_for(local, name)
    if origins.exists(local, origin):
        raise InterfaceError(
            f"replication origin {shown(origin)} already exists: replication origins are"
            " shared by every database of the cluster, and another database may have a"
            f" subscription {shown(name)}",
            hint="choose another name; if it is a leftover nothing uses, drop it first:"
            f" SELECT pg_replication_origin_drop({quote_literal(origin)})",
        )


# -- drop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropResult:
    name: str
    dropped: bool
    slot_dropped: str | None = None
    warnings: tuple[str, ...] = ()


def drop_subscription(
    dsn: str, name: str, *, if_exists: bool = False, stop_timeout: float = 30.0
) -> DropResult:
    """Drop subscription ``name``, its slot on the publisher and its origins.

    Like native, which stops the subscription's workers first: the subscription is
    disabled before its slots are dropped, so that ``pgferry run`` stops its
    workers, and slots and origins still in use are retried for up to
    ``stop_timeout`` seconds.
    """
    warnings: list[str] = []
    deadline = time.monotonic() + stop_timeout
    with connect.subscriber(dsn) as local:
        sub = _catalog_subscription(local, name)
        if sub is None:
            if if_exists:
                return DropResult(name, dropped=False)
            raise _not_found(name)
        syncing = [
            origins.sync_origin(name, t.remote_schema, t.remote_name)
            for t in store.tables(local, name)
            if t.state != TableState.READY
        ]
        slot_dropped = None
        if sub.slot_name is not None or syncing:
            slot_dropped = _drop_remote_slots(local, sub, syncing, warnings, deadline)
        while True:
            try:
                with local.transaction():
                    store.lock_subscription(local, name)
                    origins.drop(local, [sub.origin_name, origins.repair_origin(name), *syncing])
                    store.delete_subscription(local, name)
                break
            except psycopg.errors.ObjectInUse as exc:
                # A worker that just lost its slot has not exited yet.
                if time.monotonic() >= deadline:
                    raise ServerError(
                        f"cannot drop subscription {shown(name)}: its replication origin is in"
                        f" use: {exc.diag.message_primary or exc}",
                        sqlstate=exc.sqlstate,
                        hint=_STOP_WORKERS,
                    ) from None
                time.sleep(_RETRY_PAUSE)
    return DropResult(name, True, slot_dropped, tuple(warnings))


_RETRY_PAUSE = 0.2
_STOP_WORKERS = (
    "a worker still uses it; the subscription is now disabled, so pgferry run stops its"
    " workers: run drop again once they stopped (or stop whatever else streams from it)"
)


def _drop_remote_slots(
    local: Conn, sub: Subscription, syncing: list[str], warnings: list[str], deadline: float
) -> str | None:
    """Drop the subscription's slot and its sync slots; the main slot's name if dropped."""
    try:
        repl = _publisher(sub.conninfo, sub.name)
    except PgferryError as exc:
        if sub.slot_name is None:
            warnings.append(
                "could not connect to the publisher to drop the table sync slots "
                + ", ".join(shown(s) for s in syncing)
                + f"; drop them there, they retain WAL ({exc.message})"
            )
            return None
        raise ConnectionFailed(
            f"cannot drop subscription {shown(sub.name)}: could not connect to the publisher"
            f" to drop replication slot {shown(sub.slot_name)}: {exc.message}",
            hint=f"to drop the subscription without its slot: pgferry subscription alter"
            f" {sub.name} --disable --with slot_name=NONE, then drop it again (and drop"
            f" slot {shown(sub.slot_name)} on the publisher when it is reachable: it retains WAL)",
        ) from None
    with repl:
        if sub.enabled:
            store.set_enabled(local, sub.name, False)
        for slot in syncing:
            if repl.slot_exists(slot):
                _drop_slot(repl, slot, warnings, deadline)
        if sub.slot_name is None:
            return None
        if _drop_slot(repl, sub.slot_name, warnings, deadline):
            return sub.slot_name
        return None


def _drop_slot(
    repl: ReplicationConnection, slot: str, warnings: list[str], deadline: float
) -> bool:
    while True:
        try:
            repl.drop_slot(slot)
        except SlotNotFound:
            warnings.append(f"replication slot {shown(slot)} did not exist on the publisher")
            return False
        except SlotInUse as exc:
            if time.monotonic() >= deadline:
                exc.hint = _STOP_WORKERS
                raise
            time.sleep(_RETRY_PAUSE)
            continue
        return True


# -- alter -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlterRequest:
    """What ``alter`` changes; at least one field must ask for something."""

    enable: bool = False
    disable: bool = False
    connection: str | None = None
    set_publications: tuple[str, ...] = ()
    add_publications: tuple[str, ...] = ()
    drop_publications: tuple[str, ...] = ()
    refresh_publication: bool = False
    #: An LSN, or ``NONE`` to clear the skip LSN.
    skip: str | None = None
    with_options: tuple[str, ...] = ()
    #: ``SCHEMA.TABLE=SPEC`` items: a table's own conflict resolution (``default``
    #: removes it, so the subscription's applies).
    table_resolutions: tuple[str, ...] = ()
    #: ``--owner ROLE`` (native's OWNER TO).
    owner: str | None = None
    #: ``--rename NEW`` (native's RENAME TO), applied last.
    rename: str | None = None

    @property
    def changes_publications(self) -> bool:
        return bool(self.set_publications or self.add_publications or self.drop_publications)


@dataclass(frozen=True)
class AlterResult:
    name: str
    changes: tuple[str, ...]
    warnings: tuple[str, ...] = ()


@dataclass
class _Refresh:
    added: list[SubscriptionTable] = field(default_factory=list)
    removed: list[SubscriptionTable] = field(default_factory=list)
    kept: list[PublishedTable] = field(default_factory=list)
    warning: str | None = None
    sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    schema: schema_copy.Plan | None = None


def _parse_skip(text: str) -> Lsn | None:
    if text.strip().lower() == "none":
        return None
    lsn = Lsn.parse(text)
    if lsn == INVALID_LSN:
        raise InterfaceError(f"invalid WAL location (LSN): {text}", hint="--skip NONE clears it")
    return lsn


def _new_publications(sub: Subscription, request: AlterRequest) -> tuple[str, ...]:
    if request.set_publications:
        return check_publications(request.set_publications)
    pubs = list(sub.publications)
    for pub in check_publications(request.add_publications) if request.add_publications else ():
        if pub in pubs:
            raise InterfaceError(
                f"publication {shown(pub)} is already in subscription {shown(sub.name)}"
            )
        pubs.append(pub)
    for pub in check_publications(request.drop_publications) if request.drop_publications else ():
        if pub not in pubs:
            raise InterfaceError(
                f"publication {shown(pub)} is not in subscription {shown(sub.name)}"
            )
        pubs.remove(pub)
    if not pubs:
        raise InterfaceError("cannot drop all the publications from a subscription")
    return tuple(pubs)


def _check_request(request: AlterRequest) -> dict[str, Any]:
    """Validate the request on its own; the parsed ``--with`` options."""
    if request.enable and request.disable:
        raise InterfaceError("--enable and --disable are mutually exclusive")
    if request.set_publications and (request.add_publications or request.drop_publications):
        raise InterfaceError(
            "--set-publication cannot be combined with --add-publication or --drop-publication"
        )
    refreshing = request.changes_publications or request.refresh_publication
    valid = ALTER_KEYS + REFRESH_KEYS if refreshing else ALTER_KEYS
    for item in request.with_options:
        key = item.partition("=")[0].strip().lower()
        if key in REFRESH_KEYS and not refreshing:
            raise InterfaceError(
                f"{key} applies only to a publication change or --refresh-publication",
                hint="e.g. alter NAME --refresh-publication --with copy_data=false",
            )
    options = parse_pairs(request.with_options, valid, what="alter")
    if request.refresh_publication and "refresh" in options:
        raise InterfaceError("refresh is implied by --refresh-publication; leave it out")
    if "copy_data" in options and options.get("refresh") is False:
        raise InterfaceError(
            "copy_data applies to a refresh: it cannot go with refresh=false",
            hint="run alter NAME --refresh-publication --with copy_data=... later",
        )
    if not (
        request.enable
        or request.disable
        or request.connection is not None
        or refreshing
        or request.skip is not None
        or options
        or request.table_resolutions
        or request.owner is not None
        or request.rename is not None
    ):
        raise InterfaceError(
            "nothing to alter",
            hint="give --enable, --disable, --connection, --set-publication,"
            " --add-publication, --drop-publication, --refresh-publication, --skip, --with,"
            " --table-resolution, --owner or --rename",
        )
    if request.rename is not None:
        check_name(request.rename)
    if request.owner is not None and (not request.owner or "\0" in request.owner):
        raise InterfaceError("invalid role name for --owner")
    for item in request.table_resolutions:
        _parse_table_resolution(item)
    if request.connection is not None:
        ci.parse(request.connection)
    return options


def alter_subscription(dsn: str, name: str, request: AlterRequest) -> AlterResult:
    """Change subscription ``name`` (see the module docstring for the order and rules)."""
    if request.rename is not None:
        if request != AlterRequest(rename=request.rename):
            raise InterfaceError(
                "--rename cannot be combined with other changes",
                hint="rename in a command of its own (as native's ALTER SUBSCRIPTION ..."
                " RENAME TO), before or after the others",
            )
        check_name(request.rename)
        notes = naming.rename_subscription(dsn, name, request.rename)
        return AlterResult(name, (f"renamed to {shown(request.rename)}",), notes)
    options = _check_request(request)
    skip = _parse_skip(request.skip) if request.skip is not None else None
    refresh_wanted = request.refresh_publication or (
        request.changes_publications and options.pop("refresh", True)
    )
    copy_data = bool(options.pop("copy_data", True))
    changes: list[str] = []
    warnings: list[str] = []
    with connect.subscriber(dsn) as local:
        sub = _catalog_subscription(local, name)
        if sub is None:
            raise _not_found(name)
        conninfo = request.connection if request.connection is not None else sub.conninfo
        publications = (
            _new_publications(sub, request) if request.changes_publications else sub.publications
        )
        refresh: _Refresh | None = None
        if refresh_wanted:
            copy_schema = str(options.get("copy_schema", sub.options.copy_schema))
            refresh = _plan_refresh(local, sub, conninfo, publications, copy_data, copy_schema)
            if refresh.warning and refresh.added:
                warnings.append(refresh.warning)
        with local.transaction():
            current = store.lock_subscription(local, name)
            if (current.conninfo, current.publications) != (sub.conninfo, sub.publications):
                raise InterfaceError(
                    f"subscription {shown(name)} was changed concurrently", hint="try again"
                )
            enabled = current.enabled
            if request.disable:
                enabled = False
                store.set_enabled(local, name, False)
                changes.append("disabled")
            if request.connection is not None:
                store.set_conninfo(local, name, request.connection)
                changes.append(f"connection set to {printable(ci.mask(request.connection))}")
            if request.changes_publications:
                store.set_publications(local, name, publications)
                changes.append("publications set to " + ", ".join(shown(p) for p in publications))
            slot_name = current.slot_name
            if options:
                slot_name = _apply_options(local, current, enabled, options, changes)
            if refresh is not None:
                if refresh.schema is not None:
                    omit = str(options.get("schema_skip", sub.options.schema_skip))
                    warnings += schema_copy.create(local, name, refresh.schema, omit).lines()
                _apply_refresh(local, name, refresh, changes)
            if request.skip is not None:
                _apply_skip(local, current, skip, changes)
            for item in request.table_resolutions:
                schema, table, resolution = _parse_table_resolution(item)
                conflict_log.set_table_resolution(local, name, schema, table, resolution)
                changes.append(
                    f"conflict_resolution of {qualified(schema, table)} set to"
                    f" {resolution if resolution is not None else 'the subscription default'}"
                )
            if request.enable:
                if slot_name is None:
                    raise InterfaceError(
                        "cannot enable subscription that does not have a slot name",
                        hint="set one first: --with slot_name=NAME",
                    )
                store.set_enabled(local, name, True)
                changes.append("enabled")
            if request.owner is not None:
                naming.set_owner(local, name, request.owner)
                changes.append(f"owner set to {printable(ident(request.owner))}")
    return AlterResult(name, tuple(changes), tuple(warnings))


def _parse_table_resolution(item: str) -> tuple[str, str, Resolution | None]:
    """``SCHEMA.TABLE=SPEC`` (or ``TABLE=SPEC``: schema public) -> its parts."""
    target, sep, spec = item.rpartition("=")
    if not sep or not target.strip():
        raise InterfaceError(
            f"--table-resolution expects TABLE=SPEC, not {item!r}",
            hint="e.g. --table-resolution public.accounts=last_update_wins",
        )
    spec_name = parse_table_name(target.strip())
    schema, name = spec_name.schema or "public", spec_name.name
    if spec.strip().lower() == "default":
        return schema, name, None
    resolution = Resolution.parse(spec, what=f"--table-resolution {target.strip()}")
    return schema, name, None if resolution.empty else resolution


def _apply_options(
    local: Conn, sub: Subscription, enabled: bool, options: dict[str, Any], changes: list[str]
) -> str | None:
    """Store the ``--with`` options; the slot name in effect afterwards."""
    slot_name = sub.slot_name
    if "slot_name" in options:
        slot_name = options.pop("slot_name")
        if slot_name is None and enabled:
            raise InterfaceError(
                "cannot set slot_name = NONE for enabled subscription",
                hint="disable it in the same command: --disable --with slot_name=NONE",
            )
        store.set_slot_name(local, sub.name, slot_name)
        changes.append(f"slot_name set to {'NONE' if slot_name is None else shown(slot_name)}")
    if "two_phase" in options and options["two_phase"] != sub.options.two_phase and enabled:
        raise InterfaceError(
            "cannot alter two_phase when the subscription is enabled",
            hint="disable it in the same command: --disable --with two_phase=...",
        )
    if options:
        merged = SubscriptionOptions.from_json({**sub.options.to_json(), **options})
        store.set_options(local, sub.name, merged)
        changes += [f"{key} set to {_value(value)}" for key, value in options.items()]
    return slot_name


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return printable(str(value))


def _plan_refresh(
    local: Conn,
    sub: Subscription,
    conninfo: str,
    publications: tuple[str, ...],
    copy_data: bool,
    copy_schema: str = "false",
) -> _Refresh:
    """Compare what the publications publish now with the registered tables; with
    ``copy_schema``, plan the schema copy of the tables added."""
    existing = {(t.remote_schema, t.remote_name): t for t in store.tables(local, sub.name)}
    with _publisher(conninfo, sub.name) as repl:
        published = _check_publisher(repl, publications, None)
        tools = find_tools(repl.major) if copy_schema != "false" else None
        plan = _Refresh()
        if copy_data and sub.options.origin == "none":
            plan.warning = _origin_warning(sub.name, repl, publications)
        state = TableState.INIT if copy_data else TableState.READY
        keys = {t.key for t in published}
        added: list[PublishedTable] = []
        for table in published:
            if table.key in existing:
                plan.kept.append(table)
            else:
                plan.added.append(_table_row(sub.name, table, state))
                added.append(table)
        plan.sizes = table_sizes(repl, added)
        # What will be copied: the tables added, and those whose copy is to come.
        copying = {
            (t.remote_schema, t.remote_name) for t in plan.added if t.state != TableState.READY
        }
        copying |= {k for k, t in existing.items() if t.state in (TableState.INIT, TableState.DATA)}
        if tools is not None:
            copying |= {t.key for t in added}
        check_readable(repl, [t for t in published if t.key in copying])
        _check_tables(local, published, copying=tools is not None)
        if tools is not None and added:
            options = SubscriptionOptions.from_json(
                {**sub.options.to_json(), "copy_schema": copy_schema}
            )
            plan.schema = _plan_schema(tools, conninfo, local, added, options, None)
        plan.removed = [t for key, t in existing.items() if key not in keys]
        # A removed table still being copied has a sync slot: drop it now.
        for gone in plan.removed:
            if gone.state != TableState.READY:
                slot = origins.sync_origin(sub.name, gone.remote_schema, gone.remote_name)
                if repl.slot_exists(slot):
                    repl.drop_slot(slot)
    return plan


def _apply_refresh(local: Conn, name: str, plan: _Refresh, changes: list[str]) -> None:
    for row in plan.added:
        store.upsert_table(local, row)
    store.set_table_sizes(local, name, plan.sizes)
    for table in plan.kept:
        store.set_table_shape(
            local, name, table.schema, table.name, table.column_list, table.row_filter
        )
    syncing = []
    for row in plan.removed:
        store.delete_table(local, name, row.remote_schema, row.remote_name)
        if row.state != TableState.READY:
            syncing.append(origins.sync_origin(name, row.remote_schema, row.remote_name))
    origins.drop(local, syncing)
    added = ", ".join(f"{ident(t.remote_schema)}.{ident(t.remote_name)}" for t in plan.added)
    removed = ", ".join(f"{ident(t.remote_schema)}.{ident(t.remote_name)}" for t in plan.removed)
    state = plan.added[0].state if plan.added else ""
    changes.append(
        "refreshed: "
        + (f"{len(plan.added)} added (state {state}: {added})" if plan.added else "none added")
        + (f", {len(plan.removed)} removed ({removed})" if plan.removed else ", none removed")
    )


def _apply_skip(local: Conn, sub: Subscription, skip: Lsn | None, changes: list[str]) -> None:
    if skip is not None and origins.exists(local, sub.origin_name):
        row = local.execute(
            "SELECT pg_catalog.pg_replication_origin_progress(%s, false)::text",
            (sub.origin_name,),
        ).fetchone()
        progress = Lsn.parse(row[0]) if row and row[0] else INVALID_LSN
        if skip <= progress:
            raise InterfaceError(
                f"skip WAL location (LSN {skip}) must be greater than origin LSN {progress}",
                hint="the transaction at that LSN is already applied",
            )
    if skip is not None:
        failed = store.failed_lsn(local, sub.name)
        if failed is None:
            raise InterfaceError(
                f"subscription {shown(sub.name)} has no failed transaction to skip: no apply"
                f" error naming one is recorded (LSN {skip})",
                hint="--skip takes the finish LSN the last apply error names (pgferry status"
                " shows it); nothing needs skipping now",
            )
        if skip != failed:
            raise InterfaceError(
                f"skip WAL location (LSN {skip}) is not the finish LSN of the failed"
                f" transaction of subscription {shown(sub.name)}",
                hint=f"the last apply error is about the remote transaction finished at"
                f" {failed}: --skip {failed}",
            )
    store.set_skip_lsn(local, sub.name, skip)
    changes.append("skip LSN cleared" if skip is None else f"skip LSN set to {skip}")


# -- list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionInfo:
    subscription: Subscription
    table_states: dict[TableState, int]
    owner: str = ""
    #: The finish LSN of the remote transaction the last error is about.
    last_error_lsn: Lsn | None = None

    @property
    def states_summary(self) -> str:
        return " ".join(f"{s}:{n}" for s, n in self.table_states.items())

    @property
    def state(self) -> str:
        """``enabled`` or ``disabled``; ``, failing`` while an error is recorded."""
        sub = self.subscription
        state = "enabled" if sub.enabled else "disabled"
        if sub.enabled and sub.slot_name is None:
            state += " (no slot: nothing runs)"
        return state + (", failing" if sub.last_error else "")

    @property
    def changed_options(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        defaults = SubscriptionOptions().to_json()
        return {k: v for k, v in self.subscription.options.to_json().items() if v != defaults[k]}

    @property
    def last_error_hint(self) -> str | None:
        """The next action for the last error (None without one)."""
        return error_hint(
            self.subscription.name,
            self.subscription.last_error,
            self.last_error_lsn,
            self.subscription.enabled,
        )


def list_subscriptions(dsn: str) -> list[SubscriptionInfo]:
    """Every subscription in the catalog, ordered by name (none without a catalog)."""
    with connect.subscriber(dsn) as local:
        if current_version(local) == 0:
            return []
        ensure_catalog(local)
        counts = store.table_state_counts(local)
        subs = store.list_subscriptions(local)
        owners = naming.owners(local)
        failed = {sub.name: store.failed_lsn(local, sub.name) for sub in subs}
    return [
        SubscriptionInfo(
            sub,
            {s: counts[sub.name][s] for s in STATE_ORDER if counts.get(sub.name, {}).get(s)},
            owners.get(sub.name, ""),
            failed.get(sub.name),
        )
        for sub in subs
    ]


def _text(lsn: Lsn | None) -> str | None:
    return None if lsn is None else str(lsn)


def to_json(infos: Sequence[SubscriptionInfo]) -> str:
    """The ``list --json`` document (keys in the module docstring); conninfo masked."""
    return json.dumps(
        [
            {
                "name": i.subscription.name,
                "owner": i.owner,
                "enabled": i.subscription.enabled,
                "conninfo": ci.mask(i.subscription.conninfo),
                "publications": list(i.subscription.publications),
                "slot_name": i.subscription.slot_name,
                "origin_name": i.subscription.origin_name,
                "options": i.subscription.options.to_json(),
                "skip_lsn": _text(i.subscription.skip_lsn),
                "tables": i.table_states,
                "last_error": i.subscription.last_error,
                "last_error_lsn": _text(i.last_error_lsn),
                "last_error_hint": i.last_error_hint,
            }
            for i in infos
        ],
        indent=2,
    )
