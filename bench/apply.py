"""pgferry's subscriber against PostgreSQL's own, side by side on the same clusters.

One publisher (pgbench at ``--scale``) and one subscriber cluster with two
databases: ``native`` (CREATE SUBSCRIPTION) and ``ferry`` (``pgferry run``). Each
scenario is run for native and then for pgferry, never both at once, and the
ratio of wall times is printed:

* ``sync``: initial sync of the pgbench database, from subscription creation to
  every table ready and the slot caught up;
* ``catchup``: ``--transactions`` pgbench TPC-B transactions written while the
  subscription is disabled (native) or not running (pgferry), then time to apply
  them all;
* ``bigtx``: one transaction updating every pgbench_accounts row.

"Caught up" means the subscription's slot on the publisher has confirmed the
publisher's WAL position taken right after the load, and every table is ready.

    python -m bench.apply [--scale 20] [--transactions 100000] [--scenarios sync,catchup,bigtx]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

from bench.common import Timer, machine
from pgferry.protocol import Lsn
from pgferry.testing import Cluster, find_install

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
SETTINGS = {
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "512MB",
    # PostgreSQL's default (the test clusters turn it on): with it, rows loaded
    # locally are "written by another origin" and both subscribers would report
    # an update_origin_differs per row.
    "track_commit_timestamp": "off",
}


def lsn(cluster: Cluster, query: str, db: str = "postgres") -> Lsn | None:
    rows = cluster.sql(query, dbname=db)
    return Lsn.parse(str(rows[0][0])) if rows and rows[0][0] else None


def wait_caught_up(pub: Cluster, slot: str, ready: Callable[[], bool], timeout: float) -> None:
    target = lsn(pub, "SELECT pg_current_wal_lsn()::text")
    assert target is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        confirmed = lsn(
            pub,
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
            f" WHERE slot_name = '{slot}'",
        )
        if confirmed is not None and confirmed >= target and ready():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{slot} did not catch up within {timeout} s")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        install = find_install(args.bindir)
        self.install = install
        self.pub = Cluster(install, settings=SETTINGS)
        self.sub = Cluster(install, settings=SETTINGS)
        self.pgbench = str(install.bin("pgbench"))
        self.launcher: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.pub.start()
        self.sub.start()
        self._pgbench(self.pub, "-i", "-q", "-s", str(self.args.scale))
        self.pub.sql("CREATE PUBLICATION bench FOR TABLE " + ", ".join(TABLES))
        for db in ("native", "ferry"):
            self.sub.create_database(db)
            self._pgbench(self.sub, "-i", "-I", "dtp", db=db)

    def close(self) -> None:
        self.stop_pgferry()
        for c in (self.pub, self.sub):
            c.destroy()

    def _pgbench(self, cluster: Cluster, *args: str, db: str = "postgres") -> None:
        subprocess.run(
            [
                self.pgbench,
                "-h",
                cluster.host,
                "-p",
                str(cluster.port),
                "-U",
                "postgres",
                *args,
                db,
            ],
            check=True,
            capture_output=True,
        )

    def truncate(self, db: str) -> None:
        self.sub.sql("TRUNCATE " + ", ".join(TABLES), dbname=db)

    def copy_data(self, db: str) -> None:
        """The publisher's rows into subscriber database ``db`` (as a sync would)."""
        self.truncate(db)
        with self.pub.connect() as src, self.sub.connect(db) as dst:
            for table in TABLES:
                with (
                    src.cursor().copy(f"COPY {table} TO STDOUT") as out,
                    dst.cursor().copy(f"COPY {table} FROM STDIN") as into,
                ):
                    for data in out:
                        into.write(data)
            dst.commit()
        self.sub.sql("VACUUM ANALYZE", dbname=db)

    # -- native ----------------------------------------------------------------------------

    def native_subscribe(self, copy: bool) -> None:
        self.sub.sql(
            f"CREATE SUBSCRIPTION native CONNECTION '{self.pub.dsn()}' PUBLICATION bench"
            f" WITH (copy_data = {str(copy).lower()})",
            dbname="native",
        )

    def native_ready(self) -> bool:
        rows = self.sub.sql(
            "SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel",
            dbname="native",
        )
        return int(rows[0][0]) == 0

    def native_drop(self) -> None:
        self.sub.sql("DROP SUBSCRIPTION IF EXISTS native", dbname="native")

    # -- pgferry -------------------------------------------------------------------------

    def pgferry(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "pgferry", "-d", self.sub.dsn("ferry"), *args],
            check=True,
            capture_output=True,
        )

    def start_pgferry(self) -> None:
        self.launcher = subprocess.Popen(
            [sys.executable, "-m", "pgferry", "-d", self.sub.dsn("ferry"), "run"],
            env={**os.environ, "PGFERRY_LOG_LEVEL": "WARNING"},
            stdin=subprocess.DEVNULL,
        )

    def stop_pgferry(self) -> None:
        if self.launcher is not None:
            self.launcher.terminate()
            self.launcher.wait(timeout=120)
            self.launcher = None

    def ferry_ready(self) -> bool:
        rows = self.sub.sql(
            "SELECT count(*) FILTER (WHERE state <> 'r') FROM pgferry.subscription_table",
            dbname="ferry",
        )
        return int(rows[0][0]) == 0

    # -- scenarios ---------------------------------------------------------------------

    def sync(self) -> tuple[float, float]:
        timeout = self.args.timeout
        with Timer() as native:
            self.native_subscribe(copy=True)
            wait_caught_up(self.pub, "native", self.native_ready, timeout)
        self.native_drop()
        with Timer() as ferry:
            self.pgferry(
                "subscription",
                "create",
                "ferry",
                "--connection",
                self.pub.dsn(),
                "--publication",
                "bench",
            )
            self.start_pgferry()
            wait_caught_up(self.pub, "ferry", self.ferry_ready, timeout)
        self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        return native.seconds, ferry.seconds

    def _subscribed_idle(self) -> None:
        """Both with the publisher's rows, subscribed without copy, workers stopped."""
        for db in ("native", "ferry"):
            self.copy_data(db)
        self.native_subscribe(copy=False)
        self.pgferry(
            "subscription",
            "create",
            "ferry",
            "--connection",
            self.pub.dsn(),
            "--publication",
            "bench",
            "--with",
            "copy_data=false",
        )
        self.sub.sql("ALTER SUBSCRIPTION native DISABLE", dbname="native")

    def _measure_both(self, load: Callable[[], None]) -> tuple[float, float]:
        timeout = self.args.timeout
        self._subscribed_idle()
        load()
        with Timer() as native:
            self.sub.sql("ALTER SUBSCRIPTION native ENABLE", dbname="native")
            wait_caught_up(self.pub, "native", self.native_ready, timeout)
        self.native_drop()
        with Timer() as ferry:
            self.start_pgferry()
            wait_caught_up(self.pub, "ferry", self.ferry_ready, timeout)
        self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        return native.seconds, ferry.seconds

    def catchup(self) -> tuple[float, float]:
        per_client = max(1, self.args.transactions // 4)
        return self._measure_both(
            lambda: self._pgbench(self.pub, "-n", "-c", "4", "-t", str(per_client))
        )

    def bigtx(self) -> tuple[float, float]:
        def update_all() -> None:
            self.pub.sql("UPDATE pgbench_accounts SET abalance = abalance + 1")

        return self._measure_both(update_all)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindir", help="PostgreSQL bin directory (default: embedded)")
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--transactions", type=int, default=100000)
    parser.add_argument("--scenarios", default="sync,catchup,bigtx")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    bench = Bench(args)
    results: list[tuple[str, float, float]] = []
    try:
        bench.start()
        for name in args.scenarios.split(","):
            native, ferry = getattr(bench, name)()
            results.append((name, native, ferry))
            print(
                f"{name}: native {native:.2f} s, pgferry {ferry:.2f} s,"
                f" ratio {ferry / native:.2f}x",
                flush=True,
            )
    finally:
        bench.close()
    print(f"machine: {machine()}")
    print(
        f"PostgreSQL {bench.install.version}, pgbench scale {args.scale},"
        f" {args.transactions} transactions for catchup"
    )
    print(f"{'scenario':10} {'native':>10} {'pgferry':>10} {'ratio':>8}")
    for name, native, ferry in results:
        print(f"{name:10} {native:9.2f}s {ferry:9.2f}s {ferry / native:7.2f}x")


if __name__ == "__main__":
    main()
