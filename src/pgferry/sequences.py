"""Sequence sync: the subscriber's sequences kept at least at the publisher's.

Logical replication carries rows, not sequence values: after a switchover the
subscriber's sequences would hand out values the publisher already used.
:func:`sync_sequences` closes that gap for one subscription, now; the
``sequences`` worker (:class:`SequenceSyncWorker`, run by the launcher for a
subscription with ``sequences = sync``) does it at the end of the initial sync
and then every ``sequence_sync_interval`` seconds. The ``pgferry sequences sync``
command and, later, a switchover call the same function.

Contract of :func:`sync_sequences`:

* **Which sequences.** Those of the subscription's tables (``pgferry.subscription_table``)
  on the publisher: owned by one of their columns (``pg_depend`` deptype ``a``:
  serial, ``OWNED BY``), identity sequences (deptype ``i``), and sequences a
  column default of theirs refers to (``pg_depend`` from ``pg_attrdef``), owned
  or not. Each is set on the subscriber's sequence of the same schema and name.
* **Set-based.** The publisher's sequences are found in one query and their
  values read (``pg_sequence_last_value``, PostgreSQL 13 to 18, over a normal
  session) a thousand per statement, so that the publisher's shared lock table
  never holds more than that many of pgferry's locks; the subscriber is read, set (one
  ``setval`` query over arrays) and recorded in ``pgferry.sequence_state`` in one
  transaction: a handful of statements whatever the number of sequences. While
  the publisher is read (in a thread), the subscriber finds the sequences of its
  own tables the same way and reads them, so the two servers work at the same
  time; a publisher sequence not found that way is looked up by name. 10,000
  sequences take a fraction of a second. Every sequence is locked by the
  transaction that reads or sets it, so very many sequences need
  ``max_locks_per_transaction`` to match (an error says so).
* **Values.** A publisher sequence never called (``is_called`` false) has no last
  value: it is left alone. Otherwise the target is the publisher's last value
  plus ``sequence_headroom`` in the direction of its increment (kept within the
  subscriber sequence's bounds), set with ``is_called`` true, so the
  subscriber's next value follows it.
* **Never backwards.** A subscriber sequence is set only when that moves its
  next value forward in the direction of its increment (descending sequences
  too): its next value is ``last_value + increment`` once called, ``last_value``
  before. A subscriber sequence already ahead keeps its value.
* **Errors** (nothing is set then; each is one line naming the subscription and
  the sequence, with a hint): a sequence missing on the subscriber
  (:class:`SequenceMissing`), a role that may not read it on the publisher or
  set it on the subscriber (:class:`SequencePermissionDenied`), a publisher
  value outside the subscriber sequence's bounds (:class:`SequenceOutOfRange`),
  too many sequences for the lock table (:class:`~pgferry.errors.ServerError`).
* **Recorded.** ``pgferry.sequence_state`` holds, per sequence of the
  subscription, the publisher's last value read and the subscriber's last value
  once the sync is done (NULL: never called), with the time of the sync; rows of
  sequences no longer found are deleted. ``status`` shows the drift from there
  (see :func:`drift`).
* **Concurrency.** Syncs of one subscription are serialised by an advisory lock
  on the subscriber, taken before the publisher is read, so two syncs never
  undo each other. ``setval`` is not transactional: a sync that fails after it
  leaves the subscriber's values set (never lower than before).

Before PostgreSQL 18 the raw ``last_value`` of a subscriber sequence never
called is not readable in a set-based way (``pg_sequence_last_value`` gives
NULL, ``pg_get_sequence_data`` is 18's): such a sequence is probed with
``nextval`` (which returns exactly that value) and then set either to the target
or back to ``(last_value, false)``, as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from pgferry import connect
from pgferry.catalog import TableState, handover, store
from pgferry.catalog.schema import WAKE_CHANNEL
from pgferry.errors import ServerError
from pgferry.sqltext import ident, printable, qualified

logger = logging.getLogger("pgferry.sequences")

Conn = psycopg.Connection[Any]
#: (schema, name)
Name = tuple[str, str]

#: First key of the advisory lock serialising one subscription's syncs (the second
#: is ``hashtext(subscription)``); "pgsq" in ASCII.
LOCK_KEY = 0x70677371
#: Sequences whose values one statement reads on the publisher: each is locked
#: until the statement's end, and the publisher's lock table is shared with its
#: applications.
PUBLISHER_BATCH = 1000
#: Sequences named in one error message; the rest are counted.
NAMED_IN_ERRORS = 3

# Every lookup below goes through an index, one row at a time (``OFFSET 0`` keeps
# a LATERAL subquery from being flattened into a join): the catalogs' statistics
# are often stale right after many sequences were created (a fresh schema), and a
# join planned on them can compare every sequence with every other (seconds for
# 10,000). The oid of relation {0}.{1} (NULL: none) is looked up without the
# schema privileges to_regclass wants.
_RELATION = (
    "(SELECT c.oid FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = {0} AND c.relname = {1})"
)

# Whether the role is a superuser (who may do anything: the privilege checks,
# a sizeable part of the work, are skipped), and the oids of the sequences of the
# tables named by %(schemas)s and %(names)s.
_SUPERUSER = """
superuser AS (
    SELECT r.rolsuper AS su FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER
)"""
_FOUND = f"""
WITH {_SUPERUSER}, tables AS (
    SELECT {_RELATION.format("t.schema", "t.name")} AS oid
    FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS t(schema, name)
), found AS (
    SELECT d.objid AS seq
    FROM tables t
    CROSS JOIN LATERAL (
        SELECT d.objid FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = t.oid
          AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
        OFFSET 0
    ) d
    UNION
    SELECT d.refobjid
    FROM tables t
    CROSS JOIN LATERAL (
        SELECT ad.oid FROM pg_catalog.pg_attrdef ad WHERE ad.adrelid = t.oid OFFSET 0
    ) ad
    CROSS JOIN LATERAL (
        SELECT d.refobjid FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid
          AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        OFFSET 0
    ) d
)
"""

# On the publisher: each sequence's name, increment, whether the role may read it
# and its oid; then the last values (NULL: never called), PUBLISHER_BATCH at a
# time (_VALUES_SQL).
_PUBLISHER_SQL = (
    _FOUND
    + """
