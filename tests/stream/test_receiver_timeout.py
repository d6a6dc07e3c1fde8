"""The receiver timeout (native's ``wal_receiver_timeout``) on real servers: a stream
whose walsender stops answering ends with an error within the timeout; one whose
publisher is merely idle stays open (the stream asks for a reply at half the
timeout, and the walsender answers)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pgferry.errors import InterfaceError, ReceiverTimeout
from pgferry.protocol import XLogData
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.stream.connection import RECEIVER_TIMEOUT_ENV, default_receiver_timeout
from pgferry.testing import Cluster
from tests.support import create_slot

TIMEOUT = 1.5


def walsender_pid(cluster: Cluster, dbname: str, slot: str) -> int:
    """The pid of the walsender streaming ``slot``."""
    deadline = time.monotonic() + 10
    while True:
        rows = cluster.sql(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,), dbname
        )
        if rows and rows[0][0] is not None:
            return int(rows[0][0])
        assert time.monotonic() < deadline, f"no walsender streams slot {slot}"
        time.sleep(0.05)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: it neither sends nor reads."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def slot(cluster: Cluster, dbname: str) -> str:
    cluster.sql("CREATE TABLE t (id int); CREATE PUBLICATION pub FOR TABLE t", dbname=dbname)
    create_slot(cluster, dbname, "s")
    return "s"


def test_a_walsender_that_stops_answering_ends_the_stream(
    cluster: Cluster, dbname: str, slot: str
) -> None:
    conn = ReplicationConnection.connect(cluster.dsn(dbname))
    # No status updates of our own: only the timeout's request for a reply.
    stream = conn.start_replication(
        slot, PgoutputOptions(("pub",)), status_interval=3600, receiver_timeout=TIMEOUT
    )
    try:
        with stopped(walsender_pid(cluster, dbname, slot)):
            began = time.monotonic()
            with pytest.raises(ReceiverTimeout, match="nothing received from the publisher") as exc:
                while time.monotonic() - began < 30:
                    stream.read_batch(timeout=0.2)
            waited = time.monotonic() - began
        assert TIMEOUT / 2 <= waited < TIMEOUT + 2, waited
        assert f"slot '{slot}'" in exc.value.message and exc.value.hint
    finally:
        stream.close()


def test_an_idle_publisher_does_not_time_out(cluster: Cluster, dbname: str, slot: str) -> None:
    conn = ReplicationConnection.connect(cluster.dsn(dbname))
    stream = conn.start_replication(
        slot, PgoutputOptions(("pub",)), status_interval=3600, receiver_timeout=TIMEOUT
    )
    try:
        # Nothing to send for three timeouts: the walsender answers each request.
        began = time.monotonic()
        while time.monotonic() - began < 3 * TIMEOUT:
            stream.read_batch(timeout=0.2)
        cluster.sql("INSERT INTO t VALUES (1)", dbname=dbname)
        deadline = time.monotonic() + 10
        while not any(
            isinstance(item, XLogData) and item.payload[:1] == b"I"
            for item in stream.read_batch(timeout=0.5)
        ):
            assert time.monotonic() < deadline, "the insert did not arrive"
    finally:
        stream.close()


def test_a_busy_consumer_is_not_taken_for_a_silent_publisher(
    cluster: Cluster, dbname: str, slot: str
) -> None:
    conn = ReplicationConnection.connect(cluster.dsn(dbname))
    stream = conn.start_replication(
        slot, PgoutputOptions(("pub",)), status_interval=3600, receiver_timeout=TIMEOUT
    )
    try:
        stream.read_batch(timeout=0.2)
        time.sleep(2 * TIMEOUT)  # busy elsewhere, reading nothing
        began = time.monotonic()
        while time.monotonic() - began < 2 * TIMEOUT:
            stream.read_batch(timeout=0.2)
    finally:
        stream.close()


def test_the_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RECEIVER_TIMEOUT_ENV, raising=False)
    assert default_receiver_timeout() == 60
    monkeypatch.setenv(RECEIVER_TIMEOUT_ENV, "2.5")
    assert default_receiver_timeout() == 2.5
    monkeypatch.setenv(RECEIVER_TIMEOUT_ENV, "0")
    assert default_receiver_timeout() == 0
    monkeypatch.setenv(RECEIVER_TIMEOUT_ENV, "soon")
    with pytest.raises(InterfaceError, match="PGFERRY_RECEIVER_TIMEOUT must be a number"):
        default_receiver_timeout()
