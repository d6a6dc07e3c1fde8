"""``pgferry subscription wait NAME``: block until a subscription has caught up.

:func:`wait_ready` returns once both hold:

* every table of the subscription is ready (state ``r``), and the schema copy
  has no step left (its foreign keys are validated: see :mod:`pgferry.schema`);
* everything committed on the publisher before the wait started is durably
  applied: the slot's ``confirmed_flush_lsn`` has reached the publisher's WAL
  position taken when the wait started, or the running apply worker reports
  (``pgferry.worker.committed_lsn``) that every transaction committed before a
  position at or past it is applied. The apply worker confirms only positions
  it applied durably, and confirms the publisher's position while idle too.

A prepared transaction still pending on the publisher (two_phase) is not waited
for: it is not committed, and pgferry applies it at its COMMIT PREPARED, so the
slot's position stays before its PREPARE until then (native's subscriber prepares
it and moves on; either way "caught up" means every committed transaction).

It polls the subscriber's catalog and the publisher every ``poll_interval``
seconds (0.2 s) and raises :class:`WaitFailed`, with one line saying why, when

* the subscription is disabled, at the start or meanwhile;
* a new error is recorded (``last_error`` set, or set again, after the wait
  started: the apply or sync worker failed and will fail again on the same change;
  an error recorded before the start does not count, it may be history);
* the slot does not exist on the publisher, or the subscription has none;
* the publisher cannot be reached at the start (the target cannot be taken then;
  later, connection failures are retried until the timeout);
* the timeout passes (:class:`WaitTimeout`): the message names the tables not
  ready, how many bytes the applied position is behind, and the worker's state.

A subscription that does not exist is a
:class:`~pgferry.catalog.SubscriptionNotFound`.

With ``on_progress``, each poll hands a :class:`WaitProgress` to it: the tables not
ready, the sync workers with their copy's progress (as ``status`` shows them), the
applied position and the target; ``subscription wait`` draws it
(:mod:`pgferry.status.progress`). A failure's message carries the next action
where there is one (the ``--skip`` command of an apply error, ``--enable``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog.model import TableState
from pgferry.catalog.schema import current_version
from pgferry.catalog.store import SubscriptionNotFound
from pgferry.errors import PgferryError
from pgferry.hints import error_hint
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.sqltext import ident, printable
from pgferry.status.activity import SyncWorkerStatus, estimated_rows, read_activity, sync_workers
from pgferry.status.report import (
    ERROR_LSN_VERSION,
    SEQUENCE_STATE_VERSION,
    STALE_AFTER,
    WAL_POSITION_SQL,
    connect_publisher,
    scrub,
)
from pgferry.subscription.manage import shown

POLL_INTERVAL = 0.2
#: Not-ready tables named in a timeout message; the rest are counted.
NAMED_TABLES = 5

Conn = psycopg.Connection[Any]


class WaitFailed(PgferryError):
    """The subscription cannot get there: disabled, in error, no slot, timeout."""


class WaitTimeout(WaitFailed):
    """The timeout passed before the subscription caught up."""


@dataclass(frozen=True)
class WaitResult:
    name: str
    #: The publisher's WAL position when the wait started.
    target_lsn: Lsn
    #: Where everything committed is applied when the wait ended (at or past the
    #: target): the slot's confirmed_flush_lsn or the worker's committed position.
    applied_lsn: Lsn
    tables: int
    seconds: float


@dataclass(frozen=True)
class WaitProgress:
    """Where a wait stands, handed to ``on_progress`` at each poll."""

    name: str
    tables: int
    not_ready: int
    #: The sync workers, their copies with the publisher's row estimates.
    sync_workers: tuple[SyncWorkerStatus, ...]
    target_lsn: Lsn
    #: Where everything committed is applied (None: not known this time).
    applied_lsn: Lsn | None
    #: The apply worker: running, stale, stopped.
    worker: str
    seconds: float


@dataclass(frozen=True)
class _Local:
    conninfo: str
    enabled: bool
    slot_name: str | None
    error: tuple[str | None, datetime | None]
    tables: int
    #: (schema, name, state) of the tables not in state r.
    not_ready: list[tuple[str, str, TableState]]
    #: ``running``, ``stale`` or ``stopped``, as ``pgferry status`` says.
    worker: str
    #: The apply worker's committed position (see the module docstring).
    committed: Lsn | None
    #: The schema copy's steps not done yet.
    schema_steps: int = 0
    #: The finish LSN of the transaction the last error is about.
    error_lsn: Lsn | None = None
    sync_workers: tuple[SyncWorkerStatus, ...] = ()


def _read(local: Conn, name: str, version: int) -> _Local:
    error_lsn = "last_error_lsn::text" if version >= ERROR_LSN_VERSION else "NULL"
    size = "size_bytes" if version >= SEQUENCE_STATE_VERSION else "NULL::int8"
    with local.transaction():
        local.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = local.execute(
            "SELECT conninfo, enabled, slot_name, last_error, last_error_time,"
            f" {error_lsn} FROM pgferry.subscription WHERE name = %s",
            (name,),
        ).fetchone()
        if row is None:
            raise _not_found(name)
        tables = local.execute(
            "SELECT remote_schema, remote_name, state::text, catchup_lsn::text,"
            f" {size} FROM pgferry.subscription_table"
            " WHERE subscription = %s ORDER BY remote_schema, remote_name",
            (name,),
        ).fetchall()
        syncing = [
            (s, n, TableState.parse(st), Lsn.parse(c) if c else None, sz)
            for s, n, st, c, sz in tables
            if st != TableState.READY
        ]
        workers = sync_workers(read_activity(local, version), name, syncing)
        (steps,) = local.execute(
            "SELECT count(*) FROM pgferry.schema_step WHERE subscription = %s", (name,)
        ).fetchone() or (0,)
        age = local.execute(
            "SELECT extract(epoch FROM now() - greatest(latest_end_time, last_msg_receipt_time,"
            " started_at)), committed_lsn::text"
            " FROM pgferry.worker WHERE subscription = %s AND relation = ''",
            (name,),
        ).fetchone()
    worker = "stopped" if age is None else "running" if float(age[0]) <= STALE_AFTER else "stale"
    committed = Lsn.parse(age[1]) if age is not None and age[1] else None
    return _Local(
        conninfo=row[0],
        enabled=bool(row[1]),
        slot_name=row[2],
        error=(row[3], row[4]),
        tables=len(tables),
        not_ready=[(s, n, st) for s, n, st, _, _ in syncing],
        worker=worker,
        committed=committed if worker == "running" else None,
        schema_steps=int(steps),
        error_lsn=Lsn.parse(row[5]) if row[5] else None,
        sync_workers=workers,
    )


def _not_found(name: str) -> SubscriptionNotFound:
    return SubscriptionNotFound(
        f"subscription {shown(name)} does not exist",
        hint="pgferry subscription list shows the subscriptions of this database",
    )


def _check(name: str, sub: _Local, baseline: tuple[str | None, datetime | None]) -> None:
    if not sub.enabled:
        why = "" if sub.error[0] is None else f"; its last error: {printable(sub.error[0])}"
        raise WaitFailed(
            f"subscription {shown(name)} is disabled, so it cannot catch up"
            f" (pgferry subscription alter {printable(name)} --enable){why}",
            hint=error_hint(name, sub.error[0], sub.error_lsn, enabled=False),
        )
    if sub.error != baseline and sub.error[0] is not None:
        raise WaitFailed(
            f"subscription {shown(name)} failed: {printable(sub.error[0])}",
            hint=error_hint(name, sub.error[0], sub.error_lsn),
        )
    if sub.slot_name is None:
        raise WaitFailed(f"subscription {shown(name)} has no slot (slot_name = NONE)")


def _wal_position(remote: Conn) -> Lsn:
    row = remote.execute(f"SELECT ({WAL_POSITION_SQL})::text").fetchone()
    assert row is not None and row[0] is not None
    return Lsn.parse(row[0])


def _confirmed(remote: Conn, slot: str) -> Lsn | None:
    """The slot's confirmed_flush_lsn; None when the slot does not exist."""
    row = remote.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots"
        " WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    return Lsn.parse(row[0]) if row[0] else INVALID_LSN


