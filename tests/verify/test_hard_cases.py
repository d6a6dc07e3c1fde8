"""verify where bisection cannot cut, where the two servers order text keys
differently, and where the publisher cannot be reached.

* thousands of rows of one key value (a table without a key, or a subscriber
  table without the publisher's unique key holding one key many times) are
  compared directly, quickly, and exactly;
* a text key whose collation differs between the publisher ("C") and the
  subscriber (ICU, on a PostgreSQL 15 subscriber: the only major here built with
  ICU) is cut and ordered the same on both sides: identical data is identical,
  a planted difference is found exactly;
* rows with a NULL key column, and a key held twice, on a subscriber table
  without the publisher's primary key are each listed (capped, all counted) and
  ``--repair`` leaves exactly the publisher's rows;
* a publisher that does not answer or is stopped fails verify within its
  timeout with one line naming the subscription, leaves no apply hold, and the
  subscription applies again once the publisher is back; every connection verify
  opens to the publisher waits at most ``--timeout``.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgferry import connect
from pgferry.catalog import store
from pgferry.errors import ConnectionFailed
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster, install_for_major
from pgferry.testing.pytest_plugin import ClusterFactory
from pgferry.verify import VerifyReport, compare, compare_snapshots, verify_subscription
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
CREATE TABLE pairkey (a text, b int, v text, PRIMARY KEY (a, b));
INSERT INTO pairkey SELECT 'a' || (g % 7), g, 'p' || g FROM generate_series(1, 700) g;
CREATE PUBLICATION pub FOR TABLE twins, dupkey, pairkey, marker;
"""

#: The subscriber's ``dupkey`` and ``pairkey`` lack the publisher's primary key.
TWINS_SUB = """
CREATE TABLE twins (x int, y text);
CREATE TABLE dupkey (id int, v text);
CREATE TABLE pairkey (a text, b int, v text);
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


def test_rows_with_a_null_key_are_listed_as_extra_and_repaired(
    twins: Ferry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with a NULL key column are in no key range: found all the same, by
    row (the NULL key range read row by row, or streamed when large), and
    deleted by --repair."""
    _caught_up(twins)
    twins.on_sub(
        "INSERT INTO dupkey VALUES (NULL, 'n1'), (NULL, 'n2'), (NULL, 'n2');"
        " INSERT INTO pairkey VALUES ('a1', NULL, 'n'), (NULL, 1, 'n'), (NULL, NULL, 'n')"
    )
    both = ("--table", "dupkey", "--table", "pairkey")
    try:
        run = pgferry(twins.sub_dsn, "verify", twins.name, *both, "--json", "--limit", "2")
        assert run.returncode == 1, run.stderr
        tables = {t["table"]: t for t in json.loads(run.stdout)["tables"]}
        assert [tables[t]["rows_subscriber"] for t in ("public.dupkey", "public.pairkey")] == [
            20003,
            703,
        ]
        assert {t: tables[t]["counts"] for t in tables} == {
            t: {"missing": 0, "extra": 3, "different": 0}
            for t in ("public.dupkey", "public.pairkey")
        }
        assert tables["public.dupkey"]["keys"]["extra"] == [[None], [None]]
        assert tables["public.pairkey"]["keys"]["extra"] == [["a1", None], [None, "1"]]
        text = pgferry(twins.sub_dsn, "verify", twins.name, "--table", "dupkey", "--limit", "2")
        assert text.stdout.splitlines()[1:4] == [
            "  extra NULL",
            "  extra NULL",
            "  ... 1 more extra",
        ]

        monkeypatch.setattr(compare, "RANGE_ROWS", 1000)
        monkeypatch.setattr(compare, "FETCH_ROWS", 2)
        twins.on_pub("ANALYZE dupkey, pairkey")
        cut = verify_subscription(twins.sub_dsn, twins.name, tables=["dupkey", "pairkey"])
        assert {t.table: t.counts["extra"] for t in cut.tables if t.differences} == {
            "public.dupkey": 3,
            "public.pairkey": 3,
        }
        assert cut.tables[0].ranges > 20
        fixed = verify_subscription(
            twins.sub_dsn, twins.name, tables=["dupkey", "pairkey"], repair=True
        )
        assert [{k: n for k, n in t.repaired.items() if n} for t in fixed.tables] == [
            {"extra": 3},
            {"extra": 3},
        ]
        monkeypatch.undo()
        again = verify_subscription(twins.sub_dsn, twins.name, tables=["dupkey", "pairkey"])
        assert again.identical, _found(again)
    finally:
        twins.on_sub(
            "DELETE FROM dupkey WHERE id IS NULL; DELETE FROM pairkey WHERE a IS NULL OR b IS NULL"
        )
    assert twins.on_sub("SELECT count(*) FROM pairkey") == [(700,)]


