"""Prometheus metrics of a subscriber database's subscriptions: ``pgferry run --metrics``.

:func:`serve` starts ``prometheus_client``'s HTTP server in a thread of the launcher
process, with one :class:`Collector`. Each scrape reads everything afresh; nothing
is kept between scrapes and nothing is written:

* the catalog, read as ``pgferry status`` reads it (:mod:`pgferry.status.report`:
  the apply worker and its positions, the last error, the error and conflict
  counters, table states, sequence drift), plus each table's size on the
  publisher, the sync workers' COPY progress (``pg_stat_progress_copy``), the
  transactions and rows applied (as the apply worker last wrote them, about every
  second: see :mod:`pgferry.catalog.workers`), the conflicts by type and
  resolution, and each worker kind's restarts (failed exits; kept in the catalog,
  so they survive ``pgferry run``);
* each publisher, once per distinct conninfo: its WAL position and the
  subscription's slot, from which ``status``'s lag is computed (bytes: WAL not yet
  confirmed; seconds: 0 when caught up, else the walsender's ``flush_lag``), and
  every slot of the subscription (its own and its table sync workers'): retained
  WAL, ``wal_status``, ``safe_wal_size``; the estimated rows of tables still to
  copy;
* the launcher it runs in, when given: its worker processes, and each worker's
  failed exits since its last clean exit (the launcher's backoff count).

**A scrape never hangs.** Every connection has ``connect_timeout``
:data:`CONNECT_TIMEOUT` and ``tcp_user_timeout`` unless its conninfo sets them, and
``statement_timeout`` :data:`STATEMENT_TIMEOUT_MS`. The publishers are asked in
threads of their own, and the scrape waits for them at most
:data:`PUBLISHER_DEADLINE` seconds: a publisher that cannot be reached, fails or
has not answered by then has ``pgferry_publisher_up`` 0 and no publisher-side
series, while the subscriber-side ones are exported as usual (a publisher still
busy with an earlier scrape's question is not asked again meanwhile). A
subscriber that cannot be read gives ``pgferry_subscriber_up`` 0 and the
launcher's series only.

**Metrics.** :data:`METRICS` lists every metric (name, type, labels, help), in the
order they are exposed; ``docs/reference.md`` (Monitoring) documents the same list,
``docs/monitoring/`` has alert rules and a Grafana dashboard built on them. LSNs
are exported as numbers (bytes from the start of WAL). A value that is not known
(no worker row, publisher not reached, no estimate) is left out rather than
exported as 0. Errors of :func:`serve` are :class:`~pgferry.errors.InterfaceError`
with a hint; passwords never appear (labels carry names only).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from pgferry import connect
from pgferry import conninfo as ci
from pgferry.catalog import TableState, conflict_log, store
from pgferry.catalog import workers as catalog_workers
from pgferry.catalog.schema import current_version
from pgferry.conflict import CONFLICT_TYPES
from pgferry.errors import InterfaceError, PgferryError
from pgferry.origins import sync_origin
from pgferry.status import report
from pgferry.status.activity import estimated_rows
from pgferry.status.report import STALE_AFTER, PublisherStatus, SubscriptionStatus
from pgferry.subscription.manage import STATE_ORDER

if TYPE_CHECKING:
    from pgferry.runner import Launcher

logger = logging.getLogger("pgferry.metrics")

#: libpq ``connect_timeout`` (seconds; libpq takes at least 2) of every connection
#: a scrape opens, unless its conninfo sets one.
CONNECT_TIMEOUT = 2
#: libpq ``tcp_user_timeout`` (ms) unless the conninfo sets one: a server that
#: stops acknowledging mid-query breaks the connection instead of hanging it.
TCP_USER_TIMEOUT_MS = 5000
#: ``statement_timeout`` of every query of a scrape.
STATEMENT_TIMEOUT_MS = 2000
#: The longest a scrape waits for all publishers together (seconds).
PUBLISHER_DEADLINE = 4.0
#: ``application_name`` of the scrape's sessions.
APPLICATION_NAME = "pgferry metrics"
#: The catalog version with ``subscription_table.size_bytes``.
SIZES_VERSION = 6
#: A table of the catalog version with the applied, conflict and restart counters.
COUNTERS_TABLE = "pgferry.worker_restart"
#: ``pg_replication_slots.wal_status`` values (PostgreSQL 13+).
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
#: The apply worker states of ``pgferry status``.
WORKER_STATES = ("running", "stale", "stopped")

Conn = psycopg.Connection[Any]
Kind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    #: The sample name (a counter's ends in ``_total``).
    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str


_SUB = ("subscription",)
_TABLE = ("subscription", "schema", "table")
_SLOT = ("subscription", "slot")

#: Every metric, in the order exposed. docs/reference.md (Monitoring) lists the same.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("pgferry_subscriber_up", "gauge", (), "1 if this scrape read the catalog"),
    MetricSpec("pgferry_scrape_duration_seconds", "gauge", (), "How long this scrape took to read"),
    MetricSpec("pgferry_subscription_enabled", "gauge", _SUB, "1 if the subscription is enabled"),
    MetricSpec(
        "pgferry_subscription_last_error",
        "gauge",
        _SUB,
        "1 while the subscription has a stored last error (cleared once apply succeeds)",
    ),
    MetricSpec(
        "pgferry_subscription_last_error_timestamp_seconds",
        "gauge",
        _SUB,
        "When the stored last error happened (Unix time)",
    ),
    MetricSpec(
        "pgferry_apply_worker",
        "gauge",
        (*_SUB, "state"),
        "1 for the apply worker's state as pgferry status sees it (running, stale, stopped)",
    ),
    MetricSpec(
        "pgferry_apply_worker_report_age_seconds",
        "gauge",
        _SUB,
        "Seconds since the apply worker last refreshed its row",
    ),
    MetricSpec(
        "pgferry_spool_bytes",
        "gauge",
        _SUB,
        "Bytes the apply worker holds in spools: streamed and prepared transactions"
        " waiting for their outcome (memory, or the temporary file past the memory limit)",
    ),
    MetricSpec(
        "pgferry_received_lsn_bytes",
        "gauge",
        _SUB,
        "Last WAL position the apply worker received from the publisher",
    ),
    MetricSpec(
        "pgferry_applied_lsn_bytes",
        "gauge",
        _SUB,
        "Last WAL position the apply worker confirmed as durably applied",
    ),
    MetricSpec(
        "pgferry_flushed_lsn_bytes",
        "gauge",
        _SUB,
        "The slot's confirmed_flush_lsn on the publisher",
    ),
    MetricSpec(
        "pgferry_publisher_wal_lsn_bytes",
        "gauge",
        _SUB,
        "The publisher's current WAL position (replayed position on a standby)",
    ),
    MetricSpec(
        "pgferry_lag_bytes",
        "gauge",
        _SUB,
        "Publisher WAL not yet confirmed applied: WAL position minus confirmed_flush_lsn",
    ),
    MetricSpec(
        "pgferry_lag_seconds",
        "gauge",
        _SUB,
        "Replication lag in seconds: 0 when caught up, else the walsender's flush_lag"
        " (or the time since the last report of a stale worker)",
    ),
    MetricSpec(
        "pgferry_publisher_up",
        "gauge",
        _SUB,
        "1 if this scrape reached and queried the subscription's publisher",
    ),
    MetricSpec(
        "pgferry_slot_exists",
        "gauge",
        _SLOT,
        "1 if the subscription's slot exists on the publisher",
    ),
    MetricSpec("pgferry_slot_active", "gauge", _SLOT, "1 if a walsender uses the slot"),
    MetricSpec(
        "pgferry_slot_retained_wal_bytes",
        "gauge",
        _SLOT,
        "WAL the slot keeps on the publisher: WAL position minus restart_lsn",
    ),
    MetricSpec(
        "pgferry_slot_safe_wal_size_bytes",
        "gauge",
        _SLOT,
        "WAL that can still be written before the slot is in danger of losing WAL"
        " (only with max_slot_wal_keep_size)",
    ),
    MetricSpec(
        "pgferry_slot_wal_status",
        "gauge",
        (*_SLOT, "status"),
        "1 for the slot's wal_status (reserved, extended, unreserved, lost)",
    ),
    MetricSpec(
        "pgferry_transactions_applied_total",
        "counter",
        _SUB,
        "Remote transactions the apply worker applied (not those skipped)",
    ),
    MetricSpec(
        "pgferry_rows_applied_total",
        "counter",
        _SUB,
        "Row changes (inserts, updates, deletes) of the transactions applied",
    ),
    MetricSpec(
        "pgferry_apply_errors_total",
        "counter",
        _SUB,
        "Errors of the apply worker (apply_error_count)",
    ),
    MetricSpec(
        "pgferry_sync_errors_total",
        "counter",
        _SUB,
        "Errors of the table sync workers (sync_error_count)",
    ),
    MetricSpec(
        "pgferry_conflicts_total",
        "counter",
        (*_SUB, "type"),
        "Conflicts met, by type (PostgreSQL 18's confl_* counters)",
    ),
    MetricSpec(
        "pgferry_conflict_resolutions_total",
        "counter",
        (*_SUB, "type", "resolution"),
        "Conflicts logged, by type and the resolution policy applied",
    ),
    MetricSpec(
        "pgferry_tables",
        "gauge",
        (*_SUB, "state"),
        "Tables of the subscription by sync state (i, d, f, s, r)",
    ),
    MetricSpec(
        "pgferry_table_state",
        "gauge",
        (*_TABLE, "state"),
        "1 for each table's current sync state (i, d, f, s, r)",
    ),
    MetricSpec(
        "pgferry_table_size_bytes",
        "gauge",
        _TABLE,
        "Size of a table not yet ready on the publisher (pg_table_size at create or refresh)",
    ),
    MetricSpec(
        "pgferry_table_estimated_rows",
        "gauge",
        _TABLE,
        "Estimated rows of a table still to copy (the publisher's reltuples)",
    ),
    MetricSpec(
        "pgferry_table_copy_rows",
        "gauge",
        _TABLE,
        "Rows the running initial copy of a table has written so far",
    ),
    MetricSpec(
        "pgferry_table_copy_bytes",
        "gauge",
        _TABLE,
        "COPY data the running initial copy of a table has received so far",
    ),
    MetricSpec(
        "pgferry_sequences",
        "gauge",
        _SUB,
        "Sequences of the subscription's tables that the sequence sync keeps",
    ),
    MetricSpec(
        "pgferry_sequence_drift_max",
        "gauge",
        _SUB,
        "Largest sequence drift: how far a subscriber sequence is behind the publisher's",
    ),
    MetricSpec(
        "pgferry_sequence_last_sync_age_seconds",
        "gauge",
        _SUB,
        "Seconds since the least recently synced sequence was synced",
    ),
    MetricSpec(
        "pgferry_workers",
        "gauge",
        (*_SUB, "kind"),
        "Worker processes the launcher runs (apply, sync, sequences, schema)",
    ),
    MetricSpec(
        "pgferry_worker_failures",
        "gauge",
        (*_SUB, "kind", "table"),
        "Failed exits of a worker since its last clean exit (each one restarted after a pause)",
    ),
    MetricSpec(
        "pgferry_worker_restarts_total",
        "counter",
        (*_SUB, "kind"),
        "Failed exits of the subscription's workers of a kind, each restarted by the launcher",
    ),
)

_SPECS = {spec.name: spec for spec in METRICS}


# -- what one scrape reads ------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One slot of a subscription on its publisher."""

    name: str
    active: bool
    retained_wal_bytes: int | None
    safe_wal_size_bytes: int | None
    wal_status: str | None


