"""Fencing writes on the old primary, and redirecting the clients.

Two fences, one interface (:class:`Fence`: :meth:`~Fence.take`,
:meth:`~Fence.hold`, :meth:`~Fence.redirect`, :meth:`~Fence.release`):

* :class:`DatabaseFence` (no PgBouncer): ``ALTER DATABASE ... SET
  default_transaction_read_only = on`` for the whole database (every role), then
  every client session of the database is ended (``pg_terminate_backend``) but
  pgferry's own (application names starting with ``pgferry``: the launcher, the
  sessions of the switchover) and walsenders, and the fence waits until they are
  gone. A new session is read-only; an old one no longer exists. It is a soft
  fence: a role or database-role setting of ``default_transaction_read_only``
  wins over the database's (the preflight refuses those, see
  :func:`read_only_overrides`), and a client may still ask for ``BEGIN READ
  WRITE`` or ``SET default_transaction_read_only = off`` itself. Releasing it is
  ``ALTER DATABASE ... RESET default_transaction_read_only``, from a new session
  when the fence's own one is gone (the default would otherwise stay). It needs
  the rights of the database's owner (ending a superuser's session needs a
  superuser); a refusal is :class:`FenceFailed`, with nothing changed. There is
  nothing to redirect: the clients are the user's to point at the new primary.
* :class:`BouncerFence` (``--pgbouncer``): a :class:`~.watchdog.Watchdog` process
  is started first, then ``PAUSE db`` on PgBouncer's admin console (which returns
  once every server connection of the database is released: transactions in
  progress finish, new ones wait in PgBouncer). :meth:`~BouncerFence.hold` starts
  the watchdog's deadline over (confirmed by it) before the redirect, so that it
  cannot ``RESUME`` in the middle of it. :meth:`~BouncerFence.redirect` rewrites
  the database's line of the ini file (PgBouncer has no command to change a
  ``[databases]`` entry; the file is replaced atomically, keeping its owner and
  mode) and sends ``RELOAD``, then checks with ``SHOW DATABASES`` that PgBouncer
  points at the new database, all within its timeout (a failure from there on
  puts the old line back and reloads again: :meth:`~BouncerFence.unredirect`);
  :meth:`~BouncerFence.release` sends ``RESUME db`` (from a new admin connection
  when the fence's own one is broken) and disarms the watchdog. A ``PAUSE`` that
  does not return in time, a ``RESUME`` that cannot be sent, and a switchover
  that dies, are resumed by the watchdog.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from pgferry import connect
from pgferry import conninfo as ci
from pgferry.errors import PgferryError
from pgferry.sqltext import ident

from .watchdog import Watchdog, admin_connection, quote_alias, resume

logger = logging.getLogger("pgferry.switchover")

Conn = psycopg.Connection[Any]

#: Seconds the watchdog waits past the fence's own timeout before it resumes.
WATCHDOG_MARGIN = 2.0
#: Seconds the watchdog must have left for :meth:`BouncerFence.hold` to start its
#: deadline over (with less, it may be resuming the database already).
HOLD_MARGIN = 0.25
#: Seconds to open a new connection for releasing a fence.
RECONNECT_TIMEOUT = 5


class FenceFailed(PgferryError):
    """The fence could not be taken or released (rights, PgBouncer, timeout)."""


class Fence(Protocol):
    def start(self) -> None: ...
    def prepare(self) -> None: ...
    def take(self, timeout: float) -> None: ...
    def hold(self, seconds: float) -> None: ...
    def redirect(self, target: str, timeout: float) -> None: ...
    def unredirect(self) -> None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


# -- without PgBouncer -------------------------------------------------------------------

# Sessions that started before the read-only default was in place (%s: a time
# taken once the ALTER DATABASE committed): the later ones are read-only already,
# and a client reconnecting at once must not keep the fence from converging.
_TERMINATE = """
SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid))
FROM pg_catalog.pg_stat_activity a
WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()
  AND a.backend_type = 'client backend' AND a.application_name NOT LIKE 'pgferry%%'
  AND a.backend_start < %s
"""
_REMAINING = """
SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()
  AND a.backend_type = 'client backend' AND a.application_name NOT LIKE 'pgferry%%'
  AND a.backend_start < %s
