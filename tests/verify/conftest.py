"""Fixtures of the verify tests: a publisher and a subscriber database on the
shared cluster, a subscription of every kind of table verify must handle, and
``pgferry run`` (the launcher) in a thread for the whole module."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.catalog import handover
from pgferry.runner import Launcher
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster
from tests.support import wait_for

#: Tables on both sides (the subscriber's ``cols`` has a column of its own).
TABLES = """
CREATE TABLE plain (id int PRIMARY KEY, v text, f float8, ts timestamptz, n numeric,
                    iv interval, b bytea);
CREATE TABLE comp (a text, b int, v text, PRIMARY KEY (a, b));
CREATE TABLE nokey (x int, y text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
CREATE TABLE cols (id int PRIMARY KEY, pubcol text, secret text);
CREATE TABLE filtered (id int PRIMARY KEY, v text);
CREATE SCHEMA "we ird";
CREATE TABLE "we ird"."x""y" ("k ey" text PRIMARY KEY, "v,al" text);
CREATE TABLE load (id bigserial PRIMARY KEY, c int NOT NULL DEFAULT 0);
"""

DATA = """
INSERT INTO plain SELECT g, 'v' || g, g / 7.0, '2024-01-01'::timestamptz + g * interval '1 min',
    g * 1.5, g * interval '1 s', decode(md5(g::text), 'hex') FROM generate_series(1, 3000) g;
INSERT INTO comp SELECT t, g, 'c' || g FROM generate_series(1, 50) g,
    unnest(ARRAY['a', 'a,b', '(x)', 'q"uote', 'sp ace', '']) t;
INSERT INTO nokey SELECT g % 20, 'n' || (g % 20) FROM generate_series(1, 200) g;
INSERT INTO cols SELECT g, 'p' || g, 's' || g FROM generate_series(1, 100) g;
INSERT INTO filtered SELECT g, 'f' || g FROM generate_series(1, 100) g;
INSERT INTO "we ird"."x""y" SELECT 'k' || g, 'v,' || g FROM generate_series(1, 30) g;
INSERT INTO load (c) SELECT g FROM generate_series(1, 100) g;
"""

PUBLICATION = """
CREATE PUBLICATION pub FOR TABLE plain, comp, nokey, cols (id, pubcol),
    filtered WHERE (id % 2 = 0), "we ird"."x""y", load;
"""


@dataclass
class Ferry:
    cluster: Cluster
    pub_db: str
    sub_db: str
    name: str

    @property
    def sub_dsn(self) -> str:
        return self.cluster.dsn(self.sub_db)

    def on_pub(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.cluster.sql(query, params, dbname=self.pub_db)

    def on_sub(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.cluster.sql(query, params, dbname=self.sub_db)

    def states(self) -> dict[tuple[str, str], str]:
        with self.cluster.connect(self.sub_db) as conn:
            return {k: s.state for k, s in handover.states(conn, self.name).items()}


@contextmanager
def running(dsn: str) -> Iterator[None]:
    """``pgferry run`` in a thread until the block ends."""
    launcher = Launcher(dsn, poll_interval=0.2, retry_interval=1.0)
    thread = threading.Thread(target=launcher.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        launcher.request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def ferry(cluster: Cluster) -> Iterator[Ferry]:
    """The subscription ``verify_<random>`` of every table kind, ready, with
    ``pgferry run`` applying it until the module's tests are done."""
    tag = uuid.uuid4().hex[:8]
    ferry = Ferry(cluster, f"verify_pub_{tag}", f"verify_sub_{tag}", f"verify_{tag}")
    cluster.create_database(ferry.pub_db)
    cluster.create_database(ferry.sub_db)
    try:
        ferry.on_pub(TABLES + DATA + PUBLICATION)
        ferry.on_sub(TABLES + "ALTER TABLE cols ADD COLUMN extra_sub int DEFAULT 7;")
        create_subscription(ferry.sub_dsn, ferry.name, cluster.dsn(ferry.pub_db), ["pub"])
        with running(ferry.sub_dsn):
            wait_for(
                lambda: bool(ferry.states()) and set(ferry.states().values()) == {"r"},
                "every table ready",
                90,
            )
            yield ferry
    finally:
        cluster.drop_database(ferry.sub_db)
        cluster.drop_database(ferry.pub_db)
        cluster.sql(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
            " WHERE roname LIKE %s",
            (f"%{ferry.name}%",),
        )