SELECT c.nspname, c.relname, c.seqincrement, c.readable, f.seq::int8
FROM found f
CROSS JOIN LATERAL (
    SELECT n.nspname, c.relname, s.seqincrement,
           (SELECT su FROM superuser)
           OR pg_catalog.has_sequence_privilege(s.seqrelid, 'SELECT,USAGE') AS readable
    FROM pg_catalog.pg_sequence s
    JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE s.seqrelid = f.seq
    OFFSET 0
) c
ORDER BY 1, 2
"""
)

# On the subscriber: each sequence's name, oid, increment, bounds, whether the role
# may read and set it, and its state: from 18 the raw (last_value, is_called);
# before, the last value (NULL when never called: its raw value is probed, see
# the module docstring). Found from the subscriber's tables (_DISCOVER_SQL), or
# by name (_BY_NAME_SQL: oid NULL when there is no such sequence).
_SEQUENCE = """
    SELECT s.seqrelid, s.seqincrement, s.seqmin, s.seqmax,
           (SELECT su FROM superuser)
           OR pg_catalog.has_sequence_privilege(s.seqrelid, 'UPDATE')
           AND pg_catalog.has_sequence_privilege(s.seqrelid, 'SELECT,USAGE') AS allowed
    FROM pg_catalog.pg_sequence s
"""
_COLUMNS = (
    "s.seqrelid::int8, s.seqincrement, s.seqmin, s.seqmax, s.allowed, d.last_value, d.is_called"
)
_STATE = {
    True: "SELECT d.last_value, d.is_called FROM pg_catalog.pg_get_sequence_data(s.seqrelid) d",
    False: "SELECT pg_catalog.pg_sequence_last_value(s.seqrelid) AS last_value,"
    " NULL::bool AS is_called",
}
_DISCOVER_SQL = (
    _FOUND
    + f"""
