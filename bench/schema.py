"""pgferry's schema copy and sequence sync against native's way, side by side.

The clusters, databases and helpers of :mod:`bench.apply` (one publisher with
pgbench at ``--scale`` and the publication ``bench``; one subscriber server with
databases ``native`` and ``ferry``); each scenario runs native first, then
pgferry, never both at once, and prints the wall times and their ratio:

* ``empty``: from an empty subscriber database to every table ready and caught
  up. Native: ``pg_dump --schema-only --no-publications --no-subscriptions`` of
  the publisher database piped into ``psql`` (both from the bindir that
  :func:`pgferry.schema.dump.find_tools` picks, the one pgferry's copy uses),
  CREATE SUBSCRIPTION, then until every ``pg_subscription_rel`` row is ``r`` and
  the slot has confirmed the publisher's WAL position taken after the creation.
  pgferry: with ``pgferry run`` already running for database ``ferry`` (as
  native's launcher is), what ``subscription create --with copy_schema=true``
  does (from this process), then :func:`pgferry.status.wait.wait_ready` (every
  table ready, every schema step done, the publisher's position taken after the
  creation applied). Target: pgferry <= 0.6x native;
* ``present``: the schema already on both (``pg_dump | psql`` before the clock
  starts), tables empty: CREATE SUBSCRIPTION against ``subscription create``
  (``copy_schema`` off), to ready and caught up, as above. Target: <= 1.0x;
* ``sequences``: pgferry only. ``--sequences`` sequences on the publisher, all
  owned by the column of one published table (``OWNED BY``: sequences "of the
  published tables", see :mod:`pgferry.sequences`), the same on the subscriber,
  a subscription without copy; each sequence advanced with ``setval`` on the
  publisher, then one :func:`pgferry.sequences.sync_sequences` timed (the
  publisher session open already, as the ``sequences`` worker keeps it), which
  must set every sequence; ``--syncs`` times (the median is reported), each
  followed by a timed sync with nothing to set (the periodic case). The
  clusters get ``max_locks_per_transaction`` to match (a sync locks every
  sequence in one transaction); with DSNs, that is the servers' business.

Each pgferry run ends with a check that database ``ferry`` has the same rows
and indexes as ``native``.

    python -m bench.schema                                  # reference sizes
    python -m bench.schema --scale 2 --runs 1 --sequences 1000
    python -m bench.schema --scenarios empty,present --runs 5   # medians of 5 runs

With ``--runs``, the table's times are the medians and its ratio is the median
of the runs' ratios (each run pairs native and pgferry on the same load); the
``sequences`` scenario runs once whatever ``--runs`` says (``--syncs`` is its
repetition). At the end: a markdown table in the form of docs/benchmarks.md's,
the machine and the git commit.
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import subprocess
from pathlib import Path

from bench.apply import Bench, add_server_arguments, wait_caught_up
from bench.common import Timer, machine
from pgferry import connect
from pgferry.schema.dump import DumpTools, find_tools
from pgferry.sequences import sync_sequences
from pgferry.status.wait import wait_ready
from pgferry.subscription.manage import create_subscription
from pgferry.testing import Cluster

#: The schema, table and publication of the ``sequences`` scenario.
SEQ_SCHEMA = "bench_seq"
#: Statements per round trip (and per transaction) creating or dropping sequences.
SEQ_BATCH = 500
#: How often the waits poll (bench.apply's wait_caught_up polls every 50 ms too).
POLL = 0.05

TARGETS = {"empty": 0.6, "present": 1.0}
#: As docs/benchmarks.md writes ranges and empty cells.
DASH = "\N{EN DASH}"


class SchemaBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        # sync_sequences locks every sequence in one transaction (so does the
        # publisher's setval of them all): room for 2.5 locks per sequence in
        # the shared lock table (max_connections 100). Clusters are not started
        # yet: their settings are written at the start.
        locks = max(64, args.sequences // 40)
        for server in (self.pub, self.sub):
            if isinstance(server, Cluster):
                server.settings["max_locks_per_transaction"] = str(locks)
        self._tools: DumpTools | None = None

    def tools(self) -> DumpTools:
        if self._tools is None:
            major = int(self.pub.sql("SHOW server_version_num")[0][0]) // 10000
            self._tools = find_tools(major)
            print(f"pg_dump and psql of PostgreSQL {self._tools.major} in {self._tools.bindir}")
        return self._tools

    def reset(self, db: str) -> None:
        """Subscriber database ``db`` dropped and created again, empty."""
        if isinstance(self.sub, Cluster):
            self.sub.drop_database(db)
        self.sub.create_database(db)

    def dump_restore(self, db: str) -> None:
        """The publisher database's schema into subscriber database ``db``:
        ``pg_dump --schema-only | psql``."""
        tools = self.tools()
        dump = subprocess.Popen(
            [
                tools.program("pg_dump"),
                "--schema-only",
                "--no-publications",
                "--no-subscriptions",
                "-d",
                self.pub.dsn(),
            ],
            stdout=subprocess.PIPE,
        )
        assert dump.stdout is not None
        try:
            subprocess.run(
                [
                    tools.program("psql"),
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    self.sub.dsn(db),
                ],
                stdin=dump.stdout,
                stdout=subprocess.DEVNULL,
                check=True,
            )
        finally:
            dump.stdout.close()
            if dump.wait() != 0:
                raise RuntimeError(f"pg_dump exited with status {dump.returncode}")

    def checkpoint(self) -> None:
        """Both servers' dirty buffers written before a timing (not during it)."""
        for server in (self.pub, self.sub):
            server.sql("CHECKPOINT")

    def ferry_wait(self) -> None:
        wait_ready(self.sub.dsn("ferry"), "ferry", timeout=self.args.timeout, poll_interval=POLL)

    def check_same(self) -> None:
        """Database ``ferry`` has the tables, indexes and rows of ``native``."""
        found = {}
        for db in ("native", "ferry"):
            relations = self.sub.sql(
                "SELECT relname, relkind::text FROM pg_class"
                " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i', 'S')"
                " ORDER BY 1",
                dbname=db,
            )
            counts = [
                self.sub.sql(f'SELECT count(*) FROM public."{name}"', dbname=db)[0][0]
                for name, kind in relations
                if kind == "r"
            ]
            found[db] = (relations, counts)
        if found["native"] != found["ferry"]:
            raise AssertionError(f"native has {found['native']}, ferry has {found['ferry']}")

    def _both(self, ferry_options: list[str], prepare: bool) -> tuple[float, float]:
        """Native, then pgferry, from creating the subscription to ready and caught
        up; ``prepare``: the schema is restored before the clock starts, else
        native's restore is timed and pgferry copies the schema."""
        timeout = self.args.timeout
        self.tools()  # (found before the clock starts: native's user knows where it is)
        for db in ("native", "ferry"):
            self.reset(db)
            if prepare:
                self.dump_restore(db)
        self.checkpoint()
        with Timer() as native:
            if not prepare:
                self.dump_restore("native")
            self.native_subscribe(copy=True)
            wait_caught_up(self.pub, "native", self.native_ready, timeout)
        self.native_drop()
        self.checkpoint()
        self.start_pgferry()
        try:
            with Timer() as ferry:
                create_subscription(
                    self.sub.dsn("ferry"), "ferry", self.pub.dsn(), ["bench"], ferry_options
                )
                self.ferry_wait()
        finally:
            self.stop_pgferry()
        self.pgferry("subscription", "drop", "ferry")
        self.check_same()
        return native.seconds, ferry.seconds

    # -- scenarios ---------------------------------------------------------------------

    def empty(self) -> tuple[float, float]:
        return self._both(["copy_schema=true"], prepare=False)

    def present(self) -> tuple[float, float]:
        return self._both([], prepare=True)

    def sequences(self) -> tuple[float, float]:
        """Median seconds of a sync setting every sequence (and, in ``results``,
        of one with nothing to set)."""
        n = self.args.sequences
        self.reset("ferry")
        names = [f"{SEQ_SCHEMA}.s{i}" for i in range(n)]
        for server, db in ((self.pub, None), (self.sub, "ferry")):
            dsn = server.dsn(db) if db else server.dsn()
            with connect.session(dsn) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {SEQ_SCHEMA} CASCADE")
                conn.execute(f"CREATE SCHEMA {SEQ_SCHEMA}")
                conn.execute(f"CREATE TABLE {SEQ_SCHEMA}.t (id int PRIMARY KEY)")
                for start in range(0, n, SEQ_BATCH):
                    conn.execute(
                        "".join(
                            f"CREATE SEQUENCE {name} OWNED BY {SEQ_SCHEMA}.t.id;"
                            for name in names[start : start + SEQ_BATCH]
                        ).encode()
                    )
        self.pub.sql(f"DROP PUBLICATION IF EXISTS {SEQ_SCHEMA}")
        self.pub.sql(f"CREATE PUBLICATION {SEQ_SCHEMA} FOR TABLE {SEQ_SCHEMA}.t")
        create_subscription(
            self.sub.dsn("ferry"),
            "ferry",
            self.pub.dsn(),
            [SEQ_SCHEMA],
            ["copy_data=false", "enabled=false", "sequences=off"],
        )
        full: list[float] = []
        idle: list[float] = []
        try:
            with (
                connect.session(self.sub.dsn("ferry")) as local,
                connect.session(self.pub.dsn(), side="publisher") as remote,
            ):
                for k in range(self.args.syncs):
                    self.pub.sql(
                        f"SELECT count(setval(c.oid::regclass, {1000 * (k + 1)}))"
                        f" FROM pg_class c WHERE c.relnamespace = '{SEQ_SCHEMA}'::regnamespace"
                        " AND c.relkind = 'S'"
                    )
                    with Timer() as sync:
                        report = sync_sequences(local, "ferry", publisher=remote)
                    if len(report.sequences) != n or report.set_count != n:
                        raise AssertionError(f"expected {n} sequences set: {report.summary()}")
                    full.append(sync.seconds)
                    with Timer() as again:
                        report = sync_sequences(local, "ferry", publisher=remote)
                    if report.set_count:
                        raise AssertionError(f"expected none set: {report.summary()}")
                    idle.append(again.seconds)
                    print(
                        f"sequences: sync of {n} sequences, all set {sync.seconds:.3f} s,"
                        f" none to set {again.seconds:.3f} s",
                        flush=True,
                    )
        finally:
            self.pgferry("subscription", "drop", "ferry")
            self.pub.sql(f"DROP PUBLICATION IF EXISTS {SEQ_SCHEMA}")
            with connect.session(self.pub.dsn()) as conn:
                for start in range(0, n, SEQ_BATCH):
                    batch = names[start : start + SEQ_BATCH]
                    conn.execute(("DROP SEQUENCE IF EXISTS " + ", ".join(batch)).encode())
                conn.execute(f"DROP SCHEMA {SEQ_SCHEMA} CASCADE")
        self.results["sequences_idle"] = statistics.median(idle)
        return math.nan, statistics.median(full)


