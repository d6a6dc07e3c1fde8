"""The catalog's schema in the subscriber database, and its versioned migrations.

Everything pgferry keeps about subscriptions lives in schema ``pgferry`` of the
subscriber database, the way native keeps ``pg_subscription`` and
``pg_subscription_rel``:

* ``subscription``: one row per subscription (its connection string is a secret:
  nothing in the schema is readable by PUBLIC);
* ``subscription_table``: each published table with its sync state
  (i/d/f/s/r as native's ``srsubstate``) and state LSN;
* ``subscription_stats``: error and conflict counters (``pg_stat_subscription_stats``);
* ``worker``: live worker statistics (``pg_stat_subscription``);
* ``conflict``: the conflict log (see :mod:`pgferry.catalog.conflict_log`);
* ``schema_step``: what the schema copy left to do after a table's data
  (see :mod:`pgferry.schema`);
* ``sequence_state``: each synced sequence's last values (see
  :mod:`pgferry.sequences`);
* ``worker_retry``: each failed worker the launcher will start again, with the
  attempt number and when (see :mod:`pgferry.catalog.workers`);
* ``origin_commit``: each replication origin's position as its last commit set
  it, transactionally (see :mod:`pgferry.origins`);
* ``apply_hold``: a request to hold an apply worker at an LSN, with a lease (see
  :mod:`pgferry.catalog.hold`);
* ``conflict_count``: conflicts by subscription, type and resolution (see
  :mod:`pgferry.catalog.conflict_log`); ``worker_restart``: each worker kind's
  failed exits, each restarted by the launcher (see :mod:`pgferry.catalog.workers`);
* views shaped like native's: ``stat_subscription``, ``subscription_rel`` and
  ``stat_subscription_stats`` (see :mod:`pgferry.catalog.views`).

:func:`ensure_catalog` creates the schema on first use and applies the migrations
not yet applied, in order, each in the same transaction as its version bump, under
an advisory lock so that concurrent processes do not race.
"""

from __future__ import annotations

from typing import Any

import psycopg

SCHEMA = "pgferry"

# Key of the advisory lock that serialises migrations (any constant works; this
# one spells "pgferry" in ASCII).
_LOCK_KEY = 0x70676665727279

#: The channel the catalog's triggers notify (migration 4).
WAKE_CHANNEL = "pgferry_catalog"

