"""A publisher and a subscriber database in one cluster, and an apply worker run
in a thread until the subscriber has caught up (or the worker failed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from pgferry.apply import ApplyWorker
from pgferry.catalog import (
    Subscription,
    SubscriptionOptions,
    SubscriptionTable,
    TableState,
    ensure_catalog,
    store,
)
from pgferry.protocol import Lsn
from pgferry.testing import Cluster
from tests.support import create_slot, current_lsn


@dataclass
class Running:
    """A worker running in ``thread``; ``failure`` gets what it raised."""

    worker: ApplyWorker
    thread: threading.Thread
    failure: list[BaseException]


@dataclass
class Pair:
    cluster: Cluster
    pub: str
    sub: str
    tables: list[str] = field(default_factory=list)

    def publish(self, ddl: str, tables: list[str], **options: object) -> None:
        """Create the tables on both sides, the publication, slot and subscription."""
        self.cluster.sql(ddl, dbname=self.pub)
        self.cluster.sql(ddl, dbname=self.sub)
        self.cluster.sql("CREATE PUBLICATION pub FOR TABLE " + ", ".join(tables), dbname=self.pub)
        create_slot(self.cluster, self.pub, "ferry")
        with self.cluster.connect(self.sub) as conn:
            ensure_catalog(conn)
            store.create_subscription(
                conn,
                Subscription(
                    "ferry",
                    self.cluster.dsn(self.pub),
                    ("pub",),
                    "ferry",
                    "pgferry_ferry",
                    options=SubscriptionOptions.from_json(options),
                ),
            )
            for table in tables:
                store.upsert_table(
                    conn,
                    SubscriptionTable(
                        "ferry", "public", table, "public", table, TableState.READY, None
                    ),
                )

    def progress(self) -> Lsn:
        row = self.cluster.sql(
            "SELECT remote_lsn::text FROM pg_replication_origin_status s"
            " JOIN pg_replication_origin o ON o.roident = s.local_id"
            " WHERE o.roname = 'pgferry_ferry'",
            dbname=self.sub,
        )
        return Lsn.parse(row[0][0]) if row and row[0][0] else Lsn(0)

    @contextmanager
    def running(self) -> Iterator[Running]:
        """The apply worker in a thread until the block ends (then stopped)."""
        worker = ApplyWorker(self.cluster.dsn(self.sub), "ferry", status_interval=1)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield Running(worker, thread, failure)
        finally:
            worker.request_stop()
            thread.join(timeout=30)
            assert not thread.is_alive()

    def sync(self, timeout: float = 30) -> ApplyWorker:
        """Run the worker until everything written so far is applied; re-raise its
        error. Returns the (stopped) worker."""
        target = current_lsn(self.cluster, self.pub)
        with self.running() as run:
            deadline = time.monotonic() + timeout
            # The origin records the end LSN of the last applied commit.
            while not run.failure and self.progress() < target and time.monotonic() < deadline:
                if not run.thread.is_alive():
                    break
                time.sleep(0.1)
                target_now = current_lsn(self.cluster, self.pub)
                # Other activity (e.g. the catalog) does not produce commits to
                # apply: stop once the slot has confirmed past the target instead.
                if self.confirmed() >= target and target_now >= target:
                    break
        if run.failure:
            raise run.failure[0]
        return run.worker

    def caught_up(self, target: Lsn) -> bool:
        """Every commit before ``target`` is applied: the origin is past it, or the
        slot confirmed past it (WAL with no commit after the last one, such as a
        checkpoint's, moves only the latter)."""
        return self.progress() >= target or self.confirmed() >= target

    def confirmed(self) -> Lsn:
        row = self.cluster.sql(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'ferry'",
            dbname=self.pub,
        )
        return Lsn.parse(row[0][0])

    def rows(self, query: str) -> list[tuple[object, ...]]:
        return self.cluster.sql(query, dbname=self.sub)


@pytest.fixture
def pair(cluster: Cluster, dbname: str) -> Iterator[Pair]:
    sub = dbname[:50] + "_sub"
    cluster.create_database(sub)
    try:
        yield Pair(cluster, dbname, sub)
    finally:
        cluster.drop_database(sub)
