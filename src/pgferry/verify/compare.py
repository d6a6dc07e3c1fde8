"""The comparison of two snapshots: hash key ranges on both sides, bisect the
ranges that differ, compare rows only there.

Contract of :func:`compare_snapshots` (see the package docstring for its use):

* ``jobs`` sessions on each side, each in ``REPEATABLE READ`` with the given
  exported snapshot imported (and :data:`~.plan.SESSION_SETTINGS`), so they all
  see the same data whatever replication does meanwhile; the exporting
  transactions must stay open until the sessions have imported them (until this
  function returns is simplest);
* the publisher is reached with the subscription's conninfo; with ``timeout``
  each connection attempt to it waits at most that long (at least libpq's 2 s;
  a ``connect_timeout`` in the conninfo wins), and one that fails is one
  :class:`~pgferry.errors.ConnectionFailed` naming the subscription, with what
  to do next;
* per table (see :mod:`.plan`): with a key, the publisher's rows are cut into
  half-open key ranges of about :data:`RANGE_ROWS` rows, plus the range of rows
  with a NULL in a key column (:data:`~.plan.NULL_KEYS`: only a subscriber table
  without the publisher's unique key can hold any); each range's row count and
  sum of row hashes are computed on both sides at once, every range of every
  table in parallel over the sessions; a range that differs is compared row by
  row when it holds at most :data:`FETCH_ROWS` rows on each side, else cut into
  :data:`SPLIT` ranges again (on the side with more rows) and so on;
* rows are compared as (key, row hash) pairs counted on each side, so a key
  held several times on one side is never folded into one: per key, the copies
  one side has more of are paired as ``different``, the rest are ``missing`` or
  ``extra``, once per copy. Rows with a NULL key column are thus ``extra`` (or
  ``missing``), each listed. Keys compared row by row are listed in key order
  (``missing`` and ``different`` in the publisher's, ``extra`` in the
  subscriber's);
* a range that cannot be cut any more (its rows on the side with more share one
  key value: duplicate keys on a subscriber table without the publisher's unique
  key), and the NULL key range when it holds more than :data:`FETCH_ROWS` rows,
  are compared directly: both sides stream its distinct (key, row hash) pairs
  with their counts in one order (see :meth:`~.plan.TablePlan.groups_query`),
  merged in one pass, :data:`STREAM_ROWS` at a time. Memory stays bounded
  whatever the range holds. Bisection that goes past
  :data:`MAX_LEVELS` levels or :data:`MAX_LEVEL_RANGES` ranges in one level
  compares the whole table so instead;
* without a key, the whole table's count and sum are compared, and when they
  differ its distinct row hashes with their counts, streamed and merged the same
  way; the row texts are read only for the hashes that differ;
* a key found missing in one range and extra in another (the two sides order it
  differently, e.g. a text key under different collations) is one row compared
  by its hash, not two differences;
* read-only on both sides; a table that cannot be read is one
  :class:`~pgferry.errors.PgferryError` naming it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgferry import connect
from pgferry import conninfo as ci
from pgferry.catalog import ensure_catalog, store
from pgferry.conninfo import mask
from pgferry.errors import ConnectionFailed, InterfaceError, PgferryError
from pgferry.protocol.lsn import Lsn
from pgferry.publisher.shape import PublishedTable, published_tables
from pgferry.sqltext import quote_literal

from .plan import (
    FULL,
    NULL_KEYS,
    SESSION_SETTINGS,
    Key,
    Range,
    TablePlan,
    choose_key,
    key_query,
    plan_table,
)
from .report import TableReport, VerifyReport

logger = logging.getLogger("pgferry.verify")

#: Rows per key range at the start (about; cut on the publisher's keys).
RANGE_ROWS = 50_000
#: Most ranges a table starts with.
MAX_RANGES = 512
#: A differing range with at most this many rows on each side is compared row by row.
FETCH_ROWS = 5_000
#: How many ranges a differing range is cut into.
SPLIT = 16
#: Bisection levels, and ranges in one level, at most: past either the whole
#: table is compared directly instead (a key type the two servers order
#: differently cuts ranges that do not shrink).
MAX_LEVELS = 24
MAX_LEVEL_RANGES = 8_192
#: Rows fetched at a time from a streamed (directly compared) range.
STREAM_ROWS = 10_000
#: Row hashes whose row texts are read per query (tables without a key).
TEXTS_CHUNK = 1_000
#: Key types cut by arithmetic (see Comparison._initial_ranges).
_INTEGERS = frozenset({"smallint", "integer", "bigint"})
#: Keys listed per table and kind (the counts are exact).
DEFAULT_LIMIT = 1000

Row = tuple[Any, ...]
#: A differing key as a comparison finds it: (kind, key, copies).
Found = tuple[str, Key, int]


class Sessions:
    """One side's comparing sessions, each in the snapshot; lent one query at a time."""

    def __init__(self, conns: list[psycopg.Connection[Any]], side: str) -> None:
        self.conns = conns
        self.side = side
        self._free: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        for conn in conns:
            self._free.put(conn)

    @property
    def major(self) -> int:
        return self.conns[0].info.server_version // 10000

    def query(self, text: str) -> list[Row]:
        conn = self._free.get()
        try:
            return conn.execute(text.encode()).fetchall()
        finally:
            self._free.put(conn)

    @contextlib.contextmanager
    def stream(self, text: str) -> Iterator[Iterator[Row]]:
        """The rows of ``text`` through a cursor, :data:`STREAM_ROWS` at a time;
        the session is lent until the block ends."""
        conn = self._free.get()
        try:
            conn.execute(f"DECLARE pgferry_stream NO SCROLL CURSOR FOR {text}".encode())
            try:
                yield _fetched(conn)
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(b"CLOSE pgferry_stream")
        finally:
            self._free.put(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def _fetched(conn: psycopg.Connection[Any]) -> Iterator[Row]:
    fetch = f"FETCH FORWARD {int(STREAM_ROWS)} FROM pgferry_stream".encode()
    while rows := conn.execute(fetch).fetchall():
        yield from rows


def open_sessions(dsn: str, side: connect.Side, snapshot: str, jobs: int) -> Sessions:
    """``jobs`` sessions importing ``snapshot`` (closed again on a failure)."""
    conns: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(jobs):
            conn = connect.session(dsn, side=side, application_name="pgferry verify")
            conns.append(conn)
            for name, value in SESSION_SETTINGS:
                conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                conn.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot)}".encode())
            except psycopg.Error as exc:
                raise InterfaceError(
                    f"cannot import snapshot {snapshot!r} on the {side}: "
                    + " ".join(str(exc).split()),
                    hint="the transaction that exported it must still be open",
                ) from None
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return Sessions(conns, side)


