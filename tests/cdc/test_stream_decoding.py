"""``pgferry stream`` against real traffic: every common type, TOAST, replica
identities, TRUNCATE, logical messages, origins, ALTER TABLE and binary mode.

The oracle for values is the publisher itself: the JSON value of a column must be
exactly what ``column::text`` gives in a session with the same output settings.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pgferry.protocol import Insert, Lsn, Relation
from pgferry.stream import PgoutputOptions
from pgferry.testing import Cluster
from tests.support import changes, collect, create_slot, current_lsn, run_stream

TYPES_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE types (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8,
    t text, vc varchar(20), ch char(5), ba bytea, b bool,
    d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb,
    ia int[], ta text[], ia2 int[][],
    e mood, dom posint, comp pair, r int4range, tsr tstzrange,
    ip inet, net cidr, mac macaddr, m money, bt bit(4), vb varbit, pt point, o oid
);
CREATE PUBLICATION pub_types FOR TABLE types;
"""

TYPES_ROWS = r"""
INSERT INTO types VALUES (
    1, 1, -2147483648, 9223372036854775807, 12345.678900, 1.5, 0.1,
    'plain', 'varchar', 'ab', '\x00ff10', true,
    '2024-02-29', '23:59:59.999999', '12:00:00+05:30', '2000-01-01 00:00:00',
    '2024-06-01 12:34:56.789+02', '1 year 2 mons 3 days 04:05:06.5',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, 2, {"x": null}]}', '{"b": 2, "a": 1}',
    '{1,2,3}', '{"a b","c,d","e\"f",NULL}', '{{1,2},{3,4}}',
    'happy', 42, ROW(7, 'seven'), '[1,10)', '[2024-01-01 00:00+00,2024-02-01 00:00+00)',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, B'1010', B'10110', '(1.5,-2)',
    4242
), (
    2, -32768, 0, -9223372036854775808, 'NaN', 'Infinity', '-Infinity',
    E'unicode \u00e9\u4e2d\U0001F600 quote'' dq" backslash\\ tab\t newline\n end', '', '     ',
    '\x', false,
    'infinity', '00:00', '00:00:00-12', '-infinity', 'infinity', '-1 days -00:00:01',
    '00000000-0000-0000-0000-000000000000', '[]', '{}',
    '{}', '{NULL,"",NULL}', '{{NULL,2},{3,NULL}}',
    'sad', 1, ROW(NULL, ''), 'empty', '(,)', '::1', '::/0', '00:00:00:00:00:00', -0.01, B'0000',
    B'', '(0,0)', 0
), (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL);
"""

ORACLE_SETTINGS = (
    "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3;"
    " SET timezone = 'UTC';"
)


def _oracle_rows(cluster: Cluster, dbname: str, table: str) -> dict[int, dict[str, Any]]:
    """Each row of ``table`` as {column: text output} from the server itself: the
    raw text-format result (the types' output functions), not psycopg's parsing."""
    with cluster.connect(dbname) as conn:
        conn.execute(ORACLE_SETTINGS)
        res = conn.pgconn.exec_(f"SELECT * FROM {table}".encode())
        names = [bytes(res.fname(c) or b"").decode() for c in range(res.nfields)]
        rows = {}
        for r in range(res.ntuples):
            values = [res.get_value(r, c) for c in range(res.nfields)]
            row = {
                n: None if v is None else bytes(v).decode()
                for n, v in zip(names, values, strict=True)
            }
            rows[int(str(row["id"]))] = row
    return rows


def test_every_common_type_matches_the_servers_text_output(cluster: Cluster, dbname: str) -> None:
    cluster.sql(TYPES_SCHEMA, dbname=dbname)
    create_slot(cluster, dbname, "types_slot")
    cluster.sql(TYPES_ROWS, dbname=dbname)
    # The same rows again through UPDATE, so update decoding sees every type too.
    cluster.sql("UPDATE types SET id = id + 100", dbname=dbname)
    end = current_lsn(cluster, dbname)

    result = run_stream(
        cluster.dsn(dbname), "--slot", "types_slot", "--publication", "pub_types", end_lsn=end
    )
    assert result.returncode == 0, result.stderr
    oracle = _oracle_rows(cluster, dbname, "types")
    lines = changes(result.lines)
    inserts = [line for line in lines if line["op"] == "insert"]
    updates = [line for line in lines if line["op"] == "update"]
    assert [line["new"]["id"] for line in inserts] == ["1", "2", "3"]
    assert len(updates) == 3
    for line in updates:
        new = line["new"]
        expected = oracle[int(new["id"])]
        assert new == expected
        # Primary key changed: the old key (only) is sent.
        assert line["old"] == {"id": str(int(new["id"]) - 100)}
    for line in inserts:
        expected = dict(oracle[int(line["new"]["id"]) + 100])
        expected["id"] = line["new"]["id"]
        assert line["new"] == expected
        assert line["schema"] == "public" and line["table"] == "types"
        assert line["old"] is None
    # Every row of the all-NULL insert is JSON null except the key.
    nulls = inserts[2]["new"]
    assert all(v is None for k, v in nulls.items() if k != "id")
    # Spot checks that the values are really the tricky ones.
    second = inserts[1]["new"]
    assert second["num"] == "NaN" and second["f4"] == "Infinity" and second["f8"] == "-Infinity"
    assert second["t"].startswith("unicode é中😀 quote' dq\" backslash\\ tab\t newline\n")
    assert second["ia2"] == "{{NULL,2},{3,NULL}}"


