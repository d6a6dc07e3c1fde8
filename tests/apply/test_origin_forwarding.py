"""A change applied because of replication is never forwarded to ``origin = none``.

From PostgreSQL's ``src/test/subscription/t/030_origin.pl``: nodes A and B
replicate to each other with ``origin = none``, and B also subscribes to C. Rows
B got from A are updated and deleted on C, so B meets ``update_origin_differs``
and ``delete_origin_differs`` and applies the remote changes (apply_remote, the
default for those types). B applied them because of replication: they carry B's
subscription origin, and A's ``origin = none`` subscription never receives them
(the publisher filters them from PostgreSQL 16 on, pgferry itself before).

Large transactions would be streamed on both hops (``logical_decoding_work_mem``
is at its minimum): C's to B, which B applies while they arrive until a conflict
sends it back to apply them at their commit; and B's to A, which carry the origin
of their first change only, none for a batch that begins by creating its staging
tables (so before PostgreSQL 16, where pgferry filters, it asks for whole ones).

The three nodes are databases of one cluster; each database runs its launcher in
a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from pgferry.catalog import conflict_log
from pgferry.protocol import Lsn
from pgferry.runner import Launcher
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory

TIMEOUT = 90.0
#: Rows of the large transactions: well past 64 kB of decoded changes.
LARGE = 3000


@dataclass
class Node:
    name: str
    cluster: Cluster
    launchers: list[tuple[Launcher, threading.Thread]] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        return self.cluster.sql(statement, dbname=self.name)

    def lsn(self) -> Lsn:
        return Lsn.parse(str(self.sql("SELECT pg_current_wal_lsn()")[0][0]))

    def subscribe(self, publisher: Node, *options: str) -> None:
        create_subscription(
            self.dsn,
            f"{self.name}_from_{publisher.name}",
            publisher.dsn,
            ["pub"],
            ["origin=none", "copy_data=false", *options],
        )

    def start(self) -> None:
        launcher = Launcher(self.dsn, poll_interval=0.3)
        thread = threading.Thread(target=launcher.run, daemon=True)
        thread.start()
        self.launchers.append((launcher, thread))

    def stop(self) -> None:
        for launcher, thread in self.launchers:
            launcher.request_stop()
            thread.join(timeout=60)
        self.launchers.clear()

    def logged(self) -> list[conflict_log.LoggedConflict]:
        with self.cluster.connect(self.name) as conn:
            return conflict_log.list_conflicts(conn)


def wait_for(node: Node, query: str, expected: tuple[object, ...]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (got := tuple(node.sql(query)[0])) != expected:
        assert time.monotonic() < deadline, f"{node.name}: {got} != {expected}"
        time.sleep(0.2)


def three_nodes(cluster: Cluster, ddl: str) -> tuple[Node, Node, Node]:
    nodes = (Node("a", cluster), Node("b", cluster), Node("c", cluster))
    for node in nodes:
        cluster.create_database(node.name)
        node.sql(ddl)
        node.sql("CREATE PUBLICATION pub FOR TABLE t")
    return nodes


@pytest.fixture
def stopping() -> Iterator[list[Node]]:
    """Nodes whose launchers are stopped after the test."""
    nodes: list[Node] = []
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def replicate(a: Node, b: Node, c: Node, *options: str) -> None:
    """A <-> B and C -> B, every subscription with ``origin = none``."""
    a.subscribe(b, *options)
    b.subscribe(a, *options)
    b.subscribe(c, *options)
    a.start()
    b.start()


def barrier(a: Node, b: Node, key: int) -> None:
    """B's own write reaches A after everything B applied before it: once it is
    there, anything B forwarded would be there too."""
    b.sql(f"INSERT INTO t VALUES ({key}, 'b')")
    wait_for(a, f"SELECT count(*) FROM t WHERE id = {key}", (1,))


@pytest.mark.parametrize("apply_mode", ["batch", "exact"])
def test_resolved_origin_differs_is_not_forwarded(
    make_cluster: ClusterFactory, stopping: list[Node], apply_mode: str
) -> None:
    a, b, c = three_nodes(make_cluster(), "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
    stopping.extend((a, b, c))
    c.sql("INSERT INTO t VALUES (1, 'c'), (2, 'c')")
    replicate(a, b, c, f"apply_mode={apply_mode}")
    a.sql("INSERT INTO t VALUES (1, 'a'), (2, 'a')")
    wait_for(b, "SELECT count(*) FROM t WHERE v = 'a'", (2,))

    # B's rows were last written by b_from_a: C's changes differ in origin (the
    # UPDATE changes the key, as in 030_origin.pl).
    c.sql("UPDATE t SET id = 5, v = 'c2' WHERE id = 1")
    c.sql("DELETE FROM t WHERE id = 2")
    wait_for(b, "SELECT count(*), min(id) FROM t", (1, 5))
    assert sorted((x.subscription, x.conflict_type, x.applied) for x in b.logged()) == [
        ("b_from_c", "delete_origin_differs", True),
        ("b_from_c", "update_origin_differs", True),
    ]

    barrier(a, b, 3)
    assert a.sql("SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "a"), (3, "b")]
    assert a.logged() == []


@pytest.mark.parametrize("apply_mode", ["batch", "exact"])
def test_resolved_origin_differs_in_streamed_transactions_is_not_forwarded(
    make_cluster: ClusterFactory, stopping: list[Node], apply_mode: str
) -> None:
    # No key: applied row by row, where apply_remote resolves in the statement.
    cluster = make_cluster(settings={"logical_decoding_work_mem": "64kB"})
    a, b, c = three_nodes(
        cluster,
        "CREATE TABLE t (id int NOT NULL, v text NOT NULL); ALTER TABLE t REPLICA IDENTITY FULL",
    )
    stopping.extend((a, b, c))
    rows = f"SELECT g, 'x' FROM generate_series(1, {LARGE}) g"
    c.sql(f"INSERT INTO t {rows}")
    replicate(a, b, c, f"apply_mode={apply_mode}", "conflict_resolution=apply_remote")
    a.sql(f"INSERT INTO t {rows}")
    wait_for(b, "SELECT count(*) FROM t", (LARGE,))

    half = LARGE // 2
    c.sql(f"UPDATE t SET v = 'c2' WHERE id <= {half}")
    c.sql(f"DELETE FROM t WHERE id > {half}")
    end = c.lsn()
    wait_for(b, "SELECT count(*), count(*) FILTER (WHERE v = 'c2') FROM t", (half, half))
    logged = b.logged()
    assert sorted({(x.subscription, x.conflict_type, x.applied) for x in logged}) == [
        ("b_from_c", "delete_origin_differs", True),
        ("b_from_c", "update_origin_differs", True),
    ]
    assert len(logged) == LARGE
    # Logged with the remote commit, once it was known (not while streaming).
    assert all(x.remote_commit_lsn is not None and x.remote_commit_lsn <= end for x in logged)

    barrier(a, b, LARGE + 1)
    assert a.sql("SELECT count(*), count(*) FILTER (WHERE v = 'x') FROM t") == [(LARGE + 1, LARGE)]
    assert a.logged() == []
