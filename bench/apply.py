"""pgferry's subscriber against PostgreSQL's own, side by side on the same clusters.

One publisher (pgbench at ``--scale``) and one subscriber server with two
databases: ``native`` (CREATE SUBSCRIPTION) and ``ferry`` (``pgferry run``). Each
scenario is run for native and then for pgferry, never both at once, and the
ratio of wall times is printed, then the table of targets:

* ``sync``: initial sync of the pgbench database, from subscription creation
  (native: CREATE SUBSCRIPTION; pgferry: what ``subscription create`` does, from
  this process, with ``pgferry run`` already running, as native's launcher is) to
  every table ready and the slot caught up;
* ``catchup``: ``--transactions`` pgbench TPC-B transactions written while both
  subscriptions are disabled, then the time from enabling each (native: ALTER
  SUBSCRIPTION; pgferry: what ``subscription alter --enable`` does, with ``pgferry
  run`` already running, as native's launcher is) to all applied (both
  subscribers start with the publisher's rows);
* ``bigtx``: one transaction updating every pgbench_accounts row; also measures
  the publisher's streaming decode floor, ``pg_recvlogical`` (protocol 2,
  streaming on) reading the same transaction to /dev/null;
* ``lag``: ``--lag-seconds`` of pgbench at the publisher's full rate (4 clients)
  while the subscriber runs; a heartbeat row, stamped with the publisher's clock
  every 50 ms, is polled on the subscriber every 10 ms: each heartbeat's lag is the
  subscriber's clock when it is first seen minus its stamp (same machine, so one
  clock; 10 ms resolution): p50 and p99;
* ``rss``: pgferry only: peak and sampled RSS of its processes while it applies
  one transaction inserting ``--rss-rows`` rows;
* ``decode``: pgferry only: ``bench.decode`` (pgoutput messages/s on one core).

"Caught up" means the subscription's slot on the publisher has confirmed the
publisher's WAL position taken right after the load, and every table is ready.

    python -m bench.apply                     # everything, reference sizes
    python -m bench.apply --scale 20 --transactions 100000 --scenarios catchup,bigtx
    python -m bench.apply --scenarios catchup --runs 5   # medians of 5 runs
    python -m bench.apply --publisher-dsn "host=a dbname=bench" --subscriber-dsn "host=b"

With ``--runs``, the table's times are the medians, and its ratio is the median
of the runs' ratios (each run pairs native and pgferry on the same load).

With DSNs, the publisher database gets the pgbench tables (``pgbench -i``) and the
subscriber server gets databases ``native`` and ``ferry`` (dropped and created);
both need ``wal_level = logical`` and a superuser.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Publisher, Timer, machine
from bench.stream import run_recvlogical
from pgferry.catalog import store
from pgferry.conninfo import parse, with_params
from pgferry.protocol import Lsn
from pgferry.subscription.manage import create_subscription
from pgferry.testing import Cluster, find_install

TABLES = (
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "bench_heartbeat",
)
HEARTBEAT = "CREATE TABLE IF NOT EXISTS bench_heartbeat (id int PRIMARY KEY, t timestamptz)"
SETTINGS = {
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "512MB",
    # PostgreSQL's default (the test clusters turn it on): with it, rows loaded
    # locally are "written by another origin" and both subscribers would report
    # an update_origin_differs per row.
    "track_commit_timestamp": "off",
}


class Server:
    """A server given by DSN, with the few things of :class:`Cluster` used here."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.default_db = parse(dsn).get("dbname", "postgres")

    def dsn(self, dbname: str | None = None) -> str:
        return with_params(self._dsn, dbname=dbname or self.default_db)

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(dbname), autocommit=True, **kwargs)

    def sql(self, query: str, dbname: str | None = None) -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(query.encode())
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        """Not ours to destroy."""


def lsn(server: Server | Cluster, query: str) -> Lsn | None:
    rows = server.sql(query)
    return Lsn.parse(str(rows[0][0])) if rows and rows[0][0] else None


def wait_caught_up(
    pub: Server | Cluster, slot: str, ready: Callable[[], bool], timeout: float
) -> None:
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


