"""The replication connection against real servers: commands, slots and snapshots,
pgoutput options per server version."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from pgferry._cmodule import SPEEDUPS
from pgferry.errors import (
    FeatureNotSupported,
    InterfaceError,
    ServerError,
    SlotAlreadyExists,
    SlotInUse,
    SlotNotFound,
)
from pgferry.protocol import (
    Insert,
    Lsn,
    Message,
    Origin,
    PgoutputDecoder,
    StreamAbort,
    StreamStart,
    XLogData,
)
from pgferry.stream import PgoutputOptions, ReplicationConnection, waiting
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import collect, create_slot, current_lsn


def _slots(cluster: Cluster, dbname: str) -> set[str]:
    rows = cluster.sql("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,))
    return {str(r[0]) for r in rows}


def test_identify_system(cluster: Cluster, dbname: str) -> None:
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        info = conn.identify_system()
        assert conn.major == cluster.major
    expected_id = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    assert info.system_id == expected_id
    assert info.timeline == 1 and info.dbname == dbname
    assert info.xlog_pos <= current_lsn(cluster)


def test_exported_snapshot_sees_exactly_what_precedes_the_consistent_point(
    cluster: Cluster, dbname: str
) -> None:
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", dbname=dbname)
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        slot = conn.create_slot("exporter", temporary=True, snapshot="export")
        assert slot.snapshot_name and slot.output_plugin == "pgoutput"
        cluster.sql("INSERT INTO t VALUES (2)", dbname=dbname)
        # While the replication connection stays idle the snapshot can be imported.
        with cluster.connect(dbname, autocommit=False) as reader:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            reader.execute(
                psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                    psycopg.sql.Literal(slot.snapshot_name)
                )
            )
            assert reader.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,)]
            reader.rollback()
        assert "exporter" in _slots(cluster, dbname)
        # The slot delivers exactly what the snapshot does not contain.
        stream = conn.start_replication("exporter", PgoutputOptions(("nopub",)))
        stream.close()
    # Temporary: gone with the session (its backend exits just after the close).
    deadline = time.monotonic() + 10
    while "exporter" in _slots(cluster, dbname) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "exporter" not in _slots(cluster, dbname)


def test_use_snapshot_inside_a_transaction(cluster: Cluster, dbname: str) -> None:
    cluster.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)", dbname=dbname)
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        slot = conn.create_slot("user", temporary=True, snapshot="use")
        assert slot.snapshot_name is None
        cluster.sql("INSERT INTO t VALUES (2)", dbname=dbname)
        assert conn.execute("SELECT count(*) FROM t") == [("1",)]
        conn.execute("COMMIT")


def test_create_and_drop_slot_errors(cluster: Cluster, dbname: str) -> None:
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        info = conn.create_slot("permanent")
        assert isinstance(info.consistent_point, Lsn) and info.snapshot_name is None
        with pytest.raises(SlotAlreadyExists):
            conn.create_slot("permanent")
        conn.drop_slot("permanent")
        with pytest.raises(SlotNotFound) as exc:
            conn.drop_slot("permanent")
        assert "permanent" in str(exc.value)
    assert "permanent" not in _slots(cluster, dbname)


def test_options_the_server_lacks_are_refused_before_sending(cluster: Cluster, dbname: str) -> None:
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        create_slot(cluster, dbname, "s")
        if cluster.major < 16:
            with pytest.raises(FeatureNotSupported):
                conn.start_replication("s", PgoutputOptions(("p",), origin="none"))
            with pytest.raises(FeatureNotSupported):
                conn.start_replication("s", PgoutputOptions(("p",), protocol_version=4))
        with pytest.raises(InterfaceError):
            conn.start_replication("s", PgoutputOptions(("p",), protocol_version=5))
        # Nothing was sent: the connection still works.
        assert conn.identify_system().dbname == dbname


def test_origin_none_filters_replicated_changes(cluster: Cluster, dbname: str) -> None:
    if cluster.major < 16:
        pytest.skip("the origin option needs PostgreSQL 16")
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;"
        " SELECT pg_replication_origin_create('peer')",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "any_slot")
    create_slot(cluster, dbname, "none_slot")
    cluster.sql("INSERT INTO t VALUES (1)", dbname=dbname)
    with cluster.connect(dbname) as conn:
        conn.execute("SELECT pg_replication_origin_session_setup('peer')")
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("SELECT pg_replication_origin_session_reset()")
    end = current_lsn(cluster, dbname)
    dsn = cluster.dsn(dbname)
    everything = collect(dsn, "any_slot", PgoutputOptions(("pub",), origin="any"), end)
    local_only = collect(dsn, "none_slot", PgoutputOptions(("pub",), origin="none"), end)
    assert [m.new for m in everything if isinstance(m, Insert)] == [(b"1",), (b"2",)]
    assert [m.name for m in everything if isinstance(m, Origin)] == ["peer"]
    assert [m.new for m in local_only if isinstance(m, Insert)] == [(b"1",)]
    assert not [m for m in local_only if isinstance(m, Origin)]


def test_parallel_streaming_sends_abort_lsn(cluster: Cluster, dbname: str) -> None:
    """A transaction streamed while in progress, then rolled back. (Decoded after the
    fact, PostgreSQL 16+ would know it aborted and not stream it at all.)"""
    if cluster.major < 16:
        pytest.skip("streaming = parallel needs PostgreSQL 16")
    cluster.sql(
        "CREATE TABLE t (id int, v text); CREATE PUBLICATION pub FOR TABLE t", dbname=dbname
    )
    create_slot(cluster, dbname, "s")
    conn = ReplicationConnection.connect(
        cluster.dsn(dbname, options="-c logical_decoding_work_mem=64kB")
    )
    stream = conn.start_replication("s", PgoutputOptions(("pub",), streaming="parallel"))
    decoder = PgoutputDecoder(stream.protocol_version)
    messages: list[Message] = []
    try:
        with cluster.connect(dbname, autocommit=False) as writer:
            writer.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20000) g")
            deadline = time.monotonic() + 60
            while not any(isinstance(m, StreamStart) for m in messages):
                assert time.monotonic() < deadline, "nothing was streamed"
                for item in stream.read_batch(timeout=0.5):
                    if isinstance(item, XLogData):
                        messages.append(decoder.decode(item.payload))
            writer.rollback()
        deadline = time.monotonic() + 60
        while not any(isinstance(m, StreamAbort) for m in messages):
            assert time.monotonic() < deadline, "no Stream Abort"
            for item in stream.read_batch(timeout=0.5):
                if isinstance(item, XLogData):
                    messages.append(decoder.decode(item.payload))
    finally:
        stream.close()
    end = current_lsn(cluster, dbname)
    (abort,) = [m for m in messages if isinstance(m, StreamAbort)]
    assert abort.subxid == abort.xid
    assert abort.abort_lsn is not None and 0 < abort.abort_lsn <= end
    assert abort.abort_time is not None and abort.abort_time > 0


def test_the_c_drain_is_used_where_it_can_be(cluster: Cluster, dbname: str) -> None:
    # Otherwise the C case below compares the Python twin with itself.
    if SPEEDUPS is None or not sys.platform.startswith("linux"):
        pytest.skip("no C module, or not Linux")
    cluster.sql("CREATE PUBLICATION pub FOR ALL TABLES", dbname=dbname)
    create_slot(cluster, dbname, "s")
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        stream = conn.start_replication("s", PgoutputOptions(("pub",)))
        assert stream._c_drain is not None


def test_a_slot_still_in_use_is_asked_for_again_only_when_told(
    cluster: Cluster, dbname: str
) -> None:
    cluster.sql("CREATE PUBLICATION pub FOR ALL TABLES", dbname=dbname)
    create_slot(cluster, dbname, "s")
    options = PgoutputOptions(("pub",))
    first = ReplicationConnection.connect(cluster.dsn(dbname))
    holder = first.start_replication("s", options)
    with ReplicationConnection.connect(cluster.dsn(dbname)) as second:
        with pytest.raises(SlotInUse, match="is active for PID"):
            second.start_replication("s", options)
        # The holder goes away while the second one waits: it gets the slot.
        closer = threading.Timer(0.5, holder.close)
        closer.start()
        began = time.monotonic()
        try:
            stream = second.start_replication("s", options, wait_in_use=20)
        finally:
            closer.join()
        assert time.monotonic() - began >= 0.5
        assert stream.slot_name == "s"
        stream.close()
    assert first.closed


def _read_all(
    cluster: Cluster, dbname: str, slot: str, end: Lsn, *, c_drain: bool
) -> list[tuple[Lsn, bytes]]:
    """Every message of ``slot`` up to ``end`` (as read_batch hands them out, small
    batches included), then what the stream does when the server goes away."""
    conn = ReplicationConnection.connect(cluster.dsn(dbname))
    stream = conn.start_replication(slot, PgoutputOptions(("pub",)), status_interval=3600)
    if not c_drain:
        stream._c_drain = None
    items: list[object] = []
    try:
        while not any(isinstance(i, XLogData) and i.data_start >= end for i in items):
            batch = stream.read_batch(timeout=5, max_items=7)
            assert batch, "the stream stopped before the end"
            assert len(batch) <= 7
            items.extend(batch)
    finally:
        stream.close()
    return [(i.data_start, i.payload) for i in items if isinstance(i, XLogData)]


@pytest.mark.parametrize("c_drain", [True, False], ids=["c", "python"])
def test_read_batch_hands_out_every_message_in_order(
    cluster: Cluster, dbname: str, c_drain: bool
) -> None:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql(
        "INSERT INTO t SELECT g, repeat('x', g % 3000) FROM generate_series(1, 3000) g;"
        " UPDATE t SET v = NULL WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0",
        dbname=dbname,
    )
    end = current_lsn(cluster, dbname)
    expected = collect(cluster.dsn(dbname), "s", PgoutputOptions(("pub",)), end)
    got = _read_all(cluster, dbname, "s", end, c_drain=c_drain)
    decoder = PgoutputDecoder(1)
    assert [decoder.decode(payload) for _, payload in got][: len(expected)] == expected


@pytest.mark.parametrize("c_drain", [True, False], ids=["c", "python"])
def test_the_server_ending_the_stream_ends_read_batch(
    make_cluster: ClusterFactory, c_drain: bool
) -> None:
    cluster = make_cluster()
    cluster.sql("CREATE TABLE t (id int); CREATE PUBLICATION pub FOR TABLE t")
    create_slot(cluster, "postgres", "s")
    conn = ReplicationConnection.connect(cluster.dsn())
    stream = conn.start_replication("s", PgoutputOptions(("pub",)), status_interval=3600)
    if not c_drain:
        stream._c_drain = None
    try:
        cluster.sql("INSERT INTO t SELECT generate_series(1, 100)")
        inserts = 0
        while inserts < 100:
            for item in stream.read_batch(timeout=5):
                if isinstance(item, XLogData) and item.payload[:1] == b"I":
                    inserts += 1
        # A walsender shut down ends the COPY (its CommandComplete) once the client
        # has confirmed everything it sent: confirm as the keepalives come. Then it
        # exits without ReadyForQuery: libpq reports the connection closed.
        stopper = threading.Thread(target=cluster.stop)
        stopper.start()
        deadline = time.monotonic() + 30
        with pytest.raises(ServerError, match="ended: server closed the connection"):
            while True:
                assert time.monotonic() < deadline, "the stream did not end"
                stream.read_batch(timeout=0.2)
                stream.confirm(stream.received_lsn)
                stream.send_status()
        stopper.join()
        assert stream.ended
        # Ended: nothing more to read, and feedback is not sent to a COPY that is over.
        assert stream.read_batch(timeout=0) == []
        stream.send_status()
    finally:
        stream.close()


def _wait_ended_by(
    cluster: Cluster, dbname: str, wake: Callable[[], object], fd: int | None = None
) -> None:
    """A quiet stream's ``read_batch(timeout=30)`` returns without data soon after
    ``wake`` runs (0.2 s in); with ``fd``, given to ``wake_on`` first."""
    cluster.sql("CREATE PUBLICATION pub FOR ALL TABLES", dbname=dbname)
    create_slot(cluster, dbname, "s")
    with ReplicationConnection.connect(cluster.dsn(dbname)) as conn:
        stream = conn.start_replication("s", PgoutputOptions(("pub",)), status_interval=3600)
        if fd is not None:
            stream.wake_on(fd)
        # A quiet stream: the walsender may send a keepalive first.
        while stream.read_batch(timeout=0.2):
            pass
        timer = threading.Timer(0.2, wake)
        started = time.monotonic()
        timer.start()
        batch = stream.read_batch(timeout=30)
        waited = time.monotonic() - started
        timer.join()
        stream.close()
    assert batch == [] or all(not isinstance(i, XLogData) for i in batch)
    assert waited < 10, waited


def test_a_handled_signal_ends_the_wait_for_data(cluster: Cluster, dbname: str) -> None:
    """With :func:`waiting.wake_on_signals`, a worker's stop signal ends
    ``read_batch``'s wait at once (Python resumes an interrupted ``select``)."""
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    waiting.wake_on_signals()
    try:
        _wait_ended_by(cluster, dbname, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_registered_descriptor_ends_the_wait_for_data(cluster: Cluster, dbname: str) -> None:
    """A descriptor given to ``wake_on`` (an apply worker's catalog watch) ends
    ``read_batch``'s wait once readable, with nothing read from it."""
    read, write = os.pipe()
    try:
        _wait_ended_by(cluster, dbname, lambda: os.write(write, b"x"), read)
        assert os.read(read, 8) == b"x"  # left for its owner
    finally:
        os.close(read)
        os.close(write)
