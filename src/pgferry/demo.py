"""``pgferry demo``: the whole system on two throwaway embedded PostgreSQL clusters.

1. starts a publisher and a subscriber cluster (the embedded PostgreSQL 18 of the
   ``embedded`` extra, or ``PGFERRY_PG_BINDIR``) in a temporary directory;
2. ``pgbench -i`` on the publisher, the same empty tables on the subscriber, a
   publication of the four pgbench tables;
3. ``subscription create`` (initial copy on) and the launcher (``pgferry run``);
4. a short pgbench write load while a live view shows the table states, the
   positions and the lag;
5. waits until the subscriber has applied everything and compares the tables
   row by row (an md5 of every table, ordered);
6. removes everything, or with ``keep`` leaves both clusters running and prints
   how to connect and how to resume replication.

Everything it does goes through the same code as the commands; it prints no
password (the clusters trust local connections).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from pgferry.catalog import TableState, handover
from pgferry.protocol.lsn import Lsn
from pgferry.runner import Launcher
from pgferry.runner.env import LOG_LEVEL_ENV
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster, find_install

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
ORDER = {
    "pgbench_accounts": "aid",
    "pgbench_branches": "bid",
    "pgbench_tellers": "tid",
    "pgbench_history": "tid, bid, aid, delta, mtime",
}


@dataclass
class DemoResult:
    identical: bool
    transactions: int
    seconds: float
    publisher_dsn: str
    subscriber_dsn: str


def _lsn(cluster: Cluster, query: str) -> Lsn | None:
    rows = cluster.sql(query)
    return Lsn.parse(str(rows[0][0])) if rows and rows[0][0] else None


def _checksum(cluster: Cluster, table: str) -> str:
    rows = cluster.sql(
        f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY {ORDER[table]}), '')) FROM {table} t"
    )
    return str(rows[0][0])


def _view(publisher: Cluster, subscriber: Cluster, phase: str, started: float) -> Table:
    table = Table(title=f"pgferry demo: {phase}", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    current = _lsn(publisher, "SELECT pg_current_wal_lsn()::text")
    confirmed = _lsn(
        publisher,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'demo'",
    )
    with subscriber.connect() as conn:
        states = handover.states(conn, "demo")
    summary = " ".join(
        f"{s}:{n}"
        for s, n in sorted(
            {s: sum(1 for t in states.values() if t.state == s) for s in TableState}.items()
        )
        if n
    )
    table.add_row("elapsed", f"{time.monotonic() - started:.1f} s")
    table.add_row("table states", summary or "-")
    table.add_row("publisher WAL", str(current))
    table.add_row("applied (slot confirmed)", str(confirmed))
    lag = (current - confirmed) if current is not None and confirmed is not None else None
    table.add_row("lag", "-" if lag is None else f"{lag:,} bytes")
    rows = subscriber.sql("SELECT count(*) FROM pgbench_history")[0][0]
    table.add_row("history rows on the subscriber", f"{rows:,}")
    return table


def _until(condition: Callable[[], bool], timeout: float, on_tick: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        on_tick()
        time.sleep(0.3)
    return condition()


def run_demo(console: Console, *, keep: bool = False, seconds: int = 10) -> DemoResult:
    install = find_install()
    started = time.monotonic()
    console.print(f"Starting two PostgreSQL {install.version} clusters (publisher, subscriber)...")
    publisher = Cluster(install)
    subscriber = Cluster(install)
    launcher: Launcher | None = None
    thread: threading.Thread | None = None
    try:
        publisher.start()
        subscriber.start()
        pgbench = str(install.bin("pgbench"))
        console.print("Creating the pgbench schema (scale 1) and a publication...")
        env_pub = ["-h", publisher.host, "-p", str(publisher.port), "-U", "postgres"]
        env_sub = ["-h", subscriber.host, "-p", str(subscriber.port), "-U", "postgres"]
        subprocess.run(
            [pgbench, *env_pub, "-i", "-q", "-s", "1", "postgres"], check=True, capture_output=True
        )
        subprocess.run(
            [pgbench, *env_sub, "-i", "-I", "dtp", "postgres"], check=True, capture_output=True
        )
        publisher.sql("CREATE PUBLICATION demo_pub FOR TABLE " + ", ".join(TABLES))
        result = create_subscription(subscriber.dsn(), "demo", publisher.dsn(), ["demo_pub"])
        console.print(
            f"Subscribed: slot {result.slot_name!r}, {len(result.tables)} tables to copy."
        )
        # The workers' progress lines would scroll the live view away.
        os.environ.setdefault(LOG_LEVEL_ENV, "WARNING")
        launcher = Launcher(subscriber.dsn(), poll_interval=0.5)
        thread = threading.Thread(target=launcher.run, daemon=True)
        thread.start()

        load = subprocess.Popen(
            [pgbench, *env_pub, "-n", "-c", "2", "-T", str(seconds), "postgres"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        with Live(console=console, refresh_per_second=4, transient=False) as live:

            def tick(phase: str) -> Callable[[], None]:
                return lambda: live.update(_view(publisher, subscriber, phase, started))

            while load.poll() is None:
                tick(f"pgbench writing for {seconds} s")()
                time.sleep(0.5)
            out = load.communicate()[0].decode()
            target = _lsn(publisher, "SELECT pg_current_wal_lsn()::text")
            assert target is not None

            def caught_up() -> bool:
                confirmed = _lsn(
                    publisher,
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                    " WHERE slot_name = 'demo'",
                )
                with subscriber.connect() as conn:
                    ready = all(
                        s.state == TableState.READY for s in handover.states(conn, "demo").values()
                    )
                return ready and confirmed is not None and confirmed >= target

            done = _until(caught_up, 120, tick("catching up"))
            tick("caught up" if done else "not caught up")()
        transactions = _pgbench_transactions(out)
        identical = done and all(
            _checksum(publisher, t) == _checksum(subscriber, t) for t in TABLES
        )
        elapsed = time.monotonic() - started
        if identical:
            console.print(
                f"[green]Identical:[/green] all {len(TABLES)} tables match row for row after"
                f" {transactions:,} pgbench transactions ({elapsed:.0f} s in all)."
            )
        else:
            console.print("[red]The subscriber differs from the publisher.[/red]")
        return DemoResult(identical, transactions, elapsed, publisher.dsn(), subscriber.dsn())
    finally:
        if launcher is not None:
            launcher.request_stop()
        if thread is not None:
            thread.join(timeout=60)
        if keep:
            publisher.detach()
            subscriber.detach()
            console.print(
                "Clusters left running:\n"
                f"  publisher:  psql '{publisher.dsn()}'\n"
                f"  subscriber: psql '{subscriber.dsn()}'\n"
                f"  resume replication: pgferry -d '{subscriber.dsn()}' run\n"
                f"  status:             pgferry -d '{subscriber.dsn()}' status\n"
                f"  remove them: {_stop_hint(publisher)}; {_stop_hint(subscriber)}"
            )
        else:
            for cluster in (publisher, subscriber):
                cluster.destroy()


def _stop_hint(cluster: Cluster) -> str:
    return f"{cluster.install.bin('pg_ctl')} stop -D {cluster.data_dir} && rm -rf {cluster.path}"


def _pgbench_transactions(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("number of transactions actually processed:"):
            value: Any = line.split(":", 1)[1].split("/")[0].strip()
            return int(value)
    return 0


def have_pgbench() -> bool:
    try:
        find_install().bin("pgbench")
    except Exception:
        return shutil.which("pgbench") is not None
    return True
