"""``pgferry verify``'s speed on pgbench, against the time to hash every row once.

Two throwaway clusters (``--bindir`` for the subscriber, ``--publisher-bindir``
for the publisher, e.g. PostgreSQL 15 for the upgrade path; both default to the
embedded 18): pgbench at ``--scale`` on the publisher, a pgferry subscription with
``copy_schema`` to the subscriber, ``pgferry run`` in this process; then

* ``floor``: the time both servers take to read and hash every published row
  once: on each server at the same time, one session per table in turn running
  ``SELECT count(*), sum(hashtextextended(ROW(cols)::text, 0)::numeric)`` over
  it (the wall time until both are done);
* ``verify``: :func:`pgferry.verify.verify_subscription` with ``--jobs``, no
  differences (the median of ``--runs``); target: within 2x the floor;
* ``planted``: 100 differences planted on the subscriber's pgbench_accounts (34
  rows deleted, 33 inserted, 33 changed), one verify, which must list exactly
  those keys; then ``--repair`` and one more verify, which must be clean;
* ``load``: ``--load-verifies`` verifies (20) one after another while pgbench
  writes on the publisher (``-c 2``, TPC-B), each of which must find nothing.

    python -m bench.verify                      # scale 20, 18 -> 18
    python -m bench.verify --publisher-bindir /usr/lib/postgresql/15/bin

At the end: rows in the form of docs/benchmarks.md's, the machine and the commit.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

from bench.common import Publisher, Timer, machine, prepare_pgbench
from pgferry.runner import Launcher
from pgferry.status.wait import wait_ready
from pgferry.subscription.manage import create_subscription
from pgferry.testing import Cluster, PgInstall, find_install
from pgferry.verify import verify_subscription

SUBSCRIPTION = "bench_verify"
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def hash_everything(cluster: Cluster) -> None:
    """Read and hash every published row once, one table after the other."""
    with cluster.connect() as conn:
        for table in TABLES:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (table,),
                ).fetchall()
            ]
            row = ", ".join(f'"{c}"' for c in columns)
            conn.execute(
                f"SELECT count(*), sum(hashtextextended(ROW({row})::text, 0)::numeric)"
                f" FROM {table}".encode()
            ).fetchall()


def on_both(pub: Cluster, sub: Cluster, fn: Callable[[Cluster], None]) -> float:
    threads = [threading.Thread(target=fn, args=(c,)) for c in (pub, sub)]
    with Timer() as timer:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return timer.seconds


def plant(sub: Cluster) -> set[tuple[str, str]]:
    """100 differences in pgbench_accounts; returns (kind, aid) of each."""
    sub.sql(
        """
        DELETE FROM pgbench_accounts WHERE aid % 50000 = 7 AND aid <= 34 * 50000;
        INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
            SELECT 10000000 + g, 1, 0, 'planted' FROM generate_series(1, 33) g;
        UPDATE pgbench_accounts SET abalance = abalance + 1
            WHERE aid % 50000 = 11 AND aid <= 33 * 50000;
        """
    )
    planted = {("missing", str(k * 50000 + 7)) for k in range(34)}
    planted |= {("extra", str(10000000 + g)) for g in range(1, 34)}
    planted |= {("different", str(k * 50000 + 11)) for k in range(33)}
    return planted


def under_load(
    pub: Cluster, install: PgInstall, sub: Cluster, args: argparse.Namespace
) -> tuple[int, list[float], list[float]]:
    """Verifies while pgbench writes: (how many found differences, held s, verify s)."""
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            Publisher(pub.dsn(), install).pgbench("-n", "-c", "2", "-T", "5")

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    false, held, seconds = 0, [], []
    try:
        time.sleep(2)
        for _ in range(args.load_verifies):
            with Timer() as timer:
                report = verify_subscription(sub.dsn(), SUBSCRIPTION, jobs=args.jobs)
            false += 0 if report.identical else 1
            held.append(report.held_seconds or 0.0)
            seconds.append(timer.seconds)
    finally:
        stop.set()
        thread.join(timeout=60)
    return false, held, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindir", help="subscriber's PostgreSQL bin directory")
    parser.add_argument("--publisher-bindir", help="publisher's (default: --bindir)")
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-verifies", type=int, default=20)
    args = parser.parse_args()
    sub_install = find_install(args.bindir)
    pub_install = find_install(args.publisher_bindir or args.bindir)
    with Cluster(pub_install) as pub, Cluster(sub_install) as sub:
        prepare_pgbench(Publisher(pub.dsn(), pub_install), args.scale)
        pub.sql("VACUUM ANALYZE")
        launcher = Launcher(sub.dsn(), poll_interval=0.2)
        thread = threading.Thread(target=launcher.run, daemon=True)
        thread.start()
        try:
            create_subscription(
                sub.dsn(), SUBSCRIPTION, pub.dsn(), ["bench_pub"], ["copy_schema=true"]
            )
            wait_ready(sub.dsn(), SUBSCRIPTION, timeout=1800)
            sub.sql("VACUUM ANALYZE")
            floors = [on_both(pub, sub, hash_everything) for _ in range(args.runs)]
            times: list[float] = []
            held: list[float] = []
            for _ in range(args.runs):
                with Timer() as timer:
                    report = verify_subscription(sub.dsn(), SUBSCRIPTION, jobs=args.jobs)
                assert report.identical, report
                times.append(timer.seconds)
                held.append(report.held_seconds or 0.0)
            planted = plant(sub)
            with Timer() as found_timer:
                report = verify_subscription(sub.dsn(), SUBSCRIPTION, jobs=args.jobs)
            found = {
                (kind, key[0])
                for t in report.tables
                for kind, keys in t.keys.items()
                for key in keys
                if key[0] is not None
            }
            exact = found == planted and report.differences == 100
            repaired = verify_subscription(sub.dsn(), SUBSCRIPTION, jobs=args.jobs, repair=True)
            clean = verify_subscription(sub.dsn(), SUBSCRIPTION, jobs=args.jobs).identical
            loaded = under_load(pub, pub_install, sub, args)
        finally:
            launcher.request_stop()
            thread.join(timeout=60)
        floor, verify = statistics.median(floors), statistics.median(times)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        versions = f"{pub_install.version} -> {sub_install.version}"
        print(f"## verify, pgbench scale {args.scale}, {versions}, --jobs {args.jobs}")
        print(f"{datetime.date.today()}, {machine()}, commit {commit}")
        print()
        print("| measure | value | target |")
        print("|---|---|---|")
        print(f"| hash every row once, both servers (floor) | {floor:.2f} s | - |")
        print(
            f"| verify, no differences (median of {args.runs}) | {verify:.2f} s"
            f" ({verify / floor:.2f}x floor) | <= 2x |"
        )
        print(f"| apply held per verify (median) | {statistics.median(held) * 1000:.0f} ms | - |")
        print(
            f"| verify, 100 planted differences | {found_timer.seconds:.2f} s,"
            f" {report.differences} found, {'exactly' if exact else 'NOT exactly'} |"
            " all 100, exactly |"
        )
        fixed = sum(sum(t.repaired.values()) for t in repaired.tables)
        verdict = "clean" if clean else "NOT clean"
        print(f"| --repair, then verify | {fixed} fixed, {verdict} | clean |")
        false, held_load, seconds = loaded
        print(
            f"| {args.load_verifies} verifies under pgbench -c 2 | {false} with differences;"
            f" held p50 {statistics.median(held_load) * 1000:.0f} ms,"
            f" max {max(held_load) * 1000:.0f} ms; verify p50 {statistics.median(seconds):.2f} s"
            " | none with differences |"
        )


if __name__ == "__main__":
    main()
