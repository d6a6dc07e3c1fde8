"""Views of the catalog shaped like native's, for psql users and existing monitoring.

The catalog's migrations create them in schema ``pgferry`` of the subscriber
database, with the column names and types of PostgreSQL 18's views, so that a
query written for native runs against pgferry with ``pgferry.`` in front of the
view's name (``pg_`` dropped)::

    SELECT subname, received_lsn, latest_end_lsn FROM pgferry.stat_subscription;
    SELECT srsubstate, count(*) FROM pgferry.subscription_rel GROUP BY 1;

``subid`` / ``srsubid`` is the subscription's catalog id
(``pgferry.subscription.id``): fixed at create, kept by a rename, never reused
by another subscription of the database. It is not an OID of ``pg_subscription``
(pgferry's subscriptions are not there): do not join the two.

* ``stat_subscription`` (:data:`STAT_SUBSCRIPTION`, ``pg_stat_subscription``):
  as native, one row per subscription without a worker (every column but
  ``subid`` and ``subname`` null), else one row per worker:

  - ``worker_type = 'apply'``: the apply worker's row of ``pgferry.worker``, as
    it last reported it (about every second while running, see
    :mod:`pgferry.apply.progress`). ``pid`` is the pgferry worker process's id on
    the host that runs ``pgferry run``, not a server backend's. The row goes when
    the worker stops; a worker that was killed leaves it until its restart (then
    ``latest_end_time`` stops moving: ``pgferry status`` calls that ``stale``);
  - ``worker_type = 'table synchronization'``: one row per running table sync
    worker, found by its session on the subscriber, which is named like its slot
    (``application_name``, :func:`pgferry.origins.sync_origin`; computed here
    in SQL the same way); ``relid`` is the local table and ``pid`` that
    session's backend pid, so ``pg_stat_activity`` and ``pg_stat_progress_copy``
    join on it. The catalog keeps no live statistics of sync workers, so the LSN
    and time columns are null;
  - ``leader_pid`` is always null: pgferry has no parallel apply workers (a large
    streamed transaction is applied by the apply worker itself, on a second
    session).

* ``subscription_rel`` (:data:`SUBSCRIPTION_REL`, ``pg_subscription_rel``): one
  row per table of each subscription; ``srsubstate`` is native's letter (``i``,
  ``d``, ``f``, ``s``, ``r``: pgferry stores those), ``srsublsn`` the state's LSN;
  ``srrelid`` the local table, null if it does not exist (any more).

* ``stat_subscription_stats`` (:data:`STAT_SUBSCRIPTION_STATS`,
  ``pg_stat_subscription_stats``): the error and conflict counters of
  ``pgferry.subscription_stats``, one row per subscription.

There is no view shaped like ``pg_subscription``: ``pgferry.subscription`` is
the catalog's table of subscriptions (its columns are documented in
``docs/reference.md``). The applied-transaction and row counters
(``subscription_stats.transactions_applied`` and ``rows_applied``) have no native
counterpart and are read from that table.

Like every object of the catalog, the views are not readable by PUBLIC. They show
no connection string, so a monitoring role may be given them alone::

    GRANT USAGE ON SCHEMA pgferry TO monitor;
    GRANT SELECT ON pgferry.stat_subscription, pgferry.subscription_rel TO monitor;
"""

from __future__ import annotations

#: (column, type) of ``pgferry.stat_subscription``: PostgreSQL 18's pg_stat_subscription.
STAT_SUBSCRIPTION: tuple[tuple[str, str], ...] = (
    ("subid", "oid"),
    ("subname", "name"),
    ("worker_type", "text"),
    ("pid", "integer"),
    ("leader_pid", "integer"),
    ("relid", "oid"),
    ("received_lsn", "pg_lsn"),
    ("last_msg_send_time", "timestamp with time zone"),
    ("last_msg_receipt_time", "timestamp with time zone"),
    ("latest_end_lsn", "pg_lsn"),
    ("latest_end_time", "timestamp with time zone"),
)

#: (column, type) of ``pgferry.subscription_rel``: pg_subscription_rel.
SUBSCRIPTION_REL: tuple[tuple[str, str], ...] = (
    ("srsubid", "oid"),
    ("srrelid", "oid"),
    ("srsubstate", '"char"'),
    ("srsublsn", "pg_lsn"),
)

#: (column, type) of ``pgferry.stat_subscription_stats``: PostgreSQL 18's
#: pg_stat_subscription_stats.
STAT_SUBSCRIPTION_STATS: tuple[tuple[str, str], ...] = (
    ("subid", "oid"),
    ("subname", "name"),
    ("apply_error_count", "bigint"),
    ("sync_error_count", "bigint"),
    ("confl_insert_exists", "bigint"),
    ("confl_update_origin_differs", "bigint"),
    ("confl_update_exists", "bigint"),
    ("confl_update_missing", "bigint"),
    ("confl_delete_origin_differs", "bigint"),
    ("confl_delete_missing", "bigint"),
    ("confl_multiple_unique_conflicts", "bigint"),
    ("stats_reset", "timestamp with time zone"),
)

#: Each view (in schema ``pgferry``) -> the native view it is shaped like, and its columns.
VIEWS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "stat_subscription": ("pg_stat_subscription", STAT_SUBSCRIPTION),
    "subscription_rel": ("pg_subscription_rel", SUBSCRIPTION_REL),
    "stat_subscription_stats": ("pg_stat_subscription_stats", STAT_SUBSCRIPTION_STATS),
}