"""


class DatabaseFence:
    """Read-only default plus ending the database's sessions (see the module docstring)."""

    def __init__(self, conn: Conn, dsn: str | None = None) -> None:
        self.conn = conn
        #: How to reach the database again when ``conn`` is gone (releasing).
        self.dsn = dsn
        self.database = str(conn.info.dbname)
        self.taken = False

    def start(self) -> None:
        """Nothing to start."""

    def prepare(self) -> None:
        """Nothing to prepare."""

    def close(self) -> None:
        """The connection is the caller's."""

    def _alter(self, setting: sql.Composable, conn: Conn | None = None) -> None:
        (conn or self.conn).execute(
            sql.SQL("ALTER DATABASE {} ").format(sql.Identifier(self.database)) + setting
        )

    def take(self, timeout: float) -> None:
        try:
            self._alter(sql.SQL("SET default_transaction_read_only = on"))
        except psycopg.Error as exc:
            raise FenceFailed(
                f"cannot fence database {ident(self.database)} on the old primary:"
                f" {' '.join(str(exc).split())}",
                hint="the switchover's role on the old primary must own the database"
                " (or be a superuser); or fence through PgBouncer (--pgbouncer)",
            ) from None
        self.taken = True
        deadline = time.monotonic() + timeout
        try:
            row = self.conn.execute("SELECT pg_catalog.clock_timestamp()").fetchone()
            assert row is not None
            fenced = row[0]
            while True:
                (left,) = self.conn.execute(_TERMINATE, (fenced,)).fetchone() or (0,)
                if not left and _count(self.conn, _REMAINING, fenced) == 0:
                    return
                if time.monotonic() > deadline:
                    raise FenceFailed(
                        f"sessions of database {ident(self.database)} still run after"
                        f" {timeout:g} s of pg_terminate_backend",
                        hint="a superuser must end superusers' sessions; see pg_stat_activity",
                    )
                time.sleep(0.005)
        except psycopg.Error as exc:
            raise FenceFailed(
                f"cannot end the sessions of database {ident(self.database)}:"
                f" {' '.join(str(exc).split())}",
                hint="ending other roles' sessions needs pg_signal_backend (a superuser's"
                " needs a superuser)",
            ) from None

    def hold(self, seconds: float) -> None:
        """Nothing ends this fence by itself."""

    def redirect(self, target: str, timeout: float) -> None:
        """Nothing to do: the clients are the user's to repoint."""

    def unredirect(self) -> None:
        """Nothing was redirected."""

    def release(self) -> None:
        """Lift the read-only default; from a new session if the fence's is gone."""
        if not self.taken:
            return
        reset = sql.SQL("RESET default_transaction_read_only")
        try:
            self._alter(reset)
        except psycopg.Error as exc:
            if self.dsn is None:
                raise self._stuck(exc) from None
            logger.warning(
                "the fence's session on the old primary failed (%s): lifting the fence from"
                " a new one",
                " ".join(str(exc).split()),
            )
            try:
                with connect.publisher(
                    self.dsn, application_name="pgferry switchover", timeout=RECONNECT_TIMEOUT
                ) as fresh:
                    fresh.execute("SET default_transaction_read_only = off")
                    self._alter(reset, fresh)
            except (psycopg.Error, PgferryError) as again:
                raise self._stuck(again) from None
        self.taken = False

    def _stuck(self, exc: Exception) -> FenceFailed:
        text = exc.message if isinstance(exc, PgferryError) else " ".join(str(exc).split())
        return FenceFailed(
            f"cannot lift the read-only default of database {ident(self.database)} on the"
            f" old primary: {text}",
            hint=f"run ALTER DATABASE {ident(self.database)} RESET"
            " default_transaction_read_only there now",
        )


# Role and database-role settings of default_transaction_read_only that win over
# the database's (in this database or every one), unless they are read-only too.
_OVERRIDES = """
SELECT r.rolname, s.setdatabase <> 0, c.setting
FROM pg_catalog.pg_db_role_setting s
JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS c(setting)
WHERE s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                            WHERE d.datname = pg_catalog.current_database()))
  AND c.setting LIKE 'default\\_transaction\\_read\\_only=%'
  AND pg_catalog.lower(pg_catalog.split_part(c.setting, '=', 2))
      NOT IN ('on', 'true', 'yes', '1', 't', 'tr', 'tru', 'y', 'ye')
ORDER BY 1, 2
"""


def read_only_overrides(conn: Conn) -> list[tuple[str, bool, str]]:
    """The roles whose own ``default_transaction_read_only`` (``ALTER ROLE ... [IN
    DATABASE ...] SET``) wins over the database fence's: (role, whether only in
    this database, the setting)."""
    return [(str(r[0]), bool(r[1]), str(r[2])) for r in conn.execute(_OVERRIDES).fetchall()]


def _count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query, params or None).fetchone()
    return int(row[0]) if row else 0


# -- with PgBouncer ------------------------------------------------------------------------


def _line_pattern(alias: str) -> re.Pattern[str]:
    name = re.escape(alias)
    return re.compile(rf'^(?P<key>\s*(?:{name}|"{name}"))\s*=.*$', re.MULTILINE)


