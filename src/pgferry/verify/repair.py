"""``verify --repair``: the publisher wins, for the rows a comparison found differing.

Contract of :func:`repair`:

* it takes a fresh consistent pair and keeps the apply worker held at its LSN L'
  while it works (see :func:`~.consistent.held_pair` with ``keep_held``), so
  nothing replication does meanwhile races with the fixes;
* each differing key is read again: on the publisher in the snapshot at L', on
  the subscriber as it is (everything before L' applied, nothing after), every
  row of it, each subscriber row by where it is (``tableoid``, ``ctid``). The
  subscriber's rows of the key are then made the publisher's, copy for copy: a
  row equal to a publisher row is kept, one that differs is updated (the
  published columns; other subscriber columns are kept), a row the publisher
  has not is deleted, one the subscriber has not inserted. So a key held twice
  on a subscriber table without the publisher's unique key ends with the
  publisher's one row, and rows with a NULL key column are deleted; a key that
  replication made equal meanwhile is left alone. The counts fixed are rows.
  Tables without a key: copies of a row text are deleted or inserted until both
  sides hold as many;
* the publisher's session waits at most ``timeout`` to connect (at least 2 s);
  a failure is one error naming the subscription, and the hold is released;
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

from .compare import Sessions, open_publisher, plans
from .consistent import Pair, held_pair
from .plan import SESSION_SETTINGS, Key, TablePlan
from .report import VerifyReport

logger = logging.getLogger("pgferry.verify")

#: A published row's columns as text.
Values = tuple[str | None, ...]
#: Where a subscriber row is: its ``tableoid`` and ``ctid``, as text.
RowId = tuple[str, str]

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
        pub = open_publisher(
            name, conninfo, pair.publisher_snapshot, 1, timeout, "nothing was repaired"
        )
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
    for chunk in _chunks(list(dict.fromkeys(keys))):
        renew()
        theirs: dict[Key, list[Values]] = {}
        for row in pub.query(plan.values_query(chunk)):
            theirs.setdefault(tuple(row[:width]), []).append(tuple(row[width:]))
        ours: dict[Key, list[tuple[RowId, Values]]] = {}
        for row in local.execute(plan.located_query(chunk).encode()).fetchall():
            located = ((row[0], row[1]), tuple(row[2 + width :]))
            ours.setdefault(tuple(row[2 : 2 + width]), []).append(located)
        for key in chunk:
            fixed.update(_fix_key(local, plan, key, theirs.get(key, []), ours.get(key, [])))
    return dict(fixed)


def _fix_key(
    local: psycopg.Connection[Any],
    plan: TablePlan,
    key: Key,
    want: list[Values],
    have: list[tuple[RowId, Values]],
) -> Counter[str]:
    """The subscriber's rows of ``key`` made the publisher's ``want``, copy for
    copy: a row equal to one of them is kept, another is updated to one still
    unmatched (its unpublished columns kept), the rest deleted; those still
    unmatched are inserted."""
    unmatched = list(want)
    spare: list[RowId] = []
    for row_id, values in have:
        if values in unmatched:
            unmatched.remove(values)
        else:
            spare.append(row_id)
    target, where = plan.relation(False), plan.key_predicate(key)
    for row_id, values in zip(spare, unmatched, strict=False):
        sets = ", ".join(
            f"{quote_ident(c)} = {_literal(v)}" for c, v in zip(plan.columns, values, strict=True)
        )
        local.execute(f"UPDATE {target} SET {sets} WHERE {where} AND {_at(row_id)}".encode())
    surplus = spare[len(unmatched) :]
    if surplus:
        located = " OR ".join(_at(row_id) for row_id in surplus)
        local.execute(f"DELETE FROM {target} WHERE {where} AND ({located})".encode())
    for values in unmatched[len(spare) :]:
        local.execute(_insert(plan, values).encode())
    return Counter(
        different=min(len(spare), len(unmatched)),
        extra=len(surplus),
        missing=max(0, len(unmatched) - len(spare)),
    )


def _at(row_id: RowId) -> str:
    table, tid = row_id
    return f"(tableoid = {quote_literal(table)} AND ctid = {quote_literal(tid)})"


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
