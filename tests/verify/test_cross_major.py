"""verify from a PostgreSQL 15 publisher to an 18 subscriber (the upgrade): the same
data reads the same across majors (floats, times, intervals, json, arrays), and
verify under a write load with large streamed transactions (applied as they
arrive, ``streaming = parallel``) and with ``apply_mode = exact`` finds no false
difference.

These tests choose their majors themselves, so they run once whatever ``--pg`` says."""

from __future__ import annotations

import threading

import psycopg

from pgferry.subscription import create_subscription
from pgferry.testing import Cluster, install_for_major
from pgferry.verify import verify_subscription
from tests.support import wait_for
from tests.verify.conftest import running

TABLES = """
CREATE TABLE kinds (id int PRIMARY KEY, f8 float8, f4 float4, ts timestamptz, t timestamp,
                    d date, iv interval, n numeric, j jsonb, a int[], u uuid, b bool,
                    by bytea, txt text);
CREATE TABLE big (id bigint PRIMARY KEY, pad text);
CREATE TABLE exact (id bigint PRIMARY KEY, c int);
"""

DATA = """
INSERT INTO kinds SELECT g, g / 3.0, g / 7.0, '2024-03-10 01:59:59.123456+00'::timestamptz
    + g * interval '37 min', '1999-12-31 23:59:59.999'::timestamp + g * interval '1 day',
    '2000-02-28'::date + g, make_interval(months => g, secs => g / 9.0), g::numeric / 11,
    jsonb_build_object('k', g, 'f', g / 3.0, 'a', jsonb_build_array(g, 'x')),
    ARRAY[g, -g, NULL], md5(g::text)::uuid, g % 2 = 0, decode(md5(g::text), 'hex'),
    'é ü 中 ' || g FROM generate_series(1, 2000) g;
INSERT INTO kinds (id, f8, f4) VALUES (-1, 'NaN', '-Infinity'), (-2, 1e-300, 3.4e38),
    (-3, 0.1 + 0.2, -0.0);
INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, 1000) g;
INSERT INTO exact SELECT g, g FROM generate_series(1, 100) g;
CREATE PUBLICATION p_main FOR TABLE kinds, big;
CREATE PUBLICATION p_exact FOR TABLE exact;
"""


def test_publisher_15_subscriber_18_under_load() -> None:
    settings = {"logical_decoding_work_mem": "64kB"}
    with (
        Cluster(install_for_major(15), settings=settings) as pub,
        Cluster(install_for_major(18)) as sub,
    ):
        pub.create_database("app")
        sub.create_database("sub")
        pub.sql(TABLES + DATA, dbname="app")
        sub.sql(TABLES, dbname="sub")
        sub_dsn = sub.dsn("sub")
        create_subscription(sub_dsn, "x_main", pub.dsn("app"), ["p_main"], ["streaming=parallel"])
        create_subscription(sub_dsn, "x_exact", pub.dsn("app"), ["p_exact"], ["apply_mode=exact"])
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with psycopg.connect(pub.dsn("app"), autocommit=True) as conn:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        with conn.transaction():
                            # Streamed: more than 64kB of decoding memory.
                            conn.execute(
                                "INSERT INTO big SELECT g, repeat('q', 200)"
                                " FROM generate_series(%s::bigint, %s::bigint) g",
                                (n * 10_000, n * 10_000 + 500),
                            )
                            conn.execute("UPDATE kinds SET f8 = f8 + 0.1 WHERE id = %s", (n,))
                        conn.execute("UPDATE exact SET c = c + 1 WHERE id = %s", (1 + n % 100,))
                        conn.execute("INSERT INTO exact VALUES (%s, 0)", (1000 + n,))
                        stop.wait(0.02)
            except BaseException as exc:
                errors.append(exc)

        with running(sub_dsn):
            wait_for(
                lambda: (
                    sub.sql(
                        "SELECT count(*) FILTER (WHERE state <> 'r'), count(*)"
                        " FROM pgferry.subscription_table",
                        dbname="sub",
                    )
                    == [(0, 3)]
                ),
                "every table ready",
                90,
            )
            quiet = verify_subscription(sub_dsn, "x_main")
            assert quiet.identical, [(t.table, t.keys) for t in quiet.tables if t.differences]
            assert {t.table: t.rows_publisher for t in quiet.tables}["public.kinds"] == 2003
            thread = threading.Thread(target=write, daemon=True)
            thread.start()
            try:
                for _ in range(3):
                    for name in ("x_main", "x_exact"):
                        report = verify_subscription(sub_dsn, name, jobs=2)
                        assert report.identical, [
                            (t.table, t.keys) for t in report.tables if t.differences
                        ]
            finally:
                stop.set()
                thread.join(timeout=60)
            assert not errors, errors
            wait_for(
                lambda: (
                    pub.sql(
                        "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots",
                        dbname="app",
                    )[0][0]
                    > 0
                ),
                "transactions streamed while in progress",
                15,
            )
            sub.sql("UPDATE kinds SET ts = ts + interval '1 s' WHERE id = 1000", dbname="sub")
            planted = verify_subscription(sub_dsn, "x_main", tables=["kinds"])
            assert {t.table: t.keys["different"] for t in planted.tables} == {
                "public.kinds": [("1000",)]
            }
