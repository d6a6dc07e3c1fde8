"""``verify --repair``: the publisher wins, for the rows a comparison found differing.

Contract of :func:`repair`:

* it takes a fresh consistent pair and keeps the apply worker held at its LSN L'
  while it works (see :func:`~.consistent.held_pair` with ``keep_held``), so
  nothing replication does meanwhile races with the fixes;
* each differing key is read again: on the publisher in the snapshot at L', on
  the subscriber as it is (everything before L' applied, nothing after). A row on
  the publisher only is inserted, one on the subscriber only deleted, one that
  differs updated (the published columns; other subscriber columns are kept);
  a key that replication made equal meanwhile is left alone. Tables without a
  key: copies of a row text are deleted or inserted until both sides hold as many;
* all fixes are one subscriber transaction under a replication origin of their
  own, ``pgferry_repair_<subscription>``, with ``session_replication_role =
  replica`` as apply has: a two-way peer that filters on origin (``origin =
  none``) does not send them back;
* it commits only while the worker still holds (the lease renewed as it goes,
  and checked in the transaction just before the commit, with a margin): a hold
  that lapsed (the worker applies again) rolls the fixes back, for they could
  overwrite newer changes. Row locks are waited for at most
  :data:`LOCK_TIMEOUT` seconds (a streamed transaction the held worker has open
  may hold some): that too rolls back, with one error;
* the counts fixed go into each table's report (``repaired``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from pgferry import connect, origins
from pgferry.catalog import hold as catalog_hold
from pgferry.catalog import store
from pgferry.errors import PgferryError
from pgferry.sqltext import quote_ident, quote_literal

from .compare import Sessions, open_sessions, plans
from .consistent import Pair, held_pair
from .plan import SESSION_SETTINGS, Key, TablePlan
from .report import VerifyReport

logger = logging.getLogger("pgferry.verify")

#: Keys read or written per statement.
CHUNK = 500
#: Seconds a fix waits for a row lock.
LOCK_TIMEOUT = 5
#: Seconds of lease that must be left when the fixes commit.
COMMIT_MARGIN = 2.0


def _literal(value: str | None) -> str:
    return "NULL" if value is None else quote_literal(value)


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def repair(subscriber_dsn: str, report: VerifyReport, *, lease: float, timeout: float) -> None:
    """Fix the differences of ``report`` (every key listed in it) on the subscriber."""
    wanted = [t for t in report.tables if t.differences]
    if not wanted:
        return
    name = report.subscription
    with (
        held_pair(subscriber_dsn, name, lease=lease, timeout=timeout, keep_held=True) as pair,
        connect.subscriber(subscriber_dsn) as catalog,
    ):
        conninfo = store.get_subscription(catalog, name).conninfo
        pub = open_sessions(conninfo, "publisher", pair.publisher_snapshot, 1)
        try:
            chosen = plans(catalog, name, pub, [t.table for t in wanted])
            local = connect.session(subscriber_dsn, application_name="pgferry verify repair")
            try:
                _fix_all(local, name, pub, {p.display: p for p in chosen}, report, pair)
            finally:
                local.close()
        finally:
            pub.close()
    report.repaired = True


def _fix_all(
    local: psycopg.Connection[Any],
    name: str,
    pub: Sessions,
    by_name: dict[str, TablePlan],
    report: VerifyReport,
    pair: Pair,
) -> None:
    for setting, value in SESSION_SETTINGS:
        local.execute("SELECT pg_catalog.set_config(%s, %s, false)", (setting, value))
    local.execute("SET session_replication_role = replica")
    origin = origins.repair_origin(name)
    origins.ensure(local, origin)
    origins.bind(local, origin)
    try:
        with local.transaction():
            local.execute(
                "SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{LOCK_TIMEOUT}s",)
            )
            for table in report.tables:
                plan = by_name.get(table.table)
                if plan is None or not table.differences:
                    continue
                listed = [k for kind in ("missing", "extra", "different") for k in table.keys[kind]]
                if plan.key:
                    fixed = _fix_keyed(local, pub, plan, listed, pair.renew)
                else:
                    texts = sorted({k[0] for k in listed if k[0] is not None})
                    fixed = _fix_multiset(local, pub, plan, texts, pair.renew)
                table.repaired.update(fixed)
            if not catalog_hold.still_held(local, name, pair.token, COMMIT_MARGIN):
                raise PgferryError(
                    f"subscription {name!r}: the apply hold lapsed while the fixes were"
                    " made; nothing was fixed (they could overwrite newer changes)",
                    hint="run verify --repair again (--lease gives the hold longer)",
                )
    finally:
        origins.release(local)


def _fix_keyed(
    local: psycopg.Connection[Any],
    pub: Sessions,
    plan: TablePlan,
    keys: list[Key],
    renew: Callable[[], None],
) -> dict[str, int]:
    fixed = Counter({"missing": 0, "extra": 0, "different": 0})
    width = len(plan.key)
    target = plan.relation(False)
    for chunk in _chunks(keys):
        renew()
        theirs = {
            tuple(r[:width]): tuple(r[width:]) for r in pub.query(plan.values_query(True, chunk))
        }
        ours = {
            tuple(r[:width]): tuple(r[width:])
            for r in local.execute(plan.values_query(False, chunk).encode()).fetchall()
        }
        for key in chunk:
            want, have = theirs.get(key), ours.get(key)
            where = plan.key_predicate(key)
            if want is None and have is not None:
                local.execute(f"DELETE FROM {target} WHERE {where}".encode())
                fixed["extra"] += 1
            elif want is not None and have is None:
                local.execute(_insert(plan, want).encode())
                fixed["missing"] += 1
            elif want is not None and want != have:
                sets = ", ".join(
                    f"{quote_ident(c)} = {_literal(v)}"
                    for c, v in zip(plan.columns, want, strict=True)
                )
                local.execute(f"UPDATE {target} SET {sets} WHERE {where}".encode())
                fixed["different"] += 1
    return dict(fixed)


def _fix_multiset(
    local: psycopg.Connection[Any],
    pub: Sessions,
    plan: TablePlan,
    texts: list[str],
    renew: Callable[[], None],
) -> dict[str, int]:
    fixed = Counter({"missing": 0, "extra": 0})
    target = plan.relation(False)
    for chunk in _chunks(texts):
        renew()
        theirs: dict[str, list[tuple[Any, ...]]] = {}
        for row in pub.query(plan.rows_by_text_query(True, chunk)):
            theirs.setdefault(row[0], []).append(tuple(row[1:]))
        ours = Counter(
            r[0] for r in local.execute(plan.rows_by_text_query(False, chunk).encode()).fetchall()
        )
        for text in chunk:
            surplus = ours[text] - len(theirs.get(text, []))
            if surplus > 0:
                local.execute(
                    f"DELETE FROM {target} WHERE ctid IN (SELECT ctid FROM {target}"
                    f" WHERE {plan.row_text()} = {quote_literal(text)} LIMIT {surplus})".encode()
                )
                fixed["extra"] += surplus
            for values in theirs.get(text, [])[: max(0, -surplus)]:
                local.execute(_insert(plan, values).encode())
                fixed["missing"] += 1
    return dict(fixed)


def _insert(plan: TablePlan, values: tuple[Any, ...]) -> str:
    if not plan.columns:
        return f"INSERT INTO {plan.relation(False)} DEFAULT VALUES"
    columns = ", ".join(quote_ident(c) for c in plan.columns)
    literals = ", ".join(_literal(v) for v in values)
    return f"INSERT INTO {plan.relation(False)} ({columns}) VALUES ({literals})"
