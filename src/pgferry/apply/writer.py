"""The writer: a batch's staged statements, and maybe its commit, in a thread.

While the applier stages the next rows in memory, a :class:`Writer` runs the
statements already staged (as one query inside libpq, without the GIL: see
:func:`~.staging.run_together`) and the batch's commit on the connection.
:class:`WriterQueue` keeps the writers in flight, oldest first, at most
:data:`DEPTH`; the applier waits for them before it uses the connection itself
and turns what a writer raised into what running its work in line would have
raised.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from pgferry.assembler import Transaction
from pgferry.protocol.lsn import Lsn

from .staging import Staged, run_together

#: Batches handed to writer threads and not yet waited for.
DEPTH = 2


class Commit(NamedTuple):
    """A batch's COMMIT (with the origin's progress) and what it commits."""

    statement: sql.Composed
    end_lsn: Lsn
    #: The remote transactions it commits (applied, or consumed by a skip).
    batched: int
    #: Of those, the ones applied, and their row changes.
    transactions: int
    rows: int


class Writer:
    """Runs a batch's staged statements, and maybe its commit, on the connection
    in a thread of its own, while the applier goes on staging the next rows in
    memory (the statements go as one query inside libpq, without the GIL: see
    :func:`~.staging.run_together`; psycopg waits for the commit without it).
    The applier waits for it before it uses the connection again
    (:attr:`~.applier.Applier.conn`), and turns what it raised into what running them in
    line would have raised.

    Up to :data:`DEPTH` writers are in flight, each starting when the one
    before it (``after``) is done, so the applier does not wait for a batch's
    commit while it has the next batch staged: the server works on one batch
    while the applier decodes the one after. A writer whose predecessor failed
    does nothing (:attr:`skipped`): all of it is rolled back with the failure."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        tx: Transaction,
        begin: bool,
        staged: list[Staged],
        commit: Commit | None,
        after: Writer | None = None,
    ) -> None:
        self.tx = tx
        self.commit = commit
        self.committing = False
        self.skipped = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(conn, begin, staged, after),
            name="pgferry-writer",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self,
        conn: psycopg.Connection[Any],
        begin: bool,
        staged: list[Staged],
        after: Writer | None,
    ) -> None:
        if after is not None:
            after.join()
            if after.error is not None or after.skipped:
                self.skipped = True
                return
        try:
            if begin or staged:
                run_together(conn, staged, begin=begin)
            if self.commit is not None:
                self.committing = True
                conn.execute(self.commit.statement)
        except BaseException as exc:  # handed to the applier's thread
            self.error = exc

    def join(self) -> None:
        self._thread.join()


class WriterQueue:
    """The writers in flight, oldest first."""

    def __init__(self) -> None:
        self._writers: deque[Writer] = deque()

    def __bool__(self) -> bool:
        return bool(self._writers)

    @property
    def full(self) -> bool:
        return len(self._writers) >= DEPTH

    def submit(
        self,
        conn: psycopg.Connection[Any],
        tx: Transaction,
        begin: bool,
        staged: list[Staged],
        commit: Commit | None,
    ) -> None:
        """A new writer, starting when the last one in flight is done."""
        after = self._writers[-1] if self._writers else None
        self._writers.append(Writer(conn, tx, begin, staged, commit, after))

    def oldest(self) -> Writer:
        """The oldest writer, done (joined) and out of the queue."""
        writer = self._writers.popleft()
        writer.join()
        return writer

    def join_all(self) -> None:
        """Wait for every writer, whatever it raised."""
        while self._writers:
            self._writers.popleft().join()