@dataclass(frozen=True)
class PublisherReading:
    """What one publisher said for one subscription."""

    status: PublisherStatus
    #: Its slots that exist: its own, and its table sync workers'.
    slots: tuple[Slot, ...] = ()
    #: (schema, table) -> estimated rows, for tables still to copy.
    estimated_rows: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Counters:
    """The catalog's counters that ``pgferry status`` does not show."""

    #: Subscription -> (transactions, rows) applied.
    applied: dict[str, tuple[int, int]]
    #: (subscription, conflict type, resolution) -> conflicts logged.
    resolutions: dict[tuple[str, str, str], int]
    #: (subscription, worker kind) -> restarts.
    restarts: dict[tuple[str, str], int]


@dataclass(frozen=True)
class Reading:
    """Everything one scrape exports."""

    subscriber_up: bool
    subscriptions: tuple[SubscriptionStatus, ...] = ()
    #: Subscription -> what its publisher said (also when it was not reached).
    publishers: dict[str, PublisherReading] = field(default_factory=dict)
    #: (subscription, schema, table) -> the publisher's size of a table not ready.
    sizes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: (subscription, kind) -> worker processes running.
    workers: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (subscription, kind, table) -> failed exits since the last clean exit.
    failures: dict[tuple[str, str, str], int] = field(default_factory=dict)
    seconds: float = 0.0
    counters: Counters | None = None


