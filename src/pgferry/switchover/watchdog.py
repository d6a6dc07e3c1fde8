"""The PgBouncer watchdog: ``RESUME`` the database if the switchover cannot.

Run as ``python -m pgferry.switchover.watchdog`` by :class:`Watchdog`, a separate
process, so that it outlives a switchover that hangs or dies. It is started
at the beginning of the switchover and waited for before the fence (a Python
process takes a fraction of a second to start, which must not count in the
write pause; importing this module does not import the rest of the
switchover). It reads one JSON line from stdin (``{"admin": CONNINFO,
"database": ALIAS}``: the conninfo is not put on the command line, where ``ps``
would show a password), opens its admin connection to PgBouncer at once and
writes ``ready`` to stdout. The switchover writes ``arm N``
just before ``PAUSE``, and may write it again later (before the redirect: the
deadline starts over, see :meth:`Watchdog.arm`); each ``arm`` is answered with
``armed`` on stdout. From then on the watchdog issues ``RESUME ALIAS`` itself
(and writes ``resumed``) when

* ``N`` seconds pass (``PAUSE`` hangs, or a phase overran), or
* stdin ends without ``done`` (the switchover process died),

and exits quietly on ``done`` (the switchover resumed the database itself). A
``RESUME`` of a database that is not paused is an error PgBouncer reports and the
watchdog ignores.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any

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


class _Lines:
    """Lines from a file descriptor, read without a buffer ``select`` cannot see."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.ended = False

    def next(self, timeout: float | None) -> str | None:
        """The next line (without its newline); None after ``timeout`` seconds or at
        the end of the input (then :attr:`ended`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.ended = True
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").strip()


def _watch(lines: _Lines, database: str, conn: psycopg.Connection[Any]) -> int:
    deadline: float | None = None
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        line = lines.next(remaining)
        if line is None:
            break  # the deadline, or the switchover process is gone
        words = line.split()
        if words == ["done"]:
            return 0
        if len(words) == 2 and words[0] == "arm":
            deadline = time.monotonic() + float(words[1])
            print("armed", flush=True)
    resume(conn, database)
    print("resumed", flush=True)
    return 0


def main() -> int:
    lines = _Lines(sys.stdin.fileno())
    order = json.loads(lines.next(READY_TIMEOUT) or "{}")
    conn = admin_connection(order["admin"])
    print("ready", flush=True)
    with conn:
        return _watch(lines, order["database"], conn)


class Watchdog:
    """The watchdog process, from the switchover's side."""

    def __init__(self, admin: str, database: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgferry.switchover.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self._out = _Lines(self.process.stdout.fileno())
        #: ``arm`` lines sent, ``armed`` answers read.
        self._arms = self._acks = 0
        self._ready = False
        self._send(json.dumps({"admin": admin, "database": database}))

    def wait_ready(self) -> None:
        """Wait (at most :data:`READY_TIMEOUT` seconds) until it says ``ready``:
        its admin connection is open. The process starts meanwhile, so the
        caller can do other work between starting it and this."""
        if self._ready:
            return
        if self._out.next(READY_TIMEOUT) != "ready":
            self.process.kill()
            _, err = self.process.communicate(timeout=READY_TIMEOUT)
            last = (err.decode(errors="replace").strip().splitlines() or ["no answer"])[-1]
            raise PgferryError(
                f"the PgBouncer watchdog could not start: {last}",
                hint="check --pgbouncer: the admin console's conninfo (an admin_users role)",
            )
        self._ready = True

    def _send(self, line: str) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def arm(self, seconds: float) -> None:
        """From now on, ``RESUME`` after ``seconds`` unless disarmed."""
        self._send(f"arm {seconds}")
        self._arms += 1

    def rearm(self, seconds: float, timeout: float) -> bool:
        """Start the deadline over (``RESUME`` ``seconds`` from now); whether the
        watchdog confirmed it within ``timeout`` seconds without having resumed
        the database first."""
        self.arm(seconds)
        deadline = time.monotonic() + timeout
        while self._acks < self._arms:
            line = self._out.next(max(deadline - time.monotonic(), 0))
            if line != "armed":
                return False  # resumed, exited, or silent
            self._acks += 1
        return True

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
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def fire(self) -> None:
        """Close its stdin without ``done``: it resumes the database now."""
        self.close()


if __name__ == "__main__":
    sys.exit(main())
