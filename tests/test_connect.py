"""Opening connections (``pgferry.connect``) against real servers and real sockets:
no attempt waits forever, and each way of failing says what to check."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from pgferry import connect
from pgferry.cli.main import main
from pgferry.errors import ConnectionFailed
from pgferry.stream import ReplicationConnection
from pgferry.testing import Cluster

PASSWORD = "s3cret-Pa55"  # noqa: S105 - never a real password


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()
        for conn in accepted:
            conn.close()


@pytest.fixture
def closed_port() -> int:
    """A TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_create_against_a_server_that_never_answers_fails_within_the_timeout(
    cluster: Cluster, dbname: str, silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect, "CONNECT_TIMEOUT", 2)  # libpq's smallest
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    publisher = f"host=127.0.0.1 port={silent_port} user=repl password={PASSWORD} dbname=app"
    # (A name of its own: replication origins are shared by the cluster's databases.)
    args = ["-d", cluster.dsn(dbname), "subscription", "create", "silent_publisher"]
    args += ["--connection", publisher, "--publication", "pub"]
    result: list[Any] = []
    began = time.monotonic()
    # (In a thread: without a timeout it would wait for as long as the socket stays.)
    thread = threading.Thread(target=lambda: result.append(CliRunner().invoke(main, args)))
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "subscription create still waits for the silent server"
    assert time.monotonic() - began < 10
    (run,) = result
    assert run.exit_code == 1
    lines = run.output.strip().splitlines()
    assert len(lines) == 2, run.output
    assert lines[0].startswith("pgferry: error: cannot connect to the publisher")
    assert "timeout expired" in lines[0] and PASSWORD not in run.output
    assert lines[1].startswith("hint: the server did not answer within 2 s")


def test_the_timeout_of_the_conninfo_wins(silent_port: int) -> None:
    began = time.monotonic()
    with pytest.raises(ConnectionFailed, match="timeout expired") as exc:
        connect.subscriber(f"host=127.0.0.1 port={silent_port} connect_timeout=3")
    assert 2.5 < time.monotonic() - began < 8
    assert "within 3 s" in (exc.value.hint or "")


@pytest.fixture
def role(cluster: Cluster) -> Iterator[str]:
    """A role that logs in with a password over TCP (and may replicate)."""
    name = f"ferry_{secrets.token_hex(4)}"
    cluster.sql(f"CREATE ROLE {name} LOGIN REPLICATION PASSWORD '{PASSWORD}'")
    try:
        yield name
    finally:
        cluster.sql(f"DROP ROLE {name}")


Opener = Callable[[str], Any]
OPENERS: dict[str, Opener] = {
    "subscriber": connect.subscriber,
    "publisher": connect.publisher,
    "replication": ReplicationConnection.connect,
}


@pytest.mark.parametrize("opener", list(OPENERS))
def test_each_failure_has_a_hint(
    cluster: Cluster, dbname: str, role: str, closed_port: int, opener: str
) -> None:
    side = "subscriber" if opener == "subscriber" else "publisher"
    cases = {
        "refused": (
            f"host=127.0.0.1 port={closed_port} dbname={dbname}",
            "Connection refused",
            "is the server running? check host= and port=",
        ),
        "unknown host": (
            f"host=nowhere.invalid port={cluster.port} dbname={dbname}",
            "nowhere.invalid",
            "check the host name (host= in the conninfo)",
        ),
        "authentication": (
            cluster.tcp_dsn(dbname, user=role, password="wrong-" + PASSWORD),
            "password authentication failed",
            "check the password",
        ),
        "no database": (
            cluster.tcp_dsn("no_such_database", user=role, password=PASSWORD),
            'database "no_such_database" does not exist',
            f"check dbname= in the conninfo: the database must exist on the {side}",
        ),
    }
    for reason, (dsn, message, hint) in cases.items():
        with pytest.raises(ConnectionFailed) as exc:
            OPENERS[opener](dsn)
        error = exc.value
        assert error.message.startswith(f"cannot connect to the {side} ("), (reason, error)
        assert message in error.message, (reason, error.message)
        assert hint in (error.hint or ""), (reason, error.hint)
        assert "\n" not in error.message and "wrong-" not in error.message
