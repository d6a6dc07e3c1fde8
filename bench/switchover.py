"""The switchover's write pause, measured: repeated switchovers under a write load.

The environment of the switchover tests (:mod:`pgferry.testing.upgrade`): a
PostgreSQL 15 primary, replicated by pgferry into PostgreSQL 18 (``copy_schema``),
a real PgBouncer in transaction pooling mode in front, a ``pgferry run`` for each
side. A write load runs through PgBouncer: ``--pgbench`` clients doing a
pgbench-like update + insert, ``--counter`` clients inserting an increasing
counter, each with a 2 ms pause between transactions. They are real ``pgbench``
processes started for each switchover (:class:`pgferry.testing.pgbench.PgbenchLoad`,
``--settle`` seconds before it and for :data:`PGBENCH_BUDGET` seconds more), so
that the clients measure the servers' and PgBouncer's pause, not their own: with
``--python-clients`` they are instead threads of this process running the whole
time (:class:`pgferry.testing.pgbouncer.WriteLoad`, as the switchover tests'
load), whose interpreter lock and CPU add their own gaps. Each run is a
switchover to 18 and, after ``--settle`` seconds, a ``--rollback`` to 15 (both
counted); ``--runs`` runs.

Each switchover is ``pgferry switchover ... --json`` in a process of its own, as a
user runs it. Per switchover it records the write pause as the clients saw it
(the largest gap between two commits of one client that spans the fence: from
the last commit before the fence to the first after ``RESUME``), as the
switchover measured it (fence taken to writes resumed, from its report), each
phase's duration, and the largest gap between two commits anywhere from the
command's start to 0.3 s after its end (the command's own start-up and
preparation share the two cores with everything else). For scale, the largest
gap of the same clients in a second without a switchover. Printed: p50, p99 and
max of each over all switchovers, each phase inside the fence as a share of the
switchover's pause (medians), client errors (must be none), and a markdown
table for docs/benchmarks.md. With ``--verify`` each
switchover exports a snapshot on each side inside the fence and compares them
after writes resume; a difference stops the benchmark.

With ``--bare`` each switchover is instead the bare manual cutover the issue
measured as the floor, in a process of its own (:func:`bare_cutover`): PgBouncer
``PAUSE``, wait until the subscription's slot has confirmed the old primary's
WAL position read after it, ``setval`` of the history sequence on the new
primary, the database's ini line rewritten and ``RELOAD``, ``RESUME``. It points
PgBouncer at the same old primary again (a conninfo that differs only in its
``application_name``, so that PgBouncer opens new server connections just as
it does for another server): the clients' data stays on one server, with no
reverse replication and no checks, which is what makes it the floor.

    python -m bench.switchover --runs 10
    python -m bench.switchover --runs 5 --verify
    python -m bench.switchover --runs 10 --bare
    python -m bench.switchover --runs 10 --python-clients
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.common import machine
from pgferry.testing.pgbench import PgbenchLoad
from pgferry.testing.pgbouncer import WriteLoad
from pgferry.testing.upgrade import ALIAS, Upgrade, upgrade_setup

Load = WriteLoad | PgbenchLoad
INSIDE = ("fence", "drain", "sequences", "snapshots", "reverse", "redirect")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def bare_cutover(admin: str, ini: str, old: str, new: str, slot: str, target: str) -> None:
    """The bare manual cutover (see the module docstring); prints its JSON report."""
    from pgferry.switchover.fence import rewrite_ini

    with (
        psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as bouncer,
        psycopg.connect(old, autocommit=True) as primary,
        psycopg.connect(new, autocommit=True) as replica,
    ):
        fenced_wall, fenced = time.time(), time.monotonic()
        bouncer.execute(f"PAUSE {ALIAS}")
        (position,) = primary.execute("SELECT pg_current_wal_lsn()").fetchone() or (None,)
        while not _confirmed(primary, slot, position):
            time.sleep(0.002)
        (value,) = primary.execute("SELECT last_value FROM history_hid_seq").fetchone() or (0,)
        replica.execute("SELECT setval('history_hid_seq', %s)", (value,))
        rewrite_ini(Path(ini), ALIAS, target)
        bouncer.execute("RELOAD")
        bouncer.execute(f"RESUME {ALIAS}")
        pause = time.monotonic() - fenced
    report = {
        "direction": "bare", "pause": pause, "phases": {}, "verify": None,
        "fenced_at": datetime.fromtimestamp(fenced_wall, UTC).isoformat(),
        "resumed_at": datetime.fromtimestamp(fenced_wall + pause, UTC).isoformat(),
    }  # fmt: skip
    print(json.dumps(report))


def _confirmed(primary: psycopg.Connection[Any], slot: str, position: str) -> bool:
    row = primary.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (position, slot),
    ).fetchone()
    return row == (True,)


def _command(upgrade: Upgrade, rollback: bool, verify: bool, bare: bool) -> list[str]:
    """``pgferry switchover`` as a user runs it, or the bare cutover."""
    if bare:
        # Back and forth between two spellings of the old primary's conninfo.
        target = upgrade.old_dsn + ("" if rollback else " application_name=bare")
        return [
            sys.executable, "-m", "bench.switchover", "--bare-once", upgrade.bouncer.admin_dsn,
            str(upgrade.bouncer.ini_path), upgrade.old_dsn, upgrade.new_dsn, "bench", target,
        ]  # fmt: skip
    target = upgrade.old_dsn if rollback else upgrade.new_dsn
    command = [
        sys.executable, "-m", "pgferry", "-q", "-d", upgrade.new_dsn, "switchover", "bench",
        "--pgbouncer", upgrade.bouncer.admin_dsn,
        "--pgbouncer-ini", str(upgrade.bouncer.ini_path),
        "--pgbouncer-database", ALIAS,
        "--pgbouncer-target", target,
        "--no-schema-check", "--json",
    ]  # fmt: skip
    command += ["--rollback"] if rollback else []
    command += ["--verify"] if verify else []
    return command


def one(
    upgrade: Upgrade, load: Load, rollback: bool, verify: bool, bare: bool = False
) -> tuple[float, Any]:
    """One switchover in a process of its own, measured by ``load`` running beside it."""
    started, ended, report = run(upgrade, rollback, verify, bare)
    time.sleep(0.3)
    return measure(load, started, ended, report)


def run(upgrade: Upgrade, rollback: bool, verify: bool, bare: bool) -> tuple[float, float, Any]:
    """One switchover in a process of its own: when it started and ended, its JSON report."""
    command = _command(upgrade, rollback, verify, bare)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    ended = time.monotonic()
    if done.returncode != 0:
        raise SystemExit(f"switchover failed: {done.stderr.strip() or done.stdout.strip()}")
    return started, ended, json.loads(done.stdout)


def measure(load: Load, started: float, ended: float, report: Any) -> tuple[float, Any]:
    """The largest gap between two commits of a client across the switchover's
    fence, and its report with where that gap began and ended, and the largest gap
    anywhere from its start to 0.3 s after its end."""
    # The report's wall clock times on this process's monotonic clock.
    offset = time.time() - time.monotonic()
    fenced = datetime.fromisoformat(report["fenced_at"]).timestamp() - offset
    resumed = datetime.fromisoformat(report["resumed_at"]).timestamp() - offset
    spans = [
        (a, b) for c in load.clients for a, b in itertools.pairwise(c.commits)
        if a <= resumed and b >= fenced
    ]  # fmt: skip
    a, b = max(spans, key=lambda span: span[1] - span[0], default=(fenced, fenced))
    across = b - a
    # Where the largest one began before the fence and ended after RESUME.
    report["pause_edges"] = (fenced - a, b - resumed)
    anywhere = max(load.gaps(started - 0.2, ended + 0.3))
    report["largest_gap"] = anywhere
    where = _largest_gap(load, started - 0.2, ended + 0.3)
    if where is not None and where[0] > across:
        print(
            f"  largest gap {where[0] * 1000:.1f} ms, ending {(where[1] - fenced) * 1000:+.0f} ms"
            " from the fence",
            flush=True,
        )
    return across, report


def _largest_gap(load: Load, start: float, end: float) -> tuple[float, float] | None:
    """The largest gap between two commits of one client, and when it ended."""
    found: tuple[float, float] | None = None
    for client in load.clients:
        times = [t for t in client.commits if start <= t <= end]
        for a, b in itertools.pairwise(times):
            if found is None or b - a > found[0]:
                found = (b - a, b)
    return found


#: Seconds a pgbench load runs past the settling time: the switchover's own.
PGBENCH_BUDGET = 5.0


def _python_run(
    upgrade: Upgrade, load: WriteLoad, rollback: bool, args: argparse.Namespace
) -> tuple[float, Any, float]:
    """One switchover beside the running Python clients: its pause, its report
    (None after a client error) and the clients' largest gap in a calm second."""
    calm = time.monotonic()
    time.sleep(args.settle)
    # The same clients with no switchover: the machine's own jitter.
    quiet = max(load.gaps(calm + 0.5, time.monotonic()))
    gap, report = one(upgrade, load, rollback, args.verify, args.bare)
    return gap, (None if load.errors else report), quiet


