"""The write load of :class:`~pgferry.testing.pgbouncer.WriteLoad`, run by real ``pgbench``.

:class:`PgbenchLoad` runs the same two kinds of clients for a fixed number of
seconds: ``pgbench`` clients updating an account and inserting a history row in
one transaction, ``counter`` clients inserting an increasing counter each (a
client number of the run's own, counting from 1), each with a 2 ms pause before
every transaction. They are two ``pgbench`` processes (one thread each, simple
query protocol for PgBouncer's transaction pooling, ``--log``: one line per
transaction with the time it ended). The clients take no interpreter lock and a
fraction of the CPU threads of Python take, so a write pause measured through
them is the pause of the servers and PgBouncer, not of the clients.

:meth:`PgbenchLoad.start` starts them; :meth:`PgbenchLoad.wait` waits for the end
and reads the logs: then :attr:`PgbenchLoad.clients` holds each client's commit
times on this process's monotonic clock (as :class:`~pgferry.testing.pgbouncer.Client`
records), and :attr:`PgbenchLoad.errors` what ``pgbench`` reported for a client it
aborted (any error ends a pgbench client: none is expected).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pgferry.testing import install_for_major
from pgferry.testing.pgbouncer import Client, largest_gaps

#: pgbench's script for the ``pgbench`` clients.
ACCOUNT_SCRIPT = """\\sleep 2 ms
\\set aid random(1, 1000)
BEGIN;
UPDATE accounts SET balance = balance + 1 WHERE aid = :aid;
INSERT INTO history (aid, delta) VALUES (:aid, 1);
END;
"""
#: pgbench's script for the ``counter`` clients (``n`` and ``base`` set with ``-D``).
COUNTER_SCRIPT = """\\sleep 2 ms
\\set n :n + 1
INSERT INTO counters (client, n) VALUES (:base + :client_id, :n);
"""
#: Seconds past the run's end before pgbench is considered hung.
_GRACE = 30.0


def pgbench_binary() -> Path:
    """The ``pgbench`` of the newest PostgreSQL the tests use."""
    return install_for_major(18).bindir / "pgbench"


class PgbenchLoad:
    """``pgbench`` processes writing through ``dsn`` for ``seconds`` (see the module docstring)."""

    def __init__(
        self, dsn: str, seconds: float, *, pgbench: int = 4, counter: int = 2, base: int = 1000
    ) -> None:
        self.dsn = dsn
        self.seconds = max(1, round(seconds))
        self.kinds = {"pgbench": pgbench, "counter": counter}
        self.base = base
        self.clients: list[Client] = []
        self.errors: list[str] = []
        self._dir: Path | None = None
        self._procs: dict[str, subprocess.Popen[str]] = {}
        #: This process's monotonic clock minus the wall clock, at the start.
        self._offset = 0.0

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="pgferry-pgbench-"))
        self._offset = time.monotonic() - time.time()
        for kind, count in self.kinds.items():
            if count <= 0:
                continue
            script = self._dir / f"{kind}.sql"
            script.write_text(ACCOUNT_SCRIPT if kind == "pgbench" else COUNTER_SCRIPT)
            command = [
                str(pgbench_binary()), "-n", "-M", "simple", "-j", "1", "-c", str(count),
                "-T", str(self.seconds), "-f", str(script),
                "-l", f"--log-prefix={self._dir / kind}",
                "-D", "n=0", "-D", f"base={self.base}",
                self.dsn,
            ]  # fmt: skip
            self._procs[kind] = subprocess.Popen(
                command,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

    def wait(self) -> None:
        """Wait for the end, then read each client's commits and the errors."""
        assert self._dir is not None
        try:
            for kind, proc in self._procs.items():
                try:
                    out, err = proc.communicate(timeout=self.seconds + _GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    self.errors.append(f"{kind}: pgbench did not end")
                self.errors += [
                    f"{kind}: {line.strip()}"
                    for line in (out + err).splitlines()
                    if "aborted" in line or "error" in line.lower()
                ]
                if proc.returncode not in (0, None) and not self.errors:
                    self.errors.append(f"{kind}: pgbench exited with {proc.returncode}")
                self.clients += self._read(kind)
        finally:
            self._procs.clear()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _read(self, kind: str) -> list[Client]:
        assert self._dir is not None
        base = self.base if kind == "counter" else 0
        clients = {i: Client(kind, base + i) for i in range(self.kinds[kind])}
        for log in sorted(self._dir.glob(f"{kind}.*")):
            if log.suffix == ".sql":
                continue
            for line in log.read_text().splitlines():
                # client_id transaction_no time script_no time_epoch time_us
                fields = line.split()
                if len(fields) < 6 or not fields[2].isdigit():
                    continue  # a failed transaction (none without retries)
                ended = int(fields[4]) + int(fields[5]) / 1e6 + self._offset
                client = clients[int(fields[0])]
                client.commits.append(ended)
                if kind == "counter":
                    client.counters.append(len(client.commits))
        for client in clients.values():
            client.commits.sort()
        return list(clients.values())

    def gaps(self, start: float, end: float) -> list[float]:
        return largest_gaps(self.clients, start, end)

    @property
    def commits(self) -> int:
        return sum(len(c.commits) for c in self.clients)