SELECT n.nspname, c.relname, {_COLUMNS}
FROM found f
CROSS JOIN LATERAL ({_SEQUENCE} WHERE s.seqrelid = f.seq OFFSET 0) s
CROSS JOIN LATERAL (
    SELECT c.relname, c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = f.seq OFFSET 0
) c
CROSS JOIN LATERAL (
    SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = c.relnamespace OFFSET 0
) n
LEFT JOIN LATERAL ({{state}} WHERE s.allowed OFFSET 0) d ON true
"""
)
_BY_NAME_SQL = f"""
WITH {_SUPERUSER}
SELECT i.schema, i.name, {_COLUMNS}
FROM unnest(%(schemas)s::text[], %(names)s::text[]) WITH ORDINALITY AS i(schema, name, ord)
LEFT JOIN LATERAL (
    {_SEQUENCE} WHERE s.seqrelid = {_RELATION.format("i.schema", "i.name")} OFFSET 0
) s ON true
LEFT JOIN LATERAL ({{state}} WHERE s.allowed OFFSET 0) d ON true
ORDER BY i.ord
"""
_VALUES_SQL = """
SELECT pg_catalog.pg_sequence_last_value(u.seq)
FROM unnest(%s::oid[]) WITH ORDINALITY AS u(seq, ord)
ORDER BY u.ord
"""
_PROBE_SQL = """
SELECT pg_catalog.nextval(u.seq::pg_catalog.regclass)
FROM unnest(%s::oid[]) WITH ORDINALITY AS u(seq, ord)
ORDER BY u.ord
"""
_SETVAL_SQL = """
SELECT pg_catalog.count(pg_catalog.setval(u.seq::pg_catalog.regclass, u.value, u.called))
FROM unnest(%s::oid[], %s::int8[], %s::bool[]) AS u(seq, value, called)
"""
_RECORD_SQL = """
INSERT INTO pgferry.sequence_state
    (subscription, sequence_schema, sequence_name, publisher_value, subscriber_value, synced_at)
SELECT %s, u.schema, u.name, u.publisher, u.subscriber, pg_catalog.now()
FROM unnest(%s::text[], %s::text[], %s::int8[], %s::int8[])
     AS u(schema, name, publisher, subscriber)
"""


class SequenceMissing(ServerError):
    """A sequence of the published tables has no sequence of that name on the subscriber."""


class SequencePermissionDenied(ServerError):
    """The role may not read a sequence on the publisher, or set it on the subscriber."""


class SequenceOutOfRange(ServerError):
    """A publisher value the subscriber's sequence cannot take (outside its bounds)."""


def drift(publisher_value: int, subscriber_value: int, *, descending: bool) -> int:
    """How far the subscriber's value is behind the publisher's, in the direction of
    the sequence: publisher minus subscriber (the other way round for a descending
    sequence); negative when the subscriber is ahead."""
    difference = publisher_value - subscriber_value
    return -difference if descending else difference


@dataclass(frozen=True)
class SequenceSync:
    """One sequence, as a sync found and left it."""

    schema: str
    name: str
    #: The publisher's last value; None: never called there (left alone).
    publisher_value: int | None
    #: The subscriber's last value before the sync; None: never called.
    subscriber_before: int | None
    #: The subscriber's last value after the sync; None: never called.
    subscriber_value: int | None
    #: Whether the sync set it.
    set: bool
    #: How far the subscriber was behind before the sync (see :func:`drift`; a
    #: subscriber sequence never called counts as one increment before its next
    #: value); None when the publisher's was never called.
    drift: int | None
    #: Whether the subscriber's sequence counts down (a negative increment).
    descending: bool = False

    @property
    def display(self) -> str:
        return qualified(self.schema, self.name)


@dataclass(frozen=True)
class SyncReport:
    subscription: str
    #: Every sequence of the subscription's tables, by schema and name.
    sequences: tuple[SequenceSync, ...]
    #: How long the sync took.
    seconds: float

    @property
    def set_count(self) -> int:
        return sum(1 for s in self.sequences if s.set)

    @property
    def largest_drift(self) -> SequenceSync | None:
        """The sequence furthest behind before the sync (None: no drift known; a
        negative drift: every sequence was ahead)."""
        known = [s for s in self.sequences if s.drift is not None]
        return max(known, key=lambda s: s.drift or 0) if known else None

    def summary(self) -> str:
        """One line: how many sequences, how many set, the largest drift."""
        total = len(self.sequences)
        text = (
            f"subscription {printable(repr(self.subscription))}: {total}"
            f" sequence{'' if total == 1 else 's'}, {self.set_count} set"
        )
        worst = self.largest_drift
        if worst is not None:
            text += f"; largest drift {worst.drift} ({worst.display})"
        return text


