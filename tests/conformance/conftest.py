"""Fixtures of the conformance tests: a publisher database, a subscriber database in
a second cluster, and ``pgferry run`` (the launcher) in a thread while a test needs it.

Each test module follows one of PostgreSQL's own ``src/test/subscription/t`` files,
in our own words, where pgferry once behaved otherwise than native."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.catalog import handover, store
from pgferry.runner import Launcher
from pgferry.subscription import AlterRequest, alter_subscription, create_subscription
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import wait_for


@dataclass
class Ferry:
    """A publisher database and a pgferry subscriber database."""

    pub: Cluster
    pub_db: str
    sub: Cluster
    sub_db: str = "sub"

    @property
    def sub_dsn(self) -> str:
        return self.sub.dsn(self.sub_db)

    def on_pub(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.pub.sql(query, params, dbname=self.pub_db)

    def on_sub(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.sub.sql(query, params, dbname=self.sub_db)

    def subscribe(self, name: str, publications: list[str], *options: str) -> None:
        create_subscription(
            self.sub_dsn, name, self.pub.dsn(self.pub_db), publications, list(options)
        )

    def alter(self, name: str, **request: Any) -> None:
        alter_subscription(self.sub_dsn, name, AlterRequest(**request))

    def states(self, name: str) -> dict[str, str]:
        with self.sub.connect(self.sub_db) as conn:
            return {f"{k[0]}.{k[1]}": s.state for k, s in handover.states(conn, name).items()}

    def subscription(self, name: str) -> store.Subscription:
        with self.sub.connect(self.sub_db) as conn:
            return store.get_subscription(conn, name)

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        wait_for(
            lambda: all(s == "r" for s in self.states(name).values()),
            f"every table of {name} ready",
            timeout,
        )

    def wait_rows(self, query: str, expected: list[tuple[Any, ...]], timeout: float = 30) -> None:
        """Wait until ``query`` on the subscriber returns ``expected``."""
        seen: list[list[tuple[Any, ...]]] = []

        def matches() -> bool:
            seen[:] = [self.on_sub(query)]
            return seen[0] == expected

        try:
            wait_for(matches, f"{query!r} = {expected!r}", timeout)
        except AssertionError:
            raise AssertionError(f"{query!r} returned {seen[0]!r}, wanted {expected!r}") from None

    @contextmanager
    def running(self) -> Iterator[Launcher]:
        """``pgferry run`` in a thread until the block ends."""
        launcher = Launcher(self.sub_dsn, poll_interval=0.2, retry_interval=1.0)
        thread = threading.Thread(target=launcher.run, daemon=True)
        thread.start()
        try:
            yield launcher
        finally:
            launcher.request_stop()
            thread.join(timeout=60)
            assert not thread.is_alive()


@pytest.fixture
def ferry(cluster: Cluster, dbname: str, make_cluster: ClusterFactory) -> Ferry:
    """A publisher database on the shared cluster, a subscriber in a new cluster."""
    subscriber = make_cluster()
    subscriber.create_database("sub")
    return Ferry(cluster, dbname, subscriber)