def test_toast_unchanged_and_old_tuples_per_replica_identity(cluster: Cluster, dbname: str) -> None:
    cluster.sql(
        """
        CREATE TABLE toasty (id int PRIMARY KEY, big text, small int);
        CREATE TABLE by_index (id int, code text NOT NULL, v text);
        CREATE UNIQUE INDEX by_index_code ON by_index (code);
        ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
        CREATE TABLE full_ident (id int, v text, w int);
        ALTER TABLE full_ident REPLICA IDENTITY FULL;
        CREATE PUBLICATION pub FOR TABLE toasty, by_index, full_ident;
        """,
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql(
        """
        INSERT INTO toasty SELECT 1, string_agg(md5(g::text || random()::text), ''), 0
            FROM generate_series(1, 600) g;
        UPDATE toasty SET small = 1 WHERE id = 1;
        INSERT INTO by_index VALUES (1, 'A', 'x');
        UPDATE by_index SET v = 'y' WHERE code = 'A';
        UPDATE by_index SET code = 'B' WHERE code = 'A';
        DELETE FROM by_index WHERE code = 'B';
        INSERT INTO full_ident VALUES (1, 'one', 10);
        UPDATE full_ident SET w = 11;
        DELETE FROM full_ident;
        """,
        dbname=dbname,
    )
    big = cluster.sql("SELECT length(big) FROM toasty", dbname=dbname)[0][0]
    assert big > 8192
    end = current_lsn(cluster, dbname)
    result = run_stream(cluster.dsn(dbname), "--slot", "s", "--publication", "pub", end_lsn=end)
    assert result.returncode == 0, result.stderr
    lines = changes(result.lines)
    by_table: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_table.setdefault(line["table"], []).append(line)

    toast_insert, toast_update = by_table["toasty"]
    assert len(toast_insert["new"]["big"]) == big
    assert toast_update["new"] == {"id": "1", "big": {"unchanged_toast": True}, "small": "1"}
    assert toast_update["old"] is None

    _ins, upd_v, upd_code, dele = by_table["by_index"]
    assert upd_v["old"] is None  # identity unchanged: no old tuple
    assert upd_code["old"] == {"code": "A"}
    assert upd_code["new"] == {"id": "1", "code": "B", "v": "y"}
    assert dele["op"] == "delete" and dele["old"] == {"code": "B"} and dele["new"] is None

    _ins, upd, dele = by_table["full_ident"]
    assert upd["old"] == {"id": "1", "v": "one", "w": "10"}
    assert upd["new"] == {"id": "1", "v": "one", "w": "11"}
    assert dele["old"] == {"id": "1", "v": "one", "w": "11"}


def test_truncate_lists_tables_and_flags(cluster: Cluster, dbname: str) -> None:
    cluster.sql(
        """
        CREATE TABLE parent (id int PRIMARY KEY);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
        CREATE TABLE counted (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
        CREATE TABLE plain (id int PRIMARY KEY);
        CREATE PUBLICATION pub FOR TABLE parent, child, counted, plain;
        """,
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql(
        """
        INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
        INSERT INTO counted (v) VALUES ('a');
        TRUNCATE parent, counted RESTART IDENTITY CASCADE;
        """,
        dbname=dbname,
    )
    cluster.sql("TRUNCATE plain", dbname=dbname)
    end = current_lsn(cluster, dbname)
    result = run_stream(cluster.dsn(dbname), "--slot", "s", "--publication", "pub", end_lsn=end)
    assert result.returncode == 0, result.stderr
    truncates = [line for line in result.lines if line["op"] == "truncate"]
    assert len(truncates) == 2
    first, second = truncates
    assert {(t["schema"], t["table"]) for t in first["tables"]} == {
        ("public", "parent"),
        ("public", "child"),
        ("public", "counted"),
    }
    assert first["cascade"] is True and first["restart_identity"] is True
    assert second["tables"] == [{"schema": "public", "table": "plain"}]
    assert second["cascade"] is False and second["restart_identity"] is False
    assert first["xid"] != second["xid"]


def test_logical_messages_and_transaction_lines(cluster: Cluster, dbname: str) -> None:
    if cluster.major < 14:
        pytest.skip("pgoutput sends messages from PostgreSQL 14")
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t", dbname=dbname
    )
    create_slot(cluster, dbname, "s")
    with cluster.connect(dbname, autocommit=False) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("SELECT pg_logical_emit_message(true, 'app', 'in the transaction')")
        conn.execute("SELECT pg_logical_emit_message(false, 'audit', 'right away')")
        conn.commit()
    end = current_lsn(cluster, dbname)
    dsn = cluster.dsn(dbname)
    result = run_stream(
        dsn, "--slot", "s", "--publication", "pub", "--messages", "--with-tx", end_lsn=end
    )
    assert result.returncode == 0, result.stderr
    ops = [line["op"] for line in result.lines]
    # The non-transactional message is decoded when written, before the commit.
    assert ops == ["message", "begin", "insert", "message", "commit"]
    nontx, begin, insert, tx_msg, commit = result.lines
    assert nontx["transactional"] is False and nontx["prefix"] == "audit"
    assert nontx["content"] == "right away" and nontx["xid"] is None
    assert tx_msg["transactional"] is True and tx_msg["content"] == "in the transaction"
    assert tx_msg["xid"] == insert["xid"] == begin["xid"] == commit["xid"]
    assert begin["lsn"] == commit["lsn"] == insert["lsn"]
    assert Lsn.parse(commit["end_lsn"]) > Lsn.parse(commit["lsn"])


def test_origin_of_a_transaction_committed_under_a_replication_origin(
    cluster: Cluster, dbname: str
) -> None:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;"
        " SELECT pg_replication_origin_create('upstream node')",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql("INSERT INTO t VALUES (1)", dbname=dbname)
    with cluster.connect(dbname, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_origin_session_setup('upstream node')")
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (2)")
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
        conn.execute("SELECT pg_replication_origin_session_reset()")
    end = current_lsn(cluster, dbname)
    result = run_stream(cluster.dsn(dbname), "--slot", "s", "--publication", "pub", end_lsn=end)
    assert result.returncode == 0, result.stderr
    assert [(line["new"]["id"], line["origin"]) for line in result.lines] == [
        ("1", None),
        ("2", "upstream node"),
    ]
    cluster.sql("SELECT pg_replication_origin_drop('upstream node')", dbname=dbname)


def test_relation_is_resent_after_alter_table(cluster: Cluster, dbname: str) -> None:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY, a text); CREATE PUBLICATION pub FOR TABLE t",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql(
        "INSERT INTO t VALUES (1, 'x'); ALTER TABLE t ADD COLUMN b int DEFAULT 7;"
        " INSERT INTO t VALUES (2, 'y', 8); ALTER TABLE t DROP COLUMN a;"
        " INSERT INTO t VALUES (3, 9)",
        dbname=dbname,
    )
    end = current_lsn(cluster, dbname)
    messages = collect(cluster.dsn(dbname), "s", PgoutputOptions(("pub",)), end)
    relations = [m for m in messages if isinstance(m, Relation)]
    assert [[c.name for c in r.columns] for r in relations] == [
        ["id", "a"],
        ["id", "a", "b"],
        ["id", "b"],
    ]
    assert len({r.relation_id for r in relations}) == 1
    assert relations[0].columns[0].is_key and not relations[0].columns[1].is_key
    inserts = [m for m in messages if isinstance(m, Insert)]
    assert [i.new for i in inserts] == [(b"1", b"x"), (b"2", b"y", b"8"), (b"3", b"9")]


def test_binary_mode_sends_send_format(cluster: Cluster, dbname: str) -> None:
    if cluster.major < 14:
        pytest.skip("binary pgoutput needs PostgreSQL 14")
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY, big int8, txt text, f float8, n numeric);"
        " CREATE PUBLICATION pub FOR TABLE t",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql("INSERT INTO t VALUES (42, -1, 'hé', 0.5, NULL)", dbname=dbname)
    end = current_lsn(cluster, dbname)
    result = run_stream(
        cluster.dsn(dbname), "--slot", "s", "--publication", "pub", "--binary", end_lsn=end
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.lines
    new = line["new"]
    assert new["id"] == {"binary": struct.pack(">i", 42).hex()}
    assert new["big"] == {"binary": struct.pack(">q", -1).hex()}
    assert new["txt"] == {"binary": "hé".encode().hex()}
    assert new["f"] == {"binary": struct.pack(">d", 0.5).hex()}
    assert new["n"] is None
