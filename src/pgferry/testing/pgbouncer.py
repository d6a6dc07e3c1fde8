"""A throwaway real PgBouncer for tests, and a write load through it.

A :class:`PgBouncer` owns a fresh temporary directory::

    <dir>/pgbouncer.ini   the configuration (rewritten by whoever repoints a database)
    <dir>/pgbouncer.log   its log
    <dir>/pgbouncer.pid   its pid file

:meth:`PgBouncer.start` writes the ini (``[databases]`` from the ``databases``
argument: alias -> libpq conninfo of the server database), picks a free TCP port
on 127.0.0.1 and starts ``pgbouncer`` in the background (``-d``), in transaction
pooling mode unless told otherwise, trusting every login (``auth_type = trust``),
with ``postgres`` as its admin user. PgBouncer refuses to run as root: then it
runs as the unprivileged OS user the cluster helper uses
(:data:`pgferry.testing.cluster.OS_USER`), who owns the directory. Used as a
context manager it is started on enter and stopped (SIGTERM, then SIGKILL) and
removed on exit; an ``atexit`` hook stops any left running.

:class:`WriteLoad` runs client threads through it, each on one connection with
``prepare_threshold = None`` (transaction pooling): ``pgbench`` clients run a
pgbench-like transaction (update an account, insert a history row with a serial
key) and ``counter`` clients insert an increasing counter per client. Each
client records the time of every successful commit and every error; the largest
gap between two commits of one client while the load runs is the write pause a
switchover caused (:meth:`WriteLoad.gaps`).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgferry.testing.cluster import ClusterError, _free_port, _os_user, _pid_alive

#: Seconds PgBouncer may take to start or stop.
_WAIT = 10.0

_live: set[PgBouncer] = set()


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` executable, None when it is not installed."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def ini_text(port: int, socket_dir: Path, databases: Mapping[str, str], pool_mode: str) -> str:
    """A PgBouncer configuration: ``databases`` maps an alias to a libpq conninfo."""
    lines = ["[databases]"]
    lines += [f"{alias} = {conninfo}" for alias, conninfo in databases.items()]
    lines += [
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        f"unix_socket_dir = {socket_dir}",
        f"logfile = {socket_dir.parent / 'pgbouncer.log'}",
        f"pidfile = {socket_dir.parent / 'pgbouncer.pid'}",
        "auth_type = trust",
        f"auth_file = {socket_dir.parent / 'userlist.txt'}",
        "admin_users = postgres",
        f"pool_mode = {pool_mode}",
        "default_pool_size = 40",
        "max_client_conn = 400",
        "ignore_startup_parameters = extra_float_digits,options",
        "server_check_delay = 0",
        "server_login_retry = 0",
    ]
    return "\n".join(lines) + "\n"


class PgBouncer:
    """A throwaway PgBouncer (see the module docstring)."""

    def __init__(self, databases: Mapping[str, str], *, pool_mode: str = "transaction") -> None:
        self.databases = dict(databases)
        self.pool_mode = pool_mode
        self._dir: Path | None = None
        self._port: int | None = None
        self._ids: tuple[int, int] | None = _os_user() if os.geteuid() == 0 else None

    @property
    def path(self) -> Path:
        assert self._dir is not None, "PgBouncer not started"
        return self._dir

    @property
    def ini_path(self) -> Path:
        return self.path / "pgbouncer.ini"

    @property
    def port(self) -> int:
        assert self._port is not None, "PgBouncer not started"
        return self._port

    def dsn(self, alias: str, **params: Any) -> str:
        """libpq conninfo of database ``alias`` through PgBouncer (TCP, user postgres)."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, dbname=alias, user="postgres", **params
        )

    @property
    def admin_dsn(self) -> str:
        """The admin console's conninfo."""
        return self.dsn("pgbouncer")

    def pid(self) -> int | None:
        try:
            return int((self.path / "pgbouncer.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log(self) -> str:
        try:
            return (self.path / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise ClusterError(
                "pgbouncer is not installed", hint="apt-get install pgbouncer (.ci/run does it)"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="pgferry-bouncer-")).resolve()
        _live.add(self)
        sockets = self._dir / "s"
        sockets.mkdir()
        (self._dir / "userlist.txt").write_text('"postgres" ""\n')
        self._port = _free_port()
        self.ini_path.write_text(ini_text(self.port, sockets, self.databases, self.pool_mode))
        if self._ids is not None:
            for entry in (self._dir, sockets, *self._dir.iterdir()):
                os.chown(entry, *self._ids)
        uid, gid = self._ids if self._ids is not None else (None, None)
        result = subprocess.run(
            [binary, "-d", "-q", str(self.ini_path)],
            cwd=self._dir,
            capture_output=True,
            text=True,
            timeout=_WAIT,
            stdin=subprocess.DEVNULL,
            check=False,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
        if result.returncode != 0:
            raise ClusterError(f"pgbouncer failed to start: {result.stdout}{result.stderr}")
        deadline = time.monotonic() + _WAIT
        while True:
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=2):
                    return
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"pgbouncer does not answer: {exc}\n{self.log()}") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after a while) and remove the directory."""
        pid = self.pid()
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + _WAIT
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _live.discard(self)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for bouncer in list(_live):
        with contextlib.suppress(Exception):
            bouncer.stop()


# -- a write load ----------------------------------------------------------------------

#: The load's tables, created on the primary (and by the schema copy on the replica).
LOAD_SCHEMA = """
CREATE TABLE accounts (aid int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
CREATE TABLE history (hid bigserial PRIMARY KEY, aid int NOT NULL, delta int NOT NULL,
                      at timestamptz NOT NULL DEFAULT now());
CREATE TABLE counters (client int NOT NULL, n bigint NOT NULL, PRIMARY KEY (client, n));
INSERT INTO accounts (aid) SELECT g FROM generate_series(1, 1000) g;
"""
LOAD_TABLES = ("accounts", "history", "counters")


@dataclass
class Client:
    """One client's record: commit times (monotonic), errors, counters committed."""

    kind: str
    number: int
    commits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counters: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)


