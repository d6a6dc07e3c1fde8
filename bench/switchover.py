"""The switchover's write pause, measured: repeated switchovers under a write load.

The environment of the switchover tests (:mod:`tests.switchover.environment`): a
PostgreSQL 15 primary, replicated by pgferry into PostgreSQL 18 (``copy_schema``),
a real PgBouncer in transaction pooling mode in front, a ``pgferry run`` for each
side. A write load runs through PgBouncer the whole time
(:class:`pgferry.testing.pgbouncer.WriteLoad`: ``--pgbench`` clients doing a
pgbench-like update + insert, ``--counter`` clients inserting an increasing
counter, each with a 2 ms pause between transactions). Each run is a switchover
to 18 and, after ``--settle`` seconds, a ``--rollback`` to 15 (both counted);
``--runs`` runs.

Per switchover it records the write pause as the clients saw it (the largest gap
between two commits of any client around the switchover) and as the switchover
measured it (fence taken to writes resumed), and each phase's duration. Printed:
p50, p99 and max of both pauses over all switchovers, each phase inside the
fence as a share of the switchover's pause (medians), client errors (must be
none), and a markdown table for docs/benchmarks.md. With ``--verify`` each
switchover exports a snapshot on each side inside the fence and compares them
after writes resume; a difference stops the benchmark.

    python -m bench.switchover --runs 10
    python -m bench.switchover --runs 5 --verify
"""

from __future__ import annotations

import argparse
import statistics
import time

from tests.switchover.environment import ALIAS, Upgrade, upgrade_setup

from bench.common import machine
from pgferry.switchover import Bouncer, Plan, Report, switchover
from pgferry.testing.pgbouncer import WriteLoad

INSIDE = ("fence", "drain", "sequences", "snapshots", "reverse", "redirect")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def one(upgrade: Upgrade, load: WriteLoad, rollback: bool, verify: bool) -> tuple[float, Report]:
    target = upgrade.old_dsn if rollback else upgrade.new_dsn
    plan = Plan(
        upgrade.new_dsn,
        "bench",
        rollback=rollback,
        bouncer=Bouncer(upgrade.bouncer.admin_dsn, ALIAS, upgrade.bouncer.ini_path, target),
        schema_check=False,
        verify=verify,
    )
    started = time.monotonic()
    report = switchover(plan)
    ended = time.monotonic()
    time.sleep(0.3)
    resumed = report.fenced_at + report.pause
    firsts = [min((t for t in c.commits if t > resumed), default=resumed) for c in load.clients]
    print(
        f"  clients' first commits after RESUME: {(min(firsts) - resumed) * 1000:.1f}"
        f" to {(max(firsts) - resumed) * 1000:.1f} ms",
        flush=True,
    )
    return max(load.gaps(started - 0.2, ended + 0.3)), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="switchover + rollback pairs")
    parser.add_argument("--pgbench", type=int, default=4)
    parser.add_argument("--counter", type=int, default=2)
    parser.add_argument("--settle", type=float, default=1.5)
    parser.add_argument(
        "--verify", action="store_true", help="switchovers with --verify (snapshots in the fence)"
    )
    args = parser.parse_args()
    clients: list[float] = []
    reports: list[Report] = []
    with upgrade_setup("bench") as upgrade:
        load = WriteLoad(upgrade.bouncer.dsn(ALIAS), pgbench=args.pgbench, counter=args.counter)
        load.start()
        try:
            time.sleep(1)
            for run in range(args.runs):
                for rollback in (False, True):
                    time.sleep(args.settle)
                    gap, report = one(upgrade, load, rollback, args.verify)
                    if report.verify is not None and not report.verify.identical:
                        raise SystemExit(f"verify found differences: {report.lines()}")
                    clients.append(gap)
                    reports.append(report)
                    phases = " ".join(f"{p.name}={p.seconds * 1000:.1f}" for p in report.phases)
                    print(
                        f"run {run + 1} {report.direction}: client pause {gap * 1000:.1f} ms,"
                        f" switchover pause {report.pause * 1000:.1f} ms ({phases})",
                        flush=True,
                    )
        finally:
            load.stop()
    pauses = [r.pause for r in reports]
    shares = {
        name: statistics.median(r.phase(name) / r.pause for r in reports if r.pause)
        for name in INSIDE
    }
    print()
    print(f"machine: {machine()}")
    print(f"{len(reports)} switchovers, {load.commits} commits, {len(load.errors)} client errors")
    print()
    print("| pause | p50 | p99 | max |")
    print("|---|---|---|---|")
    for label, values in (
        ("clients (largest gap)", clients),
        ("switchover (fence to resume)", pauses),
    ):
        p50, p99, top = (percentile(values, f) * 1000 for f in (0.5, 0.99, 1.0))
        print(f"| {label} | {p50:.0f} ms | {p99:.0f} ms | {top:.0f} ms |")
    print()
    print("| phase | " + " | ".join(INSIDE) + " |")
    print("|---|" + "---|" * len(INSIDE))
    print(
        "| share of the pause (median) | " + " | ".join(f"{shares[n]:.0%}" for n in INSIDE) + " |"
    )


if __name__ == "__main__":
    main()