def rewrite_ini(path: Path, alias: str, target: str) -> str:
    """Point ``alias`` in the ini at ``target`` (a libpq conninfo); the old line.

    The ``[databases]`` line ``alias = ...`` is replaced; the file is written to a
    temporary file next to it and renamed over it, with the same owner and mode.
    """
    text = path.read_text()
    found = _line_pattern(alias).search(text)
    if found is None:
        raise FenceFailed(
            f"PgBouncer's ini {path} has no [databases] line for {alias!r}",
            hint="--pgbouncer-database names the database as PgBouncer's ini does",
        )
    params = ci.parse(target)
    entry = " ".join(f"{k}={_ini_value(v)}" for k, v in params.items())
    _replace_file(
        path, text[: found.start()] + f"{found.group('key')} = {entry}" + text[found.end() :]
    )
    return found.group(0)


def _replace_file(path: Path, new: str) -> None:
    """Write ``new`` to a temporary file next to ``path`` and rename it over it,
    with ``path``'s owner and mode."""
    stat = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=".pgferry-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(new)
        os.chmod(temporary, stat.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temporary, stat.st_uid, stat.st_gid)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _ini_value(value: str) -> str:
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class BouncerFence:
    """PgBouncer ``PAUSE`` / repoint / ``RESUME`` with a watchdog (see the module docstring)."""

    def __init__(self, admin: str, database: str, ini: Path | None) -> None:
        self.admin_dsn = admin
        self.database = database
        self.ini = ini
        self.watchdog: Watchdog | None = None
        self.paused = False
        self.armed = False
        #: When the watchdog resumes the database by itself (``time.monotonic()``).
        self.deadline = 0.0
        #: The ini's line for the database before :meth:`redirect` rewrote it.
        self.previous: str | None = None
        #: Admin connections given up on (a command on them failed or did not return).
        self.abandoned: list[Conn] = []
        self.conn: Conn | None = None
        try:
            self.conn = admin_connection(admin)
        except psycopg.Error as exc:
            raise FenceFailed(
                f"cannot connect to PgBouncer's admin console ({ci.mask(admin)}):"
                f" {' '.join(str(exc).split())}",
                hint="--pgbouncer takes the admin console's conninfo (dbname=pgbouncer, a"
                " role of admin_users); is PgBouncer running?",
            ) from None
        self.check()

    def admin(self) -> Conn:
        """The admin connection; a new one if the last one broke or was given up on."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.abandon()
            self.conn = admin_connection(self.admin_dsn, RECONNECT_TIMEOUT)
        return self.conn

    def abandon(self) -> None:
        """Give up on the admin connection (a command hangs or failed on it): cancel
        what runs there (it is closed with the fence); the next command uses a new one."""
        stuck, self.conn = self.conn, None
        if stuck is None:
            return
        with contextlib.suppress(psycopg.Error):
            stuck.cancel()
        self.abandoned.append(stuck)

    def check(self) -> None:
        """The database is known to PgBouncer (and the ini has its line)."""
        if self.show() is None:
            raise FenceFailed(
                f"PgBouncer has no database {self.database!r}",
                hint="--pgbouncer-database names the database as PgBouncer's ini does",
            )
        if self.ini is not None:
            if not self.ini.is_file():
                raise FenceFailed(
                    f"PgBouncer's ini {self.ini} does not exist",
                    hint="--pgbouncer-ini takes the ini file PgBouncer was started with",
                )
            if _line_pattern(self.database).search(self.ini.read_text()) is None:
                raise FenceFailed(
                    f"PgBouncer's ini {self.ini} has no [databases] line for {self.database!r}",
                    hint="--pgbouncer-database names the database as PgBouncer's ini does",
                )

    def show(self) -> tuple[str, int, str] | None:
        """(host, port, database) PgBouncer connects ``database`` to; None: unknown."""
        cur = self.admin().execute("SHOW DATABASES")
        names = [d.name for d in cur.description or []]
        for row in cur.fetchall():
            entry = dict(zip(names, row, strict=True))
            if entry.get("name") == self.database:
                return (str(entry.get("host") or ""), int(entry["port"]), str(entry["database"]))
        return None

    def start(self) -> None:
        """Start the watchdog's process (it takes a moment: as early as possible)."""
        if self.watchdog is None:
            self.watchdog = Watchdog(self.admin_dsn, self.database)

    def prepare(self) -> None:
        """The watchdog started and connected (before the fence)."""
        self.start()
        assert self.watchdog is not None
        self.watchdog.wait_ready()

    def take(self, timeout: float) -> None:
        self.prepare()
        assert self.watchdog is not None
        self.deadline = time.monotonic() + timeout + WATCHDOG_MARGIN
        self.watchdog.arm(timeout + WATCHDOG_MARGIN)
        self.armed = True
        conn = self.admin()
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgferry-pause")
        pausing = pool.submit(conn.execute, f"PAUSE {quote_alias(self.database)}")
        pool.shutdown(wait=False)
        try:
            pausing.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.watchdog.fire()
            self.watchdog = None
            self.armed = False
            self.abandon()
            raise FenceFailed(
                f"PgBouncer's PAUSE {self.database} did not return within {timeout:g} s"
                " (a transaction still open); the database was resumed",
                hint="find the long transaction on the old primary (pg_stat_activity);"
                " --fence-timeout sets the wait",
            ) from None
        except psycopg.Error as exc:
            self.release()
            raise FenceFailed(
                f"PgBouncer refused PAUSE {self.database}: {' '.join(str(exc).split())}",
                hint="check --pgbouncer and --pgbouncer-database",
            ) from None
        self.paused = True

    def left(self) -> float:
        """Seconds until the watchdog resumes the database by itself."""
        return self.deadline - time.monotonic()

    def hold(self, seconds: float) -> None:
        """Make sure the watchdog does not ``RESUME`` for ``seconds`` (plus its margin):
        its deadline starts over, and it confirms that before anything goes on."""
        if not self.armed or self.watchdog is None:
            return
        left = self.left()
        if left < HOLD_MARGIN or not self.watchdog.rearm(
            seconds + WATCHDOG_MARGIN, max(left - HOLD_MARGIN / 2, 0.01)
        ):
            self.watchdog.fire()
            self.watchdog = None
            self.armed = self.paused = False
            raise FenceFailed(
                f"the PgBouncer watchdog was about to resume {self.database!r} ({left:.2f} s"
                " left) before the redirect; the database was resumed",
                hint="a phase inside the fence took too long: see `pgferry -v switchover`;"
                " --fence-timeout sets the bound",
            )
        self.deadline = time.monotonic() + seconds + WATCHDOG_MARGIN

    def redirect(self, target: str, timeout: float) -> None:
        """Point the database at ``target`` (see the module docstring), within
        ``timeout`` seconds."""
        if self.ini is None:
            raise FenceFailed(
                "cannot repoint PgBouncer without its ini file",
                hint="--pgbouncer-ini PATH: the file PgBouncer was started with",
            )
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgferry-redirect")
        redirecting = pool.submit(self._redirect, self.ini, target)
        pool.shutdown(wait=False)
        try:
            redirecting.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.abandon()
            raise FenceFailed(
                f"PgBouncer did not take the new target of {self.database!r} within the"
                f" redirect's {timeout:g} s",
                hint="check PgBouncer (its log, SHOW DATABASES); --redirect-timeout sets the bound",
            ) from None

    def _redirect(self, ini: Path, target: str) -> None:
        self.previous = rewrite_ini(ini, self.database, target)
        self.admin().execute("RELOAD")
        params = ci.parse(target)
        shown = self.show()
        wanted_db = params.get("dbname")
        if shown is None or (wanted_db and shown[2] != wanted_db):
            raise FenceFailed(
                f"PgBouncer did not take the new target of {self.database!r} after RELOAD"
                f" (it shows {shown})",
                hint="check the ini's [databases] line and PgBouncer's log",
            )

    def unredirect(self) -> None:
        """Put the ini's line back as it was before :meth:`redirect`, and ``RELOAD``."""
        if self.previous is None or self.ini is None:
            return
        text = self.ini.read_text()
        found = _line_pattern(self.database).search(text)
        if found is not None:
            _replace_file(self.ini, text[: found.start()] + self.previous + text[found.end() :])
            self.admin().execute("RELOAD")
        self.previous = None

    def release(self) -> None:
        """``RESUME`` the database, from a new admin connection if the fence's one
        fails; if that fails too, the watchdog resumes it now."""
        if not self.paused and not self.armed:
            return
        try:
            try:
                resume(self.admin(), self.database)
            except psycopg.Error as exc:
                logger.warning(
                    "RESUME %s failed on the fence's admin connection (%s): again from a new one",
                    self.database,
                    " ".join(str(exc).split()),
                )
                self.abandon()
                resume(self.admin(), self.database)
        except psycopg.Error as exc:
            logger.error("RESUME %s failed (%s): the watchdog resumes it", self.database, exc)
            if self.watchdog is None:
                raise FenceFailed(
                    f"cannot RESUME {self.database!r} on PgBouncer: {' '.join(str(exc).split())}",
                    hint=f"run RESUME {quote_alias(self.database)} on PgBouncer's admin console"
                    " now",
                ) from None
            self.watchdog.fire()
            self.watchdog = None
        self.paused = self.armed = False
        if self.watchdog is not None:
            self.watchdog.disarm()

    def close(self) -> None:
        """Stop the watchdog (it resumes the database if still armed) and disconnect."""
        if self.watchdog is not None:
            if not self.armed:
                self.watchdog.disarm()
            self.watchdog.close()
            self.watchdog = None
        self.abandon()
        for conn in self.abandoned:
            conn.close()
        self.abandoned.clear()
