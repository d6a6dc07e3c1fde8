"""The catalog watch against a real subscriber database: notifications seen
without a round trip, its socket for a stream's wait, and its sleep ended by a
notification or by a handled signal."""

from __future__ import annotations

import os
import selectors
import signal
import threading
import time

from pgferry.catalog import ensure_catalog
from pgferry.catalog.hold import HOLD_CHANNEL
from pgferry.catalog.watch import CatalogWatch
from pgferry.stream import waiting
from pgferry.testing import Cluster


def _watch(cluster: Cluster, dbname: str) -> CatalogWatch:
    with cluster.connect(dbname=dbname, autocommit=True) as conn:
        ensure_catalog(conn)
    return CatalogWatch.connect(cluster.dsn(dbname))


def test_a_hold_notification_is_seen_and_makes_the_socket_readable(
    cluster: Cluster, dbname: str
) -> None:
    watch = _watch(cluster, dbname)
    try:
        assert not watch.hold_changed()
        cluster.sql(f"NOTIFY {HOLD_CHANNEL}, 'x'", dbname=dbname)
        with selectors.DefaultSelector() as sel:
            sel.register(watch.fileno(), selectors.EVENT_READ)
            assert sel.select(10), "the watch's socket never became readable"
        assert watch.hold_changed()
        assert not watch.hold_changed()
    finally:
        watch.close()


def test_a_handled_signal_ends_the_watch_wait(cluster: Cluster, dbname: str) -> None:
    """A held apply worker sleeps on its watch: its stop signal ends that sleep
    at once, not at the sleep's end."""
    watch = _watch(cluster, dbname)
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    waiting.wake_on_signals()
    try:
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
        started = time.monotonic()
        timer.start()
        watch.wait(30)
        waited = time.monotonic() - started
        timer.join()
        assert received == [signal.SIGUSR1]
        assert waited < 10, waited
    finally:
        signal.signal(signal.SIGUSR1, previous)
        watch.close()