def tree_rss(root: int) -> dict[int, int]:
    """RSS in bytes of ``root`` and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    rss = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in tree:
        try:
            rss[pid] = int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * page
        except OSError:
            continue
    return rss


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.install = find_install(args.bindir)
        self.pub: Server | Cluster
        self.sub: Server | Cluster
        if args.publisher_dsn:
            self.pub = Server(args.publisher_dsn)
            self.sub = Server(args.subscriber_dsn)
        else:
            self.pub = Cluster(self.install, settings=SETTINGS)
            self.sub = Cluster(self.install, settings=SETTINGS)
        self.launcher: subprocess.Popen[bytes] | None = None
        self.results: dict[str, Any] = {}

    def start(self) -> None:
        for c in (self.pub, self.sub):
            if isinstance(c, Cluster):
                c.start()
        self._pgbench(self.pub, "-i", "-q", "-s", str(self.args.scale))
        self.pub.sql(HEARTBEAT)
        self.pub.sql("INSERT INTO bench_heartbeat VALUES (1, now()) ON CONFLICT DO NOTHING")
        self.pub.sql("DROP PUBLICATION IF EXISTS bench")
        self.pub.sql("CREATE PUBLICATION bench FOR TABLE " + ", ".join(TABLES))
        for db in ("native", "ferry"):
            self.sub.create_database(db)
            self._pgbench(self.sub, "-i", "-I", "dtp", db=db)
            self.sub.sql(HEARTBEAT, dbname=db)

    def close(self) -> None:
        self.stop_pgferry()
        for name in ("native", "ferry", "bench_floor"):
            self.pub.sql(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                f" WHERE slot_name = '{name}' AND NOT active"
            )
        for c in (self.pub, self.sub):
            c.destroy()

    def _pgbench(self, server: Server | Cluster, *args: str, db: str | None = None) -> None:
        Publisher(server.dsn(db) if db else server.dsn(), self.install).pgbench(*args)

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

    def ferry_subscribe(self, *options: str, publication: str = "bench") -> None:
        """What ``pgferry subscription create`` does (from this process, as CREATE
        SUBSCRIPTION is sent for native: no interpreter start)."""
        create_subscription(self.sub.dsn("ferry"), "ferry", self.pub.dsn(), [publication], options)

    def start_pgferry(self) -> None:
        """``pgferry run``, returning once it has its catalog connection (so that
        no timing includes the interpreter's start)."""
        self.launcher = subprocess.Popen(
            [sys.executable, "-m", "pgferry", "-d", self.sub.dsn("ferry"), "run"],
            env={**os.environ, "PGFERRY_LOG_LEVEL": "WARNING"},
            stdin=subprocess.DEVNULL,
        )
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'ferry'"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        deadline = time.monotonic() + 60
        while int(self.sub.sql(query)[0][0]) == 0:
            if time.monotonic() > deadline or self.launcher.poll() is not None:
                raise RuntimeError("pgferry run did not connect")
            time.sleep(0.05)
        time.sleep(0.2)  # (its catalog check and LISTEN)

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
        for db in ("native", "ferry"):
            self.truncate(db)  # (empty, also after another scenario)
        with Timer() as native:
            self.native_subscribe(copy=True)
            wait_caught_up(self.pub, "native", self.native_ready, timeout)
        self.native_drop()
        self.start_pgferry()
        with Timer() as ferry:
            self.ferry_subscribe()
            wait_caught_up(self.pub, "ferry", self.ferry_ready, timeout)
        self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        return native.seconds, ferry.seconds

    def subscribed_idle(self) -> None:
        """Both with the publisher's rows, subscribed without copy, workers stopped."""
        for db in ("native", "ferry"):
            self.copy_data(db)
        self.native_subscribe(copy=False)
        self.ferry_subscribe("copy_data=false")
        self.sub.sql("ALTER SUBSCRIPTION native DISABLE", dbname="native")

    def ferry_enable(self, enabled: bool) -> None:
        """What ``pgferry subscription alter --enable/--disable`` does (from this
        process, as ALTER SUBSCRIPTION is sent for native: no interpreter start)."""
        with self.sub.connect("ferry") as conn:
            store.set_enabled(conn, "ferry", enabled)

    def _measure_both(self, load: Callable[[], None]) -> tuple[float, float]:
        """Both subscribers stopped while ``load`` runs, then timed from enabling
        their subscription to caught up. Both launchers are running already:
        native's in the server, ``pgferry run`` started with its subscription
        disabled (the catalog change wakes it)."""
        timeout = self.args.timeout
        self.subscribed_idle()
        self.ferry_enable(False)
        self.start_pgferry()
        load()
        native = self.native_catch_up()
        with Timer() as ferry:
            self.ferry_enable(True)
            wait_caught_up(self.pub, "ferry", self.ferry_ready, timeout)
        self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        return native, ferry.seconds

    def native_catch_up(self) -> float:
        """Seconds from enabling the native subscription to caught up; then it is
        dropped."""
        with Timer() as native:
            self.sub.sql("ALTER SUBSCRIPTION native ENABLE", dbname="native")
            wait_caught_up(self.pub, "native", self.native_ready, self.args.timeout)
        self.native_drop()
        return native.seconds

    def catchup_load(self) -> None:
        """``--transactions`` pgbench TPC-B transactions, 4 clients."""
        per_client = max(1, self.args.transactions // 4)
        self._pgbench(self.pub, "-n", "-c", "4", "-t", str(per_client))

    def catchup(self) -> tuple[float, float]:
        return self._measure_both(self.catchup_load)

    def bigtx(self) -> tuple[float, float]:
        self.pub.sql("SELECT pg_create_logical_replication_slot('bench_floor', 'pgoutput')")
        end: list[Lsn] = []

        def update_all() -> None:
            self.pub.sql("UPDATE pgbench_accounts SET abalance = abalance + 1")
            found = lsn(self.pub, "SELECT pg_current_wal_lsn()::text")
            assert found is not None
            end.append(found)

        native, ferry = self._measure_both(update_all)
        floors = self.results.setdefault("floors", [])
        floors.append(
            run_recvlogical(
                Publisher(self.pub.dsn(), self.install), "bench_floor", end[0], 2, "bench"
            )
        )
        self.results["floor"] = statistics.median(floors)
        self.pub.sql("SELECT pg_drop_replication_slot('bench_floor')")
        print(f"bigtx: streaming decode floor {floors[-1]:.2f} s", flush=True)
        return native, ferry

    def lag(self) -> tuple[float, float]:
        """Lag under load: returns the p99s; the p50s go into the results."""
        self.subscribed_idle()
        self.sub.sql("ALTER SUBSCRIPTION native ENABLE", dbname="native")
        native = self._lag_run("native", "native", self.native_ready)
        self.native_drop()
        self.start_pgferry()
        ferry = self._lag_run("ferry", "ferry", self.ferry_ready)
        self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        self.results["lag"] = {"native": native, "ferry": ferry}
        for who, (p50, p99, drain) in (("native", native), ("pgferry", ferry)):
            print(
                f"lag: {who} p50 {p50:.3f} s, p99 {p99:.3f} s, caught up {drain:.2f} s after"
                " the load",
                flush=True,
            )
        return native[1], ferry[1]

    def _lag_run(self, db: str, slot: str, ready: Callable[[], bool]) -> tuple[float, float, float]:
        wait_caught_up(self.pub, slot, ready, self.args.timeout)
        stop = threading.Event()
        samples: list[float] = []

        def heartbeat() -> None:
            with self.pub.connect() as conn:
                while not stop.is_set():
                    conn.execute("UPDATE bench_heartbeat SET t = clock_timestamp() WHERE id = 1")
                    time.sleep(0.05)

        def sample() -> None:
            last = None
            with self.sub.connect(db) as conn:
                while not stop.is_set():
                    row = conn.execute(
                        "SELECT t, extract(epoch FROM clock_timestamp() - t)::float8"
                        " FROM bench_heartbeat WHERE id = 1"
                    ).fetchone()
                    if row is not None and row[0] != last:
                        last = row[0]
                        samples.append(float(row[1]))
                    time.sleep(0.01)

        threads = [threading.Thread(target=f, daemon=True) for f in (heartbeat, sample)]
        for t in threads:
            t.start()
        time.sleep(1)  # the heartbeat has reached the subscriber
        samples.clear()
        self._pgbench(self.pub, "-n", "-c", "4", "-T", str(self.args.lag_seconds))
        with Timer() as drain:
            wait_caught_up(self.pub, slot, ready, self.args.timeout)
        stop.set()
        for t in threads:
            t.join()
        return percentile(samples, 0.5), percentile(samples, 0.99), drain.seconds

    def rss(self) -> tuple[float, float]:
        """Peak RSS (MB) of pgferry's largest process applying one big insert."""
        rows = self.args.rss_rows
        ddl = "CREATE TABLE IF NOT EXISTS bench_rss (id bigint PRIMARY KEY, v text)"
        self.pub.sql(ddl)
        self.pub.sql("TRUNCATE bench_rss")
        self.pub.sql("DROP PUBLICATION IF EXISTS bench_rss")
        self.pub.sql("CREATE PUBLICATION bench_rss FOR TABLE bench_rss")
        self.sub.sql(ddl, dbname="ferry")
        self.sub.sql("TRUNCATE bench_rss", dbname="ferry")
        self.ferry_subscribe("copy_data=false", publication="bench_rss")
        self.pub.sql(
            f"INSERT INTO bench_rss SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
        )
        self.start_pgferry()
        assert self.launcher is not None
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            assert self.launcher is not None
            started = time.monotonic()
            while not stop.is_set():
                rss = tree_rss(self.launcher.pid)
                samples.append((time.monotonic() - started, max(rss.values(), default=0)))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Timer() as run:
            wait_caught_up(self.pub, "ferry", self.ferry_ready, self.args.timeout)
        stop.set()
        sampler.join()
        self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        count = self.sub.sql("SELECT count(*) FROM bench_rss", dbname="ferry")[0][0]
        assert count == rows, f"bench_rss has {count} rows, expected {rows}"
        peak = max(r for _, r in samples) / 2**20
        quarters = []
        for q in (0.25, 0.5, 0.75, 1.0):
            upto = [r for t, r in samples if t <= q * run.seconds] or [0]
            quarters.append(max(upto) / 2**20)
        self.results["rss_quarters"] = quarters
        print(
            f"rss: {rows} rows in one transaction applied in {run.seconds:.1f} s; peak RSS"
            f" {peak:.0f} MB; peak by quarter of the run "
            + ", ".join(f"{q:.0f}" for q in quarters)
            + " MB",
            flush=True,
        )
        return float("nan"), peak

    def decode(self) -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-m", "bench.decode", "--passes", "3"]
            + (["--bindir", self.args.bindir] if self.args.bindir else []),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found = re.search(r"decode: ([\d,]+) messages/s", out)
        assert found, out
        rate = float(found.group(1).replace(",", ""))
        print(f"decode: {rate:,.0f} messages/s", flush=True)
        return float("nan"), rate


def targets(bench: Bench, results: dict[str, tuple[float, float]]) -> list[str]:
    """The issue's table: workload, native, pgferry, ratio, target, met."""
    lines = [
        f"{'workload':34} {'native':>10} {'pgferry':>10} {'ratio':>7}  target",
    ]

    def row(name: str, native: str, ferry: str, ratio: str, target: str, met: bool) -> None:
        lines.append(
            f"{name:34} {native:>10} {ferry:>10} {ratio:>7}  {target}"
            f" [{'met' if met else 'NOT met'}]"
        )

    ratios: dict[str, float] = bench.results.get("ratios", {})
    if "catchup" in results:
        n, f = results["catchup"]
        ratio = ratios.get("catchup", f / n)
        row(
            f"catch-up, {bench.args.transactions} TPC-B txns",
            f"{n:.2f} s",
            f"{f:.2f} s",
            f"{ratio:.2f}x",
            "<= 1.0x native",
            ratio <= 1.0,
        )
    if "bigtx" in results:
        n, f = results["bigtx"]
        floor = bench.results["floor"]
        row(
            f"one txn updating {bench.args.scale * 100_000} rows",
            f"{n:.2f} s",
            f"{f:.2f} s",
            f"{f / n:.2f}x",
            f"<= 1.1x decode floor {floor:.2f} s ({f / floor:.2f}x)",
            f <= 1.1 * floor,
        )
    if "sync" in results:
        n, f = results["sync"]
        ratio = ratios.get("sync", f / n)
        row(
            f"initial sync, scale {bench.args.scale}",
            f"{n:.2f} s",
            f"{f:.2f} s",
            f"{ratio:.2f}x",
            "<= 0.8x native",
            ratio <= 0.8,
        )
    if "rss" in results:
        peak = results["rss"][1]
        quarters = bench.results["rss_quarters"]
        flat = quarters[-1] <= quarters[0] * 1.2 + 10
        row(
            f"peak RSS, {bench.args.rss_rows}-row txn",
            "-",
            f"{peak:.0f} MB",
            "-",
            "< 300 MB and flat (by quarter: " + "/".join(f"{q:.0f}" for q in quarters) + ")",
            peak < 300 and flat,
        )
    if "decode" in results:
        rate = results["decode"][1]
        row("pgoutput decode", "-", f"{rate / 1000:.0f}k/s", "-", ">= 500k msg/s", rate >= 500_000)
    if "lag" in results:
        lag = bench.results["lag"]
        for q, i in (("p50", 0), ("p99", 1)):
            n, f = lag["native"][i], lag["ferry"][i]
            lines.append(
                f"{'lag ' + q + ', pgbench full rate':34} {n:9.3f}s {f:9.3f}s {f / n:6.2f}x"
                "  (reported)"
            )
    return lines


def add_server_arguments(parser: argparse.ArgumentParser, *, scale: int) -> None:
    """The options of :class:`Bench`'s servers: throwaway clusters, or given ones."""
    parser.add_argument("--bindir", help="PostgreSQL bin directory (default: embedded)")
    parser.add_argument("--publisher-dsn", help="use this publisher database")
    parser.add_argument("--subscriber-dsn", help="use this subscriber server")
    parser.add_argument("--scale", type=int, default=scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, scale=20)
    parser.add_argument("--transactions", type=int, default=100000)
    parser.add_argument("--lag-seconds", type=int, default=30)
    parser.add_argument("--rss-rows", type=int, default=10_000_000)
    parser.add_argument("--scenarios", default="sync,catchup,bigtx,lag,rss,decode")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--runs", type=int, default=1, help="run each scenario this often; the table has medians"
    )
    args = parser.parse_args()
    if bool(args.publisher_dsn) != bool(args.subscriber_dsn):
        parser.error("give both --publisher-dsn and --subscriber-dsn, or neither")
    bench = Bench(args)
    results: dict[str, tuple[float, float]] = {}
    try:
        bench.start()
        for name in args.scenarios.split(","):
            runs = [getattr(bench, name)() for _ in range(args.runs)]
            for native, ferry in runs:
                if native == native:  # not NaN: a side-by-side scenario
                    print(
                        f"{name}: native {native:.2f} s, pgferry {ferry:.2f} s,"
                        f" ratio {ferry / native:.2f}x",
                        flush=True,
                    )
            native, ferry = (statistics.median(side) for side in zip(*runs, strict=True))
            results[name] = (native, ferry)
            if native == native:
                # Each run pairs both on the same load and machine state: the
                # table's ratio is the median of the runs' ratios.
                ratio = statistics.median(f / n for n, f in runs)
                bench.results.setdefault("ratios", {})[name] = ratio
                if args.runs > 1:
                    print(
                        f"{name}: median of {args.runs}: native {native:.2f} s,"
                        f" pgferry {ferry:.2f} s; ratio: median {ratio:.2f}x"
                        f" (of the medians: {ferry / native:.2f}x)",
                        flush=True,
                    )
    finally:
        bench.close()
    print()
    print(f"machine: {machine()}")
    version = bench.pub.sql("SHOW server_version")[0][0] if args.publisher_dsn else None
    print(
        f"PostgreSQL {version or bench.install.version}, pgbench scale {args.scale},"
        f" {args.transactions} transactions for catch-up"
    )
    for line in targets(bench, results):
        print(line)


if __name__ == "__main__":
    main()