def bounded(conninfo: str, timeout: float | None) -> str:
    """``conninfo`` with each connection attempt waiting at most ``timeout``
    seconds (libpq's least is 2), unless it sets ``connect_timeout`` itself;
    None: as it is."""
    if timeout is None:
        return conninfo
    params = ci.parse(conninfo)
    params.setdefault("connect_timeout", str(max(2, math.ceil(timeout))))
    return make_conninfo(**params)


def unreachable(subscription: str, exc: ConnectionFailed, outcome: str) -> ConnectionFailed:
    """A failed connection to the publisher as one line naming the subscription
    and ``outcome`` (what was left undone), with the next action."""
    return ConnectionFailed(
        f"subscription {subscription!r} cannot be verified now: {exc.message}; {outcome}",
        hint=f"{exc.hint}; then pgferry verify {subscription} again"
        if exc.hint
        else f"verify {subscription} again once its publisher answers",
    )


def open_publisher(
    subscription: str, conninfo: str, snapshot: str, jobs: int, timeout: float | None, outcome: str
) -> Sessions:
    """:func:`open_sessions` on the publisher, each attempt bounded by ``timeout``
    (see :func:`bounded`); a failed connection is :func:`unreachable`."""
    try:
        return open_sessions(bounded(conninfo, timeout), "publisher", snapshot, jobs)
    except ConnectionFailed as exc:
        raise unreachable(subscription, exc, outcome) from None


