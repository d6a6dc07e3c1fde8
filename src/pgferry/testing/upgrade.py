"""A live major upgrade to switch over, for tests and benchmarks.

:func:`upgrade_setup` builds it: a PostgreSQL 15 primary (database ``app``, the
tables of :data:`~pgferry.testing.pgbouncer.LOAD_SCHEMA` in publication ``pub``)
replicated by pgferry (``copy_schema``, ``sequences=sync``) into a PostgreSQL 18
database, a real PgBouncer in transaction pooling mode in front of the primary
(database :data:`ALIAS`), and a launcher for each side in a process of its own
(:class:`~pgferry.testing.launcher.LauncherProcess`, as ``pgferry run``; the old
primary's applies the reverse subscription after a switchover). It yields an
:class:`Upgrade` once every table is ready. The primary allows prepared
transactions; with ``ddl`` its publication captures DDL
(:mod:`pgferry.ddl.capture`). Everything is removed on exit.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgferry.ddl import capture
from pgferry.subscription.manage import create_subscription
from pgferry.testing import Cluster, install_for_major
from pgferry.testing.launcher import LauncherProcess
from pgferry.testing.pgbouncer import LOAD_SCHEMA, PgBouncer

ALIAS = "app"


@dataclass
class Upgrade:
    old: Cluster
    new: Cluster
    bouncer: PgBouncer
    #: Where the launchers' logs go.
    logs: Path
    launchers: list[LauncherProcess] = field(default_factory=list)

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
        for side, dsn in (("new", self.new_dsn), ("old", self.old_dsn)):
            self.launchers.append(LauncherProcess(dsn, self.logs / f"run-{side}.log"))

    def stop_launchers(self) -> None:
        for launcher in self.launchers:
            launcher.stop()
        self.launchers.clear()

    def launcher_logs(self) -> str:
        return "\n".join(launcher.read_log() for launcher in self.launchers)


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
            upgrade = Upgrade(old, new, bouncer, Path(tempfile.mkdtemp(prefix="pgferry-upgrade-")))
            _subscribed(upgrade, name)
            upgrade.start_launchers()
            try:
                _wait_for(
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
                shutil.rmtree(upgrade.logs, ignore_errors=True)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
