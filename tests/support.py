"""Helpers shared by the tests that replicate real traffic.

* :func:`run_stream` runs the real ``pgferry stream`` command in a subprocess up to an
  ``--end-lsn`` and returns its JSON lines;
* :func:`collect` streams a slot with the library and returns decoded messages;
* :func:`current_lsn` asks the publisher for its WAL position.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pgferry.protocol import (
    Commit,
    Lsn,
    Message,
    PgoutputDecoder,
    Prepare,
    StreamCommit,
    XLogData,
)
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.testing import Cluster

PGFERRY = [sys.executable, "-m", "pgferry.cli"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``condition`` every 0.1 s until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def drop_origins(cluster: Cluster, like: str = "pgferry\\_%") -> None:
    """Drop the cluster's replication origins named LIKE ``like`` (none may be in
    use). Origins belong to the cluster, not to a database: dropping a test's
    databases leaves them, and each that has progress holds one of the cluster's
    max_active_replication_origins (max_replication_slots before 18) until dropped."""
    cluster.sql(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE %s",
        (like,),
    )


@contextmanager
def subscriber_database(cluster: Cluster, dbname: str) -> Iterator[str]:
    """A subscriber database next to the test's database ``dbname`` on the shared
    cluster; dropped afterwards with every pgferry origin (see :func:`drop_origins`)."""
    sub_db = dbname[:50] + "_sub"
    cluster.create_database(sub_db)
    try:
        yield sub_db
    finally:
        cluster.drop_database(sub_db)
        drop_origins(cluster)


def current_lsn(cluster: Cluster, dbname: str = "postgres") -> Lsn:
    rows = cluster.sql("SELECT pg_current_wal_lsn()::text", dbname=dbname)
    return Lsn.parse(str(rows[0][0]))


def create_slot(cluster: Cluster, dbname: str, slot: str) -> Lsn:
    rows = cluster.sql(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
        (slot,),
        dbname=dbname,
    )
    return Lsn.parse(str(rows[0][0]))


@dataclass
class StreamResult:
    returncode: int
    lines: list[dict[str, Any]]
    stderr: str


def run_stream(
    dsn: str,
    *args: str,
    end_lsn: Lsn | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> StreamResult:
    """Run ``pgferry -d DSN stream ARGS [--end-lsn END]`` to completion."""
    cmd = [*PGFERRY, "-d", dsn, "stream", *args]
    if end_lsn is not None:
        cmd += ["--end-lsn", str(end_lsn)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return StreamResult(proc.returncode, lines, proc.stderr.decode())


def collect(
    dsn: str,
    slot: str,
    options: PgoutputOptions,
    end_lsn: Lsn,
    *,
    timeout: float = 60,
    dsn_options: str | None = None,
) -> list[Message]:
    """Decoded messages from ``slot`` until a message or keepalive at/after ``end_lsn``."""
    if dsn_options:
        dsn = f"{dsn} options='{dsn_options}'"
    conn = ReplicationConnection.connect(dsn)
    stream = conn.start_replication(slot, options)
    decoder = PgoutputDecoder(stream.protocol_version)
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            item = stream.read(timeout=1.0)
            if item is None:
                continue
            if isinstance(item, XLogData):
                messages.append(decoder.decode(item.payload))
                # Past the end, stop at the first transaction boundary.
                if (
                    item.data_start >= end_lsn
                    and decoder.stream_xid is None
                    and isinstance(messages[-1], (Commit, StreamCommit, Prepare))
                ):
                    break
            elif item.wal_end >= end_lsn and decoder.stream_xid is None:
                break
        else:
            raise TimeoutError(f"slot {slot} did not reach {end_lsn} in {timeout} s")
    finally:
        stream.close()
    return messages


def changes(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The data lines (no begin/commit lines)."""
    return [line for line in lines if line["op"] not in ("begin", "commit")]


@dataclass
class Run:
    """A finished ``pgferry`` command line."""

    returncode: int
    stdout: str
    stderr: str


def pgferry(dsn: str, *args: str) -> Run:
    """``pgferry -d DSN ARGS``, wide enough that tables never wrap."""
    proc = subprocess.run(
        [*PGFERRY, "-d", dsn, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)
