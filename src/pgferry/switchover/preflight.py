"""The switchover's preflight: what must hold before anything is changed.

Each ``check_*`` raises a :class:`~.errors.PreflightFailed` (one line, and the
next action) when its condition does not hold, and changes nothing;
:func:`check_sequences` also checks the final sequence sync inside the fence
(a :class:`~.errors.SwitchoverFailed` there). The conditions are listed in
:mod:`pgferry.switchover`.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pgferry import conninfo as ci
from pgferry.catalog import TableState, store
from pgferry.catalog.store import Subscription
from pgferry.protocol.lsn import Lsn
from pgferry.sequences import SyncReport
from pgferry.sqltext import ident, printable
from pgferry.subscription.manage import shown

from . import drain
from .errors import PreflightFailed, SwitchoverFailed
from .fence import read_only_overrides

Conn = psycopg.Connection[Any]

#: The application name of ``pgferry run``'s catalog session.
LAUNCHER_NAME = "pgferry"
#: Seconds a worker row may be old and still count as running.
WORKER_FRESH = 30.0
#: Seconds the preflight waits for the apply worker to be running (one just
#: started, e.g. by a switchover moments before, takes a second or two).
WORKER_WAIT = 10.0


def _one(conn: Conn, query: str) -> str:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return str(row[0])


def _fail(message: str, hint: str | None = None) -> PreflightFailed:
    return PreflightFailed(message, hint=hint)


def check_subscription(new: Conn, sub: Subscription) -> None:
    """Enabled, no error, a slot, every table ready, its apply worker running."""
    name = sub.name
    if not sub.enabled:
        raise _fail(
            f"subscription {shown(name)} is disabled",
            hint=f"enable it (pgferry subscription alter {printable(name)} --enable) and let it"
            " catch up (pgferry subscription wait)",
        )
    if sub.last_error is not None:
        raise _fail(
            f"subscription {shown(name)} is in error: {printable(sub.last_error)}",
            hint="fix the error (pgferry status) and let it catch up first",
        )
    if sub.slot_name is None:
        raise _fail(f"subscription {shown(name)} has no slot (slot_name = NONE)")
    tables = store.tables(new, name)
    waiting = [t for t in tables if t.state != TableState.READY]
    if waiting:
        listed = ", ".join(
            f"{ident(t.local_schema)}.{ident(t.local_name)} ({t.state})" for t in waiting[:5]
        )
        raise _fail(
            f"subscription {shown(name)}: {len(waiting)} of {len(tables)} tables not ready:"
            f" {listed}",
            hint=f"wait until they are (pgferry subscription wait {printable(name)})",
        )
    deadline = time.monotonic() + WORKER_WAIT
    while not _worker_running(new, name):
        if time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        raise _fail(
            f"subscription {shown(name)} has no running apply worker",
            hint="start the launcher for the new primary's database: pgferry -d NEW run",
        )


def _worker_running(new: Conn, name: str) -> bool:
    row = new.execute(
        "SELECT extract(epoch FROM now() - greatest(latest_end_time, last_msg_receipt_time,"
        " started_at)) FROM pgferry.worker WHERE subscription = %s AND relation = ''",
        (name,),
    ).fetchone()
    return row is not None and row[0] is not None and float(row[0]) <= WORKER_FRESH


def check_lag(new: Conn, old: Conn, sub: Subscription, bound: int, wait: float) -> int:
    """The subscription's lag (the old primary's WAL position less what is applied),
    waited for up to ``wait`` seconds to fall to ``bound`` bytes or less: the drain
    inside the fence then has that much at most to apply."""
    assert sub.slot_name is not None
    deadline = time.monotonic() + wait
    while True:
        position = Lsn.parse(_one(old, "SELECT pg_catalog.pg_current_wal_lsn()::text"))
        applied = max(drain.applied(new, sub.name), drain.confirmed(old, sub.slot_name))
        lag = max(0, int(position) - int(applied))
        if lag <= bound:
            return lag
        if time.monotonic() > deadline:
            raise _fail(
                f"subscription {shown(sub.name)} is {lag} bytes behind the old primary"
                f" after {wait:g} s (the bound is {bound})",
                hint="wait until it catches up (pgferry subscription wait), or raise --max-lag",
            )
        time.sleep(0.02)


def check_transactions(old: Conn, bound: float) -> None:
    row = old.execute(
        "SELECT a.pid, extract(epoch FROM now() - a.xact_start), a.usename, a.application_name"
        " FROM pg_catalog.pg_stat_activity a"
        " WHERE a.datname = pg_catalog.current_database()"
        " AND a.pid <> pg_catalog.pg_backend_pid() AND a.backend_type = 'client backend'"
        " AND a.xact_start < now() - make_interval(secs => %s)"
        " ORDER BY a.xact_start LIMIT 1",
        (bound,),
    ).fetchone()
    if row is not None:
        raise _fail(
            f"a transaction on the old primary is {float(row[1]):.1f} s old (pid {row[0]},"
            f" role {ident(str(row[2]))}, application {printable(repr(row[3] or ''))}): the"
            " fence would wait for it",
            hint="end it or wait for it (pg_stat_activity); --max-transaction-age sets the bound",
        )


def check_prepared(old: Conn) -> None:
    """No prepared transaction in the old primary's database: the fence cannot end
    one, and one committed later would be a write after the fence."""
    rows = old.execute(
        "SELECT gid, extract(epoch FROM now() - prepared), owner FROM pg_catalog.pg_prepared_xacts"
        " WHERE database = pg_catalog.current_database() ORDER BY prepared"
    ).fetchall()
    if rows:
        listed = ", ".join(
            f"{printable(repr(str(r[0])))} (role {ident(str(r[2]))}, {float(r[1]):.0f} s old)"
            for r in rows[:3]
        )
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        raise _fail(
            f"{len(rows)} prepared transaction(s) on the old primary: {listed}{more}; the"
            " fence cannot end them",
            hint="COMMIT PREPARED or ROLLBACK PREPARED them there (pg_prepared_xacts) and try"
            " again",
        )


def check_read_only_overrides(old: Conn) -> None:
    """The database fence (no PgBouncer): no role sets its own
    ``default_transaction_read_only``, which would win over the fence's."""
    found = read_only_overrides(old)
    if found:
        role, here, setting = found[0]
        where = f" IN DATABASE {ident(str(old.info.dbname))}" if here else ""
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise _fail(
            f"role {ident(role)} has {setting}{where} on the old primary{more}: its sessions"
            " would write through the database fence",
            hint=f"ALTER ROLE {ident(role)}{where} RESET default_transaction_read_only, or"
            " fence through PgBouncer (--pgbouncer)",
        )


