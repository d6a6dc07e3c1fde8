"""After PostgreSQL's ``011_generated.pl``: the publisher's generated columns are
not sent (before 18, or on 18 unless published), and the subscriber computes its
own generated columns, in the initial copy and in apply."""

from __future__ import annotations

import pytest

from tests.conformance.conftest import Ferry

PUB = "CREATE TABLE tab1 (a int PRIMARY KEY, b int GENERATED ALWAYS AS (a * 2) STORED)"
SUB = "CREATE TABLE tab1 (a int PRIMARY KEY, b int GENERATED ALWAYS AS (a * 22) STORED, c int)"


@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_the_subscriber_computes_its_generated_columns(ferry: Ferry, mode: str) -> None:
    ferry.on_pub(PUB)
    ferry.on_sub(SUB)
    ferry.on_pub("INSERT INTO tab1 (a) VALUES (1), (2), (3); CREATE PUBLICATION pub FOR TABLE tab1")
    ferry.subscribe("s", ["pub"], f"apply_mode={mode}")
    query = "SELECT a, b, c FROM tab1 ORDER BY a"
    with ferry.running():
        ferry.wait_ready("s")
        ferry.wait_rows(query, [(1, 22, None), (2, 44, None), (3, 66, None)])
        ferry.on_pub("INSERT INTO tab1 VALUES (4), (5); UPDATE tab1 SET a = 6 WHERE a = 5")
        ferry.wait_rows(
            query, [(1, 22, None), (2, 44, None), (3, 66, None), (4, 88, None), (6, 132, None)]
        )


@pytest.mark.pg_min(18)
def test_published_generated_columns_arrive_as_values(ferry: Ferry) -> None:
    ferry.on_pub(PUB)
    ferry.on_sub("CREATE TABLE tab1 (a int PRIMARY KEY, b int)")
    ferry.on_pub(
        "INSERT INTO tab1 (a) VALUES (1);"
        " CREATE PUBLICATION pub FOR TABLE tab1 WITH (publish_generated_columns = stored)"
    )
    ferry.subscribe("s", ["pub"])
    with ferry.running():
        ferry.wait_ready("s")
        ferry.on_pub("INSERT INTO tab1 (a) VALUES (2)")
        ferry.wait_rows("SELECT a, b FROM tab1 ORDER BY a", [(1, 2), (2, 4)])
