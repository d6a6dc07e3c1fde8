"""The PgBouncer watchdog: ``RESUME`` the database if the switchover cannot.

Run as ``python -m pgferry.switchover.watchdog`` by :class:`Watchdog`, a separate
process, so that it outlives a switchover that hangs or dies. It is started
before the fence (a Python process takes a fraction of a second to start, which
must not count in the write pause). It reads one JSON line from stdin
(``{"admin": CONNINFO, "database": ALIAS}``: the conninfo is not put on the
command line, where ``ps`` would show a password), opens its admin connection to
PgBouncer at once and writes ``ready`` to stdout. The switchover writes ``arm N``
just before ``PAUSE``; from then on the watchdog issues ``RESUME ALIAS`` itself
when

* ``N`` seconds pass (``PAUSE`` hangs, or a phase overran), or
* stdin ends without ``done`` (the switchover process died),

and exits quietly on ``done`` (the switchover resumed the database itself). A
``RESUME`` of a database that is not paused is an error PgBouncer reports and the
watchdog ignores.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from typing import IO, Any

import psycopg

from pgferry.errors import PgferryError

#: Seconds the watchdog may take to connect and say ``ready``.
READY_TIMEOUT = 10.0


def admin_connection(dsn: str, timeout: float = 10.0) -> psycopg.Connection[Any]:
    """An autocommit connection to PgBouncer's admin console (simple query protocol)."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
        connect_timeout=max(1, int(timeout)),
        application_name="pgferry switchover",
    )


def resume(conn: psycopg.Connection[Any], database: str) -> None:
    """``RESUME`` ``database``; one not paused is not an error here."""
    try:
        conn.execute(f"RESUME {quote_alias(database)}")
    except psycopg.Error as exc:
        if "not paused" not in str(exc).lower():
            raise


def quote_alias(alias: str) -> str:
    """A PgBouncer database name for an admin command (its own grammar: a bare
    word, or double-quoted with "" for a quote)."""
    if "\0" in alias or "\n" in alias:
        raise PgferryError(f"invalid PgBouncer database name {alias!r}")
    return '"' + alias.replace('"', '""') + '"'


def _watch(stdin: IO[str], database: str, conn: psycopg.Connection[Any]) -> int:
    deadline: float | None = None
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        readable, _, _ = select.select([stdin], [], [], remaining)
        if not readable:
            break
        line = stdin.readline()
        words = line.split()
        if words == ["done"]:
            return 0
        if not line:
            break  # the switchover process is gone
        if len(words) == 2 and words[0] == "arm":
            deadline = time.monotonic() + float(words[1])
    resume(conn, database)
    print("resumed", flush=True)
    return 0


def main() -> int:
    order = json.loads(sys.stdin.readline())
    conn = admin_connection(order["admin"])
    print("ready", flush=True)
    with conn:
        return _watch(sys.stdin, order["database"], conn)


class Watchdog:
    """The watchdog process, from the switchover's side."""

    def __init__(self, admin: str, database: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgferry.switchover.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"admin": admin, "database": database}) + "\n")
        self.process.stdin.flush()
        readable, _, _ = select.select([self.process.stdout], [], [], READY_TIMEOUT)
        line = self.process.stdout.readline() if readable else ""
        if line.strip() != "ready":
            self.process.kill()
            _, err = self.process.communicate(timeout=READY_TIMEOUT)
            last = (err.strip().splitlines() or ["no answer"])[-1]
            raise PgferryError(
                f"the PgBouncer watchdog could not start: {last}",
                hint="check --pgbouncer: the admin console's conninfo (an admin_users role)",
            )

    def _send(self, line: str) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def arm(self, seconds: float) -> None:
        """From now on, ``RESUME`` after ``seconds`` unless disarmed."""
        self._send(f"arm {seconds}")

    def disarm(self) -> None:
        """Tell it the database is resumed; it exits without doing anything."""
        self._send("done")

    def close(self) -> None:
        """Wait for it to exit (closing its stdin: it resumes unless disarmed)."""
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.process.wait(timeout=READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def fire(self) -> None:
        """Close its stdin without ``done``: it resumes the database now."""
        self.close()


if __name__ == "__main__":
    sys.exit(main())
