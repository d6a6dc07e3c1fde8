"""The launcher (``pgferry run``): keeps the right workers running for a database.

It reads the catalog of the subscriber database at once when the catalog changes
(the catalog's triggers notify :data:`~pgferry.catalog.schema.WAKE_CHANNEL`, which
the launcher listens on, so a create, enable or alter takes effect at once, as
native's launcher is woken), and every ``poll_interval`` seconds anyway (worker
exits, restart pauses). It wants:

* one apply worker per enabled subscription that has a slot;
* one table sync worker per table not yet synchronised (state i, d or f), at most
  ``max_sync_workers_per_subscription`` (default 2, as native) per subscription,
  tables already copied (f) first;
* one sequence sync worker per enabled subscription that has a slot and the
  option ``sequences = sync`` (see :mod:`pgferry.sequences`).

Workers are separate processes (:mod:`pgferry.runner.child`), so they use separate
cores and a crash of one does not touch the others. A launcher with no other
thread forks them (the modules are loaded already: a worker starts in
milliseconds, not the ~0.2 s of a new interpreter importing psycopg and pgferry);
one running in a thread of a bigger program (tests, ``pgferry demo``) starts them
with ``python -m pgferry.runner.child``, as forking a threaded process can copy a
lock some other thread holds. A worker that is no longer
wanted (subscription disabled or dropped) gets SIGTERM; so does one whose
subscription was altered (connection, publications, slot, options, skip LSN), and
the next round starts it again with the new settings. A worker that exits with
an error is started again after a pause (:func:`backoff`) that starts under half
a second and doubles, with jitter, up to ``retry_interval`` (5 s, native's
``wal_retrieve_retry_interval``); its failures in a row are forgotten once it has
run for ``healthy_after`` seconds (10), so a fault now and then costs a short
pause, not the cap. Each planned retry is in ``pgferry.worker_retry`` (attempt,
next start: see :mod:`pgferry.catalog.workers`) for ``status``. SIGTERM or
SIGINT to the launcher stop every worker cleanly and then the launcher; a worker
still running after ``stop_timeout`` seconds is killed (it loses nothing: its
transaction in progress rolls back and is received again).

The launcher survives its subscriber going away (a restart, a failover): a
failed catalog connection is one log line, and it connects again with the same
backoff; its workers meanwhile fail and are started again like any others.

It logs one line per event (:mod:`pgferry.logs`): run started (the catalog
database, masked, its subscriptions, the metrics address), each worker started,
stopped (and why) or failed and retrying, each subscription added, enabled,
disabled or dropped, and run stopping (on SIGINT/SIGTERM: :meth:`request_stop`)
and stopped. Its workers get ``worker_env`` in their environment (the log level
and format, the receiver timeout).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from pgferry import connect
from pgferry.catalog import TableState, conflict_log, ensure_catalog, handover, store, workers
from pgferry.catalog.schema import WAKE_CHANNEL
from pgferry.catalog.steps import pending_final
from pgferry.conninfo import mask
from pgferry.errors import InterfaceError, PgferryError
from pgferry.runner.env import DSN_ENV, LAUNCHER_PID_ENV
from pgferry.runner.kinds import WorkerKey, describe, log_fields

logger = logging.getLogger("pgferry.runner")

#: The pause before the first retry of a failed worker, at most (seconds).
RETRY_BASE = 0.5
#: A worker that ran this long (seconds) before it failed was healthy: its
#: failures in a row start again from one.
HEALTHY_AFTER = 10.0


def backoff(failures: int, cap: float, base: float = RETRY_BASE) -> float:
    """The pause before retry number ``failures``: ``base`` doubling with each
    failure up to ``cap``, of which a random half to whole (so workers that failed
    together do not all come back at once): 0.25-0.5 s, 0.5-1 s, ... by default."""
    ceiling = min(cap, base * 2.0 ** (max(failures, 1) - 1))
    return ceiling * random.uniform(0.5, 1.0)


class _Process(Protocol):
    """What the launcher asks of a worker process (a subset of Popen)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class _Forked:
    """A worker forked by the launcher, with the Popen calls the launcher uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # (a reaped pid may belong to someone else by now)
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _can_fork() -> bool:
    return hasattr(os, "fork") and threading.active_count() == 1


@dataclass
class _Child:
    key: WorkerKey
    process: _Process
    started: float
    #: The subscription's settings when the worker started (see ``wanted``).
    settings: str | None = None


class Launcher:
    def __init__(
        self,
        dsn: str,
        *,
        max_sync_workers_per_subscription: int = 2,
        poll_interval: float = 0.25,
        retry_interval: float = 5.0,
        stop_timeout: float = 30.0,
        healthy_after: float = HEALTHY_AFTER,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        #: Added to each worker's environment.
        self.worker_env = dict(worker_env or {})
        #: Where metrics are served, for the start line (set by ``run --metrics``).
        self.metrics_url: str | None = None
        self.max_sync = max_sync_workers_per_subscription
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.stop_timeout = stop_timeout
        self.healthy_after = healthy_after
        self.children: dict[WorkerKey, _Child] = {}
        self._failures: dict[WorkerKey, int] = {}
        self._retry_at: dict[WorkerKey, float] = {}
        self._settings: dict[str, str] = {}  # subscription -> its settings, this round
        #: Subscription -> enabled, as this round read them.
        self._subscriptions: dict[str, bool] = {}
        #: The same, as the last lines said them (None: before the start line).
        self._announced: dict[str, bool] | None = None
        self._stop = False
        self._stop_reason = ""

    def failures(self) -> dict[WorkerKey, int]:
        """Each failing worker's failures in a row (since it last ran healthy), a
        copy taken in one step (the launcher's thread changes the original)."""
        return dict(self._failures)

    def request_stop(self, reason: str = "") -> None:
        """Stop the workers, then :meth:`run` (``reason``, e.g. the signal, is
        logged). Safe in a signal handler: it only sets flags."""
        self._stop_reason = self._stop_reason or reason
        self._stop = True

    # -- what should run ------------------------------------------------------------------

    def wanted(self, conn: psycopg.Connection[Any]) -> set[WorkerKey]:
        keys: set[WorkerKey] = set()
        self._settings = {}
        finishing = pending_final(conn)
        subscriptions = store.list_subscriptions(conn)
        self._subscriptions = {sub.name: sub.enabled for sub in subscriptions}
        for sub in subscriptions:
            if not sub.enabled or sub.slot_name is None:
                continue
            keys.add(("apply", sub.name))
            if sub.options.sequences == "sync":
                keys.add(("sequences", sub.name))
            # What a running worker read at its start: when it changes (ALTER
            # SUBSCRIPTION ... CONNECTION/PUBLICATION/SKIP/SET), restart it, as
            # native's apply worker exits when its subscription changes.
            self._settings[sub.name] = repr(
                (
                    sub.conninfo,
                    sub.publications,
                    sub.slot_name,
                    sub.options,
                    sub.skip_lsn,
                    sorted(
                        (k, str(v))
                        for k, v in conflict_log.table_resolutions(conn, sub.name).items()
                    ),
                )
            )
            pending = [
                s
                for s in handover.states(conn, sub.name).values()
                if s.state in (TableState.INIT, TableState.DATA, TableState.FINISHED)
            ]
            # Copied tables first (they only need their catch-up), then the
            # largest (the copy ends sooner when it starts first), then by name.
            pending.sort(
                key=lambda s: (
                    s.state != TableState.FINISHED,
                    -(s.size_bytes or 0),
                    s.remote_schema,
                    s.remote_name,
                )
            )
            running = [k for k in self.children if k[0] == "sync" and k[1] == sub.name]
            chosen: list[WorkerKey] = [
                k
                for k in running
                if any((k[2], k[3]) == (s.remote_schema, s.remote_name) for s in pending)
            ]
            for s in pending:
                if len(chosen) >= self.max_sync:
                    break
                key = ("sync", sub.name, s.remote_schema, s.remote_name)
                if key not in chosen:
                    chosen.append(key)
            keys.update(chosen)
            # The schema copy's last steps, once every table is ready.
            if (
                sub.name in finishing
                and not pending
                and all(
                    s.state == TableState.READY for s in handover.states(conn, sub.name).values()
                )
            ):
                keys.add(("schema", sub.name))
        return keys

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, key: WorkerKey) -> None:
        process: _Process
        if _can_fork():
            # (Not imported with this module: python -m pgferry.runner.child would
            # find it loaded already by the package.)
            from pgferry.runner.child import run_forked

            launcher = os.getpid()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run_forked(self.dsn, launcher, list(key), self.worker_env)
            process = _Forked(pid)
        else:
            env = {**os.environ, **self.worker_env}
            env[DSN_ENV] = self.dsn
            env[LAUNCHER_PID_ENV] = str(os.getpid())
            process = subprocess.Popen(
                [sys.executable, "-m", "pgferry.runner.child", *key],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self.children[key] = _Child(key, process, time.monotonic(), self._settings.get(key[1]))
        logger.info("started %s (pid %d)", describe(key), process.pid, extra=log_fields(key))

    def _reap(self, conn: psycopg.Connection[Any]) -> None:
        """Collect the workers that exited; plan (and record) the retry of those
        that failed, forget the failures of those that ran healthy."""
        now = time.monotonic()
        for key, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                if key in self._failures and now - child.started >= self.healthy_after:
                    self._forget(conn, key)
                continue
            del self.children[key]
            if code == 0:
                logger.info(
                    "%s (pid %d) finished", describe(key), child.process.pid, extra=log_fields(key)
                )
                self._forget(conn, key)
                continue
            healthy = now - child.started >= self.healthy_after
            failures = 1 if healthy else self._failures.get(key, 0) + 1
            self._failures[key] = failures
            pause = backoff(failures, self.retry_interval)
            self._retry_at[key] = now + pause
            logger.warning(
                "%s (pid %d) exited with status %d; retrying in %.1f s (attempt %d)",
                describe(key),
                child.process.pid,
                code,
                pause,
                failures,
                extra={
                    **log_fields(key),
                    "attempt": failures,
                    "retry_in": round(pause, 3),
                    "exit_status": code,
                },
            )
            workers.record_retry(conn, key[1], key[0], _table(key), failures, pause, code)

    def _forget(self, conn: psycopg.Connection[Any], key: WorkerKey) -> None:
        """The worker's failures in a row are over."""
        self._retry_at.pop(key, None)
        if self._failures.pop(key, None) is not None:
            workers.forget_retry(conn, key[1], key[0], _table(key))

    def _terminate(self, reasons: Mapping[WorkerKey, str]) -> None:
        """Stop the workers ``reasons`` names (SIGTERM, then SIGKILL after the
        stop timeout), one line each saying why."""
        keys = list(reasons)
        for key in keys:
            child = self.children.get(key)
            if child is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for key in keys:
            child = self.children.pop(key, None)
            if child is None:
                continue
            fields = log_fields(key)
            try:
                code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "killing %s (pid %d): still running %.0f s after SIGTERM",
                    describe(key),
                    child.process.pid,
                    self.stop_timeout,
                    extra=fields,
                )
                child.process.kill()
                code = child.process.wait()
            logger.info(
                "stopped %s (pid %d): %s",
                describe(key),
                child.process.pid,
                reasons[key],
                extra={**fields, "exit_status": code},
            )

    def _why_not(self, key: WorkerKey, wanted: set[WorkerKey], settings: str | None) -> str:
        """Why a running worker must stop ("" when it runs on)."""
        enabled = self._subscriptions.get(key[1])
        if enabled is None:
            return "subscription dropped"
        if not enabled:
            return "subscription disabled"
        if key not in wanted:
            return "its table needs no sync now" if key[0] == "sync" else "no longer needed"
        if settings != self._settings.get(key[1]):
            return "subscription altered"
        return ""

    def _announce(self) -> None:
        """The start line (first round), then a line per subscription added,
        enabled, disabled or dropped since the last round."""
        now = dict(self._subscriptions)
        before, self._announced = self._announced, now
        if before is None:
            logger.info(
                "run started: catalog database %s, %d subscription%s (%d enabled), %s",
                mask(self.dsn) if self.dsn else "from the PG* environment",
                len(now),
                "" if len(now) == 1 else "s",
                sum(now.values()),
                f"metrics at {self.metrics_url}" if self.metrics_url else "no metrics",
                extra={
                    "database": mask(self.dsn),
                    "subscriptions": len(now),
                    "metrics": self.metrics_url,
                },
            )
            return
        for name in sorted(now.keys() | before.keys()):
            was, enabled = before.get(name), now.get(name)
            if was == enabled:
                continue
            if enabled is None:
                what = "dropped"
            elif was is None:
                what = "added" + ("" if enabled else " (disabled)")
            else:
                what = "enabled" if enabled else "disabled"
            logger.info("subscription %s %s", name, what, extra={"subscription": name})

    def step(self, conn: psycopg.Connection[Any]) -> None:
        """One round: reap, stop the unwanted or outdated, start the missing."""
        self._reap(conn)
        wanted = self.wanted(conn)
        self._announce()
        for key in [k for k in self._failures if k not in wanted]:
            self._forget(conn, key)
        unwanted = {
            k: self._why_not(k, wanted, child.settings) for k, child in self.children.items()
        }
        unwanted = {k: why for k, why in unwanted.items() if why}
        if unwanted:
            self._terminate(unwanted)
        now = time.monotonic()
        for key in sorted(wanted):
            if key not in self.children and self._retry_at.get(key, 0.0) <= now:
                self._spawn(key)

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        failures = 0
        first = True
        try:
            while not self._stop:
                try:
                    if conn is None or conn.closed:
                        conn = connect.subscriber(self.dsn)
                        ensure_catalog(conn)
                        if first:
                            workers.forget_all_retries(conn)
                            first = False
                        conn.execute(f"LISTEN {WAKE_CHANNEL}")
                        if failures:
                            logger.info("catalog connection open again")
                    self.step(conn)
                    failures = 0
                    self._wait(self.poll_interval, conn)
                except (psycopg.Error, PgferryError) as exc:
                    if first and isinstance(exc, InterfaceError):
                        raise  # a malformed DSN: retrying changes nothing
                    # The subscriber restarts, fails over or refuses for a while:
                    # one line, and again after a pause (the workers fail meanwhile,
                    # and are started again as usual).
                    failures += 1
                    pause = backoff(failures, self.retry_interval)
                    text = exc.message if isinstance(exc, PgferryError) else str(exc)
                    logger.error(
                        "catalog connection failed: %s; retrying in %.1f s",
                        " ".join(text.split()),
                        pause,
                    )
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._wait(pause)
        finally:
            if self._stop:
                logger.info(
                    "run stopping%s: stopping %d worker%s",
                    f" ({self._stop_reason})" if self._stop_reason else "",
                    len(self.children),
                    "" if len(self.children) == 1 else "s",
                )
            self._terminate(dict.fromkeys(self.children, "run stopping"))
            if conn is not None:
                conn.close()
            if self._stop:
                logger.info("run stopped")

    def _wait(self, seconds: float, conn: psycopg.Connection[Any] | None = None) -> None:
        """Up to ``seconds``, until a stop is asked or, with ``conn``, the catalog
        notifies a change.

        Notifications that came during the last round are delivered first, so a
        change committed while the round read the catalog is not missed.
        """
        deadline = time.monotonic() + seconds
        while not self._stop:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # (Short waits: a stop asked by a signal handler is seen within 0.1 s.)
            if conn is None:
                time.sleep(min(0.1, remaining))
            elif list(conn.notifies(timeout=min(0.1, remaining), stop_after=1)):
                return


def _table(key: WorkerKey) -> tuple[str, str] | None:
    """The table of a sync worker's key, None for the other kinds."""
    return (key[2], key[3]) if key[0] == "sync" and len(key) == 4 else None
