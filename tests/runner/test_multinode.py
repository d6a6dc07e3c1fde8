"""Several primaries writing the same table, replicating to each other with pgferry.

Every node is its own cluster with one database ``app``; each subscribes to every
other node with ``origin = none`` (the publisher filters from PostgreSQL 16 on,
pgferry filters Origin messages before) and ``copy_data = false``, and runs its
launcher in a thread. The seeds' practice 2 (bidirectional replication of one
table), then writers under load, then a three-node mesh.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from pgferry.catalog import conflict_log
from pgferry.protocol import Lsn
from pgferry.runner import Launcher
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory

DDL = "CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL, node text NOT NULL)"


@dataclass
class Node:
    name: str
    cluster: Cluster
    launcher: Launcher | None = None
    thread: threading.Thread | None = None
    subscriptions: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn("app")

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        return self.cluster.sql(statement, dbname="app")

    def rows(self) -> list[tuple[object, ...]]:
        return self.sql("SELECT id, v, node FROM acc ORDER BY id")

    def progress(self) -> list[str]:
        """The replication origins' progress (every remote commit applied)."""
        return [
            str(r[0])
            for r in self.sql(
                "SELECT remote_lsn::text FROM pg_replication_origin_status ORDER BY local_id"
            )
        ]

    def start(self) -> None:
        self.launcher = Launcher(self.dsn, poll_interval=0.3)
        self.thread = threading.Thread(target=self.launcher.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.launcher is not None and self.thread is not None:
            self.launcher.request_stop()
            self.thread.join(timeout=60)


def _mesh(make_cluster: ClusterFactory, names: str, resolution: str) -> list[Node]:
    nodes = [Node(n, make_cluster()) for n in names]
    for node in nodes:
        node.cluster.create_database("app")
        node.sql(DDL)
        node.sql("CREATE PUBLICATION pub FOR TABLE acc")
    for node in nodes:
        for other in nodes:
            if other is node:
                continue
            name = f"{node.name}_from_{other.name}"
            create_subscription(
                node.dsn,
                name,
                other.dsn,
                ["pub"],
                [
                    "origin=none",
                    "copy_data=false",
                    f"conflict_resolution={resolution}",
                    "synchronous_commit=on",
                ],
            )
            node.subscriptions.append(name)
    for node in nodes:
        node.start()
    return nodes


@pytest.fixture
def mesh(make_cluster: ClusterFactory, request: pytest.FixtureRequest) -> Iterator[list[Node]]:
    names, resolution = request.param
    nodes = _mesh(make_cluster, names, resolution)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def converge(nodes: list[Node], timeout: float = 120) -> list[tuple[object, ...]]:
    """Wait until every node has the same rows, twice in a row a second apart."""
    deadline = time.monotonic() + timeout
    previous: list[tuple[object, ...]] | None = None
    while True:
        tables = [n.rows() for n in nodes]
        same = all(t == tables[0] for t in tables)
        if same and tables[0] == previous:
            return tables[0]
        previous = tables[0] if same else None
        assert time.monotonic() < deadline, {n.name: n.rows()[:5] for n in nodes}
        time.sleep(1)


def quiet(nodes: list[Node], seconds: float = 3, settle: float = 90) -> None:
    """No loop: once converged, the nodes stop applying (origin progress settles;
    before PostgreSQL 16 each node still receives and drops the echoes of what it
    sent, so that can take a moment), then stay put while WAL grows by little (the
    workers' own bookkeeping). A loop never settles."""
    deadline = time.monotonic() + settle
    last = [n.progress() for n in nodes]
    while True:
        time.sleep(1.5)
        now = [n.progress() for n in nodes]
        if now == last:
            break
        assert time.monotonic() < deadline, f"origin progress never settles: a loop ({now})"
        last = now
    before = [Lsn.parse(str(n.sql("SELECT pg_current_wal_lsn()")[0][0])) for n in nodes]
    time.sleep(seconds)
    for node, progress, wal in zip(nodes, last, before, strict=True):
        assert node.progress() == progress, f"{node.name} still applies: a loop"
        grown = Lsn.parse(str(node.sql("SELECT pg_current_wal_lsn()")[0][0])) - wal
        assert grown < 256 * 1024, f"{node.name}: {grown} bytes of WAL in {seconds}s"


def logged(node: Node) -> list[conflict_log.LoggedConflict]:
    with node.cluster.connect("app") as conn:
        return conflict_log.list_conflicts(conn)


@pytest.mark.parametrize("mesh", [("ab", "error")], indirect=True)
def test_bidirectional_writes_on_either_side_appear_on_the_other(mesh: list[Node]) -> None:
    a, b = mesh
    a.sql("INSERT INTO acc SELECT g, g, 'a' FROM generate_series(1, 100) g")
    b.sql("INSERT INTO acc SELECT g, g, 'b' FROM generate_series(101, 200) g")
    converge(mesh)
    a.sql("UPDATE acc SET v = v + 1000 WHERE id BETWEEN 101 AND 110")  # b's rows, on a
    b.sql("DELETE FROM acc WHERE id BETWEEN 1 AND 5")  # a's rows, on b
    rows = converge(mesh)
    assert len(rows) == 195
    assert sum(1 for r in rows if r[1] == int(str(r[0])) + 1000) == 10
    quiet(mesh)
    # Each row went exactly once each way: the row count did not grow with loops.
    assert a.rows() == b.rows() == rows
    # Updating the other node's rows is update_origin_differs, applied (native).
    assert all((c.conflict_type, c.applied) == ("update_origin_differs", True) for c in logged(b))


def _writer(node: Node, ids: range, stop: threading.Event, shared: bool) -> int:
    rng = random.Random(node.name)
    count = 0
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        while not stop.is_set():
            key = rng.choice(ids)
            op = rng.random()
            try:
                if shared or op < 0.6:
                    conn.execute(
                        "INSERT INTO acc VALUES (%s, %s, %s) ON CONFLICT (id)"
                        " DO UPDATE SET v = excluded.v, node = excluded.node",
                        (key, rng.randrange(1_000_000), node.name),
                    )
                elif op < 0.9:
                    conn.execute("UPDATE acc SET v = v + 1 WHERE id = %s", (key,))
                else:
                    conn.execute("DELETE FROM acc WHERE id = %s", (key,))
            except psycopg.errors.SerializationFailure:
                continue
            count += 1
    return count


def _load(nodes: list[Node], ranges: list[range], seconds: float, shared: bool) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_writer, args=(n, r, stop, shared), daemon=True)
        for n, r in zip(nodes, ranges, strict=True)
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)


