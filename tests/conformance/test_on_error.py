"""After PostgreSQL's ``029_on_error.pl``: with ``disable_on_error``, an initial copy
that fails disables the subscription (as an apply error does), keeping the error."""

from __future__ import annotations

from tests.conformance.conftest import Ferry
from tests.support import wait_for


def test_a_failed_initial_copy_disables_the_subscription(ferry: Ferry) -> None:
    schema = "CREATE TABLE tbl (i int PRIMARY KEY)"
    ferry.on_pub(schema)
    ferry.on_sub(schema)
    ferry.on_pub("INSERT INTO tbl VALUES (1); CREATE PUBLICATION pub FOR TABLE tbl")
    ferry.on_sub("INSERT INTO tbl VALUES (1)")  # the copy will collide with it
    ferry.subscribe("s", ["pub"], "disable_on_error=true")
    with ferry.running():
        wait_for(lambda: not ferry.subscription("s").enabled, "the subscription disabled")
        sub = ferry.subscription("s")
        assert "duplicate key" in (sub.last_error or ""), sub.last_error
        assert ferry.states("s") == {"public.tbl": "d"} or ferry.states("s") == {"public.tbl": "i"}
        # Fixed and enabled again, the copy succeeds.
        ferry.on_sub("DELETE FROM tbl")
        ferry.alter("s", enable=True)
        ferry.wait_ready("s")
        ferry.wait_rows("SELECT i FROM tbl", [(1,)])