# -- sessions -------------------------------------------------------------------------


def _open(dsn: str, side: connect.Side) -> Conn:
    conn = connect.open_connection(
        dsn,
        side=side,
        application_name=APPLICATION_NAME,
        defaults={
            "connect_timeout": str(CONNECT_TIMEOUT),
            "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
        },
    )
    try:
        conn.execute(
            "SELECT pg_catalog.set_config('statement_timeout', %s, false)",
            (str(STATEMENT_TIMEOUT_MS),),
        )
    except psycopg.Error:
        conn.close()
        raise
    return conn


# -- the subscriber -------------------------------------------------------------------


@dataclass(frozen=True)
class _Local:
    subscriptions: list[report.CatalogSubscription]
    sizes: dict[tuple[str, str, str], int]
    counters: Counters | None = None


def _sizes(local: Conn) -> dict[tuple[str, str, str], int]:
    rows = local.execute(
        "SELECT subscription, remote_schema, remote_name, size_bytes"
        " FROM pgferry.subscription_table WHERE state <> 'r' AND size_bytes IS NOT NULL"
    ).fetchall()
    return {(sub, schema, name): int(size) for sub, schema, name, size in rows}


def _read_local(dsn: str) -> _Local:
    with _open(dsn, "subscriber") as local:
        version = current_version(local)
        if version == 0:
            return _Local([], {})
        subscriptions = report.read_catalog(local, STALE_AFTER, version)
        sizes = _sizes(local) if version >= SIZES_VERSION else {}
        return _Local(subscriptions, sizes, _counters(local))


