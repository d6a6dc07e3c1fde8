"""The switchover's guards, against real servers and a real PgBouncer: what the
preflight refuses (prepared transactions, roles overriding the read-only
default), the bounded reverse slot, the fence released from a new connection
when its own one is lost, the watchdog held off during the redirect, the
forward apply worker that does not stop; and, with DDL capture on the forward
publication, a schema change on the new primary reaching the old one."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgferry.ddl import capture
from pgferry.switchover import (
    Bouncer,
    BouncerFence,
    DatabaseFence,
    FenceFailed,
    Plan,
    SwitchoverFailed,
    drain,
    reverse,
    switchover,
)
from pgferry.switchover import fence as fence_module
from pgferry.testing.pgbouncer import pgbouncer_binary
from pgferry.testing.upgrade import ALIAS, Upgrade, upgrade_setup
from tests.support import pgferry, wait_for

NAME = "upgrade"
REVERSE = "upgrade_reverse"


@pytest.fixture(scope="module")
def upgrade() -> Iterator[Upgrade]:
    """The forward publication captures DDL here."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)")
    with upgrade_setup(NAME, ddl=True) as found:
        yield found


def _bouncer(upgrade: Upgrade, target: str | None = None) -> Bouncer:
    return Bouncer(
        upgrade.bouncer.admin_dsn, ALIAS, upgrade.bouncer.ini_path, target or upgrade.new_dsn
    )


def _bouncer_args(upgrade: Upgrade) -> list[str]:
    return [
        "--pgbouncer", upgrade.bouncer.admin_dsn, "--pgbouncer-database", ALIAS,
        "--pgbouncer-ini", str(upgrade.bouncer.ini_path),
    ]  # fmt: skip


def _paused(upgrade: Upgrade) -> bool:
    with psycopg.connect(
        upgrade.bouncer.admin_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor
    ) as admin:
        cur = admin.execute("SHOW DATABASES")
        names = [d.name for d in cur.description or []]
        for row in cur.fetchall():
            entry = dict(zip(names, row, strict=True))
            if entry["name"] == ALIAS:
                return bool(entry["paused"])
    raise AssertionError(f"PgBouncer has no database {ALIAS}")