@pytest.mark.parametrize("mesh", [("ab", "error")], indirect=True)
def test_disjoint_key_ranges_under_load_converge(mesh: list[Node]) -> None:
    _load(mesh, [range(1, 500), range(500, 1000)], 10, shared=False)
    rows = converge(mesh)
    assert rows and {r[2] for r in rows} == {"a", "b"}
    for node in mesh:
        # Each node only ever touched its own range: nothing collided.
        assert logged(node) == []
    quiet(mesh)


@pytest.mark.parametrize("mesh", [("ab", "last_update_wins")], indirect=True)
def test_concurrent_updates_of_the_same_rows_converge_under_last_update_wins(
    mesh: list[Node],
) -> None:
    a, b = mesh
    a.sql("INSERT INTO acc SELECT g, 0, 'a' FROM generate_series(1, 30) g")
    converge(mesh)
    _load(mesh, [range(1, 31), range(1, 31)], 10, shared=True)
    rows = converge(mesh)
    assert len(rows) == 30
    quiet(mesh)
    resolved = logged(a) + logged(b)
    assert resolved, "concurrent updates of 30 rows for 10 s produced no conflict"
    assert {c.resolution for c in resolved} == {"last_update_wins"}
    assert {c.conflict_type for c in resolved} <= {"update_origin_differs", "insert_exists"}
    # Every resolution is logged, and the counters say the same.
    for node in mesh:
        with node.cluster.connect("app") as conn:
            counted = sum(
                int(r[0])
                for r in conn.execute(
                    "SELECT confl_insert_exists + confl_update_origin_differs"
                    " + confl_update_exists + confl_multiple_unique_conflicts"
                    " + confl_update_missing + confl_delete_missing"
                    " + confl_delete_origin_differs FROM pgferry.subscription_stats"
                )
            )
        assert counted == len(logged(node))


@pytest.mark.parametrize("mesh", [("abc", "last_update_wins")], indirect=True)
def test_three_node_mesh_with_concurrent_writes_converges(mesh: list[Node]) -> None:
    a = mesh[0]
    a.sql("INSERT INTO acc SELECT g, 0, 'a' FROM generate_series(1, 20) g")
    converge(mesh)
    # Own ranges plus the 20 shared rows.
    ranges = [range(1, 21), range(1, 21), range(1, 21)]
    _load(mesh, ranges, 8, shared=True)
    for i, node in enumerate(mesh):
        base = 1000 * (i + 1)
        node.sql(
            f"INSERT INTO acc SELECT g, g, '{node.name}'"
            f" FROM generate_series({base}, {base + 49}) g"
        )
    rows = converge(mesh)
    assert len(rows) == 20 + 150
    quiet(mesh)