def commit() -> str:
    """The checked-out commit, and whether tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


def _times(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    return f"{statistics.median(values):.2f} s (median; {min(values):.2f}{DASH}{max(values):.2f} s)"


def table(bench: SchemaBench, runs: dict[str, list[tuple[float, float]]]) -> list[str]:
    """The rows for docs/benchmarks.md (its columns)."""
    args = bench.args
    today = datetime.date.today().isoformat()
    lines = [
        "| workload | native | pgferry | ratio | target | met | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "empty": f"schema and initial sync from an empty database, scale {args.scale}",
        "present": f"initial sync, schema present, scale {args.scale}",
    }
    for name, label in labels.items():
        if name not in runs:
            continue
        pairs = runs[name]
        ratios = [f / n for n, f in pairs]
        ratio = statistics.median(ratios)
        target = TARGETS[name]
        if len(pairs) > 1:
            label += f", {len(pairs)} runs"
            shown = "runs: " + ", ".join(f"{r:.2f}x" for r in ratios) + f"; **median {ratio:.2f}x**"
        else:
            shown = f"**{ratio:.2f}x**"
        met = "**met**" if ratio <= target else "not met"
        lines.append(
            f"| {label} | {_times([n for n, _ in pairs])} | {_times([f for _, f in pairs])}"
            f" | {shown} | <= {target}x native | {met} | {today} |"
        )
    if "sequences" in runs:
        full = runs["sequences"][0][1]
        idle = bench.results["sequences_idle"]
        syncs = f"median of {args.syncs}"
        lines.append(
            f"| sequence sync, {args.sequences:,} sequences, every one set | {DASH} |"
            f" {full:.3f} s ({syncs}) | {DASH} | reported | | {today} |"
        )
        lines.append(
            f"| sequence sync, {args.sequences:,} sequences, none to set | {DASH} |"
            f" {idle:.3f} s ({syncs}) | {DASH} | reported | | {today} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, scale=20)
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--syncs", type=int, default=5, help="timed sequence syncs")
    parser.add_argument("--scenarios", default="empty,present,sequences")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--runs", type=int, default=1, help="run each scenario this often; the table has medians"
    )
    args = parser.parse_args()
    if bool(args.publisher_dsn) != bool(args.subscriber_dsn):
        parser.error("give both --publisher-dsn and --subscriber-dsn, or neither")
    bench = SchemaBench(args)
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        bench.start()
        version = bench.pub.sql("SHOW server_version")[0][0]
        for name in args.scenarios.split(","):
            if name not in ("empty", "present", "sequences"):
                parser.error(f"unknown scenario {name!r}")
            for _ in range(1 if name == "sequences" else args.runs):
                native, ferry = getattr(bench, name)()
                runs.setdefault(name, []).append((native, ferry))
                if not math.isnan(native):
                    print(
                        f"{name}: native {native:.2f} s, pgferry {ferry:.2f} s,"
                        f" ratio {ferry / native:.2f}x",
                        flush=True,
                    )
    finally:
        bench.close()
    print()
    print(f"machine: {machine()}")
    print(f"PostgreSQL {version}, pgbench scale {args.scale}, commit {commit()}")
    print()
    for line in table(bench, runs):
        print(line)


if __name__ == "__main__":
    main()