def _pgbench_run(
    upgrade: Upgrade, load: PgbenchLoad, rollback: bool, args: argparse.Namespace
) -> tuple[float, Any, float]:
    """One switchover beside pgbench clients started for it (as :func:`_python_run`)."""
    load.start()
    calm = time.monotonic()
    time.sleep(args.settle)
    started, ended, report = run(upgrade, rollback, args.verify, args.bare)
    load.wait()
    if load.errors:
        return 0.0, None, 0.0
    if ended + 0.3 > calm + args.settle + PGBENCH_BUDGET:
        raise SystemExit("the switchover outlasted the pgbench run: raise PGBENCH_BUDGET")
    quiet = max(load.gaps(calm + 0.5, calm + args.settle))
    gap, report = measure(load, started, ended, report)
    return gap, report, quiet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="switchover + rollback pairs")
    parser.add_argument("--pgbench", type=int, default=4)
    parser.add_argument("--counter", type=int, default=2)
    parser.add_argument("--settle", type=float, default=1.5)
    parser.add_argument(
        "--verify", action="store_true", help="switchovers with --verify (snapshots in the fence)"
    )
    parser.add_argument(
        "--bare", action="store_true", help="the bare manual cutover instead (the floor)"
    )
    parser.add_argument(
        "--python-clients",
        action="store_true",
        help="the clients as Python threads in this process (WriteLoad) instead of pgbench",
    )
    parser.add_argument("--bare-once", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_once:
        bare_cutover(*args.bare_once)
        return
    clients: list[float] = []
    quiet: list[float] = []
    reports: list[Any] = []
    commits = errors = 0
    with upgrade_setup("bench") as upgrade:
        threads = None
        if args.python_clients:
            threads = WriteLoad(
                upgrade.bouncer.dsn(ALIAS), pgbench=args.pgbench, counter=args.counter
            )
            threads.start()
            time.sleep(1)
        try:
            for number, rollback in itertools.product(range(args.runs), (False, True)):
                if threads is not None:
                    gap, report, calm = _python_run(upgrade, threads, rollback, args)
                    load: Load = threads
                else:
                    load = PgbenchLoad(
                        upgrade.bouncer.dsn(ALIAS), args.settle + PGBENCH_BUDGET,
                        pgbench=args.pgbench, counter=args.counter, base=1000 * (len(reports) + 1),
                    )  # fmt: skip
                    gap, report, calm = _pgbench_run(upgrade, load, rollback, args)
                    commits, errors = commits + load.commits, errors + len(load.errors)
                if report is None:
                    raise SystemExit(f"client errors: {load.errors[:3]}")
                quiet.append(calm)
                if report["verify"] is not None and not report["verify"]["identical"]:
                    raise SystemExit(f"verify found differences: {report['verify']}")
                clients.append(gap)
                reports.append(report)
                phases = " ".join(
                    f"{name}={seconds * 1000:.1f}" for name, seconds in report["phases"].items()
                )
                before, after = report["pause_edges"]
                print(
                    f"run {number + 1} {report['direction']}: client pause {gap * 1000:.1f} ms"
                    f" (from {before * 1000:.0f} ms before the fence to {after * 1000:.0f} ms"
                    f" after RESUME), switchover pause {report['pause'] * 1000:.1f} ms"
                    f" ({phases})",
                    flush=True,
                )
        finally:
            if threads is not None:
                threads.stop()
                commits, errors = threads.commits, len(threads.errors)
    pauses = [r["pause"] for r in reports]
    shares = {
        name: statistics.median(r["phases"].get(name, 0.0) / r["pause"] for r in reports)
        for name in INSIDE
    }
    print()
    print(f"machine: {machine()}")
    clients_were = "Python threads" if args.python_clients else "pgbench"
    print(f"{len(reports)} switchovers, {commits} commits ({clients_were}), {errors} client errors")
    print()
    print("| pause | p50 | p99 | max |")
    print("|---|---|---|---|")
    for label, values in (
        ("clients: write pause (largest gap across the fence)", clients),
        ("switchover (fence to resume)", pauses),
        ("clients: largest gap anywhere in the run", [r["largest_gap"] for r in reports]),
        ("clients, no switchover (largest gap in 1 s)", quiet),
    ):
        p50, p99, top = (percentile(values, f) * 1000 for f in (0.5, 0.99, 1.0))
        print(f"| {label} | {p50:.0f} ms | {p99:.0f} ms | {top:.0f} ms |")
    if args.bare:
        return
    print()
    print("| phase | " + " | ".join(INSIDE) + " |")
    print("|---|" + "---|" * len(INSIDE))
    print(
        "| share of the pause (median) | " + " | ".join(f"{shares[n]:.0%}" for n in INSIDE) + " |"
    )


if __name__ == "__main__":
    main()