def _missing(
    name: str,
    sub: _Local,
    target: Lsn,
    applied: Lsn | None,
    remote_error: str | None,
    seconds: float,
) -> str:
    """The timeout message: what is not there yet."""
    parts: list[str] = []
    if sub.not_ready:
        named = [f"{ident(s)}.{ident(n)} ({st})" for s, n, st in sub.not_ready[:NAMED_TABLES]]
        more = len(sub.not_ready) - len(named)
        count = len(sub.not_ready)
        parts.append(
            f"{count} of {sub.tables} table{'s' if sub.tables != 1 else ''} not ready:"
            f" {', '.join(named)}{f' and {more} more' if more else ''}"
        )
    if sub.schema_steps:
        parts.append(
            f"{sub.schema_steps} schema copy step{'s' if sub.schema_steps != 1 else ''} left"
            " (pgferry.schema_step)"
        )
    if remote_error is not None:
        parts.append(f"publisher unreachable: {remote_error}")
    elif applied is not None and applied < target:
        parts.append(
            f"applied position {applied} is {target - applied} bytes behind {target}"
            " (the publisher's WAL position when wait started)"
        )
    if sub.worker == "stopped":
        parts.append("no apply worker is running (is pgferry run running for this database?)")
    elif sub.worker == "stale":
        parts.append(f"the apply worker has not reported for more than {STALE_AFTER:.0f} s")
    missing = "; ".join(parts)
    return f"timed out after {seconds:.1f} s waiting for subscription {shown(name)}: {missing}"


