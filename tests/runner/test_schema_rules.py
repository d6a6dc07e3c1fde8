"""The launcher's rules for the schema copy, on a real catalog: the largest
pending table is copied first, and the ``schema`` worker (the steps that wait
for every table) is wanted only once every table is ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgferry.catalog import Subscription, SubscriptionTable, TableState, ensure_catalog, store
from pgferry.catalog.steps import PHASE_FINAL, Step, store_steps
from pgferry.runner.kinds import build
from pgferry.runner.launcher import Launcher
from pgferry.schema.steps import FinalStepsWorker
from pgferry.testing import Cluster
from tests.status import Env, environment


@pytest.fixture
def env(cluster: Cluster, dbname: str, tmp_path: Path) -> Iterator[Env]:
    with environment(cluster, dbname, tmp_path) as created:
        yield created


def _register(env: Env, sizes: dict[str, int], state: TableState) -> None:
    with env.cluster.connect(env.sub) as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn, Subscription("ferry", env.pub_dsn, ("pub",), "ferry", "pgferry_ferry")
        )
        for name in sizes:
            store.upsert_table(
                conn, SubscriptionTable("ferry", "public", name, "public", name, state, None)
            )
        store.set_table_sizes(conn, "ferry", {("public", n): size for n, size in sizes.items()})


def test_the_largest_table_is_copied_first(env: Env) -> None:
    _register(env, {"a_small": 10, "b_big": 10_000, "c_middle": 500}, TableState.INIT)
    with env.cluster.connect(env.sub) as conn:
        launcher = Launcher(env.sub_dsn, max_sync_workers_per_subscription=2)
        syncing = {k for k in launcher.wanted(conn) if k[0] == "sync"}
    assert syncing == {
        ("sync", "ferry", "public", "b_big"),
        ("sync", "ferry", "public", "c_middle"),
    }


def test_the_schema_worker_waits_for_every_table(env: Env) -> None:
    _register(env, {"t": 1}, TableState.INIT)
    with env.cluster.connect(env.sub) as conn:
        with conn.transaction():
            store_steps(conn, "ferry", [Step(None, PHASE_FINAL, "FK CONSTRAINT x", "SELECT 1")])
        assert ("schema", "ferry") not in Launcher(env.sub_dsn).wanted(conn)
        store.set_table_state(conn, "ferry", "public", "t", TableState.READY, None)
        assert ("schema", "ferry") in Launcher(env.sub_dsn).wanted(conn)
    worker = build(env.sub_dsn, ["schema", "ferry"])
    assert isinstance(worker, FinalStepsWorker)
    worker.run()
    with env.cluster.connect(env.sub) as conn:
        assert conn.execute("SELECT count(*) FROM pgferry.schema_step").fetchone() == (0,)
        assert ("schema", "ferry") not in Launcher(env.sub_dsn).wanted(conn)
