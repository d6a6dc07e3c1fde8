"""A PostgreSQL 15 primary replicated by pgferry into a PostgreSQL 18 database,
clients writing through a real PgBouncer (transaction pooling) to the primary,
and a ``pgferry run`` for each side (the old primary's applies the reverse
subscription after a switchover). The primary allows prepared transactions; with
``ddl`` its publication captures DDL (:mod:`pgferry.ddl.capture`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pgferry.ddl import capture
from pgferry.runner.launcher import Launcher
from pgferry.subscription.manage import create_subscription
from pgferry.testing import Cluster, install_for_major
from pgferry.testing.pgbouncer import LOAD_SCHEMA, PgBouncer
from tests.support import wait_for

ALIAS = "app"


@dataclass
class Upgrade:
    old: Cluster
    new: Cluster
    bouncer: PgBouncer
    launchers: list[tuple[Launcher, threading.Thread]] = field(default_factory=list)

    @property
    def old_dsn(self) -> str:
        return self.old.dsn("app")

    @property
    def new_dsn(self) -> str:
        return self.new.dsn("app")

    def on_old(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.old.sql(query, params, dbname="app")

    def on_new(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.new.sql(query, params, dbname="app")

    def start_launchers(self) -> None:
        for dsn in (self.new_dsn, self.old_dsn):
            launcher = Launcher(dsn, poll_interval=0.2, retry_interval=1.0)
            thread = threading.Thread(target=launcher.run, daemon=True)
            thread.start()
            self.launchers.append((launcher, thread))

    def stop_launchers(self) -> None:
        for launcher, _ in self.launchers:
            launcher.request_stop()
        for _, thread in self.launchers:
            thread.join(timeout=60)
        self.launchers.clear()


def _subscribed(upgrade: Upgrade, name: str) -> None:
    create_subscription(
        upgrade.new_dsn, name, upgrade.old_dsn, ["pub"], ["copy_schema=true", "sequences=sync"]
    )


#: Prepared transactions on the old primary (the preflight refuses them).
OLD_SETTINGS = {"max_prepared_transactions": "4"}


@contextmanager
def upgrade_setup(name: str, *, ddl: bool = False) -> Iterator[Upgrade]:
    with (
        Cluster(install_for_major(15), settings=OLD_SETTINGS) as old,
        Cluster(install_for_major(18)) as new,
    ):
        old.create_database("app")
        new.create_database("app")
        old.sql(
            LOAD_SCHEMA + "CREATE PUBLICATION pub FOR TABLE accounts, history, counters;",
            dbname="app",
        )
        if ddl:
            with old.connect(dbname="app") as conn, conn.transaction():
                capture.enable(conn, "pub")
        with PgBouncer({ALIAS: old.dsn("app")}) as bouncer:
            upgrade = Upgrade(old, new, bouncer)
            _subscribed(upgrade, name)
            upgrade.start_launchers()
            try:
                wait_for(
                    lambda: (
                        upgrade.on_new(
                            "SELECT count(*) = 0 FROM pgferry.subscription_table WHERE state <> 'r'"
                            " UNION ALL SELECT count(*) = 0 FROM pgferry.schema_step"
                        )
                        == [(True,), (True,)]
                    ),
                    "the initial copy",
                    120,
                )
                yield upgrade
            finally:
                upgrade.stop_launchers()