@dataclass(frozen=True)
class _Remote:
    schema: str
    name: str
    increment: int
    readable: bool
    last_value: int | None


@dataclass(frozen=True)
class _Local:
    oid: int
    increment: int
    minimum: int
    maximum: int
    #: Whether the role may read and set it.
    allowed: bool
    #: The raw last_value (the next value itself when not called); None: unknown yet.
    last_value: int | None
    is_called: bool | None
    #: Whether ``nextval`` read the state (see :func:`_probe`): set it back if not set.
    probed: bool = False


def _names(items: Sequence[_Remote], limit: int = NAMED_IN_ERRORS) -> str:
    shown = ", ".join(qualified(s.schema, s.name) for s in items[:limit])
    more = len(items) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _first(items: Sequence[_Remote]) -> str:
    """The first of ``items`` as SQL, then ``, ...`` if there are more."""
    return qualified(items[0].schema, items[0].name) + (", ..." if len(items) > 1 else "")


def _who(subscription: str) -> str:
    return f"subscription {printable(repr(subscription))}"


def _plural(items: Sequence[object], one: str, many: str) -> str:
    return one if len(items) == 1 else many


def _arrays(names: Sequence[Name]) -> dict[str, list[str]]:
    return {"schemas": [n[0] for n in names], "names": [n[1] for n in names]}


def _too_many(subscription: str, side: str, exc: psycopg.Error) -> ServerError:
    return ServerError(
        f"{_who(subscription)}: too many sequences to lock in one transaction on the {side}:"
        f" {' '.join(str(exc).split())}",
        sqlstate=exc.sqlstate,
        hint=f"raise max_locks_per_transaction on the {side} (a restart is needed)",
    )


# -- the publisher ----------------------------------------------------------------------


def read_publisher(remote: Conn, subscription: str, tables: Sequence[Name]) -> list[_Remote]:
    """The sequences of ``tables`` on the publisher: found in one query, their
    values read :data:`PUBLISHER_BATCH` at a time (each batch in a transaction of
    its own: ``remote`` is in autocommit)."""
    found, oids = _find_publisher(remote, subscription, tables)
    return _read_values(remote, subscription, found, oids)


def _find_publisher(
    remote: Conn, subscription: str, tables: Sequence[Name]
) -> tuple[list[_Remote], list[int]]:
    """The sequences of ``tables`` on the publisher (no values yet), and their oids;
    an error when the role may not read one."""
    try:
        rows = remote.execute(_PUBLISHER_SQL, _arrays(tables)).fetchall()
    except pg_errors.OutOfMemory as exc:
        raise _too_many(subscription, "publisher", exc) from None
    found = [_Remote(r[0], r[1], int(r[2]), bool(r[3]), None) for r in rows]
    denied = [s for s in found if not s.readable]
    if denied:
        role = remote.info.user
        raise SequencePermissionDenied(
            f"{_who(subscription)}: role {ident(role)} may not read"
            f" {_plural(denied, 'sequence', 'sequences')} {_names(denied)} on the publisher",
            sqlstate="42501",
            hint=f"on the publisher: GRANT SELECT ON SEQUENCE {_first(denied)} TO {ident(role)}",
        )
    return found, [int(r[4]) for r in rows]


def _read_values(
    remote: Conn, subscription: str, found: Sequence[_Remote], oids: Sequence[int]
) -> list[_Remote]:
    """``found`` with the publisher's values, read by ``oids``."""
    values: dict[int, int | None] = {}
    try:
        for start in range(0, len(oids), PUBLISHER_BATCH):
            batch = list(oids[start : start + PUBLISHER_BATCH])
            read = remote.execute(_VALUES_SQL, (batch,)).fetchall()
            values.update(zip(batch, (v[0] for v in read), strict=True))
    except pg_errors.OutOfMemory as exc:
        raise _too_many(subscription, "publisher", exc) from None
    return [replace(r, last_value=values.get(oid)) for r, oid in zip(found, oids, strict=True)]


