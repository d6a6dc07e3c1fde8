"""Throwaway PostgreSQL clusters for tests: initdb, start, connect, destroy.

A :class:`Cluster` owns a fresh temporary directory::

    <dir>/data        the data directory (initdb -U postgres --auth=trust -E UTF8 --locale=C)
    <dir>/s           the unix socket directory (``host``)
    <dir>/server.log  the server log (pg_ctl -l; logging_collector is off)

Nothing happens on construction; :meth:`Cluster.start` runs ``initdb`` the first
time, picks a free TCP port on 127.0.0.1 and starts the server; the port stays
the same across :meth:`~Cluster.restart`. Used as a context manager the cluster
is started on enter and destroyed on exit.

Server settings, later lines winning: :data:`BASE_SETTINGS` (logical
replication enabled, ``fsync=off``...), then the ``settings`` argument. They go
into ``<data>/pgferry.conf``, included from ``postgresql.conf``, so ``ALTER
SYSTEM`` (``postgresql.auto.conf``) still overrides them.

Authentication (``pg_hba.conf``): every local (unix socket) connection is
trusted; over TCP the ``postgres`` superuser is trusted and every other role
must give its password (``scram-sha-256``), so tests can check password logins.

PostgreSQL refuses to run as root: when the process is root, ``initdb``,
``pg_ctl`` and the server run as the unprivileged OS user ``pgferry`` (created
with ``useradd`` if missing) who owns the cluster directory.

No server outlives the process that started it: :meth:`Cluster.destroy` stops
the server (falling back to SIGKILL) and removes the directory, and an
``atexit`` hook does the same for every cluster still running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.abc import Params, QueryNoTemplate
from psycopg.conninfo import make_conninfo

from pgferry.errors import InterfaceError, PgferryError
from pgferry.testing.binaries import PgInstall, find_install

OS_USER = "pgferry"

BASE_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "max_logical_replication_workers": "8",
    "max_worker_processes": "16",
    "track_commit_timestamp": "on",
    # PG 13 still hashes with md5 by default, which scram-sha-256 in pg_hba rejects.
    "password_encryption": "scram-sha-256",
    # Throwaway data: durability only costs time.
    "fsync": "off",
    "logging_collector": "off",
    # Which role, database and application a line is about (clusters are shared).
    "log_line_prefix": "%m [%p] %q%u@%d/%a ",
}

PG_HBA = """\
# pgferry.testing: trust locally and for postgres over TCP; passwords for others.
local   all          all                       trust
local   replication  all                       trust
host    all          postgres   127.0.0.1/32   trust
host    replication  postgres   127.0.0.1/32   trust
host    all          all        127.0.0.1/32   scram-sha-256
host    replication  all        127.0.0.1/32   scram-sha-256
"""

StopMode = Literal["smart", "fast", "immediate"]

_PG_CTL_WAIT = 120  # seconds pg_ctl waits for start/stop
_SUBPROCESS_TIMEOUT = _PG_CTL_WAIT + 60
_MAX_SOCKET_PATH = 100  # bytes; sun_path is 108 and PostgreSQL adds ".lock"
_START_ATTEMPTS = 3  # a free port can be taken between probing and binding
_PORT_TAKEN = ("Address already in use", "could not create any TCP/IP sockets")


class ClusterError(PgferryError):
    """A test cluster could not be created, started or stopped."""


_live: set[Cluster] = set()  # clusters with a directory, until destroyed
_ports_handed_out: set[int] = set()
_lock = threading.Lock()


def _free_port() -> int:
    # Ask the kernel for an unused port, never handing the same one out twice in
    # this process (two clusters probing at once could otherwise both get it).
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with _lock:
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise ClusterError("could not find a free TCP port on 127.0.0.1")


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _check_setting_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "_." for c in name) or name[0].isdigit():
        raise InterfaceError(f"invalid server setting name {name!r}")


_HAVE_PROC = Path("/proc/self/stat").exists()


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    if _HAVE_PROC:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # "pid (comm) S ...": the state follows the last ')'.
                return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
        except OSError:
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    found: list[int] = []
    if not _HAVE_PROC:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _os_user() -> tuple[int, int]:
    """uid and gid of the unprivileged server user, creating it if needed."""
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        try:  # another process may have created it concurrently: look again
            entry = pwd.getpwnam(OS_USER)
        except KeyError:
            raise ClusterError(
                f"PostgreSQL cannot run as root and creating user {OS_USER!r} failed: "
                f"{result.stderr.strip()}",
                hint=f"create an unprivileged user {OS_USER!r} or run the tests as non-root",
            ) from None
    return entry.pw_uid, entry.pw_gid


_usable_by: set[tuple[Path, int]] = set()


class Cluster:
    """A throwaway PostgreSQL cluster (see the module docstring)."""

    def __init__(
        self,
        install: PgInstall | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.install = install if install is not None else find_install()
        self.settings: dict[str, str] = dict(BASE_SETTINGS)
        if self.install.major >= 18:
            # From 18 replication origins have a limit of their own (default 10),
            # before it they share max_replication_slots: the same on every major.
            self.settings["max_active_replication_origins"] = BASE_SETTINGS["max_replication_slots"]
        for name, value in (settings or {}).items():
            _check_setting_name(name)
            self.settings[name] = str(value)
        self._base_dir = base_dir
        self._dir: Path | None = None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False  # socket dir outside _dir (path too long)
        self._port: int | None = None
        self._initialized = False
        self._started_once = False
        self._destroyed = False
        self._owner_pid = os.getpid()
        self._ids: tuple[int, int] | None = _os_user() if os.geteuid() == 0 else None

    @classmethod
    def adopt(cls, path: Path, install: PgInstall, socket_dir: Path, port: int) -> Cluster:
        """A cluster another process created in ``path`` and :meth:`detach`-ed
        (``pgferry demo --stop``): :meth:`destroy` stops and removes it, as root
        too. The exit hook leaves it alone."""
        cluster = cls(install)
        cluster._dir = path
        cluster._socket_dir = socket_dir
        cluster._own_socket_dir = not socket_dir.is_relative_to(path)
        cluster._port = port
        cluster._initialized = cluster._started_once = True
        return cluster

    # -- description ---------------------------------------------------------

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<Cluster PostgreSQL {self.install.version} port={self._port} {state}>"

    @property
    def major(self) -> int:
        return self.install.major

    @property
    def path(self) -> Path:
        """The cluster's own directory (data, socket, log)."""
        if self._dir is None:
            raise InterfaceError("the cluster has not been started yet")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def log_path(self) -> Path:
        return self.path / "server.log"

    @property
    def host(self) -> str:
        """The unix socket directory (libpq ``host``)."""
        if self._socket_dir is None:
            raise InterfaceError("the cluster has not been started yet")
        return str(self._socket_dir)

    @property
    def port(self) -> int:
        if self._port is None:
            raise InterfaceError("the cluster has not been started yet")
        return self._port

    def bin(self, name: str) -> Path:
        return self.install.bin(name)

    # -- connecting ----------------------------------------------------------

    def dsn(self, dbname: str = "postgres", **params: Any) -> str:
        """libpq conninfo over the unix socket as ``postgres``; ``params`` added
        (or replacing, e.g. ``user=``), ``None`` values left out."""
        return make_conninfo(
            "", host=self.host, port=self.port, user="postgres", dbname=dbname, **params
        )

    def tcp_dsn(
        self, dbname: str = "postgres", user: str = "postgres", password: str | None = None
    ) -> str:
        """libpq conninfo over TCP to 127.0.0.1 (password checked unless ``postgres``)."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=user, dbname=dbname, password=password
        )

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection over the unix socket, autocommit unless told otherwise."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def sql(
        self, query: QueryNoTemplate, params: Params | None = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run ``query`` in autocommit on a new connection; its rows, or [] when
        it returns none. Without params several ;-separated statements may run."""
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description is not None else []

    def create_database(self, name: str) -> None:
        self.sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, with its replication slots (terminating
        the walsenders using them) and subscriptions, and any connections."""
        self._drop_subscriptions(name)
        deadline = time.monotonic() + 30
        while True:
            # A terminated walsender releases its slot a moment later: retry.
            self.sql(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            slots = self.sql(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
            )
            busy = False
            for (slot,) in slots:
                try:
                    self.sql("SELECT pg_drop_replication_slot(%s)", (slot,))
                except pg_errors.UndefinedObject:
                    pass  # a temporary slot vanished with its walsender
                except pg_errors.ObjectInUse:
                    busy = True
            if not busy:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"replication slots of database {name!r} stay in use")
            time.sleep(0.05)
        self.sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _drop_subscriptions(self, name: str) -> None:
        # DROP DATABASE refuses while subscriptions live in it. Detach each from
        # its remote slot first: dropping that slot is the publisher's business.
        subs = self.sql(
            "SELECT s.subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
            " WHERE d.datname = %s",
            (name,),
        )
        for (sub,) in subs:
            ident = sql.Identifier(sub)
            self.sql(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident), dbname=name)
            self.sql(
                sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident), dbname=name
            )
            self.sql(sql.SQL("DROP SUBSCRIPTION {}").format(ident), dbname=name)

    def server_log(self, lines: int | None = 200, *, offset: int = 0) -> str:
        """The server log from byte ``offset``, cut to its last ``lines`` lines
        (``None``: all). Empty when there is no log yet."""
        if self._dir is None:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        if lines is not None:
            text = "\n".join(text.splitlines()[-lines:])
        return text

    def log_size(self) -> int:
        """Current size of the server log in bytes (an ``offset`` for server_log)."""
        try:
            return self.log_path.stat().st_size
        except (FileNotFoundError, InterfaceError):
            return 0

    # -- lifecycle -----------------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        if self._dir is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start the server (initdb on first use); no-op when it runs already."""
        if self._destroyed:
            raise InterfaceError("the cluster has been destroyed")
        if self.is_running():
            return
        if not self._initialized:
            self._init()
        for attempt in range(_START_ATTEMPTS):
            offset = self.log_size()
            result = self._pg_ctl("start", "-l", str(self.log_path))
            if result.returncode == 0:
                break
            log = self.server_log(50, offset=offset)
            if attempt + 1 < _START_ATTEMPTS and self._port_is_fresh() and _port_taken(log):
                self._port = _free_port()
                self._write_settings()
                continue
            raise ClusterError(
                f"PostgreSQL {self.install.version} failed to start in {self.path}:\n"
                f"{result.stdout}{result.stderr}\n--- server log ---\n{log}"
            )
        self._started_once = True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (pg_ctl stop -m ``mode``); SIGKILL if that fails."""
        if self.is_running():
            result = self._pg_ctl("stop", "-m", mode)
            if result.returncode != 0 and self.is_running():
                self.kill()

    def restart(self) -> None:
        """Stop (fast) and start again on the same port."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the postmaster and all its processes, wait
        until they are gone. The next :meth:`start` runs crash recovery."""
        pid = self.pid()
        if pid is not None:
            # Freeze the postmaster first so it cannot fork while we list its
            # children (once it is dead they are reparented and untraceable).
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            victims = [pid, *_children(pid)]
            for victim in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while any(_pid_alive(v) for v in victims):
                if time.monotonic() > deadline:
                    raise ClusterError(f"processes of the server {pid} survive SIGKILL")
                time.sleep(0.02)
            # An unreaped zombie postmaster (PID 1 in a container may never reap
            # it) still answers kill(pid, 0), so the next postmaster would take
            # the lock files for live ones: they are stale, remove them.
            stale = [self.data_dir / "postmaster.pid"]
            stale.append(Path(self.host) / f".s.PGSQL.{self.port}.lock")
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def detach(self) -> None:
        """Leave the cluster running after this process exits (``pgferry demo
        --keep``): the exit hook no longer destroys it; removing it is the user's."""
        with _lock:
            _live.discard(self)

    def destroy(self) -> None:
        """Stop the server and remove the directory; safe to call repeatedly."""
        try:
            if self.is_running():
                try:
                    self.stop("immediate")
                except Exception:
                    self.kill()
        finally:
            with _lock:
                _live.discard(self)
            self._destroyed = True
            for path, owned in ((self._dir, True), (self._socket_dir, self._own_socket_dir)):
                if path is not None and owned:
                    _remove_tree(path)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- internals -----------------------------------------------------------

    def _port_is_fresh(self) -> bool:
        # The port may only move before the first successful start: afterwards
        # callers hold DSNs naming it.
        return not self._started_once

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._ids is not None:
            env["HOME"] = str(self.path)
        if self.install.libdir is not None:
            previous = env.get("LD_LIBRARY_PATH")
            libdir = str(self.install.libdir)
            env["LD_LIBRARY_PATH"] = f"{libdir}:{previous}" if previous else libdir
        return env

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        uid, gid = self._ids if self._ids is not None else (None, None)
        try:
            return subprocess.run(
                args,
                env=self._env(),
                cwd=self.path,
                capture_output=True,
                text=True,
                timeout=_SUBPROCESS_TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{args[0]} timed out after {_SUBPROCESS_TIMEOUT}s") from exc

    def _pg_ctl(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin("pg_ctl")), action, "-D", str(self.data_dir)]
        return self._run([*command, "-w", "-t", str(_PG_CTL_WAIT), *args])

    def _check_usable(self) -> None:
        # Before initdb: as root, the binaries must be reachable by the server
        # user, and an unreadable cache under /root would fail obscurely later.
        if self._ids is None:
            return
        key = (self.install.bindir, self._ids[0])
        if key in _usable_by:
            return
        try:
            result = self._run([str(self.bin("postgres")), "--version"])
        except PermissionError:
            result = None
        if result is None or result.returncode != 0:
            raise ClusterError(
                f"OS user {OS_USER!r} cannot run {self.bin('postgres')}",
                hint="put the PostgreSQL installation (or PGFERRY_CACHE_DIR) in a "
                "world-readable directory",
            )
        _usable_by.add(key)

    def _init(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="pgferry-", dir=self._base_dir)).resolve()
            with _lock:  # from now on there is something to clean up at exit
                _live.add(self)
            socket_dir = self._dir / "s"
            if len(os.fsencode(socket_dir / ".s.PGSQL.65535")) < _MAX_SOCKET_PATH:
                socket_dir.mkdir()
            else:  # a long base_dir: keep the socket short in /tmp
                socket_dir = Path(tempfile.mkdtemp(prefix="pgferry-s-", dir="/tmp"))
                self._own_socket_dir = True
            self._socket_dir = socket_dir
            if self._ids is not None:
                for path in (self._dir, socket_dir):
                    os.chown(path, *self._ids)
        self._check_usable()
        initdb = [
            str(self.bin("initdb")),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = self._run(initdb)
        if result.returncode != 0:
            hint = None
            if self._ids is not None:
                hint = (
                    f"as root the server runs as OS user {OS_USER!r}: base_dir and its "
                    "parent directories must be accessible to it"
                )
            raise ClusterError(
                f"initdb of PostgreSQL {self.install.version} failed in {self.data_dir}:\n"
                f"{result.stdout}{result.stderr}",
                hint=hint,
            )
        self._port = _free_port()
        self._write_settings()
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(PG_HBA)
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a") as handle:
            handle.write("\n# pgferry.testing settings (ALTER SYSTEM still wins)\n")
            handle.write("include 'pgferry.conf'\n")
        if self._ids is not None:
            os.chown(hba, *self._ids)
        self._initialized = True

    def _write_settings(self) -> None:
        lines = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = {_conf_value(self.host)}",
        ]
        lines += [f"{name} = {_conf_value(value)}" for name, value in self.settings.items()]
        path = self.data_dir / "pgferry.conf"
        path.write_text("\n".join(lines) + "\n")
        if self._ids is not None:
            os.chown(path, *self._ids)

    def _stop_at_exit(self) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked child must not stop its parent's servers
        self.destroy()


def _port_taken(log: str) -> bool:
    return any(marker in log for marker in _PORT_TAKEN)


def _remove_tree(path: Path) -> None:
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)  # a process that just died may still be closing files
    raise ClusterError(f"could not remove {path}")


def live_clusters() -> list[Cluster]:
    """Clusters created by this process and not destroyed yet (running or not)."""
    with _lock:
        return list(_live)


@atexit.register
def _destroy_all() -> None:
    for cluster in live_clusters():
        with contextlib.suppress(Exception):
            cluster._stop_at_exit()