def _counters(local: Conn) -> Counters | None:
    """The applied, conflict and restart counters (None: an older catalog)."""
    row = local.execute("SELECT to_regclass(%s) IS NOT NULL", (COUNTERS_TABLE,)).fetchone()
    if not row or not row[0]:
        return None
    return Counters(
        store.applied_counts(local), conflict_log.counts(local), catalog_workers.restarts(local)
    )


# -- the publishers -------------------------------------------------------------------


def _slot_names(sub: report.CatalogSubscription) -> list[str]:
    """The subscription's slot and its table sync workers' (tables in d or f)."""
    names = [] if sub.slot_name is None else [sub.slot_name]
    syncing = (TableState.DATA, TableState.FINISHED)
    names += [sync_origin(sub.name, t.schema, t.name) for t in sub.tables if t.state in syncing]
    return names


def _slots(remote: Conn, names: list[str]) -> tuple[Slot, ...]:
    if not names:
        return ()
    rows = remote.execute(
        f"SELECT slot_name, active, pg_catalog.pg_wal_lsn_diff(({report.WAL_POSITION_SQL}),"
        " restart_lsn), wal_status, safe_wal_size"
        " FROM pg_catalog.pg_replication_slots WHERE slot_name = ANY(%s) ORDER BY slot_name",
        (names,),
    ).fetchall()
    return tuple(
        Slot(
            str(name),
            bool(active),
            None if retained is None else int(retained),
            None if safe is None else int(safe),
            status,
        )
        for name, active, retained, status, safe in rows
    )