def parse_table(text: str) -> tuple[str | None, str]:
    """``schema.name`` or ``name``, each part bare or double-quoted."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i <= n:
        if i < n and text[i] == '"':
            j, out = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise InterfaceError(
                        f"unterminated quoted name in table {text!r}",
                        hint='write a table as schema.name, "quoted" where needed',
                    )
                out.append(text[j:k])
                if text[k + 1 : k + 2] == '"':
                    out.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            parts.append("".join(out))
        else:
            k = text.find(".", i)
            k = n if k < 0 else k
            parts.append(text[i:k].strip().lower())
            i = k
        if i >= n:
            break
        if text[i] != ".":
            raise InterfaceError(
                f"cannot read table name {text!r}",
                hint='write a table as schema.name, "quoted" where needed',
            )
        i += 1
    if len(parts) == 1 and parts[0]:
        return None, parts[0]
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1]
    raise InterfaceError(
        f"cannot read table name {text!r}",
        hint='write a table as schema.name, "quoted" where needed',
    )


def select_tables(
    shapes: Sequence[PublishedTable], wanted: Sequence[str] | None, subscription: str
) -> list[PublishedTable]:
    if not wanted:
        return list(shapes)
    chosen: list[PublishedTable] = []
    for text in wanted:
        schema, name = parse_table(text)
        found = [s for s in shapes if s.name == name and (schema is None or s.schema == schema)]
        if not found:
            raise InterfaceError(
                f"subscription {subscription!r} has no published table {text!r}",
                hint="name a table as schema.name (pgferry status NAME lists the tables)",
            )
        if len(found) > 1:
            raise InterfaceError(
                f"table name {text!r} is ambiguous in subscription {subscription!r}",
                hint="qualify it with its schema: schema.name",
            )
        if found[0] not in chosen:
            chosen.append(found[0])
    return chosen


def plans(
    catalog: psycopg.Connection[Any],
    subscription: str,
    pub: Sessions,
    tables: Sequence[str] | None,
) -> list[TablePlan]:
    """The tables to compare, as the publisher snapshot publishes them."""
    sub = store.get_subscription(catalog, subscription)
    local = {
        (t.remote_schema, t.remote_name): (t.local_schema, t.local_name)
        for t in store.tables(catalog, subscription)
    }
    shapes = published_tables(pub.query, pub.major, sub.publications)
    shapes = [s for s in shapes if s.key in local]
    result = []
    for shape in select_tables(shapes, tables, subscription):
        rows = pub.query(key_query(shape.schema, shape.name))
        key = choose_key([(bool(r[0]), r[1]) for r in rows], shape.columns)
        collatable = {r[1]: bool(r[2]) for r in rows}
        result.append(plan_table(shape, local[shape.key], key, tuple(collatable[c] for c in key)))
    return result


class Comparison:
    """One comparison run over both sides' sessions."""

    def __init__(self, pub: Sessions, sub: Sessions, jobs: int, limit: int) -> None:
        self.pub = pub
        self.sub = sub
        self.limit = limit
        self.pool = ThreadPoolExecutor(max_workers=2 * jobs, thread_name_prefix="verify-q")
        self.jobs = jobs

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def both(self, query: Callable[[bool], str]) -> tuple[Future[list[Row]], Future[list[Row]]]:
        return (
            self.pool.submit(self.pub.query, query(True)),
            self.pool.submit(self.sub.query, query(False)),
        )

    def run(self, plans: Sequence[TablePlan]) -> list[TableReport]:
        with ThreadPoolExecutor(max_workers=max(1, self.jobs), thread_name_prefix="verify") as ex:
            futures = [ex.submit(self.table, plan) for plan in plans]
            return [f.result() for f in futures]

    def table(self, plan: TablePlan) -> TableReport:
        started = time.monotonic()
        report = TableReport(plan.display, keyed=bool(plan.key))
        try:
            if plan.key:
                self._keyed(plan, report)
            else:
                self._multiset(plan, report)
        except psycopg.Error as exc:
            raise PgferryError(
                f"table {plan.display}: " + " ".join(str(exc).split()),
                hint="check that the table has the published columns on both sides"
                " (pgferry schema diff NAME)",
            ) from None
        report.seconds = time.monotonic() - started
        logger.info("verify %s: %d differences", plan.display, report.differences)
        return report

    # -- keyed tables ---------------------------------------------------------------

    def _initial_ranges(self, plan: TablePlan) -> list[Range]:
        """The publisher's key order cut about every :data:`RANGE_ROWS` rows: by
        arithmetic between the smallest and largest key for one integer column
        (two index probes), else at every so many keys (one scan of the keys)."""
        (row,) = self.pub.query(
            "SELECT greatest(c.reltuples, 0)::bigint, (SELECT a.atttypid::regtype::text"
            " FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid"
            f" AND a.attname = {quote_literal(plan.key[0])})"
            " FROM pg_catalog.pg_class c"
            f" WHERE c.oid = {quote_literal(plan.relation(True))}::regclass"
        )
        estimate, key_type = int(row[0]), row[1]
        if 0 < estimate <= RANGE_ROWS:
            return [FULL]
        count = min(MAX_RANGES, max(1, math.ceil(estimate / RANGE_ROWS)))
        if estimate > 0 and len(plan.key) == 1 and key_type in _INTEGERS:
            return self._integer_ranges(plan, count)
        step = max(RANGE_ROWS, math.ceil(estimate / MAX_RANGES))
        cuts = [tuple(r) for r in self.pub.query(plan.boundaries_query(True, FULL, step))]
        return _between(FULL, cuts)

    def _integer_ranges(self, plan: TablePlan, count: int) -> list[Range]:
        ((low, high),) = self.pub.query(plan.bounds_query())
        if low is None or count <= 1:
            return [FULL]
        low, high = int(low), int(high)
        width = max(1, math.ceil((high - low + 1) / count))
        cuts: list[Key] = [(str(v),) for v in range(low + width, high + 1, width)]
        return _between(FULL, cuts)

    def _keyed(self, plan: TablePlan, report: TableReport) -> None:
        deltas = _Deltas()
        direct: list[Future[list[Found]]] = []
        level = [*self._initial_ranges(plan), NULL_KEYS]
        for depth in itertools.count():
            if not level:
                break
            if depth >= MAX_LEVELS or len(level) > MAX_LEVEL_RANGES:
                for pending in direct:
                    pending.result()
                deltas.clear()
                direct = [self.pool.submit(self._direct, plan, rng) for rng in (FULL, NULL_KEYS)]
                report.rows_publisher, report.rows_subscriber = self._counts(plan)
                break
            level = self._level(plan, level, report, depth == 0, deltas, direct)
        for kind, key, copies in deltas.found():
            report.add_copies(kind, key, copies, self.limit)
        for pending in direct:
            for kind, key, copies in pending.result():
                report.add_copies(kind, key, copies, self.limit)

    def _level(
        self,
        plan: TablePlan,
        level: list[Range],
        report: TableReport,
        first: bool,
        deltas: _Deltas,
        direct: list[Future[list[Found]]],
    ) -> list[Range]:
        """One level of bisection: each range hashed on both sides; one that
        differs is read row by row (its counts go into ``deltas``), compared
        directly (into ``direct``) or cut into the next level's ranges."""
        hashed = [(rng, self.both(partial(plan.hash_query, rng=rng))) for rng in level]
        report.ranges += len(level)
        fetch: list[tuple[Future[list[Row]], Future[list[Row]]]] = []
        split: list[tuple[Range, Future[list[Range]]]] = []
        for rng, (fp, fs) in hashed:
            ((count_p, sum_p),) = fp.result()
            ((count_s, sum_s),) = fs.result()
            if first:
                report.rows_publisher += count_p
                report.rows_subscriber += count_s
            if count_p == count_s and sum_p == sum_s:
                continue
            if max(count_p, count_s) <= FETCH_ROWS:
                fetch.append(self.both(partial(plan.rows_query, rng=rng)))
            elif rng.null_keys:
                direct.append(self.pool.submit(self._direct, plan, rng))
            else:
                on_pub = count_p >= count_s
                step = math.ceil(max(count_p, count_s) / SPLIT)
                split.append((rng, self.pool.submit(self._split, plan, rng, on_pub, step)))
        for fp, fs in fetch:
            deltas.add(fp.result(), fs.result())
        following: list[Range] = []
        for rng, future in split:
            parts = future.result()
            if parts == [rng]:
                direct.append(self.pool.submit(self._direct, plan, rng))
            else:
                following.extend(parts)
        return following

    def _counts(self, plan: TablePlan) -> tuple[int, int]:
        """The rows of each side: those with a key, and those with a NULL in it."""
        hashed = [self.both(partial(plan.hash_query, rng=rng)) for rng in (FULL, NULL_KEYS)]
        return (
            sum(int(fp.result()[0][0]) for fp, _fs in hashed),
            sum(int(fs.result()[0][0]) for _fp, fs in hashed),
        )

    def _split(self, plan: TablePlan, rng: Range, on_pub: bool, step: int) -> list[Range]:
        side = self.pub if on_pub else self.sub
        cuts = [tuple(r) for r in side.query(plan.boundaries_query(on_pub, rng, step))]
        return _between(rng, cuts)

    def _direct(self, plan: TablePlan, rng: Range) -> list[Found]:
        """A range compared by streaming both sides' (key, row hash) counts: per
        differing key, (kind, key, copies)."""
        found: list[Found] = []
        with (
            self.pub.stream(plan.groups_query(True, rng)) as pub,
            self.sub.stream(plan.groups_query(False, rng)) as sub,
        ):
            merged = _merge_counts(pub, sub, len(plan.key))
            for key, deltas in itertools.groupby(merged, key=lambda m: m[0]):
                for kind, copies in _classify(delta for _key, _digest, delta in deltas):
                    found.append((kind, key, copies))
        return found

    # -- tables without a key -------------------------------------------------------

    def _multiset(self, plan: TablePlan, report: TableReport) -> None:
        fp, fs = self.both(partial(plan.hash_query, rng=FULL))
        ((count_p, sum_p),) = fp.result()
        ((count_s, sum_s),) = fs.result()
        report.rows_publisher, report.rows_subscriber, report.ranges = count_p, count_s, 1
        if count_p == count_s and sum_p == sum_s:
            return
        with (
            self.pub.stream(plan.groups_query(True, FULL)) as pub,
            self.sub.stream(plan.groups_query(False, FULL)) as sub,
        ):
            digests = [digest for _key, digest, _delta in _merge_counts(pub, sub, 0)]
        deltas: Counter[str] = Counter()
        for start in range(0, len(digests), TEXTS_CHUNK):
            chunk = digests[start : start + TEXTS_CHUNK]
            fp, fs = self.both(partial(plan.texts_query, hashes=chunk))
            deltas.update({text: int(n) for text, n in fp.result()})
            deltas.subtract({text: int(n) for text, n in fs.result()})
        for text in sorted(deltas):
            delta = deltas[text]
            report.add_copies("missing" if delta > 0 else "extra", (text,), abs(delta), self.limit)