def _read_remote(
    conninfo: str, publisher: Conn | None, subscription: str, tables: Sequence[Name]
) -> list[_Remote]:
    """:func:`read_publisher` on ``publisher``, or on a session opened for it."""
    if publisher is not None:
        return read_publisher(publisher, subscription, tables)
    with connect.session(
        conninfo, side="publisher", application_name="pgferry sequences"
    ) as remote:
        return read_publisher(remote, subscription, tables)


# -- the subscriber ----------------------------------------------------------------------


def _state_sql(local: Conn, template: str) -> bytes:
    return template.format(state=_STATE[local.info.server_version >= 180000]).encode()


def _local(row: Sequence[Any]) -> _Local | None:
    """A :data:`_COLUMNS` row (None: no such sequence)."""
    oid, increment, minimum, maximum, allowed, last_value, is_called = row
    if oid is None:
        return None
    return _Local(
        int(oid),
        int(increment),
        int(minimum),
        int(maximum),
        bool(allowed),
        None if last_value is None else int(last_value),
        # (Before 18 a last value means called; none: never called, probed later.)
        None if last_value is None else (True if is_called is None else bool(is_called)),
    )


def _discover(local: Conn, tables: Sequence[Name]) -> dict[Name, _Local]:
    """The sequences of the subscriber's ``tables``, found as on the publisher."""
    rows = local.execute(_state_sql(local, _DISCOVER_SQL), _arrays(tables)).fetchall()
    found = {(r[0], r[1]): _local(r[2:]) for r in rows}
    return {k: v for k, v in found.items() if v is not None}


def _by_name(local: Conn, names: Sequence[Name]) -> list[_Local | None]:
    rows = local.execute(_state_sql(local, _BY_NAME_SQL), _arrays(names)).fetchall()
    return [_local(r[2:]) for r in rows]


def _match(
    local: Conn, subscription: str, remote: list[_Remote], found: dict[Name, _Local]
) -> list[_Local]:
    """The subscriber's sequence of each of ``remote``: found with the subscriber's
    tables, else by name; an error when one is missing or not the role's to set."""
    matched = [found.get((r.schema, r.name)) for r in remote]
    absent = [i for i, m in enumerate(matched) if m is None]
    if absent:
        for i, seq in zip(
            absent,
            _by_name(local, [(remote[i].schema, remote[i].name) for i in absent]),
            strict=True,
        ):
            matched[i] = seq
    missing = [r for r, m in zip(remote, matched, strict=True) if m is None]
    if missing:
        raise SequenceMissing(
            f"{_who(subscription)}: {_plural(missing, 'sequence', 'sequences')}"
            f" {_names(missing)} {_plural(missing, 'does', 'do')} not exist on the subscriber",
            hint=f"create {_plural(missing, 'it', 'them')} on the subscriber as on the publisher"
            " (or stop syncing sequences: pgferry subscription alter"
            f" {ident(subscription)} --with sequences=off)",
        )
    seqs = [m for m in matched if m is not None]
    denied = [r for r, s in zip(remote, seqs, strict=True) if not s.allowed]
    if denied:
        role = local.info.user
        raise SequencePermissionDenied(
            f"{_who(subscription)}: role {ident(role)} may not read and set"
            f" {_plural(denied, 'sequence', 'sequences')} {_names(denied)} on the subscriber",
            sqlstate="42501",
            hint=f"on the subscriber: GRANT SELECT, UPDATE ON SEQUENCE {_first(denied)}"
            f" TO {ident(role)}",
        )
    return seqs