class _Estimates:
    """The publisher's row estimates of the tables being copied, asked once each."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], int | None] = {}

    def add_to(
        self, remote: Conn | None, workers: tuple[SyncWorkerStatus, ...]
    ) -> tuple[SyncWorkerStatus, ...]:
        wanted = [(w.schema, w.name) for w in workers if w.copy is not None]
        unknown = [t for t in wanted if t not in self.rows]
        if unknown and remote is not None:
            try:
                found = estimated_rows(remote, unknown)
            except psycopg.Error:
                found = {}
            self.rows.update({t: found.get(t) for t in unknown})
        result = []
        for w in workers:
            rows = self.rows.get((w.schema, w.name))
            if w.copy is not None and rows is not None:
                w = replace(w, copy=replace(w.copy, total_rows=rows))
            result.append(w)
        return tuple(result)


def wait_ready(
    dsn: str,
    name: str,
    *,
    timeout: float | None = None,
    poll_interval: float = POLL_INTERVAL,
    on_progress: Callable[[WaitProgress], None] | None = None,
) -> WaitResult:
    """Wait until subscription ``name`` of the subscriber ``dsn`` is ready and has
    applied everything the publisher had written when the wait started (see the
    module docstring); ``timeout`` None waits as long as it takes; ``on_progress``
    is called at each poll."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    estimates = _Estimates()
    with connect.subscriber(dsn) as local:
        version = current_version(local)
        if version == 0:
            raise _not_found(name)
        sub = _read(local, name, version)
        baseline = sub.error
        _check(name, sub, baseline)
        assert sub.slot_name is not None
        conninfo = sub.conninfo
        first = connect_publisher(conninfo)
        remote: Conn | None = first
        try:
            target = _wal_position(first)
            while True:
                remote_error = None
                applied: Lsn | None = None
                try:
                    if remote is None:
                        remote = connect_publisher(conninfo)
                    applied = _confirmed(remote, sub.slot_name)
                except PgferryError as exc:
                    remote_error = exc.message
                except psycopg.Error as exc:
                    remote_error = scrub(str(exc), conninfo)
                    if remote is not None:
                        remote.close()
                    remote = None
                if remote_error is None and applied is None:
                    raise WaitFailed(
                        f"replication slot {shown(sub.slot_name)} of subscription {shown(name)}"
                        " does not exist on the publisher"
                    )
                if applied is not None and sub.committed is not None:
                    applied = max(applied, sub.committed)
                done = not sub.not_ready and not sub.schema_steps
                if done and applied is not None and applied >= target:
                    return WaitResult(name, target, applied, sub.tables, time.monotonic() - started)
                if on_progress is not None:
                    on_progress(
                        WaitProgress(
                            name,
                            sub.tables,
                            len(sub.not_ready),
                            estimates.add_to(remote, sub.sync_workers),
                            target,
                            applied,
                            sub.worker,
                            time.monotonic() - started,
                        )
                    )
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(
                        _missing(
                            name, sub, target, applied, remote_error, time.monotonic() - started
                        )
                    )
                pause = poll_interval
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
                sub = _read(local, name, version)
                _check(name, sub, baseline)
                if sub.conninfo != conninfo:
                    # alter --connection meanwhile: follow it (the target stays).
                    conninfo = sub.conninfo
                    if remote is not None:
                        remote.close()
                    remote = None
                assert sub.slot_name is not None
        finally:
            if remote is not None:
                remote.close()