def test_a_key_held_twice_is_repaired_to_the_publishers_one_row(twins: Ferry) -> None:
    """Key 11 twice the same, 12 twice and each different, 13 once the same and
    once not: each copy is listed, and --repair leaves the publisher's row."""
    _caught_up(twins)
    twins.on_sub(
        "INSERT INTO dupkey VALUES (11, 'v11'), (12, 'x'), (13, 'other');"
        " UPDATE dupkey SET v = 'y' WHERE id = 12 AND v = 'v12'"
    )
    try:
        report = verify_subscription(twins.sub_dsn, twins.name, tables=["dupkey"])
        assert _found(report) == {
            "public.dupkey": {"extra": [["11"], ["12"], ["13"]], "different": [["12"]]}
        }
        fixed = verify_subscription(twins.sub_dsn, twins.name, tables=["dupkey"], repair=True)
        assert {k: n for k, n in fixed.tables[0].repaired.items() if n} == {
            "extra": 3,
            "different": 1,
        }
        assert twins.on_sub("SELECT id, v FROM dupkey WHERE id IN (11, 12, 13) ORDER BY id") == [
            (11, "v11"),
            (12, "v12"),
            (13, "v13"),
        ]
        again = verify_subscription(twins.sub_dsn, twins.name, tables=["dupkey"])
        assert again.identical, _found(again)
    finally:
        twins.on_sub(
            "DELETE FROM dupkey WHERE id IN (11, 12, 13);"
            " INSERT INTO dupkey VALUES (11, 'v11'), (12, 'v12'), (13, 'v13')"
        )


def test_every_publisher_connection_waits_at_most_the_timeout(
    twins: Ferry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify --repair connects to the publisher for two held pairs (a session
    and a replication connection each), the comparing sessions and the repair's
    session: each attempt's connect_timeout is --timeout."""
    opened: list[dict[str, str]] = []
    real = connect.open_connection

    def watched(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = real(dsn, **kwargs)
        if kwargs["side"] == "publisher":
            opened.append(conn.info.get_parameters())
        return conn

    _caught_up(twins)
    twins.on_sub("UPDATE dupkey SET v = 'timed' WHERE id = 21")
    monkeypatch.setattr(connect, "open_connection", watched)
    try:
        fixed = verify_subscription(
            twins.sub_dsn, twins.name, tables=["dupkey"], jobs=2, repair=True, timeout=7
        )
    finally:
        monkeypatch.undo()
        twins.on_sub("UPDATE dupkey SET v = 'v21' WHERE id = 21")
    assert fixed.tables[0].repaired["different"] == 1
    ours = [p for p in opened if p.get("application_name") == "pgferry verify"]
    assert len(ours) == 7
    assert sum(p.get("replication") == "database" for p in ours) == 2
    assert {p.get("connect_timeout") for p in ours} == {"7"}


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
            # (The comparing sessions: the attempt fails before a snapshot is imported.)
            started = time.monotonic()
            with pytest.raises(ConnectionFailed) as failed:
                compare_snapshots(dsn, name, "unused", "unused", timeout=2)
            assert time.monotonic() - started < 9
            assert failed.value.message.startswith(f"subscription {name!r} cannot be verified")
            assert failed.value.message.endswith("; nothing was compared")
            assert failed.value.hint is not None and f"verify {name} again" in failed.value.hint
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