def check_publications(old: Conn, sub: Subscription) -> None:
    """No publication FOR ALL TABLES: it would publish the pgferry catalog the
    reverse subscription creates in the old primary's database."""
    row = old.execute(
        "SELECT pubname FROM pg_catalog.pg_publication WHERE puballtables"
        " AND pubname = ANY(%s) ORDER BY 1 LIMIT 1",
        (list(sub.publications),),
    ).fetchone()
    if row is not None:
        raise _fail(
            f"publication {shown(str(row[0]))} on the old primary is FOR ALL TABLES: it would"
            " publish the pgferry catalog of the reverse subscription",
            hint="publish the tables by name or schema (ALTER PUBLICATION ... SET TABLE ...)",
        )


def check_launcher(old: Conn, old_dsn: str) -> None:
    """A ``pgferry run`` for the old primary's database: the reverse subscription's worker."""
    row = old.execute(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity a"
        " WHERE a.datname = pg_catalog.current_database() AND a.application_name = %s"
        " AND a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()",
        (LAUNCHER_NAME,),
    ).fetchone()
    if not row or not row[0]:
        raise _fail(
            "no pgferry launcher runs for the old primary's database: reverse replication"
            " would not start",
            hint=f"run `pgferry -d {ci.mask(old_dsn)!r} run` (it applies the reverse"
            " subscription) and try again",
        )


def check_schema(new_dsn: str, name: str) -> None:
    from pgferry.schema.diff import diff_subscription

    diff = diff_subscription(new_dsn, name)
    if not diff.equivalent:
        raise _fail(
            f"subscription {shown(name)}: the schemas differ in {len(diff.differences)} place(s)",
            hint=f"pgferry schema diff {printable(name)} lists them; or --no-schema-check",
        )


def check_sequences(report: SyncReport) -> None:
    """Every subscriber sequence at or past the publisher's (in its direction)."""
    for seq in report.sequences:
        if seq.publisher_value is None:
            continue
        down = seq.descending
        value = seq.subscriber_value
        behind = value is None or (
            value > seq.publisher_value if down else value < seq.publisher_value
        )
        if behind:
            raise SwitchoverFailed(
                f"sequence {seq.display} is behind on the new primary after the sync"
                f" ({value} against {seq.publisher_value})",
                hint="check the sequence's owner and bounds on the new primary",
            )