def _probe(local: Conn, seqs: list[_Local], needed: list[bool]) -> list[_Local]:
    """Before 18: the raw last_value of the sequences never called that ``needed``
    marks, read with ``nextval`` (see the module docstring); the caller sets each
    of them afterwards, to its target or back to ``(last_value, false)``."""
    todo = [i for i, s in enumerate(seqs) if needed[i] and s.is_called is None]
    if not todo:
        return seqs
    rows = local.execute(_PROBE_SQL, ([seqs[i].oid for i in todo],)).fetchall()
    probed = list(seqs)
    for i, row in zip(todo, rows, strict=True):
        probed[i] = replace(seqs[i], last_value=int(row[0]), is_called=False, probed=True)
    return probed


def _next(seq: _Local) -> int:
    """The value the subscriber sequence hands out next."""
    assert seq.last_value is not None
    return seq.last_value + seq.increment if seq.is_called else seq.last_value


def _target(subscription: str, remote: _Remote, seq: _Local, headroom: int) -> int:
    """The value to set: the publisher's plus the headroom in the direction of its
    increment, within the subscriber's bounds (the publisher's value must be)."""
    assert remote.last_value is not None
    value = remote.last_value
    if not seq.minimum <= value <= seq.maximum:
        raise SequenceOutOfRange(
            f"{_who(subscription)}: sequence {qualified(remote.schema, remote.name)} is at"
            f" {value} on the publisher, outside its bounds on the subscriber"
            f" ({seq.minimum} to {seq.maximum})",
            hint="give the subscriber's sequence the publisher's bounds"
            " (ALTER SEQUENCE ... AS bigint MINVALUE ... MAXVALUE ...)",
        )
    step = headroom if remote.increment > 0 else -headroom
    return min(max(value + step, seq.minimum), seq.maximum)


def _ahead(seq: _Local, target: int) -> bool:
    """Whether setting ``target`` (called) moves ``seq``'s next value forward."""
    following, current = target + seq.increment, _next(seq)
    return following > current if seq.increment > 0 else following < current


def _last(seq: _Local) -> int | None:
    return seq.last_value if seq.is_called else None


def _drift(remote: _Remote, seq: _Local) -> int | None:
    if remote.last_value is None or seq.last_value is None:
        return None
    position = seq.last_value if seq.is_called else seq.last_value - seq.increment
    return drift(remote.last_value, position, descending=seq.increment < 0)


def sync_sequences(
    subscriber: Conn, subscription: str, *, publisher: Conn | None = None
) -> SyncReport:
    """Sync the sequences of ``subscription``'s tables now (see the module docstring).

    ``subscriber`` is a connection to the subscriber database (its catalog), not
    in a transaction; ``publisher`` an open session to the publisher (used from
    another thread while this runs), else one is opened with the subscription's
    conninfo and closed again.
    """
    started = time.monotonic()
    with _errors(subscription), subscriber.transaction():
        _lock(subscriber, subscription)
        sub = store.get_subscription(subscriber, subscription)
        tables = store.tables(subscriber, sub.name)
        # The publisher is read while the subscriber reads its own sequences.
        with ThreadPoolExecutor(1, thread_name_prefix="pgferry-sequences") as pool:
            reading = pool.submit(
                _read_remote,
                sub.conninfo,
                publisher,
                sub.name,
                [(t.remote_schema, t.remote_name) for t in tables],
            )
            found = _discover(subscriber, [(t.local_schema, t.local_name) for t in tables])
            remote = reading.result()
        synced = _apply(subscriber, sub.name, remote, found, sub.options.sequence_headroom)
        _record(subscriber, sub.name, synced)
    return SyncReport(subscription, tuple(synced), time.monotonic() - started)


