"""Running sans-I/O libpq generators: the only place that blocks on a socket.

The command logic in :mod:`pgferry.stream.connection` is written as generators
that drive a non-blocking libpq connection and ``yield`` what they wait for -
:data:`WAIT_READ` or :data:`WAIT_WRITE` - without touching the socket themselves
(the approach of psycopg's ``generators``/``waiting`` modules). :func:`wait` runs
such a generator to completion with ``select``.

A worker process calls :func:`wake_on_signals` once: a signal it handles (its
stop request) then also makes a replication stream's wait for data return at
once (:func:`interrupt_fd`, :func:`take_interrupt`) instead of at the wait's
end, since Python resumes a ``select`` that a signal interrupted.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Generator
from enum import Enum
from typing import TypeVar

import psycopg
from psycopg import pq

from pgferry.errors import ConnectionFailed, InternalError
from pgferry.stream.libpq import error_message

T = TypeVar("T")


_interrupt: int | None = None


def wake_on_signals() -> None:
    """From now on, each signal with a Python handler writes a byte to a pipe
    whose read end :func:`interrupt_fd` gives (main thread only)."""
    global _interrupt
    if _interrupt is not None:
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    _interrupt = read


def interrupt_fd() -> int | None:
    """The pipe a handled signal writes to (None: :func:`wake_on_signals` not called)."""
    return _interrupt


def take_interrupt() -> None:
    """Empty the pipe."""
    if _interrupt is None:
        return
    try:
        while os.read(_interrupt, 512):
            pass
    except BlockingIOError:
        pass


class Wait(Enum):
    READ = selectors.EVENT_READ
    WRITE = selectors.EVENT_WRITE


WAIT_READ = Wait.READ
WAIT_WRITE = Wait.WRITE

PQGen = Generator[Wait, None, T]


def flush_gen(pgconn: pq.abc.PGconn) -> PQGen[None]:
    """Send everything libpq has buffered."""
    while True:
        try:
            pending = pgconn.flush()
        except psycopg.OperationalError:
            raise ConnectionFailed(error_message(pgconn, "sending to the server failed")) from None
        if pending == 0:
            return
        yield WAIT_WRITE


def results_gen(pgconn: pq.abc.PGconn) -> PQGen[list[pq.abc.PGresult]]:
    """Collect the results of a sent query; stops early on entering COPY mode."""
    results: list[pq.abc.PGresult] = []
    while True:
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            raise ConnectionFailed(error_message(pgconn, "connection lost")) from None
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)
            if result.status in (
                pq.ExecStatus.COPY_BOTH,
                pq.ExecStatus.COPY_OUT,
                pq.ExecStatus.COPY_IN,
            ):
                return results
        yield WAIT_READ


def execute_gen(pgconn: pq.abc.PGconn, command: str) -> PQGen[list[pq.abc.PGresult]]:
    """Send ``command`` with the simple query protocol (walsenders accept only that)."""
    pgconn.send_query(command.encode())
    yield from flush_gen(pgconn)
    return (yield from results_gen(pgconn))


def wait(gen: PQGen[T], fileno: int, timeout: float | None = None) -> T:
    """Run ``gen`` to completion, blocking on ``fileno`` as it asks.

    ``timeout`` bounds the whole run; past it :class:`TimeoutError` is raised.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        try:
            want = next(gen)
            while True:
                sel.register(fileno, want.value)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = sel.select(remaining)
                sel.unregister(fileno)
                if not ready and deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("timed out waiting for the server")
                want = gen.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
    raise InternalError("generator ended without a result")
