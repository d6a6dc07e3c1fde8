"""verify where bisection cannot cut, where the two servers order text keys
differently, and where the publisher cannot be reached.

* thousands of rows of one key value (a table without a key, or a subscriber
  table without the publisher's unique key holding one key many times) are
  compared directly, quickly, and exactly;
* a text key whose collation differs between the publisher ("C") and the
  subscriber (ICU, on a PostgreSQL 15 subscriber: the only major here built with
  ICU) is cut and ordered the same on both sides: identical data is identical,
  a planted difference is found exactly;
* a publisher that does not answer or is stopped fails verify within its
  timeout with one line naming the subscription, leaves no apply hold, and the
  subscription applies again once the publisher is back.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgferry.catalog import store
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster, install_for_major
from pgferry.testing.pytest_plugin import ClusterFactory
from pgferry.verify import VerifyReport, compare, verify_subscription
from tests.support import pgferry, wait_for
from tests.verify.conftest import Ferry, running

TWINS_PUB = """
CREATE TABLE twins (x int, y text);
ALTER TABLE twins REPLICA IDENTITY FULL;
CREATE TABLE dupkey (id int PRIMARY KEY, v text);
CREATE TABLE marker (id bigserial PRIMARY KEY);
INSERT INTO twins SELECT 1, 'same' FROM generate_series(1, 6000);
INSERT INTO twins SELECT g + 1, 't' || g FROM generate_series(1, 50) g;
INSERT INTO dupkey SELECT g, 'v' || g FROM generate_series(1, 20000) g;
CREATE PUBLICATION pub FOR TABLE twins, dupkey, marker;
"""

#: The subscriber's ``dupkey`` lacks the publisher's primary key.
TWINS_SUB = """
CREATE TABLE twins (x int, y text);
CREATE TABLE dupkey (id int, v text);
CREATE TABLE marker (id bigserial PRIMARY KEY);
"""


def _found(report: VerifyReport) -> dict[str, dict[str, list[list[str | None]]]]:
    return {
        t.table: {k: [list(key) for key in keys] for k, keys in t.keys.items() if keys}
        for t in report.tables
        if t.differences
    }


def _caught_up(ferry: Ferry) -> None:
    marker = ferry.on_pub("INSERT INTO marker DEFAULT VALUES RETURNING id")[0][0]
    wait_for(
        lambda: ferry.on_sub("SELECT count(*) FROM marker WHERE id = %s", (marker,)) == [(1,)],
        "the subscriber caught up",
        30,
    )


def _no_hold(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pgferry.apply_hold").fetchone() == (0,)


@pytest.fixture(scope="module")
def twins(cluster: Cluster) -> Iterator[Ferry]:
    """``twins`` (no key, 6000 equal rows) and ``dupkey`` (no key on the
    subscriber), replicated and applied by ``pgferry run``."""
    tag = uuid.uuid4().hex[:8]
    ferry = Ferry(cluster, f"twins_pub_{tag}", f"twins_sub_{tag}", f"twins_{tag}")
    cluster.create_database(ferry.pub_db)
    cluster.create_database(ferry.sub_db)
    try:
        ferry.on_pub(TWINS_PUB)
        ferry.on_sub(TWINS_SUB)
        create_subscription(ferry.sub_dsn, ferry.name, cluster.dsn(ferry.pub_db), ["pub"])
        with running(ferry.sub_dsn):
            wait_for(
                lambda: bool(ferry.states()) and set(ferry.states().values()) == {"r"},
                "every table ready",
                90,
            )
            yield ferry
    finally:
        cluster.drop_database(ferry.sub_db)
        cluster.drop_database(ferry.pub_db)
        cluster.sql(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
            " WHERE roname LIKE %s",
            (f"%{ferry.name}%",),
        )


def test_thousands_of_equal_rows_without_a_key(twins: Ferry) -> None:
    _caught_up(twins)
    twins.on_sub("INSERT INTO twins VALUES (1, 'same'); DELETE FROM twins WHERE x = 2 AND y = 't1'")
    try:
        started = time.monotonic()
        run = pgferry(twins.sub_dsn, "verify", twins.name, "--table", "twins", "--json")
        assert time.monotonic() - started < 30
        assert run.returncode == 1, run.stderr
        (table,) = json.loads(run.stdout)["tables"]
        assert (table["rows_publisher"], table["rows_subscriber"]) == (6050, 6050)
        assert table["counts"] == {"missing": 1, "extra": 1, "different": 0}
        assert table["keys"] == {"missing": [["(2,t1)"]], "extra": [["(1,same)"]], "different": []}
        fixed = verify_subscription(twins.sub_dsn, twins.name, tables=["twins"], repair=True)
        assert {k: n for k, n in fixed.tables[0].repaired.items() if n} == {
            "missing": 1,
            "extra": 1,
        }
    finally:
        verify_subscription(twins.sub_dsn, twins.name, tables=["twins"], repair=True)
    again = verify_subscription(twins.sub_dsn, twins.name, tables=["twins"])
    assert again.identical, _found(again)
    assert twins.on_sub("SELECT count(*) FROM twins WHERE x = 1") == [(6000,)]


def test_a_key_held_thousands_of_times_is_compared_not_cut_forever(twins: Ferry) -> None:
    """The subscriber's ``dupkey`` has no unique key: 6001 rows of key 7 fill a
    range no split can make smaller."""
    _caught_up(twins)
    twins.on_sub(
        "INSERT INTO dupkey SELECT 7, 'v7' FROM generate_series(1, 6000);"
        " UPDATE dupkey SET v = 'changed' WHERE id = 9"
    )
    try:
        started = time.monotonic()
        run = pgferry(
            twins.sub_dsn, "verify", twins.name, "--table", "dupkey", "--json", "--limit", "2"
        )
        assert time.monotonic() - started < 30
        assert run.returncode == 1, run.stderr
        (table,) = json.loads(run.stdout)["tables"]
        assert (table["rows_publisher"], table["rows_subscriber"]) == (20000, 26000)
        assert table["counts"] == {"missing": 0, "extra": 6000, "different": 1}
        assert table["keys"] == {"missing": [], "extra": [["7"], ["7"]], "different": [["9"]]}
    finally:
        twins.on_sub(
            "DELETE FROM dupkey WHERE ctid IN (SELECT ctid FROM dupkey WHERE id = 7 LIMIT 6000);"
            " UPDATE dupkey SET v = 'v9' WHERE id = 9"
        )
    assert verify_subscription(twins.sub_dsn, twins.name, tables=["dupkey"]).identical


#: Keys whose order under ICU differs from "C": case, accents, punctuation.
COLLATED = """
CREATE TABLE words (k text {collate} PRIMARY KEY, v int);
CREATE TABLE pairs (a varchar(20) {collate}, b text {collate}, v int, PRIMARY KEY (a, b));
"""

COLLATED_DATA = """
INSERT INTO words SELECT (ARRAY['a', 'B', '_', 'é', 'Z', 'b', 'A', 'ß', 'ä', '1'])[1 + g % 10]
    || g, g FROM generate_series(1, 3000) g;