@dataclass(frozen=True)
class PreparedSync:
    """The sequences of one subscription's tables, found once (:func:`prepare_sync`),
    so that :meth:`run` only reads their values on the publisher and sets the
    subscriber's: a sync of a few short queries, for a moment where every
    millisecond counts (the switchover's fence). When what it found may have
    changed since (a sequence created or dropped on the publisher, a table
    added to or removed from the subscription), :meth:`run` is a whole
    :func:`sync_sequences` instead."""

    subscription: str
    headroom: int
    #: The publisher's sequences (no values) and their oids there.
    remote: tuple[_Remote, ...]
    oids: tuple[int, ...]
    #: The publisher's sequences and the subscription's tables, counted (see :func:`_marks`).
    marks: tuple[int, int, int]

    @property
    def descending(self) -> frozenset[Name]:
        """The sequences (by schema and name) that count down."""
        return frozenset((r.schema, r.name) for r in self.remote if r.increment < 0)

    def run(self, subscriber: Conn, publisher: Conn) -> SyncReport:
        """Sync them now, as :func:`sync_sequences` does."""
        started = time.monotonic()
        if _marks(subscriber, publisher, self.subscription) != self.marks:
            return sync_sequences(subscriber, self.subscription, publisher=publisher)
        remote = _read_values(publisher, self.subscription, self.remote, self.oids)
        names = [(r.schema, r.name) for r in remote]
        with _errors(self.subscription), subscriber.transaction():
            _lock(subscriber, self.subscription)
            found = {
                n: s
                for n, s in zip(names, _by_name(subscriber, names), strict=True)
                if s is not None
            }
            synced = _apply(subscriber, self.subscription, remote, found, self.headroom)
            _record(subscriber, self.subscription, synced)
        return SyncReport(self.subscription, tuple(synced), time.monotonic() - started)


def prepare_sync(subscriber: Conn, subscription: str, *, publisher: Conn) -> PreparedSync:
    """Find the sequences of ``subscription``'s tables on both sides (the errors of
    :func:`sync_sequences` for a missing one or one the role may not use)."""
    # Counted first: what changes after that shows at the run.
    marks = _marks(subscriber, publisher, subscription)
    with _errors(subscription), subscriber.transaction():
        sub = store.get_subscription(subscriber, subscription)
        tables = store.tables(subscriber, sub.name)
        remote, oids = _find_publisher(
            publisher, sub.name, [(t.remote_schema, t.remote_name) for t in tables]
        )
        found = _discover(subscriber, [(t.local_schema, t.local_name) for t in tables])
        _match(subscriber, sub.name, remote, found)  # (its errors now, not at the run)
    return PreparedSync(sub.name, sub.options.sequence_headroom, tuple(remote), tuple(oids), marks)


def _marks(subscriber: Conn, publisher: Conn, subscription: str) -> tuple[int, int, int]:
    """What changes when a prepared sync's sequences may have: the publisher's
    sequences (how many, the highest oid) and the subscription's tables (how many)."""
    row = publisher.execute(
        "SELECT pg_catalog.count(*), coalesce(pg_catalog.max(seqrelid::int8), 0)"
        " FROM pg_catalog.pg_sequence"
    ).fetchone()
    tables = subscriber.execute(
        "SELECT pg_catalog.count(*) FROM pgferry.subscription_table WHERE subscription = %s",
        (subscription,),
    ).fetchone()
    assert row is not None and tables is not None
    return int(row[0]), int(row[1]), int(tables[0])


def _lock(subscriber: Conn, subscription: str) -> None:
    """One sync of a subscription at a time (until the transaction ends)."""
    subscriber.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(%s, pg_catalog.hashtext(%s))",
        (LOCK_KEY, subscription),
    )


def _record(subscriber: Conn, subscription: str, synced: Sequence[SequenceSync]) -> None:
    """What the sync found and left, in ``pgferry.sequence_state``."""
    subscriber.execute(
        "DELETE FROM pgferry.sequence_state WHERE subscription = %s", (subscription,)
    )
    subscriber.execute(
        _RECORD_SQL,
        (
            subscription,
            [s.schema for s in synced],
            [s.name for s in synced],
            [s.publisher_value for s in synced],
            [s.subscriber_value for s in synced],
        ),
    )


@contextmanager
def _errors(subscription: str) -> Iterator[None]:
    """The server errors of a sync, as the project's."""
    try:
        yield
    except pg_errors.OutOfMemory as exc:
        raise _too_many(subscription, "subscriber", exc) from None
    except pg_errors.InsufficientPrivilege as exc:
        raise SequencePermissionDenied(
            f"{_who(subscription)}: sequence sync: {' '.join(str(exc).split())}",
            sqlstate=exc.sqlstate,
            hint="the role needs SELECT and UPDATE on the sequences and write access"
            " to the pgferry catalog on the subscriber",
        ) from None