def _ask(remote: Conn, conninfo: str, sub: report.CatalogSubscription) -> PublisherReading:
    try:
        status = report.read_publisher(remote, conninfo, sub.slot_name)
        slots = _slots(remote, _slot_names(sub))
        to_copy = [
            (t.schema, t.name) for t in sub.tables if t.state in (TableState.INIT, TableState.DATA)
        ]
        return PublisherReading(status, slots, estimated_rows(remote, to_copy))
    except psycopg.Error as exc:
        return _down(conninfo, report.scrub(str(exc), conninfo))


def _down(conninfo: str, error: str) -> PublisherReading:
    return PublisherReading(PublisherStatus(ci.mask(conninfo), False, error))


def _probe(conninfo: str, subs: list[report.CatalogSubscription]) -> dict[str, PublisherReading]:
    """Ask one publisher about each of its subscriptions, over one session."""
    try:
        remote = _open(conninfo, "publisher")
    except PgferryError as exc:  # masked
        return {s.name: _down(conninfo, exc.message) for s in subs}
    except psycopg.Error as exc:
        return {s.name: _down(conninfo, report.scrub(str(exc), conninfo)) for s in subs}
    with remote:
        return {s.name: _ask(remote, conninfo, s) for s in subs}


class Probes:
    """The publishers asked in parallel, each at most once at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    def ask(
        self, subscriptions: list[report.CatalogSubscription], deadline: float
    ) -> dict[str, PublisherReading]:
        by_conninfo: dict[str, list[report.CatalogSubscription]] = {}
        for sub in subscriptions:
            by_conninfo.setdefault(sub.conninfo, []).append(sub)
        results: dict[str, PublisherReading] = {}
        started: list[tuple[str, threading.Thread, dict[str, PublisherReading]]] = []
        for conninfo, subs in by_conninfo.items():
            with self._lock:
                busy = conninfo in self._busy
                self._busy.add(conninfo)
            if busy:
                error = "still busy with an earlier scrape's query"
                results.update({s.name: _down(conninfo, error) for s in subs})
                continue
            out: dict[str, PublisherReading] = {}
            thread = threading.Thread(
                target=self._run, args=(conninfo, subs, out), daemon=True, name="pgferry-metrics"
            )
            thread.start()
            started.append((conninfo, thread, out))
        for conninfo, thread, out in started:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                error = f"no answer within {PUBLISHER_DEADLINE:g} s"
                results.update({s.name: _down(conninfo, error) for s in by_conninfo[conninfo]})
            else:
                results.update(out)
        return results

    def _run(
        self,
        conninfo: str,
        subs: list[report.CatalogSubscription],
        out: dict[str, PublisherReading],
    ) -> None:
        try:
            out.update(_probe(conninfo, subs))
        except Exception:  # a bug: logged, and the publisher reported down
            logger.exception("metrics: asking the publisher failed")
            out.update({s.name: _down(conninfo, "internal error (logged)") for s in subs})
        finally:
            with self._lock:
                self._busy.discard(conninfo)


# -- the launcher ---------------------------------------------------------------------


def _launcher(
    launcher: Launcher | None,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], int]]:
    """Its worker processes by (subscription, kind), and its failure counts.

    Read from the launcher's own dictionaries (copied in one step each: the
    launcher's thread changes them)."""
    if launcher is None:
        return {}, {}
    workers: dict[tuple[str, str], int] = {}
    for key in list(launcher.children):
        workers[(key[1], key[0])] = workers.get((key[1], key[0]), 0) + 1
    failures = {
        (key[1], key[0], ".".join(key[2:])): count for key, count in launcher.failures().items()
    }
    return workers, failures


# -- one scrape -----------------------------------------------------------------------


def read(dsn: str, launcher: Launcher | None = None, probes: Probes | None = None) -> Reading:
    """Everything one scrape exports (see the module docstring)."""
    started = time.monotonic()
    workers, failures = _launcher(launcher)
    try:
        local = _read_local(dsn)
    except (PgferryError, psycopg.Error) as exc:
        logger.warning("metrics: cannot read the catalog: %s", exc)
        return Reading(False, workers=workers, failures=failures, seconds=_since(started))
    asked = (probes or Probes()).ask(local.subscriptions, started + PUBLISHER_DEADLINE)
    statuses = []
    for sub in local.subscriptions:
        reading = asked.get(sub.name) or _down(sub.conninfo, "not asked")
        asked[sub.name] = reading
        statuses.append(report.subscription_status(sub, reading.status))
    return Reading(
        True,
        tuple(statuses),
        asked,
        local.sizes,
        workers,
        failures,
        _since(started),
        local.counters,
    )