def _order(row: Row, width: int) -> tuple[Any, ...]:
    """A streamed row's place: its key texts as UTF-8 bytes (NULL last), then its
    hash, as :meth:`~.plan.TablePlan.groups_query` orders them."""
    key = tuple((v is None, b"" if v is None else v.encode()) for v in row[:width])
    return (*key, row[width])


def _merge_counts(
    pub: Iterator[Row], sub: Iterator[Row], width: int
) -> Iterator[tuple[Key, int, int]]:
    """Two ordered streams of (key texts..., hash, count): each (key, hash) whose
    counts differ, with the publisher's count less the subscriber's."""
    p, s = next(pub, None), next(sub, None)
    while p is not None or s is not None:
        if s is None or (p is not None and _order(p, width) < _order(s, width)):
            assert p is not None
            yield tuple(p[:width]), int(p[width]), int(p[-1])
            p = next(pub, None)
        elif p is None or _order(s, width) < _order(p, width):
            yield tuple(s[:width]), int(s[width]), -int(s[-1])
            s = next(sub, None)
        else:
            if p[-1] != s[-1]:
                yield tuple(p[:width]), int(p[width]), int(p[-1]) - int(s[-1])
            p, s = next(pub, None), next(sub, None)


def _between(rng: Range, cuts: list[Key]) -> list[Range]:
    """``rng`` cut at ``cuts`` (in order, inside it) into half-open ranges."""
    points: list[Key | None] = [rng.lo, *cuts, rng.hi]
    out = [Range(points[i], points[i + 1]) for i in range(len(points) - 1)]
    return [r for r in out if r.lo is None or r.lo != r.hi]


