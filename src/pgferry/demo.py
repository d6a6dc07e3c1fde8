"""``pgferry demo``: the whole system on two throwaway embedded PostgreSQL clusters.

1. starts a publisher and a subscriber cluster (the embedded PostgreSQL 18 of the
   ``embedded`` extra, or ``PGFERRY_PG_BINDIR``) in a temporary directory;
2. ``pgbench -i`` on the publisher, the same empty tables on the subscriber, a
   publication of the four pgbench tables;
3. ``subscription create`` (initial copy on) and the launcher (``pgferry run``);
4. a short pgbench write load while a live view shows what ``pgferry status``
   shows: the initial copy's progress, the table states, the positions and the
   lag;
5. waits until the subscriber has applied everything and compares the tables
   row by row (an md5 of every table, ordered);
6. removes everything, or with ``keep`` leaves both clusters running, records
   them in :func:`state_path` and prints how to connect, how to resume
   replication and how to remove them: :func:`stop_demo` (``pgferry demo
   --stop``) stops and removes every kept cluster, as root too (the servers run
   as the unprivileged user of :mod:`pgferry.testing.cluster`, which stops them).

Everything it does goes through the same code as the commands; it prints no
password (the clusters trust local connections). Printed commands are never
wrapped, and name the executable that was started when the ``pgferry`` on PATH
is another one (:func:`pgferry.logs.rewrite_hint`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.live import Live
from rich.text import Text

from pgferry import logs
from pgferry.catalog import TableState, handover
from pgferry.errors import PgferryError
from pgferry.protocol.lsn import Lsn
from pgferry.runner import Launcher
from pgferry.runner.env import LOG_LEVEL_ENV
from pgferry.status import collect
from pgferry.status.render import render_text
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster, PgInstall, find_install

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


def _view(subscriber: Cluster, phase: str, started: float, width: int) -> Text:
    """What ``pgferry status`` says, under the demo's phase and time."""
    rows = subscriber.sql("SELECT count(*) FROM pgbench_history")[0][0]
    try:
        body = render_text(collect(subscriber.dsn()), width)
    except (PgferryError, psycopg.Error) as exc:
        body = f"status: {exc}"
    return Text(
        f"pgferry demo: {phase} ({time.monotonic() - started:.1f} s;"
        f" {rows:,} history rows on the subscriber)\n{body}"
    )


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
                return lambda: live.update(_view(subscriber, phase, started, console.width))

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
        console.print()  # the view's last line ends here when not on a terminal
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
        if keep and publisher.is_running() and subscriber.is_running():
            _keep(console, publisher, subscriber)
        else:
            for cluster in (publisher, subscriber):
                cluster.destroy()


def state_path() -> Path:
    """Where ``demo --keep`` records its clusters for ``demo --stop``:
    ``$XDG_STATE_HOME/pgferry/demo.json`` (``~/.local/state`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "pgferry" / "demo.json"


def _kept() -> list[dict[str, Any]]:
    try:
        found = json.loads(state_path().read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise PgferryError(
            f"cannot read the demo's record of its clusters ({state_path()}): {exc}",
            hint=f"remove {state_path()} and the pgferry-* directories it named by hand",
        ) from None
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def _record(clusters: list[Cluster]) -> None:
    entries = _kept() + [
        {
            "path": str(c.path),
            "bindir": str(c.install.bindir),
            "libdir": None if c.install.libdir is None else str(c.install.libdir),
            "socket_dir": c.host,
            "port": c.port,
        }
        for c in clusters
    ]
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(path)


def _command(*args: str) -> str:
    """A pgferry command line as the user can paste it (the executable started)."""
    return logs.rewrite_hint(" ".join(["pgferry", *(shlex.quote(a) for a in args)]))


def _keep(console: Console, publisher: Cluster, subscriber: Cluster) -> None:
    publisher.detach()
    subscriber.detach()
    _record([publisher, subscriber])
    lines = [
        "Clusters left running:",
        f"  publisher:          psql {shlex.quote(publisher.dsn())}",
        f"  subscriber:         psql {shlex.quote(subscriber.dsn())}",
        f"  resume replication: {_command('-d', subscriber.dsn(), 'run')}",
        f"  status:             {_command('-d', subscriber.dsn(), 'status')}",
        f"  remove them:        {_command('demo', '--stop')}",
    ]
    for line in lines:  # whole lines, never wrapped: they are to be copied
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def stop_demo(console: Console) -> int:
    """Stop and remove every cluster ``demo --keep`` left running (see
    :func:`state_path`); the number removed. One that is gone already is
    forgotten."""
    entries = _kept()
    for entry in entries:
        path = Path(entry["path"])
        if not path.exists():
            console.print(f"{path}: already gone", soft_wrap=True, markup=False, highlight=False)
            continue
        libdir = entry.get("libdir")
        install = PgInstall.from_bindir(
            entry["bindir"], libdir=None if libdir is None else Path(libdir)
        )
        cluster = Cluster.adopt(path, install, Path(entry["socket_dir"]), int(entry["port"]))
        cluster.destroy()
        console.print(f"{path}: stopped and removed", soft_wrap=True, markup=False, highlight=False)
    state_path().unlink(missing_ok=True)
    if not entries:
        console.print("no clusters kept by pgferry demo --keep")
    return len(entries)


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