def _since(started: float) -> float:
    return time.monotonic() - started


class _Families:
    """One metric family per :data:`METRICS` entry, filled by :meth:`add`."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for spec in METRICS:
            if spec.kind == "counter":
                self.families[spec.name] = CounterMetricFamily(
                    spec.name, spec.help, labels=spec.labels
                )
            else:
                self.families[spec.name] = GaugeMetricFamily(
                    spec.name, spec.help, labels=spec.labels
                )

    def add(self, name: str, value: float | None, *labels: str) -> None:
        """A sample of metric ``name`` (None: not known, left out)."""
        if value is None:
            return
        assert len(labels) == len(_SPECS[name].labels), name
        self.families[name].add_metric(list(labels), float(value))


def _subscription(out: _Families, s: SubscriptionStatus) -> None:
    name = s.name
    out.add("pgferry_subscription_enabled", int(s.enabled), name)
    out.add("pgferry_subscription_last_error", int(s.last_error is not None), name)
    if s.last_error_time is not None:
        out.add(
            "pgferry_subscription_last_error_timestamp_seconds",
            s.last_error_time.timestamp(),
            name,
        )
    for state in WORKER_STATES:
        out.add("pgferry_apply_worker", int(s.worker.state == state), name, state)
    out.add("pgferry_apply_worker_report_age_seconds", s.worker.seconds_since_report, name)
    out.add("pgferry_spool_bytes", s.worker.spool_bytes, name)
    out.add("pgferry_received_lsn_bytes", s.worker.received_lsn, name)
    out.add("pgferry_applied_lsn_bytes", s.worker.applied_lsn, name)
    out.add("pgferry_apply_errors_total", s.stats.get("apply_error_count"), name)
    out.add("pgferry_sync_errors_total", s.stats.get("sync_error_count"), name)
    for ctype in CONFLICT_TYPES:
        out.add("pgferry_conflicts_total", s.stats.get(ctype.counter), name, str(ctype))
    counts = s.table_states
    for state in STATE_ORDER:
        out.add("pgferry_tables", counts.get(state, 0), name, str(state))
    for t in s.tables:
        out.add("pgferry_table_state", 1, name, t.schema, t.name, str(t.state))
    if s.sequences:
        out.add("pgferry_sequences", len(s.sequences), name)
        out.add("pgferry_sequence_drift_max", s.largest_sequence_drift, name)
        oldest = s.oldest_sequence_sync
        out.add(
            "pgferry_sequence_last_sync_age_seconds",
            None if oldest is None else oldest.seconds_since_sync,
            name,
        )


def _publisher(out: _Families, s: SubscriptionStatus, reading: PublisherReading) -> None:
    name = s.name
    pub = reading.status
    out.add("pgferry_publisher_up", int(pub.reachable), name)
    if not pub.reachable:
        return
    out.add("pgferry_publisher_wal_lsn_bytes", pub.wal_lsn, name)
    out.add("pgferry_lag_bytes", s.lag_bytes, name)
    out.add("pgferry_lag_seconds", s.lag_seconds, name)
    if pub.slot is not None:
        out.add("pgferry_slot_exists", int(pub.slot.exists), name, pub.slot.name)
        out.add("pgferry_flushed_lsn_bytes", pub.slot.confirmed_flush_lsn, name)
    for slot in reading.slots:
        out.add("pgferry_slot_active", int(slot.active), name, slot.name)
        out.add("pgferry_slot_retained_wal_bytes", slot.retained_wal_bytes, name, slot.name)
        out.add("pgferry_slot_safe_wal_size_bytes", slot.safe_wal_size_bytes, name, slot.name)
        if slot.wal_status is not None:
            for status in WAL_STATUSES:
                out.add(
                    "pgferry_slot_wal_status",
                    int(slot.wal_status == status),
                    name,
                    slot.name,
                    status,
                )
    for (schema, table), rows in reading.estimated_rows.items():
        out.add("pgferry_table_estimated_rows", rows, name, schema, table)


def families(reading: Reading) -> list[Metric]:
    """The metric families of one reading, in :data:`METRICS` order."""
    out = _Families()
    out.add("pgferry_subscriber_up", int(reading.subscriber_up))
    out.add("pgferry_scrape_duration_seconds", reading.seconds)
    for s in reading.subscriptions:
        _subscription(out, s)
        _publisher(out, s, reading.publishers[s.name])
    for (sub, schema, table), size in reading.sizes.items():
        out.add("pgferry_table_size_bytes", size, sub, schema, table)
    for s in reading.subscriptions:
        for w in s.copies:
            assert w.copy is not None
            out.add("pgferry_table_copy_rows", w.copy.rows, s.name, w.schema, w.name)
            out.add("pgferry_table_copy_bytes", w.copy.bytes, s.name, w.schema, w.name)
    for (sub, kind), number in sorted(reading.workers.items()):
        out.add("pgferry_workers", number, sub, kind)
    for (sub, kind, table), count in sorted(reading.failures.items()):
        out.add("pgferry_worker_failures", count, sub, kind, table)
    if reading.counters is not None:
        _counted(out, reading.counters)
    return list(out.families.values())


def _counted(out: _Families, counters: Counters) -> None:
    for sub, (transactions, rows) in sorted(counters.applied.items()):
        out.add("pgferry_transactions_applied_total", transactions, sub)
        out.add("pgferry_rows_applied_total", rows, sub)
    for (sub, ctype, resolution), count in sorted(counters.resolutions.items()):
        out.add("pgferry_conflict_resolutions_total", count, sub, ctype, resolution)
    for (sub, kind), count in sorted(counters.restarts.items()):
        out.add("pgferry_worker_restarts_total", count, sub, kind)


class Collector(_PromCollector):
    """prometheus_client's collector: :func:`read` at each scrape."""

    def __init__(self, dsn: str, launcher: Launcher | None = None) -> None:
        self.dsn = dsn
        self.launcher = launcher
        self._probes = Probes()

    def collect(self) -> Iterable[Metric]:
        return families(read(self.dsn, self.launcher, self._probes))