class _Deltas:
    """The rows of the ranges compared row by row: per key, the publisher's count
    less the subscriber's per row hash, summed over the ranges (a key one side
    has in another range than the other is one row)."""

    def __init__(self) -> None:
        #: Keys as the publisher's rows came, in key order (then the subscriber's).
        self.counts: dict[Key, dict[int, int]] = {}
        #: The subscriber's keys among them, as its rows came.
        self.subscriber: dict[Key, None] = {}

    def clear(self) -> None:
        self.counts.clear()
        self.subscriber.clear()

    def add(self, pub: list[Row], sub: list[Row]) -> None:
        """One range's rows (key texts, row hash) of each side, in key order."""
        delta: Counter[tuple[Key, int]] = Counter()
        delta.update((tuple(r[:-1]), int(r[-1])) for r in pub)
        delta.subtract((tuple(r[:-1]), int(r[-1])) for r in sub)
        for rows in (pub, sub):
            for row in rows:
                key, digest = tuple(row[:-1]), int(row[-1])
                change = delta.pop((key, digest), 0)
                if change:
                    counts = self.counts.setdefault(key, {})
                    counts[digest] = counts.get(digest, 0) + change
        for row in sub:
            if tuple(row[:-1]) in self.counts:
                self.subscriber.setdefault(tuple(row[:-1]))

    def found(self) -> Iterator[Found]:
        """Each differing key as (kind, key, copies): ``missing`` and
        ``different`` in the publisher's key order, ``extra`` in the subscriber's."""
        for key, counts in self.counts.items():
            for kind, copies in _classify(counts.values()):
                if kind != "extra":
                    yield kind, key, copies
        for key in self.subscriber:
            for kind, copies in _classify(self.counts[key].values()):
                if kind == "extra":
                    yield kind, key, copies


