"""After PostgreSQL's ``001_rep_changes.pl``: a table dropped from the subscription
and added back by a refresh, and a table without columns."""

from __future__ import annotations

from tests.conformance.conftest import Ferry


def test_an_insert_right_after_a_refresh_is_applied(ferry: Ferry) -> None:
    schema = "CREATE TABLE kept (id int PRIMARY KEY); CREATE TABLE full_t (id int);"
    ferry.on_pub(schema)
    ferry.on_sub(schema)
    ferry.on_pub(
        "CREATE PUBLICATION pub_all FOR TABLE kept, full_t;"
        " CREATE PUBLICATION pub_kept FOR TABLE kept;"
        " INSERT INTO full_t VALUES (1)"
    )
    ferry.subscribe("s", ["pub_all"])
    with ferry.running():
        ferry.wait_ready("s")
        ferry.wait_rows("SELECT id FROM full_t", [(1,)])
        # full_t leaves the subscription...
        ferry.alter("s", set_publications=("pub_kept",), with_options=("copy_data=false",))
        assert set(ferry.states("s")) == {"public.kept"}
        ferry.on_pub("INSERT INTO full_t VALUES (2); INSERT INTO kept VALUES (2)")
        ferry.wait_rows("SELECT id FROM kept", [(2,)])
        # ... and comes back without a copy: what commits from now on is applied.
        ferry.on_pub("ALTER PUBLICATION pub_kept ADD TABLE full_t")
        ferry.alter("s", refresh_publication=True, with_options=("copy_data=false",))
        ferry.on_pub("INSERT INTO full_t VALUES (3)")
        ferry.wait_rows("SELECT id FROM full_t ORDER BY id", [(1,), (3,)])
        ferry.on_pub("INSERT INTO full_t VALUES (4)")
        ferry.wait_rows("SELECT id FROM full_t ORDER BY id", [(1,), (3,), (4,)])


def test_a_table_without_columns_syncs_and_replicates(ferry: Ferry) -> None:
    ferry.on_pub("CREATE TABLE nocols (); INSERT INTO nocols DEFAULT VALUES")
    ferry.on_sub("CREATE TABLE nocols ()")
    ferry.on_pub("CREATE PUBLICATION pub FOR TABLE nocols")
    ferry.subscribe("s", ["pub"])
    count = "SELECT count(*) FROM nocols"
    with ferry.running():
        ferry.wait_ready("s")
        ferry.wait_rows(count, [(1,)])
        ferry.on_pub("INSERT INTO nocols DEFAULT VALUES; INSERT INTO nocols DEFAULT VALUES")
        ferry.wait_rows(count, [(3,)])
        ferry.on_pub("TRUNCATE nocols")
        ferry.wait_rows(count, [(0,)])
        ferry.on_pub("INSERT INTO nocols DEFAULT VALUES")
        ferry.wait_rows(count, [(1,)])
