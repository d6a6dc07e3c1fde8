"""libpq pipeline mode for a batch's row-by-row statements.

Where the conflict policies make a statement's result matter only afterwards
(native's policies: the result decides what is logged, or that the batch fails,
never what to do next), the applier queues the statements of a batch without
waiting for each result. :class:`Pipeline` holds the queue: each statement's
cursor with what to do with its result (``seen``), run in order by
:meth:`Pipeline.collect`, at the latest every :data:`DEPTH` statements.

Closing it strictly raises what the last results raise; :meth:`Pipeline.close`
discards them (after a failure, when everything is rolled back anyway).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg

#: Statements in flight before their results are collected.
DEPTH = 2000

Seen = Callable[[psycopg.Cursor[Any]], None]


class Pipeline:
    def __init__(self) -> None:
        self._pipe: psycopg.Pipeline | None = None
        self._stack: contextlib.ExitStack | None = None
        self._deferred: list[tuple[psycopg.Cursor[Any], Seen]] = []

    @property
    def is_open(self) -> bool:
        return self._pipe is not None

    def open(self, conn: psycopg.Connection[Any]) -> None:
        """Enter pipeline mode on ``conn`` (in a transaction already begun)."""
        self._stack = contextlib.ExitStack()
        self._pipe = self._stack.enter_context(conn.pipeline())

    def defer(self, cur: psycopg.Cursor[Any], seen: Seen) -> None:
        """``seen(cur)`` once the statement's result is in."""
        self._deferred.append((cur, seen))
        if len(self._deferred) >= DEPTH:
            self.collect()

    def collect(self) -> None:
        """Wait for the results in flight and see to them, in order."""
        if self._pipe is None:
            return
        self._pipe.sync()
        deferred, self._deferred = self._deferred, []
        for cur, seen in deferred:
            seen(cur)

    def close_strict(self) -> None:
        """Leave pipeline mode, raising what its last results raise."""
        stack, self._pipe, self._stack = self._stack, None, None
        if stack is not None:
            stack.close()

    def close(self) -> None:
        """Leave pipeline mode, whatever its results."""
        stack, self._pipe, self._stack = self._stack, None, None
        self._deferred = []
        if stack is not None:
            with contextlib.suppress(psycopg.Error):
                stack.close()
