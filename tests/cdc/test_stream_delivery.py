"""Delivery guarantees of ``pgferry stream``: the slot never passes what was
acknowledged, an idle stream survives ``wal_sender_timeout``, kill -9 and restart
lose nothing, and signals stop it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from pgferry.protocol import Commit, Lsn, PgoutputDecoder, XLogData
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import PGFERRY, create_slot, current_lsn, run_stream


def _confirmed(cluster: Cluster, dbname: str, slot: str) -> Lsn:
    rows = cluster.sql(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
        dbname=dbname,
    )
    return Lsn.parse(str(rows[0][0]))


def _wait_inactive(cluster: Cluster, dbname: str, slot: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cluster.sql(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,), dbname=dbname
        )
        if rows and not rows[0][0]:
            return
        time.sleep(0.1)
    raise AssertionError(f"slot {slot} still active after {timeout} s")


def test_confirmed_flush_never_passes_what_the_consumer_acknowledged(
    cluster: Cluster, dbname: str
) -> None:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t", dbname=dbname
    )
    start = create_slot(cluster, dbname, "s")
    for i in range(3):
        cluster.sql("INSERT INTO t VALUES (%s)", (i,), dbname=dbname)
    end = current_lsn(cluster, dbname)

    conn = ReplicationConnection.connect(cluster.dsn(dbname))
    stream = conn.start_replication("s", PgoutputOptions(("pub",)), status_interval=0.2)
    decoder = PgoutputDecoder(stream.protocol_version)
    commits: list[Commit] = []
    deadline = time.monotonic() + 30
    try:
        # Read everything, including keepalives past the end, acknowledging nothing.
        while time.monotonic() < deadline and (len(commits) < 3 or stream.received_lsn < end):
            item = stream.read(timeout=0.5)
            if isinstance(item, XLogData):
                msg = decoder.decode(item.payload)
                if isinstance(msg, Commit):
                    commits.append(msg)
        assert len(commits) == 3
        for _ in range(10):  # several status updates go out meanwhile
            stream.read(timeout=0.1)
        assert _confirmed(cluster, dbname, "s") <= start
        # Acknowledge the first transaction only: the slot moves exactly there.
        stream.confirm(commits[0].end_lsn)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stream.read(timeout=0.1)
            if _confirmed(cluster, dbname, "s") == commits[0].end_lsn:
                break
        assert _confirmed(cluster, dbname, "s") == commits[0].end_lsn
    finally:
        stream.close()
    assert _confirmed(cluster, dbname, "s") == commits[0].end_lsn


def test_idle_stream_survives_wal_sender_timeout(make_cluster: ClusterFactory) -> None:
    """Idle for 2 minutes (PGFERRY_IDLE_SECONDS) with wal_sender_timeout = 10s."""
    idle = float(os.environ.get("PGFERRY_IDLE_SECONDS", "120"))
    publisher = make_cluster(settings={"wal_sender_timeout": "10s"})
    publisher.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t")
    create_slot(publisher, "postgres", "s")
    log_start = publisher.log_size()
    proc = subprocess.Popen(
        [*PGFERRY, "-d", publisher.dsn(), "stream", "--slot", "s", "--publication", "pub"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        pids = set()
        deadline = time.monotonic() + idle
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            rows = publisher.sql(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's'"
            )
            pids.add(rows[0][0])
        assert len(pids) == 1 and None not in pids, f"the walsender changed: {pids}"
        publisher.sql("INSERT INTO t VALUES (1)")
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["op"] == "insert" and line["new"] == {"id": "1"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "replication timeout" not in publisher.server_log(None, offset=log_start)


def test_sigterm_and_sigint_stop_cleanly_and_confirm(cluster: Cluster, dbname: str) -> None:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t", dbname=dbname
    )
    create_slot(cluster, dbname, "s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        cluster.sql("INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t", dbname=dbname)
        proc = subprocess.Popen(
            [*PGFERRY, "-d", cluster.dsn(dbname), "stream", "--slot", "s", "--publication", "pub"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["op"] == "insert"
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
        _wait_inactive(cluster, dbname, "s")
        # The clean stop confirmed what it wrote: a new run starts after it.
        assert _confirmed(cluster, dbname, "s") > Lsn.parse(line["lsn"])
    again = run_stream(
        cluster.dsn(dbname), "--slot", "s", "--publication", "pub", end_lsn=current_lsn(cluster)
    )
    assert again.returncode == 0 and again.lines == []


def test_kill_9_during_a_load_then_restart_loses_nothing(
    cluster: Cluster, dbname: str, tmp_path: Path
) -> None:
    cluster.sql(
        "CREATE TABLE load (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE load",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    total, per_tx = 100_000, 100

    errors: list[BaseException] = []

    def load() -> None:
        try:
            with cluster.connect(dbname) as conn:
                for start in range(1, total + 1, per_tx):
                    conn.execute(
                        "INSERT INTO load SELECT g, 'v' || g"
                        " FROM generate_series(%s::int, %s::int) g",
                        (start, start + per_tx - 1),
                    )
                    time.sleep(0.003)  # a load of a few seconds, so kills land inside it
        except BaseException as exc:
            errors.append(exc)

    loader = threading.Thread(target=load)
    out_path = tmp_path / "changes.jsonl"
    cmd = [*PGFERRY, "-d", cluster.dsn(dbname), "stream", "--slot", "s", "--publication", "pub"]
    confirmed_at_kill: list[Lsn] = []
    killed_during_load: list[bool] = []
    try:
        for _round in range(3):
            with out_path.open("ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
                if not loader.is_alive() and not _round:
                    loader.start()
                target = out_path.stat().st_size + 150_000  # let it write a while
                deadline = time.monotonic() + 60
                while out_path.stat().st_size < target and time.monotonic() < deadline:
                    time.sleep(0.05)
                    if proc.poll() is not None:
                        break
                killed_during_load.append(loader.is_alive())
                proc.kill()
                proc.wait()
            _wait_inactive(cluster, dbname, "s")
            confirmed_at_kill.append(_confirmed(cluster, dbname, "s"))
    finally:
        loader.join()
    assert not errors, errors
    assert killed_during_load[0], "the load finished before the first kill"
    end = current_lsn(cluster, dbname)
    with out_path.open("ab") as out:
        final = subprocess.run(
            [*cmd, "--end-lsn", str(end)], stdout=out, stderr=subprocess.PIPE, timeout=300
        )
    assert final.returncode == 0, final.stderr.decode()

    # A kill -9 may cut the last line short; everything else must parse.
    lines = []
    for raw in out_path.read_bytes().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    seen = Counter(int(line["new"]["id"]) for line in lines)
    missing = set(range(1, total + 1)) - set(seen)
    assert not missing, f"{len(missing)} rows never delivered, e.g. {sorted(missing)[:5]}"
    # Duplicates only from transactions committed after a confirmed position.
    lsn_of = {int(line["new"]["id"]): Lsn.parse(line["lsn"]) for line in lines}
    dupes = [i for i, n in seen.items() if n > 1]
    lowest_confirmed = min(confirmed_at_kill)
    assert all(lsn_of[i] >= lowest_confirmed for i in dupes)
    assert len(seen) == total
