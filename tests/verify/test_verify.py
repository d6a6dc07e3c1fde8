"""``pgferry verify`` against a running subscription: identical data, planted
differences found exactly and repaired, a running write load without false
differences, the hold's lease, and bad input."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgferry.catalog import hold as catalog_hold
from pgferry.catalog import store
from pgferry.errors import PgferryError
from pgferry.subscription import create_subscription, drop_subscription
from pgferry.verify import VerifyReport, compare, repair, verify_subscription
from tests.support import pgferry, wait_for
from tests.verify.conftest import Ferry


def _found(report: VerifyReport) -> dict[str, dict[str, list[list[str | None]]]]:
    """table -> kind -> keys, only where something differs."""
    return {
        t.table: {k: [list(key) for key in keys] for k, keys in t.keys.items() if keys}
        for t in report.tables
        if t.differences
    }


def _caught_up(ferry: Ferry) -> None:
    """Wait until a marker written on the publisher now is on the subscriber."""
    marker = ferry.on_pub("INSERT INTO load (c) VALUES (-1) RETURNING id")[0][0]
    wait_for(
        lambda: ferry.on_sub("SELECT count(*) FROM load WHERE id = %s", (marker,)) == [(1,)],
        "the subscriber caught up",
        30,
    )


def test_identical_exits_0(ferry: Ferry) -> None:
    run = pgferry(ferry.sub_dsn, "verify", ferry.name, "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["identical"] is True and out["differences"] == 0
    rows = {t["table"]: (t["rows_publisher"], t["rows_subscriber"]) for t in out["tables"]}
    assert rows["public.plain"] == (3000, 3000)
    assert rows["public.filtered"] == (50, 50)  # the row filter: even ids only
    assert rows['"we ird"."x""y"'] == (30, 30)
    assert {t["table"]: t["keyed"] for t in out["tables"]}["public.nokey"] is False
    text = pgferry(ferry.sub_dsn, "verify", ferry.name, "--table", "plain", "--jobs", "2")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith("public.plain: identical (3000 rows")


def test_planted_differences_found_exactly_and_repaired(ferry: Ferry) -> None:
    _caught_up(ferry)
    ferry.on_sub(
        """
        DELETE FROM plain WHERE id = 5;
        INSERT INTO plain (id, v) VALUES (100001, 'extra');
        UPDATE plain SET f = f + 1e-9 WHERE id = 7;
        UPDATE plain SET ts = ts + interval '1 us' WHERE id = 2999;
        UPDATE comp SET v = 'changed' WHERE a = 'a,b' AND b = 3;
        DELETE FROM comp WHERE a = 'q"uote' AND b = 50;
        UPDATE comp SET v = NULL WHERE a = '' AND b = 1;
        INSERT INTO nokey VALUES (3, 'n3');
        DELETE FROM nokey WHERE ctid = (SELECT min(ctid) FROM nokey WHERE x = 4);
        UPDATE cols SET extra_sub = 99 WHERE id = 1;
        UPDATE cols SET pubcol = 'changed' WHERE id = 3;
        INSERT INTO filtered VALUES (1001, 'odd: not published');
        UPDATE filtered SET v = 'changed' WHERE id = 10;
        DELETE FROM "we ird"."x""y" WHERE "k ey" = 'k7';
        """
    )
    report = verify_subscription(ferry.sub_dsn, ferry.name, jobs=3)
    assert not report.identical
    assert _found(report) == {
        "public.plain": {"missing": [["5"]], "extra": [["100001"]], "different": [["7"], ["2999"]]},
        "public.comp": {"missing": [['q"uote', "50"]], "different": [["", "1"], ["a,b", "3"]]},
        "public.nokey": {"missing": [["(4,n4)"]], "extra": [["(3,n3)"]]},
        "public.cols": {"different": [["3"]]},
        "public.filtered": {"extra": [["1001"]], "different": [["10"]]},
        '"we ird"."x""y"': {"missing": [["k7"]]},
    }
    assert report.differences == 13
    cli = pgferry(ferry.sub_dsn, "verify", ferry.name, "--table", '"we ird"."x""y"')
    assert cli.returncode == 1
    assert "  missing k7" in cli.stdout.splitlines()
    repaired = verify_subscription(ferry.sub_dsn, ferry.name, repair=True)
    assert repaired.repaired
    fixed = {t.table: {k: n for k, n in t.repaired.items() if n} for t in repaired.tables}
    assert fixed["public.plain"] == {"missing": 1, "extra": 1, "different": 2}
    assert fixed["public.nokey"] == {"missing": 1, "extra": 1}
    again = verify_subscription(ferry.sub_dsn, ferry.name)
    assert again.identical, _found(again)
    # The subscriber's own column is left alone; the fixes carry an origin of their own.
    assert ferry.on_sub("SELECT extra_sub FROM cols WHERE id = 1") == [(99,)]
    origin = f"pgferry_repair_{ferry.name}"
    count = "SELECT count(*) FROM pg_replication_origin WHERE roname = %s"
    assert ferry.on_sub(count, (origin,)) == [(1,)]


def test_a_repair_commits_only_while_the_hold_lasts(
    ferry: Ferry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold that would lapse before the commit (here: a margin longer than any
    lease) rolls every fix back, with one error."""
    _caught_up(ferry)
    ferry.on_sub("UPDATE plain SET v = 'lapsed' WHERE id = 7")
    try:
        report = verify_subscription(ferry.sub_dsn, ferry.name, tables=["plain"])
        assert _found(report) == {"public.plain": {"different": [["7"]]}}
        monkeypatch.setattr(repair, "COMMIT_MARGIN", 10_000.0)
        with pytest.raises(PgferryError, match="hold lapsed"):
            verify_subscription(ferry.sub_dsn, ferry.name, tables=["plain"], repair=True)
        assert ferry.on_sub("SELECT v FROM plain WHERE id = 7") == [("lapsed",)]
    finally:
        monkeypatch.undo()
        verify_subscription(ferry.sub_dsn, ferry.name, tables=["plain"], repair=True)
    assert ferry.on_sub("SELECT v FROM plain WHERE id = 7") != [("lapsed",)]