INSERT INTO pairs SELECT (ARRAY['x', 'X', 'ÿ', '-'])[1 + g % 4], (ARRAY['q', 'Q', '.'])[1 + g % 3]
    || g, g FROM generate_series(1, 1200) g;
CREATE PUBLICATION pub_words FOR TABLE words, pairs;
"""


def test_text_keys_under_different_collations(
    cluster: Cluster, dbname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher's keys are "C", the subscriber's ICU: many ranges and
    bisections, each cut in one order on both sides."""
    monkeypatch.setattr(compare, "RANGE_ROWS", 100)
    monkeypatch.setattr(compare, "FETCH_ROWS", 20)
    monkeypatch.setattr(compare, "SPLIT", 3)
    cluster.sql(COLLATED.format(collate='COLLATE "C"') + COLLATED_DATA, dbname=dbname)
    cluster.sql("ANALYZE words, pairs", dbname=dbname)
    with Cluster(install_for_major(15)) as sub:
        sub.create_database("sub")
        sub.sql(COLLATED.format(collate='COLLATE "und-x-icu"'), dbname="sub")
        sub_dsn = sub.dsn("sub")
        order = "SELECT k FROM words WHERE k IN ('a1', 'B1', '_10') ORDER BY k"
        assert sub.sql(order, dbname="sub") != cluster.sql(order, dbname=dbname)
        create_subscription(sub_dsn, "collated", cluster.dsn(dbname), ["pub_words"])
        with running(sub_dsn):
            wait_for(
                lambda: (
                    sub.sql(
                        "SELECT count(*) FILTER (WHERE state <> 'r'), count(*)"
                        " FROM pgferry.subscription_table",
                        dbname="sub",
                    )
                    == [(0, 2)]
                ),
                "every table ready",
                90,
            )
            same = verify_subscription(sub_dsn, "collated")
            assert same.identical, _found(same)
            assert {t.table: t.rows_subscriber for t in same.tables} == {
                "public.words": 3000,
                "public.pairs": 1200,
            }
            # (Ordered differently, the ranges would not shrink: thousands of them.)
            assert {t.table: 5 < t.ranges < 200 for t in same.tables} == {
                "public.words": True,
                "public.pairs": True,
            }
            sub.sql(
                "UPDATE words SET v = -1 WHERE k = 'B1';"
                " DELETE FROM words WHERE k = '_2';"
                " INSERT INTO words VALUES ('Ä0', 0);"
                " UPDATE pairs SET v = -1 WHERE a = 'X' AND b = 'Q1'",
                dbname="sub",
            )
            planted = verify_subscription(sub_dsn, "collated")
            assert _found(planted) == {
                "public.words": {"missing": [["_2"]], "extra": [["Ä0"]], "different": [["B1"]]},
                "public.pairs": {"different": [["X", "Q1"]]},
            }
            verify_subscription(sub_dsn, "collated", repair=True)
            assert verify_subscription(sub_dsn, "collated").identical


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that takes connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_an_unreachable_publisher_fails_within_the_timeout_and_holds_nothing(
    cluster: Cluster, make_cluster: ClusterFactory, blackhole: int
) -> None:
    publisher = make_cluster()
    publisher.create_database("app")
    publisher.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t", dbname="app"
    )
    tag = uuid.uuid4().hex[:8]
    sub_db, name = f"unreach_{tag}", f"unreach_{tag}"
    cluster.create_database(sub_db)
    dsn = cluster.dsn(sub_db)
    try:
        cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=sub_db)
        good = publisher.dsn("app")
        create_subscription(dsn, name, good, ["p"])
        with running(dsn), psycopg.connect(dsn, autocommit=True) as conn:
            wait_for(
                lambda: (
                    cluster.sql("SELECT state FROM pgferry.subscription_table", dbname=sub_db)
                    == [("r",)]
                ),
                "the table ready",
                90,
            )
            store.set_conninfo(conn, name, make_conninfo(host="127.0.0.1", port=str(blackhole)))
            started = time.monotonic()
            silent = pgferry(dsn, "verify", name, "--timeout", "2")
            # (Without --timeout the attempt would wait 10 s.)
            assert time.monotonic() - started < 9
            assert silent.returncode == 1
            first, hint = silent.stderr.splitlines()
            assert first.startswith(f"pgferry: error: subscription {name!r} cannot be verified")
            assert "nothing was held" in first
            assert hint.startswith("hint: ") and f"verify {name} again" in hint
            assert _no_hold(dsn)
            store.set_conninfo(conn, name, good)

            publisher.stop()
            stopped = pgferry(dsn, "verify", name, "--timeout", "5")
            assert stopped.returncode == 1
            first, hint = stopped.stderr.splitlines()
            assert first.startswith(f"pgferry: error: subscription {name!r} cannot be verified")
            assert "is the server running?" in hint and f"verify {name} again" in hint
            assert _no_hold(dsn)

            publisher.start()
            publisher.sql("INSERT INTO t VALUES (1)", dbname="app")
            wait_for(
                lambda: cluster.sql("SELECT id FROM t", dbname=sub_db) == [(1,)],
                "apply going on once the publisher is back",
                60,
            )
            back = verify_subscription(dsn, name)
            assert back.identical and back.tables[0].rows_subscriber == 1
            assert _no_hold(dsn)
    finally:
        cluster.drop_database(sub_db)
        cluster.sql(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
            " WHERE roname LIKE %s",
            (f"%{name}%",),
        )