MIGRATIONS: tuple[str, ...] = (
    # 1: subscriptions, their tables, stats and workers.
    """
    CREATE TABLE pgferry.subscription (
        name text PRIMARY KEY,
        conninfo text NOT NULL,
        publications text[] NOT NULL,
        slot_name text,
        origin_name text NOT NULL UNIQUE,
        enabled boolean NOT NULL DEFAULT true,
        options jsonb NOT NULL DEFAULT '{}',
        skip_lsn pg_lsn,
        last_error text,
        last_error_time timestamptz,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE pgferry.subscription_table (
        subscription text NOT NULL REFERENCES pgferry.subscription ON DELETE CASCADE,
        remote_schema text NOT NULL,
        remote_name text NOT NULL,
        local_schema text NOT NULL,
        local_name text NOT NULL,
        state "char" NOT NULL CHECK (state IN ('i', 'd', 'f', 's', 'r')),
        state_lsn pg_lsn,
        columns text[],
        row_filter text,
        PRIMARY KEY (subscription, remote_schema, remote_name)
    );
    CREATE TABLE pgferry.subscription_stats (
        subscription text PRIMARY KEY REFERENCES pgferry.subscription ON DELETE CASCADE,
        apply_error_count bigint NOT NULL DEFAULT 0,
        sync_error_count bigint NOT NULL DEFAULT 0,
        update_missing bigint NOT NULL DEFAULT 0,
        delete_missing bigint NOT NULL DEFAULT 0,
        stats_reset timestamptz
    );
    CREATE TABLE pgferry.worker (
        subscription text NOT NULL REFERENCES pgferry.subscription ON DELETE CASCADE,
        relation text NOT NULL DEFAULT '',
        pid integer NOT NULL,
        received_lsn pg_lsn,
        last_msg_send_time timestamptz,
        last_msg_receipt_time timestamptz,
        latest_end_lsn pg_lsn,
        latest_end_time timestamptz,
        started_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (subscription, relation)
    );
    """,
    # 2: the table sync handover: the apply worker's position given to a sync
    # worker that finished its copy (native keeps it in shared memory).
    """
    ALTER TABLE pgferry.subscription_table ADD COLUMN catchup_lsn pg_lsn;
    """,
    # 3: conflicts: PG 18's counters, the conflict log, per-table resolution, and
    # the publisher's node name (ties of last/first_update_wins are broken by it).
    """
    ALTER TABLE pgferry.subscription_stats RENAME update_missing TO confl_update_missing;
    ALTER TABLE pgferry.subscription_stats RENAME delete_missing TO confl_delete_missing;
    ALTER TABLE pgferry.subscription_stats
        ADD COLUMN confl_insert_exists bigint NOT NULL DEFAULT 0,
        ADD COLUMN confl_update_origin_differs bigint NOT NULL DEFAULT 0,
        ADD COLUMN confl_update_exists bigint NOT NULL DEFAULT 0,
        ADD COLUMN confl_delete_origin_differs bigint NOT NULL DEFAULT 0,
        ADD COLUMN confl_multiple_unique_conflicts bigint NOT NULL DEFAULT 0;
    ALTER TABLE pgferry.subscription ADD COLUMN remote_node text;
    ALTER TABLE pgferry.subscription_table ADD COLUMN conflict_resolution text;
    CREATE TABLE pgferry.conflict (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        subscription text NOT NULL REFERENCES pgferry.subscription ON DELETE CASCADE,
        table_schema text NOT NULL,
        table_name text NOT NULL,
        conflict_type text NOT NULL,
        resolution text NOT NULL,
        applied boolean NOT NULL,
        remote_xid bigint,
        remote_commit_lsn pg_lsn,
        remote_commit_time timestamptz,
        remote_origin text,
        local_origin text,
        local_commit_time timestamptz,
        key jsonb,
        local_row jsonb,
        remote_row jsonb,
        logged_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX conflict_subscription_time ON pgferry.conflict (subscription, logged_at);
    """,
    # 4: a change to a subscription or its tables wakes the launcher (NOTIFY on
    # WAKE_CHANNEL at the writer's commit), as native's ALTER/CREATE SUBSCRIPTION
    # wake its launcher; by triggers, so that every writer of the catalog does it.
    """
    CREATE FUNCTION pgferry.wake_launcher() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('"""
    + WAKE_CHANNEL
    + """', '');
        RETURN NULL;
    END
    $$;
    REVOKE ALL ON FUNCTION pgferry.wake_launcher() FROM PUBLIC;
    CREATE TRIGGER wake_launcher
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgferry.subscription
        FOR EACH STATEMENT EXECUTE FUNCTION pgferry.wake_launcher();
    CREATE TRIGGER wake_launcher
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgferry.subscription_table
        FOR EACH STATEMENT EXECUTE FUNCTION pgferry.wake_launcher();
    -- (Also for writers with session_replication_role = replica, as workers are.)
    ALTER TABLE pgferry.subscription ENABLE ALWAYS TRIGGER wake_launcher;
    ALTER TABLE pgferry.subscription_table ENABLE ALWAYS TRIGGER wake_launcher;
    """,
    # 5: the apply worker's committed position: every transaction committed on the
    # publisher before it is durably applied (the slot's confirmed position may
    # stay behind it for a transaction held whole: prepared, or streamed and not
    # yet committed), so `subscription wait` need not wait for their commit.
    """
    ALTER TABLE pgferry.worker ADD COLUMN committed_lsn pg_lsn;
    """,
    # 6: the schema copy and sequence sync (pgferry.schema, pgferry.sequences):
    # each table's size on the publisher (the largest is copied first); the schema
    # steps left to run after a table's copy (table set) or once every table is
    # ready (table NULL), in order, each deleted by the transaction that runs it;
    # and each synced sequence's last values on both sides (status shows the drift).
    """
    ALTER TABLE pgferry.subscription_table ADD COLUMN size_bytes bigint;
    CREATE TABLE pgferry.schema_step (
        subscription text NOT NULL REFERENCES pgferry.subscription ON DELETE CASCADE,
        step integer NOT NULL,
        table_schema text,
        table_name text,
        phase smallint NOT NULL,
        object text NOT NULL,
        statement text NOT NULL,
        PRIMARY KEY (subscription, step)
    );
    CREATE TABLE pgferry.sequence_state (
        subscription text NOT NULL REFERENCES pgferry.subscription ON DELETE CASCADE,
        sequence_schema text NOT NULL,
        sequence_name text NOT NULL,
        publisher_value bigint,
        subscriber_value bigint,
        synced_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (subscription, sequence_schema, sequence_name)
    );
    """,
    # 7: what an operator needs after a failure: the finish LSN of the remote
    # transaction the last error is about (``--skip`` must name it), and each
    # failed worker's retry as the launcher plans it (the attempt it will start
    # and when), so that ``status`` shows "retrying (attempt N, next in S s)";
    # conflicts by remote transaction (a retry does not log one twice); and each
    # replication origin's position as its last commit wrote it (see
    # pgferry.origins: an abort can move an origin too).
    """
    ALTER TABLE pgferry.subscription ADD COLUMN last_error_lsn pg_lsn;
    CREATE TABLE pgferry.worker_retry (
        subscription text NOT NULL REFERENCES pgferry.subscription ON DELETE CASCADE,
        kind text NOT NULL,
        table_schema text NOT NULL DEFAULT '',
        table_name text NOT NULL DEFAULT '',
        attempt integer NOT NULL,
        next_retry_at timestamptz NOT NULL,
        exit_code integer,
        failed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (subscription, kind, table_schema, table_name)
    );
    CREATE INDEX conflict_subscription_lsn ON pgferry.conflict (subscription, remote_commit_lsn);
    CREATE TABLE pgferry.origin_commit (
        origin text PRIMARY KEY,
        remote_lsn pg_lsn NOT NULL
    );
    """,
    # verify's apply hold (pgferry.catalog.hold): one request per subscription
    # with a lease; a requester's change notifies the apply worker, the worker's
    # acknowledgement (state) does not.
    """
    CREATE TABLE pgferry.apply_hold (
        subscription text PRIMARY KEY REFERENCES pgferry.subscription ON DELETE CASCADE,
        token text NOT NULL,
        target_lsn pg_lsn,
        expires_at timestamptz NOT NULL,
        state text,
        acked_lsn pg_lsn,
        acked_at timestamptz
    );
    CREATE FUNCTION pgferry.notify_hold() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.token = OLD.token
           AND NEW.target_lsn IS NOT DISTINCT FROM OLD.target_lsn
           AND NEW.expires_at = OLD.expires_at THEN
            RETURN NULL;
        END IF;
        PERFORM pg_notify('pgferry_hold', COALESCE(NEW.subscription, OLD.subscription));
        RETURN NULL;
    END
    $$;
    REVOKE ALL ON FUNCTION pgferry.notify_hold() FROM PUBLIC;
    CREATE TRIGGER notify_hold AFTER INSERT OR UPDATE OR DELETE ON pgferry.apply_hold
        FOR EACH ROW EXECUTE FUNCTION pgferry.notify_hold();
    ALTER TABLE pgferry.apply_hold ENABLE ALWAYS TRIGGER notify_hold;
    """,
    # subscription RENAME and OWNER (pgferry.subscription.naming): the role that
    # owns each subscription (the creating role by default), and every reference
    # to a subscription's name follows a rename (ON UPDATE CASCADE; a table a
    # later migration adds that references a subscription declares it itself).
    """
    ALTER TABLE pgferry.subscription ADD COLUMN owner text NOT NULL DEFAULT current_user;
    DO $$
    DECLARE
        fk record;
    BEGIN
        FOR fk IN
            SELECT conrelid::regclass AS tbl, conname, pg_catalog.pg_get_constraintdef(oid) AS def
            FROM pg_catalog.pg_constraint
            WHERE contype = 'f' AND confrelid = 'pgferry.subscription'::regclass
              AND confupdtype <> 'c'
        LOOP
            EXECUTE pg_catalog.format(
                'ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s ON UPDATE CASCADE',
                fk.tbl, fk.conname, fk.conname, fk.def);
        END LOOP;
    END
    $$;
    """,
    # What psql users and existing monitoring know from native: views shaped like
    # pg_stat_subscription, pg_subscription_rel and pg_stat_subscription_stats,
    # whose subid is the subscription's catalog id (stable: a rename keeps it);
    # the apply worker's transaction and row counters; conflicts by type and
    # resolution (counted by the conflict log's writer, see
    # pgferry.catalog.conflict_log); each worker kind's failed exits, every one
    # restarted by the launcher (see pgferry.catalog.workers). See
    # pgferry.catalog.views for what each view column holds.
    """
    ALTER TABLE pgferry.subscription ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY UNIQUE;
    ALTER TABLE pgferry.subscription_stats
        ADD COLUMN transactions_applied bigint NOT NULL DEFAULT 0,
        ADD COLUMN rows_applied bigint NOT NULL DEFAULT 0;
    CREATE TABLE pgferry.conflict_count (
        subscription text NOT NULL
            REFERENCES pgferry.subscription ON DELETE CASCADE ON UPDATE CASCADE,
        conflict_type text NOT NULL,
        resolution text NOT NULL,
        count bigint NOT NULL,
        PRIMARY KEY (subscription, conflict_type, resolution)
    );
    INSERT INTO pgferry.conflict_count
        SELECT subscription, conflict_type, resolution, count(*)
        FROM pgferry.conflict GROUP BY 1, 2, 3;
    CREATE TABLE pgferry.worker_restart (
        subscription text NOT NULL
            REFERENCES pgferry.subscription ON DELETE CASCADE ON UPDATE CASCADE,
        kind text NOT NULL,
        restarts bigint NOT NULL,
        PRIMARY KEY (subscription, kind)
    );
    CREATE VIEW pgferry.stat_subscription AS
    SELECT s.id::oid AS subid, s.name::name AS subname, w.worker_type, w.pid,
           NULL::integer AS leader_pid, w.relid, w.received_lsn, w.last_msg_send_time,
           w.last_msg_receipt_time, w.latest_end_lsn, w.latest_end_time
    FROM pgferry.subscription s
    LEFT JOIN (
        SELECT a.subscription, 'apply'::text AS worker_type, a.pid, NULL::oid AS relid,
               a.received_lsn, a.last_msg_send_time, a.last_msg_receipt_time,
               a.latest_end_lsn, a.latest_end_time
        FROM pgferry.worker a WHERE a.relation = ''
        UNION ALL
        SELECT t.subscription, 'table synchronization', a.pid, c.oid,
               NULL, NULL, NULL, NULL, NULL
        FROM pgferry.subscription_table t
        -- A sync worker's session is named like its slot (pgferry.origins.sync_origin).
        JOIN pg_catalog.pg_stat_activity a
          ON a.datname = pg_catalog.current_database()
         AND a.application_name = 'pgferry_sync_' || pg_catalog.left(pg_catalog.encode(
                 pg_catalog.sha256(pg_catalog.convert_to(t.subscription, 'UTF8')
                     || pg_catalog.decode('00', 'hex')
                     || pg_catalog.convert_to(t.remote_schema, 'UTF8')
                     || pg_catalog.decode('00', 'hex')
                     || pg_catalog.convert_to(t.remote_name, 'UTF8')),
                 'hex'), 16)
        LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.local_schema
        LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.local_name
    ) w ON w.subscription = s.name;
    CREATE VIEW pgferry.subscription_rel AS
    SELECT s.id::oid AS srsubid, c.oid AS srrelid, t.state AS srsubstate,
           t.state_lsn AS srsublsn
    FROM pgferry.subscription_table t
    JOIN pgferry.subscription s ON s.name = t.subscription
    LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.local_schema
    LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.local_name;
    CREATE VIEW pgferry.stat_subscription_stats AS
    SELECT s.id::oid AS subid, s.name::name AS subname, st.apply_error_count,
           st.sync_error_count, st.confl_insert_exists, st.confl_update_origin_differs,
           st.confl_update_exists, st.confl_update_missing, st.confl_delete_origin_differs,
           st.confl_delete_missing, st.confl_multiple_unique_conflicts, st.stats_reset
    FROM pgferry.subscription s
    JOIN pgferry.subscription_stats st ON st.subscription = s.name;
    """,
    # The bytes the apply worker holds in spools (streamed and prepared
    # transactions waiting for their outcome), as reported with its positions.
    """
    ALTER TABLE pgferry.worker ADD COLUMN spool_bytes bigint;
    """,
)


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The catalog version in this database, 0 if there is no catalog."""
    row = conn.execute("SELECT to_regclass('pgferry.schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    version = conn.execute("SELECT version FROM pgferry.schema_version").fetchone()
    return int(version[0]) if version else 0


def ensure_catalog(conn: psycopg.Connection[Any]) -> int:
    """Create or upgrade the catalog; returns its version. Needs CREATE on the database.

    ``conn`` must not be inside a transaction; it is left outside one.
    """
    if current_version(conn) == len(MIGRATIONS):
        _end(conn)
        return len(MIGRATIONS)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgferry")
        # A new schema grants PUBLIC nothing; say so explicitly, the catalog holds
        # connection strings with passwords.
        conn.execute("REVOKE ALL ON SCHEMA pgferry FROM PUBLIC")
        conn.execute("CREATE TABLE IF NOT EXISTS pgferry.schema_version (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM pgferry.schema_version FOR UPDATE").fetchone()
        version = int(row[0]) if row else 0
        if row is None:
            conn.execute("INSERT INTO pgferry.schema_version VALUES (0)")
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(migration.encode())
            conn.execute("UPDATE pgferry.schema_version SET version = %s", (number,))
        conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA pgferry FROM PUBLIC")
    return len(MIGRATIONS)


def _end(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