def test_small_ranges_bisect_down_to_the_rows(
    ferry: Ferry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many ranges (integer and text keys), bisected: the same keys as one range."""
    monkeypatch.setattr(compare, "RANGE_ROWS", 100)
    monkeypatch.setattr(compare, "FETCH_ROWS", 20)
    monkeypatch.setattr(compare, "SPLIT", 3)
    ferry.on_pub("ANALYZE plain, comp")
    _caught_up(ferry)
    ferry.on_sub(
        """
        DELETE FROM plain WHERE id IN (1, 1500, 3000);
        UPDATE plain SET v = 'x' WHERE id IN (2, 1234);
        INSERT INTO plain (id) VALUES (0), (-5), (5000);
        UPDATE comp SET v = 'x' WHERE b IN (17, 18) AND a = '(x)';
        DELETE FROM comp WHERE b = 49 AND a = 'sp ace';
        """
    )
    try:
        report = verify_subscription(ferry.sub_dsn, ferry.name, tables=["plain", "public.comp"])
        ranges = {t.table: t.ranges for t in report.tables}
        assert ranges["public.plain"] > 30 and ranges["public.comp"] > 3
        assert _found(report) == {
            "public.plain": {
                "missing": [["1"], ["1500"], ["3000"]],
                "extra": [["-5"], ["0"], ["5000"]],
                "different": [["2"], ["1234"]],
            },
            "public.comp": {
                "missing": [["sp ace", "49"]],
                "different": [["(x)", "17"], ["(x)", "18"]],
            },
        }
    finally:
        verify_subscription(ferry.sub_dsn, ferry.name, repair=True)
    assert verify_subscription(ferry.sub_dsn, ferry.name).identical


def test_no_false_differences_under_a_running_write_load(ferry: Ferry) -> None:
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(ferry.cluster.dsn(ferry.pub_db), autocommit=True) as conn:
                n = 0
                while not stop.is_set():
                    n += 1
                    with conn.transaction():
                        conn.execute("INSERT INTO load (c) VALUES (%s)", (n,))
                        conn.execute("UPDATE load SET c = c + 1 WHERE id = %s", (1 + n % 100,))
                        conn.execute("UPDATE plain SET n = n + 1 WHERE id = %s", (1 + n % 3000,))
                    if n % 7 == 0:
                        conn.execute("DELETE FROM load WHERE id = (SELECT min(id) FROM load)")
                    written.append(n)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        held: list[float] = []
        for _ in range(5):
            report = verify_subscription(ferry.sub_dsn, ferry.name, jobs=2)
            assert report.identical, _found(report)
            assert report.held_seconds is not None
            held.append(report.held_seconds)
        before = len(written)
        time.sleep(0.3)
        assert len(written) > before, "the load went on"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors


def test_the_hold_lease_expires(ferry: Ferry) -> None:
    """A requester that dies without releasing holds apply no longer than its lease."""
    _caught_up(ferry)
    with psycopg.connect(ferry.sub_dsn, autocommit=True) as conn:
        token = catalog_hold.request(conn, ferry.name, 4.0)
        assert token is not None
        wait_for(
            lambda: catalog_hold.acknowledged(conn, ferry.name, token)[0] == catalog_hold.PAUSED,
            "the apply worker paused",
            15,
        )
        started = time.monotonic()
        marker = ferry.on_pub("INSERT INTO load (c) VALUES (-2) RETURNING id")[0][0]
        time.sleep(1.0)
        assert ferry.on_sub("SELECT count(*) FROM load WHERE id = %s", (marker,)) == [(0,)]
        with pytest.raises(PgferryError, match="is held by another verify or switchover"):
            verify_subscription(ferry.sub_dsn, ferry.name)
        wait_for(
            lambda: ferry.on_sub("SELECT count(*) FROM load WHERE id = %s", (marker,)) == [(1,)],
            "apply going on after the lease",
            15,
        )
        assert time.monotonic() - started >= 0.9
        catalog_hold.release(conn, ferry.name, token)


def test_bad_input_is_one_line_and_leaves_nothing_held(ferry: Ferry) -> None:
    missing = pgferry(ferry.sub_dsn, "verify", "no_such_subscription")
    assert missing.returncode == 1
    assert missing.stderr.startswith("pgferry: error: subscription 'no_such_subscription'")
    table = pgferry(ferry.sub_dsn, "verify", ferry.name, "--table", "nope")
    assert table.returncode == 1 and "hint:" in table.stderr
    with psycopg.connect(ferry.sub_dsn, autocommit=True) as conn:
        store.set_enabled(conn, ferry.name, False)
        try:
            with pytest.raises(PgferryError, match="is disabled"):
                verify_subscription(ferry.sub_dsn, ferry.name)
        finally:
            store.set_enabled(conn, ferry.name, True)
        store.record_error(conn, ferry.name, "apply failed: boom")
        try:
            failed = pgferry(ferry.sub_dsn, "verify", ferry.name)
        finally:
            store.record_error(conn, ferry.name, None)
        assert failed.returncode == 1
        assert failed.stderr.startswith(f"pgferry: error: subscription '{ferry.name}' is in error")
        good = store.get_subscription(conn, ferry.name).conninfo
        store.set_conninfo(conn, ferry.name, make_conninfo(good, port="1"))
        try:
            down = pgferry(ferry.sub_dsn, "verify", ferry.name, "--timeout", "5")
        finally:
            store.set_conninfo(conn, ferry.name, good)
        assert down.returncode == 1
        assert down.stderr.startswith(
            f"pgferry: error: subscription {ferry.name!r} cannot be verified"
        )
        assert "hint:" in down.stderr
        assert conn.execute("SELECT count(*) FROM pgferry.apply_hold").fetchone() == (0,)


def test_a_hold_nobody_acknowledges_times_out_and_is_released(ferry: Ferry) -> None:
    """A ready subscription (it has no tables) in a database no ``pgferry run`` serves."""
    ferry.on_pub("CREATE PUBLICATION empty_pub; CREATE PUBLICATION load_pub FOR TABLE load")
    idle_db, name = ferry.sub_db + "_idle", ferry.name + "_idle"
    ferry.cluster.create_database(idle_db)
    dsn = ferry.cluster.dsn(idle_db)
    try:
        create_subscription(dsn, name, ferry.cluster.dsn(ferry.pub_db), ["empty_pub"])
        ferry.cluster.sql("CREATE TABLE load (id bigint PRIMARY KEY, c int)", dbname=idle_db)
        create_subscription(dsn, name + "_sync", ferry.cluster.dsn(ferry.pub_db), ["load_pub"])
        syncing = pgferry(dsn, "verify", name + "_sync")
        drop_subscription(dsn, name + "_sync")
        assert syncing.returncode == 1
        assert "is not ready: " in syncing.stderr
        assert f"hint: pgferry subscription wait {name}_sync" in syncing.stderr
        started = time.monotonic()
        run = pgferry(dsn, "verify", name, "--timeout", "0.5")
        assert run.returncode == 1
        assert "did not pause within 0.5 s; the hold is released" in run.stderr
        assert "hint: is pgferry run running" in run.stderr
        assert time.monotonic() - started < 30
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pgferry.apply_hold").fetchone() == (0,)
        drop_subscription(dsn, name)
    finally:
        ferry.cluster.drop_database(idle_db)