def _classify(deltas: Iterable[int]) -> list[tuple[str, int]]:
    """One key's rows, from its publisher's count less its subscriber's per row
    hash: the copies one side has more of, as many as pair up ``different``, the
    rest ``missing`` or ``extra``, as (kind, copies)."""
    more_p = more_s = 0
    for delta in deltas:
        more_p += max(delta, 0)
        more_s += max(-delta, 0)
    paired = min(more_p, more_s)
    kinds = (("different", paired), ("missing", more_p - paired), ("extra", more_s - paired))
    return [(kind, copies) for kind, copies in kinds if copies]


def compare_snapshots(
    subscriber_dsn: str,
    subscription: str,
    publisher_snapshot: str,
    subscriber_snapshot: str,
    *,
    tables: Sequence[str] | None = None,
    jobs: int = 4,
    limit: int = DEFAULT_LIMIT,
    lsn: Lsn | None = None,
    timeout: float | None = None,
) -> VerifyReport:
    """Compare the subscription's tables as the two snapshots see them (see the
    module docstring)."""
    if jobs < 1:
        raise InterfaceError(f"--jobs must be at least 1, not {jobs}", hint="use --jobs 4")
    started = time.monotonic()
    with connect.subscriber(subscriber_dsn) as catalog:
        ensure_catalog(catalog)
        sub = store.get_subscription(catalog, subscription)
        pub_sessions = open_publisher(
            subscription, sub.conninfo, publisher_snapshot, jobs, timeout, "nothing was compared"
        )
        try:
            sub_sessions = open_sessions(subscriber_dsn, "subscriber", subscriber_snapshot, jobs)
            try:
                chosen = plans(catalog, subscription, pub_sessions, tables)
                comparison = Comparison(pub_sessions, sub_sessions, jobs, limit)
                try:
                    reports = comparison.run(chosen)
                finally:
                    comparison.close()
            finally:
                sub_sessions.close()
        finally:
            pub_sessions.close()
    logger.debug("verify %s: publisher %s", subscription, mask(sub.conninfo))
    return VerifyReport(subscription, lsn, reports, time.monotonic() - started)
