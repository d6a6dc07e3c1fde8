"""What the applier needs to detect, decide and log conflicts in one apply session.

:class:`ConflictContext` holds, for one subscription and session: the resolution
specs (the subscription's ``conflict_resolution`` option and the tables' own),
what the subscriber can tell about a local row's writer (:class:`~.mapping.Stamps`),
the replication origin of the session, node names for tie-breaks, and the conflict
records and counts of the transaction being applied (flushed into the catalog with
it, bounded in memory).

Node names: a node is ``<system identifier>/<database>``, so every node computes
the same name for the same database. A local row's writer is this node when its
origin is 0 (a local write), the publisher of the subscription whose origin wrote
it when that is a pgferry subscription in this database, else the origin's name.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from pgferry import origins
from pgferry.assembler import Transaction
from pgferry.catalog import conflict_log
from pgferry.catalog.store import Subscription
from pgferry.conflict import ConflictType, Policy, Resolution, Stamp
from pgferry.errors import PgferryError
from pgferry.protocol.messages import Relation
from pgferry.protocol.timestamps import to_datetime
from pgferry.stream import ReplicationConnection

from .mapping import Stamps

#: Conflict records kept in memory before they are written (inside the transaction).
RECORD_BUFFER = 1000


class LocalRow(NamedTuple):
    """A local row as the conflict statements return it."""

    tableoid: int
    ctid: str
    time: datetime | None
    origin_id: int | None
    #: None when the statement did not need it (see TableMap._row_columns).
    row: dict[str, Any] | None
    #: The unique indexes it collides on (find_conflicts only).
    indexes: tuple[str, ...] = ()

    @property
    def address(self) -> tuple[int, str]:
        return (self.tableoid, self.ctid)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LocalRow:
        indexes = tuple(row[5]) if len(row) > 5 and row[5] is not None else ()
        return cls(int(row[0]), str(row[1]), row[2], row[3], row[4], indexes)


def detect_stamps(conn: psycopg.Connection[Any]) -> Stamps:
    row = conn.execute("SELECT current_setting('track_commit_timestamp')::boolean").fetchone()
    if not row or not row[0]:
        return Stamps.NONE
    # pg_xact_commit_timestamp_origin is PostgreSQL 14's.
    return Stamps.ORIGIN if conn.info.server_version >= 140000 else Stamps.TIME


def local_node_name(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT system_identifier::text || '/' || current_database()"
        " FROM pg_catalog.pg_control_system()"
    ).fetchone()
    assert row is not None
    return str(row[0])


def node_name(system_id: str, dbname: str | None) -> str:
    return f"{system_id}/{dbname or ''}"


@dataclass
class ConflictContext:
    subscription: str
    origin_id: int
    stamps: Stamps
    resolution: Resolution = field(default_factory=Resolution)
    table_resolutions: Mapping[tuple[str, str], Resolution] = field(default_factory=dict)
    local_node: str | None = None
    remote_node: str | None = None
    #: Replication origin name -> publisher node (pgferry subscriptions here).
    origin_nodes: Mapping[str, str] = field(default_factory=dict)
    records: list[conflict_log.ConflictRecord] = field(default_factory=list)
    counts: collections.Counter[ConflictType] = field(default_factory=collections.Counter)
    #: Replication origin id -> name (None: dropped).
    _origin_names: dict[int, str | None] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        conn: psycopg.Connection[Any],
        subscription: str,
        origin: str,
        *,
        resolution: Resolution | None = None,
        remote_node: str | None = None,
    ) -> ConflictContext:
        """Read everything from the subscriber (its session bound to ``origin``)."""
        row = conn.execute("SELECT pg_catalog.pg_replication_origin_oid(%s)", (origin,)).fetchone()
        origin_id = int(row[0]) if row and row[0] is not None else 0
        resolution = resolution or Resolution()
        tables = conflict_log.table_resolutions(conn, subscription)
        stamps = detect_stamps(conn)
        needs_time = any(
            p.needs_commit_timestamps
            for spec in (resolution, *tables.values())
            for p in spec.policies()
        )
        if needs_time and stamps is Stamps.NONE:
            raise PgferryError(
                f"subscription {subscription!r}: last_update_wins and first_update_wins"
                " need track_commit_timestamp = on on the subscriber",
                hint="ALTER SYSTEM SET track_commit_timestamp = on, then restart the server",
            )
        return cls(
            subscription,
            origin_id,
            stamps,
            resolution,
            tables,
            local_node_name(conn) if needs_time else None,
            remote_node,
            conflict_log.origin_nodes(conn),
        )

    # -- policies -------------------------------------------------------------------

    def policy(self, relation: Relation, ctype: ConflictType) -> Policy:
        table = self.table_resolutions.get((relation.namespace, relation.name))
        if table is not None:
            return table.policy_for(ctype, self.resolution)
        return self.resolution.policy_for(ctype)

    # -- who wrote what -------------------------------------------------------------

    def origin_differs(self, conn: psycopg.Connection[Any], row: LocalRow) -> bool:
        """PG 18's condition: the row's commit is known and from another origin
        (a local write has origin 0, so it differs too), except that rows of an
        initial copy are not conflicts: rows written by a table sync worker's
        origin, or by an origin dropped since (as sync origins are at the
        handover). Native reports those ("non-existent origin")."""
        if row.time is None or row.origin_id is None or row.origin_id == self.origin_id:
            return False
        if row.origin_id == 0:
            return True
        name = self._lookup_origin(conn, row.origin_id)
        return name is not None and not origins.is_sync(name)

    def _lookup_origin(self, conn: psycopg.Connection[Any], origin_id: int) -> str | None:
        """The name of replication origin ``origin_id``; None once dropped (cached)."""
        if origin_id not in self._origin_names:
            found = conn.execute(
                "SELECT roname FROM pg_catalog.pg_replication_origin WHERE roident = %s",
                (origin_id,),
            ).fetchone()
            self._origin_names[origin_id] = str(found[0]) if found else None
        return self._origin_names[origin_id]

    def origin_name(self, conn: psycopg.Connection[Any], origin_id: int | None) -> str | None:
        """The replication origin's name; None for a local write or when unknown."""
        if not origin_id:
            return None
        name = self._lookup_origin(conn, origin_id)
        return name if name is not None else f"(dropped origin {origin_id})"

    def local_stamp(self, conn: psycopg.Connection[Any], row: LocalRow) -> Stamp:
        if row.origin_id is None:
            return Stamp(row.time, None)
        if row.origin_id == 0:
            return Stamp(row.time, self.local_node)
        if row.origin_id == self.origin_id:
            return Stamp(row.time, self.remote_node)
        name = self.origin_name(conn, row.origin_id)
        assert name is not None
        return Stamp(row.time, self.origin_nodes.get(name, name))

    def remote_stamp(self, tx: Transaction) -> Stamp:
        return Stamp(to_datetime(tx.commit_time), self.remote_node)

    # -- records ----------------------------------------------------------------------

    def record(
        self,
        conn: psycopg.Connection[Any],
        tx: Transaction,
        relation: Relation,
        ctype: ConflictType,
        policy: Policy,
        applied: bool,
        *,
        key: dict[str, Any] | None,
        local: list[LocalRow],
        remote_row: dict[str, Any] | None,
    ) -> conflict_log.ConflictRecord:
        first = local[0] if local else None
        rows: conflict_log.JsonValue = None
        if len(local) == 1:
            rows = local[0].row
        elif local:
            rows = [r.row for r in local if r.row is not None]
        record = conflict_log.ConflictRecord(
            self.subscription,
            relation.namespace,
            relation.name,
            ctype,
            str(policy),
            applied,
            tx.xid,
            tx.commit_lsn,
            to_datetime(tx.commit_time),
            tx.origin or self.remote_node,
            self.origin_name(conn, first.origin_id) if first else None,
            first.time if first else None,
            key,
            rows,
            remote_row,
        )
        self.counts[ctype] += 1
        self.records.append(record)
        if len(self.records) >= RECORD_BUFFER:
            self.flush_records(conn)
        return record

    def flush_records(self, conn: psycopg.Connection[Any]) -> None:
        conflict_log.insert(conn, self.records)
        self.records.clear()

    def flush(self, conn: psycopg.Connection[Any]) -> None:
        """Write the transaction's records and counts (inside it)."""
        self.flush_records(conn)
        conflict_log.add_counts(conn, self.subscription, self.counts)
        self.counts.clear()

    def flush_only(
        self, conn: psycopg.Connection[Any], record: conflict_log.ConflictRecord
    ) -> None:
        """Write ``record`` and count it, forgetting the rest of the transaction's
        (rolled back: they happen again when it is retried); nothing when an
        earlier attempt logged that conflict already (see
        :func:`~pgferry.catalog.conflict_log.already_logged`)."""
        self.reset()
        if conflict_log.already_logged(conn, record):
            return
        self.records.append(record)
        self.counts[record.conflict_type] = 1
        self.flush(conn)

    def reset(self) -> None:
        """Forget the transaction's records (it was rolled back)."""
        self.records.clear()
        self.counts.clear()


def session_context(
    local: psycopg.Connection[Any],
    sub: Subscription,
    origin: str,
    repl: ReplicationConnection,
    *,
    record_node: bool = False,
) -> ConflictContext:
    """The conflict context of a session applying ``sub`` with replication origin
    ``origin`` from the publisher ``repl`` (its node name breaks ties)."""
    system = repl.identify_system()
    remote_node = node_name(system.system_id, system.dbname)
    if record_node:
        conflict_log.set_remote_node(local, sub.name, remote_node)
    return ConflictContext.load(
        local,
        sub.name,
        origin,
        resolution=sub.options.conflict_resolution,
        remote_node=remote_node,
    )
