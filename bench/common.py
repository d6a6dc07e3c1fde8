"""Shared benchmark plumbing: clusters, a pgbench workload, recorded pgoutput traffic.

Benchmarks run on throwaway clusters from :mod:`pgferry.testing` (the embedded
PostgreSQL 18 by default; ``--bindir`` or ``PGFERRY_PG_BINDIR`` for another), or
against a given publisher DSN (``--dsn``), where they create and drop their own
tables, publication and slots.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgferry.conninfo import parse
from pgferry.protocol import Lsn, XLogData
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.testing import Cluster, PgInstall, find_install

PUBLICATION = "bench_pub"
_FRAME = struct.Struct(">I")


@dataclass
class Publisher:
    """Where the workload runs: a DSN, and the binaries to drive it."""

    dsn: str
    install: PgInstall

    def sql(self, query: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query.encode())
            return list(cur.fetchall()) if cur.description else []

    def lsn(self) -> Lsn:
        return Lsn.parse(str(self.sql("SELECT pg_current_wal_lsn()::text")[0][0]))

    def server_version(self) -> str:
        return str(self.sql("SHOW server_version")[0][0])

    def pgbench(self, *args: str) -> None:
        params = parse(self.dsn)
        env = dict(os.environ)
        for key, var in (
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("password", "PGPASSWORD"),
            ("dbname", "PGDATABASE"),
        ):
            if key in params:
                env[var] = params[key]
        subprocess.run(
            [str(self.install.bin("pgbench")), *args],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="publisher DSN (default: a throwaway embedded cluster)")
    parser.add_argument("--bindir", help="PostgreSQL bin directory for the throwaway cluster")


@contextmanager
def publisher(args: argparse.Namespace) -> Iterator[Publisher]:
    install = find_install(args.bindir)
    if args.dsn:
        yield Publisher(args.dsn, install)
        return
    with Cluster(install, settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"}) as c:
        yield Publisher(c.dsn(), install)


def prepare_pgbench(pub: Publisher, scale: int) -> None:
    pub.pgbench("-i", "-q", "-s", str(scale))
    pub.sql(f"DROP PUBLICATION IF EXISTS {PUBLICATION}")
    pub.sql(
        f"CREATE PUBLICATION {PUBLICATION} FOR TABLE pgbench_accounts, pgbench_branches,"
        " pgbench_tellers, pgbench_history"
    )


def create_slots(pub: Publisher, names: list[str]) -> None:
    for name in names:
        pub.sql(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            f" WHERE slot_name = '{name}'"
        )
        pub.sql(f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")


def drop_slots(pub: Publisher, names: list[str]) -> None:
    for name in names:
        pub.sql(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            f" WHERE slot_name = '{name}'"
        )


def record(pub: Publisher, slot: str, end: Lsn, path: Path) -> tuple[int, int, int]:
    """Stream ``slot`` up to ``end`` and store each pgoutput payload, length-framed.

    Returns (messages, payload bytes, protocol version).
    """
    conn = ReplicationConnection.connect(pub.dsn)
    stream = conn.start_replication(slot, PgoutputOptions((PUBLICATION,), streaming="on"))
    count = size = 0
    try:
        with path.open("wb") as out:
            while True:
                item = stream.read(timeout=5)
                if item is None:
                    continue
                if isinstance(item, XLogData):
                    out.write(_FRAME.pack(len(item.payload)))
                    out.write(item.payload)
                    count += 1
                    size += len(item.payload)
                    if item.data_start >= end and item.payload[:1] == b"C":
                        break
                elif item.wal_end >= end:
                    break
    finally:
        stream.close()
    return count, size, stream.protocol_version


def load_recording(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        (n,) = _FRAME.unpack_from(data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