# -- the server -----------------------------------------------------------------------

_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})")


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST]:PORT`` -> (host, port); an empty host is every interface
    (``0.0.0.0``); an IPv6 host goes in brackets (``[::1]:9187``)."""
    match = _ADDRESS.fullmatch(text.strip())
    port = int(match["port"]) if match else -1
    if match is None or port > 65535:
        raise InterfaceError(
            f"invalid metrics address {text!r}",
            hint="give [HOST]:PORT, e.g. :9187, 127.0.0.1:9187 or [::1]:9187",
        )
    host = match["v6"] if match["v6"] is not None else match["host"]
    return host or "0.0.0.0", port  # noqa: S104 (what ":PORT" means)


class MetricsServer:
    """The HTTP server of :func:`serve`, running in a thread until :meth:`stop`."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on (the port chosen when 0 was given)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def registry(dsn: str, launcher: Launcher | None = None) -> CollectorRegistry:
    """pgferry's collector, plus the process's own (``process_*``: CPU, memory)."""
    reg = CollectorRegistry()
    reg.register(Collector(dsn, launcher))
    ProcessCollector(registry=reg)
    return reg


def serve(address: str, dsn: str, launcher: Launcher | None = None) -> MetricsServer:
    """Serve ``/metrics`` at ``address`` (``[HOST]:PORT``) for database ``dsn``."""
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, host, registry(dsn, launcher))
    except OSError as exc:
        raise InterfaceError(
            f"cannot serve metrics on {address}: {exc.strerror or exc}",
            hint="give --metrics another [HOST]:PORT (a free port on an address of this host)",
        ) from None
    metrics = MetricsServer(server, thread)
    logger.info("serving metrics on http://%s:%d/metrics", *metrics.address)
    return metrics
