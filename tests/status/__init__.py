"""Shared setup of the status and wait tests: a publisher database and a subscriber
database on the shared cluster, tables ``t`` and ``u`` on both, publication
``pub`` of both, and ``pgferry run`` as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg.abc import Params, QueryNoTemplate

from pgferry.subscription import CreateResult, create_subscription
from pgferry.testing import Cluster
from tests.support import PGFERRY, drop_origins, wait_for

PASSWORD = "s3cret-Pa55"  # noqa: S105 - never a real password
DDL = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY)"


def until(condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    wait_for(condition, what, timeout)


@dataclass
class Env:
    cluster: Cluster
    pub: str
    sub: str
    logs: Path
    launchers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pub_dsn(self) -> str:
        return self.cluster.dsn(self.pub)

    @property
    def sub_dsn(self) -> str:
        return self.cluster.dsn(self.sub)

    def on_pub(self, query: QueryNoTemplate, params: Params | None = None) -> list[tuple[Any, ...]]:
        return self.cluster.sql(query, params, dbname=self.pub)

    def on_sub(self, query: QueryNoTemplate, params: Params | None = None) -> list[tuple[Any, ...]]:
        return self.cluster.sql(query, params, dbname=self.sub)

    def create(
        self, name: str = "ferry", *options: str, conninfo: str | None = None
    ) -> CreateResult:
        return create_subscription(self.sub_dsn, name, conninfo or self.pub_dsn, ("pub",), options)

    def launch(self) -> subprocess.Popen[bytes]:
        """``pgferry -d SUB run``; its log goes to a file shown by :meth:`log`."""
        log = self.logs / f"launcher-{len(self.launchers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*PGFERRY, "-d", self.sub_dsn, "run"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, "PGFERRY_LOG_LEVEL": "INFO"},
            )
        self.launchers.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, self.log()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def worker_pid(self, name: str = "ferry") -> int | None:
        rows = self.on_sub(
            "SELECT pid FROM pgferry.worker WHERE subscription = %s AND relation = ''", (name,)
        )
        return int(rows[0][0]) if rows else None

    def slot_active(self, slot: str = "ferry") -> bool:
        rows = self.on_pub("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return bool(rows and rows[0][0])


@contextmanager
def environment(cluster: Cluster, dbname: str, logs: Path) -> Iterator[Env]:
    sub = dbname[:50] + "_sub"
    cluster.create_database(sub)
    # Replication origins belong to the cluster; other tests leave theirs behind.
    drop_origins(cluster)
    cluster.sql(DDL, dbname=dbname)
    cluster.sql(DDL, dbname=sub)
    cluster.sql("CREATE PUBLICATION pub FOR TABLE t, u", dbname=dbname)
    env = Env(cluster, dbname, sub, logs)
    try:
        yield env
    finally:
        for proc in env.launchers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        cluster.drop_database(sub)
        drop_origins(cluster)
