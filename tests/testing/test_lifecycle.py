"""Cluster lifecycle: settings, restart, crash, destroy, context manager, atexit."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from pgferry.testing import Cluster, PgInstall, find_install
from pgferry.testing import cluster as cluster_module
from pgferry.testing.cluster import ClusterError
from pgferry.testing.pytest_plugin import ClusterFactory


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _assert_refused(port: int) -> None:
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres connect_timeout=5").close()


def test_settings_restart_and_crash_recovery(make_cluster: ClusterFactory) -> None:
    pg = make_cluster(settings={"max_wal_senders": "7", "fsync": "on", "work_mem": "3MB"})
    assert pg.sql("SHOW max_wal_senders") == [("7",)]  # user settings win
    assert pg.sql("SHOW fsync") == [("on",)]
    assert pg.sql("SHOW work_mem") == [("3MB",)]
    assert pg.sql("SHOW wal_level") == [("logical",)]  # defaults kept

    pg.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    port = pg.port
    pg.restart()
    assert pg.port == port
    assert pg.sql("SELECT id FROM t") == [(1,)]

    pid = pg.pid()
    assert pid is not None
    pg.sql("INSERT INTO t VALUES (2)")
    pg.kill()
    assert not _alive(pid)
    assert not pg.is_running()
    _assert_refused(port)

    offset = pg.log_size()
    pg.start()
    assert pg.port == port
    assert pg.sql("SELECT id FROM t ORDER BY id") == [(1,), (2,)]
    assert "not properly shut down" in pg.server_log(None, offset=offset)

    pg.stop()
    assert not pg.is_running()
    pg.stop()  # stopping a stopped cluster is a no-op


def test_invalid_setting_name_is_refused(pg_install: PgInstall) -> None:
    with pytest.raises(Exception, match="invalid server setting name"):
        Cluster(pg_install, settings={"work_mem = 1; x": "1"})


def test_context_manager_destroys_server_and_directory(pg_install: PgInstall) -> None:
    with Cluster(pg_install) as pg:
        path, port, pid = pg.path, pg.port, pg.pid()
        assert pid is not None and path.is_dir()
        assert pg.sql("SELECT 1") == [(1,)]
    assert not path.exists()
    assert not _alive(pid)
    _assert_refused(port)
    pg.destroy()  # idempotent
    with pytest.raises(Exception, match="destroyed"):
        pg.start()


def test_failed_start_reports_log_and_cleans_up() -> None:
    # An invalid setting value makes the postmaster exit at startup.
    with (
        pytest.raises(ClusterError, match="failed to start") as info,
        Cluster(find_install(), settings={"max_connections": "not a number"}),
    ):
        pass
    message = str(info.value)
    assert "max_connections" in message  # the server log is part of the error
    match = re.search(r"failed to start in (\S+):", message)
    assert match is not None
    assert not Path(match.group(1)).exists()


def test_long_base_dir_moves_socket_out() -> None:
    # Not under tmp_path: when root, the server user must be able to reach it.
    top = Path(tempfile.mkdtemp(prefix="pgferry-long-"))
    try:
        top.chmod(0o755)
        base = top / ("x" * 90)
        base.mkdir(mode=0o755)
        with Cluster(find_install(), base_dir=base) as pg:
            assert pg.path.parent == base
            assert not Path(pg.host).is_relative_to(pg.path)
            assert len(os.fsencode(pg.host)) + len("/.s.PGSQL.65535") < 100
            assert pg.sql("SELECT 1") == [(1,)]
            socket_dir = Path(pg.host)
        assert not socket_dir.exists()
        assert list(base.iterdir()) == []
    finally:
        shutil.rmtree(top)


def test_atexit_stops_forgotten_clusters(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json
        from pgferry.testing import Cluster
        pg = Cluster()
        pg.start()
        print(json.dumps({"path": str(pg.path), "pid": pg.pid(), "port": pg.port}))
        # no destroy(): the atexit hook must clean up
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 10
    while _alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(info["pid"])
    assert not Path(info["path"]).exists()
    _assert_refused(info["port"])


def test_start_retries_when_the_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process grabs the probed port before the server binds it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = int(squatter.getsockname()[1])
        ports = iter([taken])
        real_free_port = cluster_module._free_port

        def taken_first() -> int:
            return next(ports, None) or real_free_port()

        monkeypatch.setattr(cluster_module, "_free_port", taken_first)
        with Cluster(find_install()) as pg:
            assert pg.port != taken
            assert pg.sql("SELECT inet_server_port()") == [(None,)]  # unix socket
            with psycopg.connect(pg.tcp_dsn()) as conn:
                assert conn.execute("SELECT inet_server_port()").fetchone() == (pg.port,)
            assert "Address already in use" in pg.server_log(None)
