"""The pgbench write load: every commit recorded per client, errors reported."""

from __future__ import annotations

import time

import pytest

from pgferry.testing import Cluster
from pgferry.testing.pgbench import PgbenchLoad
from pgferry.testing.pgbouncer import LOAD_SCHEMA, PgBouncer, pgbouncer_binary


@pytest.fixture(autouse=True)
def _needs_pgbouncer() -> None:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)")


def test_every_commit_is_recorded_per_client(cluster: Cluster, dbname: str) -> None:
    cluster.sql(LOAD_SCHEMA, dbname=dbname)
    with PgBouncer({"app": cluster.dsn(dbname)}) as bouncer:
        load = PgbenchLoad(bouncer.dsn("app"), 2, pgbench=2, counter=1, base=500)
        started = time.monotonic()
        load.start()
        load.wait()
        ended = time.monotonic()
    assert load.errors == []
    accounts = [c for c in load.clients if c.kind == "pgbench"]
    (counter,) = [c for c in load.clients if c.kind == "counter"]
    assert [c.number for c in accounts] == [0, 1] and counter.number == 500
    assert all(len(c.commits) > 50 for c in load.clients)
    # Each commit is a row, at a time inside the run, in order.
    (history,) = cluster.sql("SELECT count(*) FROM history", dbname=dbname)[0]
    assert history == sum(len(c.commits) for c in accounts)
    rows = cluster.sql("SELECT n FROM counters WHERE client = 500 ORDER BY n", dbname=dbname)
    assert [n for (n,) in rows] == counter.counters == list(range(1, len(counter.commits) + 1))
    for client in load.clients:
        assert started <= client.commits[0] and client.commits[-1] <= ended
        assert client.commits == sorted(client.commits)
    assert max(load.gaps(started, ended)) < 1.0
    assert load.commits == history + len(counter.commits)


def test_a_client_error_is_reported(cluster: Cluster, dbname: str) -> None:
    # No load tables: every client's first statement fails.
    with PgBouncer({"app": cluster.dsn(dbname)}) as bouncer:
        load = PgbenchLoad(bouncer.dsn("app"), 1, pgbench=1, counter=1)
        load.start()
        load.wait()
    assert any("pgbench:" in e for e in load.errors), load.errors
    assert any("counter:" in e for e in load.errors), load.errors
    assert load.commits == 0
