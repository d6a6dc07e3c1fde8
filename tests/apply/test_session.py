"""The apply session (:mod:`pgferry.apply.session`) against a real subscriber."""

from __future__ import annotations

import threading

from pgferry.apply import session
from tests.apply.pair import Pair


def test_session_setup_waits_for_an_exiting_holder_of_the_origin(pair: Pair) -> None:
    """A worker that just stopped may hold the replication origin while its backend
    exits; the next worker's session waits for it instead of failing."""
    holder = pair.cluster.connect(pair.sub, autocommit=True)
    session.prepare(holder, "pgferry_wait_test", "off")
    timer = threading.Timer(0.3, holder.close)
    timer.start()
    try:
        with pair.cluster.connect(pair.sub, autocommit=True) as conn:
            session.prepare(conn, "pgferry_wait_test", "off")
            row = conn.execute("SELECT pg_catalog.pg_replication_origin_session_is_setup()")
            assert row.fetchone() == (True,)
            conn.execute("SELECT pg_catalog.pg_replication_origin_session_reset()")
            conn.execute("SELECT pg_catalog.pg_replication_origin_drop('pgferry_wait_test')")
    finally:
        timer.join()