def _writable(upgrade: Upgrade) -> None:
    """A new session on the old primary writes; no read-only default is left."""
    with psycopg.connect(upgrade.old_dsn, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        conn.execute("INSERT INTO counters SELECT -20, count(*) FROM counters WHERE client = -20")
    settings = upgrade.on_old("SELECT unnest(setconfig) FROM pg_db_role_setting")
    assert not [s for (s,) in settings if "default_transaction_read_only" in s]


def _in_service(upgrade: Upgrade) -> None:
    """The old primary takes writes through PgBouncer; the subscriptions as before."""
    assert not _paused(upgrade)
    with psycopg.connect(
        upgrade.bouncer.dsn(ALIAS), prepare_threshold=None, autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute("SET statement_timeout = '5s'")
        conn.execute("INSERT INTO counters SELECT -21, count(*) FROM counters WHERE client = -21")
        assert conn.execute("SELECT current_setting('port')").fetchone() == (str(upgrade.old.port),)
    _writable(upgrade)
    assert upgrade.on_new("SELECT enabled FROM pgferry.subscription WHERE name = %s", (NAME,)) == [
        (True,)
    ]
    assert upgrade.on_old(
        "SELECT enabled FROM pgferry.subscription WHERE name = %s", (REVERSE,)
    ) in ([(False,)], [])
    wait_for(
        lambda: (
            upgrade.on_new(
                "SELECT count(*) FROM pgferry.worker WHERE subscription = %s AND relation = ''",
                (NAME,),
            )
            == [(1,)]
        ),
        "the forward apply worker running",
        30,
    )


def _lines(run: Any) -> list[str]:
    lines: list[str] = run.stderr.splitlines()
    assert run.returncode == 1, (run.stdout, lines)
    assert len(lines) == 2, lines
    return lines


# -- preflight ------------------------------------------------------------------------------


def test_a_prepared_transaction_is_refused(upgrade: Upgrade) -> None:
    with psycopg.connect(upgrade.old_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO counters VALUES (-10, 1)")
        conn.execute("PREPARE TRANSACTION 'switchover-gid'")
    try:
        lines = _lines(pgferry(upgrade.new_dsn, "switchover", NAME, *_bouncer_args(upgrade)))
        assert lines[0].startswith(
            "pgferry: error: 1 prepared transaction(s) on the old primary: 'switchover-gid'"
            " (role postgres, "
        ), lines
        assert lines[0].endswith("; the fence cannot end them"), lines
        assert lines[1].startswith("hint: COMMIT PREPARED or ROLLBACK PREPARED them"), lines
    finally:
        upgrade.on_old("ROLLBACK PREPARED 'switchover-gid'")
    _in_service(upgrade)


def test_a_role_overriding_read_only_refuses_the_database_fence(upgrade: Upgrade) -> None:
    upgrade.on_old('CREATE ROLE "app writer" LOGIN')
    try:
        upgrade.on_old(
            'ALTER ROLE "app writer" IN DATABASE app SET default_transaction_read_only = off'
        )
        # The bypass is real: under the database fence, the role's sessions are not read-only.
        with psycopg.connect(upgrade.old_dsn, autocommit=True) as owner:
            fence = DatabaseFence(owner, upgrade.old_dsn)
            fence.take(5.0)
            try:
                with psycopg.connect(upgrade.old_dsn, user="app writer") as writer:
                    setting = writer.execute("SHOW default_transaction_read_only").fetchone()
                    assert setting == ("off",)
            finally:
                fence.release()
        lines = _lines(pgferry(upgrade.new_dsn, "switchover", NAME, "--dry-run"))
        assert lines[0] == (
            'pgferry: error: role "app writer" has default_transaction_read_only=off IN DATABASE'
            " app on the old primary: its sessions would write through the database fence"
        ), lines
        assert lines[1] == (
            'hint: ALTER ROLE "app writer" IN DATABASE app RESET default_transaction_read_only,'
            " or fence through PgBouncer (--pgbouncer)"
        ), lines
        # PgBouncer's fence does not depend on it.
        run = pgferry(upgrade.new_dsn, "switchover", NAME, "--dry-run", *_bouncer_args(upgrade))
        assert run.returncode == 0, run.stderr
        # A setting for the role in every database counts too; a read-only one does not.
        upgrade.on_old('ALTER ROLE "app writer" IN DATABASE app RESET ALL')
        upgrade.on_old('ALTER ROLE "app writer" SET default_transaction_read_only = false')
        lines = _lines(pgferry(upgrade.new_dsn, "switchover", NAME, "--dry-run"))
        assert lines[0].startswith(
            'pgferry: error: role "app writer" has default_transaction_read_only=false on the'
            " old primary:"
        ), lines
        upgrade.on_old('ALTER ROLE "app writer" SET default_transaction_read_only = on')
        run = pgferry(upgrade.new_dsn, "switchover", NAME, "--dry-run")
        assert run.returncode == 0, run.stderr
    finally:
        upgrade.on_old('DROP ROLE "app writer"')
    _in_service(upgrade)


# -- prepare ---------------------------------------------------------------------------------


def test_the_reverse_slot_creation_is_bounded(upgrade: Upgrade) -> None:
    """A transaction open on the new primary holds the slot's creation: it gives up
    after --phase-timeout with one line, leaving no slot and no reverse subscription."""
    with psycopg.connect(upgrade.new_dsn) as blocker:
        blocker.execute("SELECT pg_current_xact_id()")
        started = time.monotonic()
        run = pgferry(
            upgrade.new_dsn, "switchover", NAME, "--phase-timeout", "2", *_bouncer_args(upgrade)
        )
        took = time.monotonic() - started
        blocker.rollback()
    lines = _lines(run)
    assert lines[0] == (
        f"pgferry: error: creating the reverse replication slot '{REVERSE}' on the new primary"
        " did not finish within 2 s (it waits for the transactions running there)"
    ), lines
    assert lines[1].startswith("hint: end the long transactions on the new primary"), lines
    assert took < 15, took
    assert upgrade.on_new(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (REVERSE,)
    ) == [(0,)]
    assert upgrade.on_old(
        "SELECT count(*) FROM pgferry.subscription WHERE name = %s", (REVERSE,)
    ) == [(0,)]
    # The reverse publication was made (kept for the next attempt), capturing DDL as
    # the forward one does.
    with upgrade.new.connect(dbname="app") as conn:
        assert capture.enabled(conn, "pub")
    _in_service(upgrade)


# -- the fence lost ---------------------------------------------------------------------------


def test_a_database_fence_whose_session_died_is_released_from_a_new_one(
    upgrade: Upgrade,
) -> None:
    with psycopg.connect(upgrade.old_dsn, autocommit=True) as owner:
        fence = DatabaseFence(owner, upgrade.old_dsn)
        fence.take(5.0)
        upgrade.on_old("SELECT pg_terminate_backend(%s)", (owner.info.backend_pid,))
        with psycopg.connect(upgrade.old_dsn, autocommit=True) as later:
            assert later.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        fence.release()
    _writable(upgrade)


def _break(conn: psycopg.Connection[Any]) -> None:
    """Cut the connection's socket under it, as a network failure would."""
    cut = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        cut.shutdown(socket.SHUT_RDWR)
    finally:
        cut.close()


def test_a_bouncer_fence_whose_connection_broke_is_resumed_from_a_new_one(
    upgrade: Upgrade,
) -> None:
    fence = BouncerFence(upgrade.bouncer.admin_dsn, ALIAS, upgrade.bouncer.ini_path)
    try:
        fence.take(5.0)  # the watchdog would resume 7 s from now
        assert fence.conn is not None
        _break(fence.conn)
        time.sleep(0.2)
        assert _paused(upgrade)  # PgBouncer stays paused without that client
        started = time.monotonic()
        fence.release()
        assert time.monotonic() - started < 5
        assert not _paused(upgrade)
    finally:
        fence.close()
    _in_service(upgrade)


def test_a_switchover_whose_fence_session_is_killed_puts_the_old_primary_back(
    upgrade: Upgrade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fence's session ended inside the fence (its backend terminated
    as the drain starts): the fence is lifted from a new session, the old primary
    takes writes again."""
    wait_held = drain.wait_held
    killed: list[int] = []

    def kill_then_wait(*args: Any, **kwargs: Any) -> Any:
        with psycopg.connect(
            upgrade.old_dsn, autocommit=True, application_name="pgferry test"
        ) as conn:
            fenced = conn.execute("SHOW default_transaction_read_only").fetchone()
            assert fenced == ("on",)
            killed.extend(
                pid
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity, pg_terminate_backend(pid)"
                    " WHERE application_name = 'pgferry switchover'"
                    " AND datname = current_database()"
                ).fetchall()
            )
        return wait_held(*args, **kwargs)

    monkeypatch.setattr(drain, "wait_held", kill_then_wait)
    with pytest.raises(SwitchoverFailed) as failed:
        switchover(Plan(upgrade.new_dsn, NAME, fence_timeout=3.0, schema_check=False))
    assert killed
    assert "the old primary is in service again" in failed.value.message, failed.value.message
    _in_service(upgrade)


# -- the watchdog and the redirect --------------------------------------------------------------


def test_the_watchdog_is_held_off_for_the_redirect(
    upgrade: Upgrade, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fence_module, "WATCHDOG_MARGIN", 0.5)
    fence = BouncerFence(upgrade.bouncer.admin_dsn, ALIAS, upgrade.bouncer.ini_path)
    try:
        fence.take(0.5)  # the watchdog would resume 1 s from now
        time.sleep(0.6)
        fence.hold(2.0)  # now 2.5 s from now
        time.sleep(1.0)
        assert _paused(upgrade)
        assert 0 < fence.left() < 1.6
        fence.release()
        assert not _paused(upgrade)
    finally:
        fence.close()
    # Held too late: the watchdog resumed already; the hold says so and nothing waits.
    fence = BouncerFence(upgrade.bouncer.admin_dsn, ALIAS, upgrade.bouncer.ini_path)
    try:
        fence.take(0.1)
        wait_for(lambda: not _paused(upgrade), "the watchdog resuming", 5)
        with pytest.raises(FenceFailed, match="the PgBouncer watchdog was about to resume"):
            fence.hold(2.0)
    finally:
        fence.close()
    _in_service(upgrade)


# -- the forward apply worker ----------------------------------------------------------------------


def test_a_forward_worker_that_does_not_stop_stays_held(
    upgrade: Upgrade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forward apply worker frozen (SIGSTOP) once its subscription is disabled:
    held at the fence's position, it cannot apply anything more, so the switchover
    goes on; its report says the worker still runs and stays held. Woken, the
    worker applies nothing (the reverse subscription's changes do not come back)
    and exits; a rollback replaces the hold it left."""
    _in_service(upgrade)
    (pid,) = upgrade.on_new(
        "SELECT pid FROM pgferry.worker WHERE subscription = %s AND relation = ''", (NAME,)
    )[0]
    disable = reverse.switch_forward

    def disable_and_freeze(new: psycopg.Connection[Any], state: reverse.Switched) -> None:
        os.kill(pid, signal.SIGSTOP)
        disable(new, state)

    monkeypatch.setattr(reverse, "switch_forward", disable_and_freeze)
    try:
        report = switchover(
            Plan(upgrade.new_dsn, NAME, bouncer=_bouncer(upgrade), phase_timeout=5.0)
        )
        notes = " ".join(report.notes)
        assert f"the apply worker of '{NAME}' still runs" in notes, report.lines()
        assert f"it stays held at {report.fence_lsn}" in notes, report.lines()
        held = upgrade.on_new(
            "SELECT target_lsn::text, state FROM pgferry.apply_hold WHERE subscription = %s"
            " AND expires_at > now() + interval '1 hour'",
            (NAME,),
        )
        assert held == [(str(report.fence_lsn), "held")], held
        # Written on the new primary, a row reaches the old one through the
        # reverse subscription, and no copy of it comes back.
        with psycopg.connect(
            upgrade.bouncer.dsn(ALIAS), prepare_threshold=None, autocommit=True
        ) as conn:
            assert conn.execute("SELECT current_setting('port')").fetchone() == (
                str(upgrade.new.port),
            )
            conn.execute("INSERT INTO counters (client, n) VALUES (-30, 1)")
        wait_for(
            lambda: upgrade.on_old("SELECT count(*) FROM counters WHERE client = -30") == [(1,)],
            "the row reaching the old primary",
            30,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        monkeypatch.undo()
    wait_for(
        lambda: (
            not upgrade.on_new(
                "SELECT 1 FROM pgferry.worker WHERE subscription = %s AND relation = ''", (NAME,)
            )
        ),
        "the woken forward worker gone",
        30,
    )
    assert upgrade.on_new("SELECT count(*) FROM counters WHERE client = -30") == [(1,)]
    back = switchover(
        Plan(
            upgrade.new_dsn,
            NAME,
            rollback=True,
            bouncer=_bouncer(upgrade, upgrade.old_dsn),
            schema_check=False,
        )
    )
    assert back.direction == "rollback", back.lines()
    assert upgrade.on_new(
        "SELECT count(*) FROM pgferry.apply_hold WHERE subscription = %s", (NAME,)
    ) == [(0,)]
    _in_service(upgrade)


# -- DDL both ways --------------------------------------------------------------------------------


def test_ddl_on_the_new_primary_reaches_the_old_one(upgrade: Upgrade) -> None:
    wait_for(
        lambda: (
            upgrade.on_old("SELECT count(*) FROM counters")
            == upgrade.on_new("SELECT count(*) FROM counters")
        ),
        "the subscription catching up",
        30,
    )
    report = switchover(Plan(upgrade.new_dsn, NAME, bouncer=_bouncer(upgrade)))
    assert report.pause < 1.0, report.lines()
    assert report.phase("reverse") < 0.5, report.lines()
    with upgrade.new.connect(dbname="app") as conn:
        assert capture.enabled(conn, "pub")
        conn.execute("ALTER TABLE counters ADD COLUMN note text")
        conn.execute("INSERT INTO counters (client, n, note) VALUES (-12, 1, 'from 18')")

    def arrived() -> bool:
        try:
            return upgrade.on_old("SELECT note FROM counters WHERE client = -12") == [("from 18",)]
        except psycopg.errors.UndefinedColumn:
            return False

    wait_for(arrived, "the column and the row reaching the old primary", 30)