def _apply(
    local: Conn,
    subscription: str,
    remote: list[_Remote],
    found: dict[Name, _Local],
    headroom: int,
) -> list[SequenceSync]:
    """Set the subscriber's sequences that are behind, in the caller's transaction."""
    if not remote:
        return []
    seqs = _match(local, subscription, remote, found)
    # The targets first (they need only the bounds): an error leaves all untouched.
    wanted = [
        None if r.last_value is None else _target(subscription, r, s, headroom)
        for r, s in zip(remote, seqs, strict=True)
    ]
    seqs = _probe(local, seqs, [t is not None for t in wanted])
    targets = [
        t if t is not None and _ahead(s, t) else None for s, t in zip(seqs, wanted, strict=True)
    ]
    changes: list[tuple[int, int, bool]] = []
    result: list[SequenceSync] = []
    for r, s, target in zip(remote, seqs, targets, strict=True):
        if target is not None:
            changes.append((s.oid, target, True))
        elif s.probed:
            assert s.last_value is not None
            changes.append((s.oid, s.last_value, False))  # back as it was
        after = target if target is not None else _last(s)
        result.append(
            SequenceSync(
                r.schema,
                r.name,
                r.last_value,
                _last(s),
                after,
                target is not None,
                _drift(r, s),
                s.increment < 0,
            )
        )
    if changes:
        local.execute(
            _SETVAL_SQL,
            ([c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes]),
        )
    return result


# -- the worker ------------------------------------------------------------------------------


class SequenceSyncWorker:
    """The ``sequences`` worker of one subscription.

    Waits until every table of the subscription is ready (state ``r``), syncs
    once (the end of the initial sync), then every ``sequence_sync_interval``
    seconds when that is above 0; when tables are added later, it syncs again
    once they are all ready. Catalog changes wake it (the catalog's triggers
    notify :data:`~pgferry.catalog.schema.WAKE_CHANNEL`); a stop request is seen
    within 0.1 s (a sync in progress, well under a second, completes). An error
    ends :meth:`run` (the launcher starts the worker again after a pause).
    """

    def __init__(self, subscriber_dsn: str, subscription: str, *, poll: float = 1.0) -> None:
        self.subscriber_dsn = subscriber_dsn
        self.subscription = subscription
        self.poll = poll
        #: The reports of this worker's syncs, oldest first (the last few).
        self.reports: list[SyncReport] = []
        self._stop = False

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        name = f"{self.subscription} sequences"
        local = connect.session(self.subscriber_dsn, application_name=name)
        remote: Conn | None = None
        try:
            local.execute(f"LISTEN {WAKE_CHANNEL}")
            pending = True  # a sync is due once every table is ready
            due: float | None = None  # the next periodic sync (monotonic time)
            while not self._stop:
                sub = store.get_subscription(local, self.subscription)
                states = handover.states(local, self.subscription).values()
                ready = all(s.state == TableState.READY for s in states)
                pending = pending or not ready
                now = time.monotonic()
                if (ready and pending) or (due is not None and now >= due):
                    if remote is None or remote.closed:
                        remote = connect.session(
                            sub.conninfo, side="publisher", application_name=name
                        )
                    self._sync(local, remote, first=due is None)
                    pending = not ready
                    interval = sub.options.sequence_sync_interval
                    due = time.monotonic() + interval if interval > 0 else None
                wait = self.poll if due is None else max(0.0, min(self.poll, due - now))
                self._wait(local, wait)
        finally:
            if remote is not None:
                remote.close()
            local.close()

    def _sync(self, local: Conn, remote: Conn, *, first: bool) -> None:
        report = sync_sequences(local, self.subscription, publisher=remote)
        self.reports = [*self.reports[-9:], report]
        log = logger.info if first or report.set_count else logger.debug
        log("%s (%.3f s)", report.summary(), report.seconds)

    def _wait(self, conn: Conn, seconds: float) -> None:
        """Up to ``seconds``, until a stop is asked or the catalog notifies a change."""
        deadline = time.monotonic() + seconds
        while not self._stop:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if list(conn.notifies(timeout=min(0.1, remaining), stop_after=1)):
                return
