"""``pgferry switchover`` from PostgreSQL 15 to 18 and back, under a write load
through a real PgBouncer: the write pause, no client error, nothing lost,
sequences continuing, writes flowing back; and bad input leaving the old primary
in service."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from pgferry.catalog import store
from pgferry.switchover import (
    Bouncer,
    DatabaseFence,
    FenceFailed,
    Plan,
    PreflightFailed,
    Report,
    SwitchoverFailed,
    switchover,
)
from pgferry.switchover.preflight import check_subscription
from pgferry.testing.pgbouncer import WriteLoad
from pgferry.testing.upgrade import ALIAS, Upgrade
from tests.support import pgferry, wait_for

NAME = "upgrade"
#: The write pause a single switchover may never exceed.
NEVER_ABOVE = 1.0


def _plan(upgrade: Upgrade, *, rollback: bool = False, **options: Any) -> Plan:
    target = upgrade.old_dsn if rollback else upgrade.new_dsn
    bouncer = Bouncer(upgrade.bouncer.admin_dsn, ALIAS, upgrade.bouncer.ini_path, target)
    options.setdefault("bouncer", bouncer)
    return Plan(upgrade.new_dsn, NAME, rollback=rollback, **options)


@contextmanager
def _load(upgrade: Upgrade, load: WriteLoad) -> Iterator[WriteLoad]:
    load.start()
    try:
        time.sleep(0.5)
        yield load
    finally:
        load.stop()


def _present(query: str, values: list[tuple[Any, ...]], rows: list[tuple[Any, ...]]) -> None:
    missing = set(values) - set(rows)
    assert not missing, (
        f"{len(missing)} committed rows missing ({query}), e.g. {sorted(missing)[:3]}"
    )


def _all_committed_on(sql: Any, load: WriteLoad) -> None:
    counters = [(c.number, n) for c in load.clients for n in c.counters]
    _present("counters", counters, sql("SELECT client, n FROM counters"))
    history = [(h,) for c in load.clients for h in c.history]
    _present("history", history, sql("SELECT hid FROM history"))


def _same_rows(upgrade: Upgrade) -> bool:
    query = "SELECT count(*), coalesce(sum(n), 0), (SELECT count(*) FROM history) FROM counters"
    return upgrade.on_old(query) == upgrade.on_new(query)


def _switch_under_load(upgrade: Upgrade, load: WriteLoad, plan: Plan) -> Report:
    errors_before = len(load.errors)
    with _load(upgrade, load):
        started = time.monotonic()
        report = switchover(plan)
        ended = time.monotonic()
        time.sleep(0.5)  # writes after the switch
    gaps = load.gaps(started - 0.2, ended + 0.4)
    assert max(gaps) < NEVER_ABOVE, (gaps, report.lines())
    assert load.errors[errors_before:] == []
    assert report.pause < NEVER_ABOVE
    inside = ["fence", "drain", "sequences", *(["snapshots"] if plan.verify else [])]
    after = ["forward", *(["verify"] if plan.verify else [])]
    assert [p.name for p in report.phases] == [
        "preflight", "prepare", *inside, "reverse", "redirect", *after,
    ]  # fmt: skip
    return report


def test_switchover_and_rollback_under_load(upgrade: Upgrade) -> None:
    load = WriteLoad(upgrade.bouncer.dsn(ALIAS), pgbench=4, counter=2)
    hid_before = upgrade.on_old("SELECT last_value FROM history_hid_seq")[0][0]

    report = _switch_under_load(upgrade, load, _plan(upgrade, verify=True))
    assert report.direction == "forward" and report.reverse == "upgrade_reverse"
    # The two sides compared at the fence's position, after writes resumed: identical.
    assert report.verify is not None and report.verify.identical, report.lines()
    assert report.verify.lsn == report.fence_lsn
    # PgBouncer points at the new primary; every committed row is there.
    assert upgrade.bouncer.dsn(ALIAS)
    with psycopg.connect(upgrade.bouncer.dsn(ALIAS), prepare_threshold=None) as conn:
        port = conn.execute("SELECT current_setting('port')").fetchone()
    assert port == (str(upgrade.new.port),)
    _all_committed_on(upgrade.on_new, load)
    # The sequence went on from the old primary's values: no collision, past them.
    assert upgrade.on_new("SELECT max(hid) > %s FROM history", (hid_before,)) == [(True,)]
    # Writes made on the new primary flow back to the old one.
    wait_for(lambda: _same_rows(upgrade), "the reverse subscription catching up", 30)
    _all_committed_on(upgrade.on_old, load)
    assert upgrade.on_old(
        "SELECT enabled, last_error FROM pgferry.subscription WHERE name = 'upgrade_reverse'"
    ) == [(True, None)]

    # And back, under the same load.
    back = _switch_under_load(upgrade, load, _plan(upgrade, rollback=True))
    assert back.direction == "rollback" and back.reverse == NAME
    with psycopg.connect(upgrade.bouncer.dsn(ALIAS), prepare_threshold=None) as conn:
        port = conn.execute("SELECT current_setting('port')").fetchone()
    assert port == (str(upgrade.old.port),)
    _all_committed_on(upgrade.on_old, load)
    wait_for(lambda: _same_rows(upgrade), "the forward subscription catching up again", 30)
    _all_committed_on(upgrade.on_new, load)
    with psycopg.connect(upgrade.new_dsn) as conn:
        assert store.get_subscription(conn, NAME).enabled


def _in_service(upgrade: Upgrade) -> None:
    """The old primary takes writes through PgBouncer; the subscriptions as before."""
    with psycopg.connect(
        upgrade.bouncer.dsn(ALIAS), prepare_threshold=None, autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute("SET statement_timeout = '5s'")
        conn.execute(
            "INSERT INTO counters"
            " SELECT -1, coalesce(max(n), 0) + 1 FROM counters WHERE client = -1"
        )
        assert conn.execute("SELECT current_setting('port')").fetchone() == (str(upgrade.old.port),)
    assert upgrade.on_new("SELECT enabled FROM pgferry.subscription WHERE name = %s", (NAME,)) == [
        (True,)
    ]
    assert upgrade.on_old(
        "SELECT enabled FROM pgferry.subscription WHERE name = 'upgrade_reverse'"
    ) == [(False,)]
    for setting in upgrade.on_old("SELECT unnest(setconfig) FROM pg_db_role_setting"):
        assert "default_transaction_read_only" not in setting[0]


def test_a_drain_timeout_puts_the_old_primary_back(upgrade: Upgrade) -> None:
    # The apply worker blocked on a lock: the drain cannot finish.
    with psycopg.connect(upgrade.new_dsn) as blocker:
        blocker.execute("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        upgrade.on_old("INSERT INTO counters VALUES (-2, 1)")
        for bouncer in (True, False):
            plan = _plan(upgrade, fence_timeout=0.5, schema_check=False)
            if not bouncer:
                plan = Plan(upgrade.new_dsn, NAME, fence_timeout=0.5, schema_check=False)
            with pytest.raises(SwitchoverFailed) as failed:
                switchover(plan)
            assert "did not apply up to the fence's position" in failed.value.message
            assert "the old primary is in service again" in failed.value.message
        blocker.rollback()
    _in_service(upgrade)


def test_preflight_refusals_change_nothing(upgrade: Upgrade) -> None:
    # Not ready, in error (checked on a transaction of the catalog that is rolled back).
    with psycopg.connect(upgrade.new_dsn) as conn:
        conn.execute(
            "UPDATE pgferry.subscription_table SET state = 'd' WHERE local_name = 'history'"
        )
        with pytest.raises(PreflightFailed, match="1 of 3 tables not ready"):
            check_subscription(conn, store.get_subscription(conn, NAME))
        conn.execute("UPDATE pgferry.subscription SET last_error = 'boom' WHERE name = %s", (NAME,))
        with pytest.raises(PreflightFailed, match="is in error: boom"):
            check_subscription(conn, store.get_subscription(conn, NAME))
        conn.rollback()
    # Disabled: one line, a hint, nothing changed.
    pgferry(upgrade.new_dsn, "subscription", "alter", NAME, "--disable")
    try:
        run = pgferry(upgrade.new_dsn, "switchover", NAME)
        assert run.returncode == 1
        assert run.stderr.splitlines()[0] == "pgferry: error: subscription 'upgrade' is disabled"
        assert run.stderr.splitlines()[1].startswith("hint: enable it")
    finally:
        pgferry(upgrade.new_dsn, "subscription", "alter", NAME, "--enable")
    wait_for(
        lambda: (
            upgrade.on_new(
                "SELECT count(*) FROM pgferry.worker WHERE subscription = %s AND relation = ''",
                (NAME,),
            )
            == [(1,)]
        ),
        "the apply worker started again",
        30,
    )
    # PgBouncer unreachable.
    closed = f"host=127.0.0.1 port={upgrade.bouncer.port + 1} dbname=pgbouncer connect_timeout=2"
    run = pgferry(upgrade.new_dsn, "switchover", NAME, "--pgbouncer", closed, "--dry-run")
    assert run.returncode == 1, run.stdout
    lines = run.stderr.splitlines()
    assert lines[0].startswith("pgferry: error: cannot connect to PgBouncer's admin console"), lines
    assert lines[1].startswith("hint: --pgbouncer takes the admin console's conninfo")
    # A dry run passes and changes nothing.
    run = pgferry(
        upgrade.new_dsn, "switchover", NAME, "--dry-run", "--pgbouncer", upgrade.bouncer.admin_dsn,
        "--pgbouncer-database", ALIAS, "--pgbouncer-ini", str(upgrade.bouncer.ini_path),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("subscription 'upgrade': preflight passed")
    run = pgferry(upgrade.new_dsn, "switchover", NAME, "--dry-run", "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["dry_run"] is True and document["pause"] is None
    assert list(document["phases"]) == ["preflight"]
    assert document["reverse"] == "upgrade_reverse" and document["direction"] == "forward"
    wait_for(lambda: _same_rows(upgrade), "the subscription catching up", 30)
    _in_service(upgrade)


def test_an_unreachable_publisher_is_one_line_and_changes_nothing(upgrade: Upgrade) -> None:
    # The catalog's conninfo of the old primary points at a closed port (the
    # apply worker, restarted, fails too: the error names the publisher, not it).
    (conninfo,) = upgrade.on_new(
        "SELECT conninfo FROM pgferry.subscription WHERE name = %s", (NAME,)
    )[0]
    closed = f"{conninfo} port={upgrade.old.port + 1} connect_timeout=2"
    upgrade.on_new("UPDATE pgferry.subscription SET conninfo = %s WHERE name = %s", (closed, NAME))
    try:
        started = time.monotonic()
        run = pgferry(
            upgrade.new_dsn, "switchover", NAME, "--pgbouncer", upgrade.bouncer.admin_dsn,
            "--pgbouncer-database", ALIAS, "--pgbouncer-ini", str(upgrade.bouncer.ini_path),
        )  # fmt: skip
        assert time.monotonic() - started < 30
    finally:
        upgrade.on_new(
            "UPDATE pgferry.subscription SET conninfo = %s WHERE name = %s", (conninfo, NAME)
        )
    assert run.returncode == 1 and run.stdout == "", run
    lines = run.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "pgferry: error: subscription 'upgrade': the old primary: cannot connect to the publisher"
    ), lines
    assert f"port={upgrade.old.port + 1}" in lines[0]
    assert lines[1].startswith("hint: "), lines
    _in_service(upgrade)
    wait_for(lambda: _same_rows(upgrade), "the subscription catching up", 30)


def test_switchover_without_pgbouncer(upgrade: Upgrade) -> None:
    """The database fence: read-only default and sessions ended, then lifted."""
    report = switchover(Plan(upgrade.new_dsn, NAME, bouncer=None))
    assert report.pause < NEVER_ABOVE
    upgrade.on_new("INSERT INTO counters VALUES (-3, 1)")
    wait_for(
        lambda: upgrade.on_old("SELECT count(*) FROM counters WHERE client = -3") == [(1,)],
        "a write on the new primary reaching the old one",
        30,
    )
    back = switchover(Plan(upgrade.new_dsn, NAME, rollback=True, bouncer=None))
    assert back.pause < NEVER_ABOVE
    upgrade.on_old("INSERT INTO counters VALUES (-3, 2)")
    wait_for(
        lambda: upgrade.on_new("SELECT count(*) FROM counters WHERE client = -3") == [(2,)],
        "a write on the old primary reaching the new one again",
        30,
    )
    _in_service(upgrade)


def test_a_fence_without_the_rights_is_refused(upgrade: Upgrade) -> None:
    """A role that does not own the database cannot fence it: one line, nothing set."""
    upgrade.on_old('CREATE ROLE "we ird" LOGIN')
    try:
        weak = psycopg.connect(upgrade.old.dsn("app"), user="we ird", autocommit=True)
        with weak, pytest.raises(FenceFailed) as refused:
            DatabaseFence(weak).take(1.0)
        assert refused.value.message.startswith("cannot fence database app on the old primary:")
        assert "must own the database" in (refused.value.hint or "")
    finally:
        upgrade.on_old('DROP ROLE "we ird"')
    _in_service(upgrade)


def test_the_database_fence_converges_while_clients_reconnect(upgrade: Upgrade) -> None:
    """Sessions from before the fence are ended, later ones are read-only and are
    left alone: a client reconnecting in a loop does not keep it from holding."""
    dsn = upgrade.old.dsn("app")
    stop = threading.Event()
    sessions = [0]

    def reconnect() -> None:
        while not stop.is_set():
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn,
            ):
                conn.execute("SELECT 1")
                sessions[0] += 1

    before = psycopg.connect(dsn, autocommit=True)
    thread = threading.Thread(target=reconnect, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sessions[0] > 10, "the client reconnecting", 10)
        with psycopg.connect(dsn, autocommit=True) as owner:
            fence = DatabaseFence(owner)
            fence.take(5.0)
            try:
                with psycopg.connect(dsn, autocommit=True) as later:
                    read_only = later.execute("SHOW default_transaction_read_only").fetchone()
                    assert read_only == ("on",)
                with pytest.raises(psycopg.OperationalError):
                    before.execute("SELECT 1")
            finally:
                fence.release()
    finally:
        stop.set()
        thread.join(10)
        before.close()
    with psycopg.connect(dsn, autocommit=True) as after:
        assert after.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