def largest_gaps(clients: list[Client], start: float, end: float) -> list[float]:
    """Per client, the largest gap between two commits, in seconds, counting the
    commits from ``start`` to ``end`` (monotonic times; the whole span for a
    client without two commits in it)."""
    largest: list[float] = []
    for client in clients:
        times = [t for t in client.commits if start <= t <= end]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        largest.append(max(gaps, default=end - start))
    return largest


class WriteLoad:
    """Client threads writing through ``dsn`` until :meth:`stop` (see the module docstring)."""

    def __init__(self, dsn: str, *, pgbench: int = 4, counter: int = 2, think: float = 0.002):
        self.dsn = dsn
        self.think = think
        self.clients = [Client("pgbench", i) for i in range(pgbench)]
        self.clients += [Client("counter", 1000 + i) for i in range(counter)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_counter: dict[int, int] = {}

    def start(self) -> None:
        for client in self.clients:
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self._stop.clear()

    def _run(self, client: Client) -> None:
        conn: psycopg.Connection[Any] | None = None
        n = self._next_counter.get(client.number, 0)
        while not self._stop.is_set():
            hid = 0
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, prepare_threshold=None, connect_timeout=10)
                with conn.transaction():
                    if client.kind == "counter":
                        conn.execute(
                            "INSERT INTO counters (client, n) VALUES (%s, %s)",
                            (client.number, n + 1),
                        )
                    else:
                        aid = 1 + (len(client.commits) * 7 + client.number * 131) % 1000
                        conn.execute(
                            "UPDATE accounts SET balance = balance + 1 WHERE aid = %s", (aid,)
                        )
                        row = conn.execute(
                            "INSERT INTO history (aid, delta) VALUES (%s, 1) RETURNING hid", (aid,)
                        ).fetchone()
                        assert row is not None
                        hid = int(row[0])
                client.commits.append(time.monotonic())
                if client.kind == "counter":
                    n += 1
                    client.counters.append(n)
                else:
                    client.history.append(hid)
            except psycopg.Error as exc:
                client.errors.append(" ".join(str(exc).split()))
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                time.sleep(0.01)
            if self.think:
                time.sleep(self.think)
        self._next_counter[client.number] = n
        if conn is not None:
            conn.close()

    def gaps(self, start: float, end: float) -> list[float]:
        return largest_gaps(self.clients, start, end)

    @property
    def errors(self) -> list[str]:
        return [e for c in self.clients for e in c.errors]

    @property
    def commits(self) -> int:
        return sum(len(c.commits) for c in self.clients)
