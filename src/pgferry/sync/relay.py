"""Relaying one COPY: the publisher's ``COPY ... TO STDOUT`` into the subscriber's
``COPY ... FROM STDIN``.

Contract: :func:`relay` runs ``source`` on ``remote`` and ``target`` on ``local``,
passes every byte of the one to the other unchanged, and returns the number of rows
the target stored (its command tag). If either side fails, the other is ended (the
target's COPY aborted, the source's cancelled) and the failing side's
:class:`psycopg.Error` is raised, the source's when both fail. Either way both
connections are left idle in their transactions; committing or rolling back is the
caller's.

Why not psycopg's ``Copy``: it hands over one row per call, and for a 2M-row table
that Python loop costs about a second of the copy's three (``docs/benchmarks.md``).
Here libpq is driven directly: both connections are put in blocking mode for the
COPY (results are still awaited in ``select``, which releases the GIL, as libpq's
own blocking waits called through psycopg do not), and the rows go through
:func:`pgferry._speedups.relay_copy`, which loops ``PQgetCopyData`` -> 64 kB
chunk -> ``PQputCopyData`` in C with the GIL released.
It must call the very libpq that made the connections: see
:mod:`pgferry.stream.libpq`; where that cannot be told, and without the C module,
:func:`_py_relay` does the same with psycopg's bindings.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg import errors, pq, sql

from pgferry._cmodule import SPEEDUPS
from pgferry.stream import libpq

CHUNK = 65536  # as RELAY_CHUNK in _speedups.c

#: Return codes of the relay loops (besides a byte count >= 0).
READ_FAILED = -2
WRITE_FAILED = -3


def c_relay_available() -> bool:
    """Whether :func:`relay` moves the rows in C."""
    return libpq.functions() is not None


def _py_relay(src: pq.abc.PGconn, dst: pq.abc.PGconn) -> int:
    """Twin of ``_speedups.relay_copy``: the rows of ``src``'s COPY OUT into
    ``dst``'s COPY IN, in chunks; the bytes relayed or a failure code."""
    chunk = bytearray()
    total = 0
    while True:
        try:
            n, row = src.get_copy_data(1)
            if n == 0:
                _wait_readable(src)
                continue
        except psycopg.OperationalError:
            return READ_FAILED
        if n > 0:
            chunk += row
            total += n
        if chunk and (n < 0 or len(chunk) >= CHUNK):
            try:
                dst.put_copy_data(chunk)
            except psycopg.OperationalError:
                return WRITE_FAILED
            chunk.clear()
        if n < 0:
            return total


def _wait_readable(pgconn: pq.abc.PGconn) -> None:
    # select() waits without the GIL; libpq's own blocking waits would hold it.
    select.select([pgconn.socket], [], [])
    pgconn.consume_input()


def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The next result, waiting for it."""
    while pgconn.is_busy():
        _wait_readable(pgconn)
    return pgconn.get_result()


def _results(conn: psycopg.Connection[Any]) -> list[pq.abc.PGresult]:
    """Every pending result of the connection's current query."""
    results = []
    while (res := _result(conn.pgconn)) is not None:
        results.append(res)
        if res.status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT):
            break  # still copying: libpq would hand this result out forever
    return results


def _error(conn: psycopg.Connection[Any], results: list[pq.abc.PGresult]) -> psycopg.Error | None:
    for res in results:
        if res.status == pq.ExecStatus.FATAL_ERROR:
            return errors.error_from_result(res, encoding=conn.info.encoding)
    return None


def _start(conn: psycopg.Connection[Any], query: sql.Composable, status: pq.ExecStatus) -> None:
    conn.pgconn.send_query(query.as_bytes(conn))
    res = _result(conn.pgconn)
    if res is not None and res.status == status:
        return
    results = [res, *_results(conn)] if res is not None else []
    raise _error(conn, results) or psycopg.OperationalError(
        f"COPY did not start: {libpq.error_message(conn.pgconn)}"
    )


def relay(
    remote: psycopg.Connection[Any],
    local: psycopg.Connection[Any],
    source: sql.Composable,
    target: sql.Composable,
    *,
    use_c: bool = True,
) -> int:
    """Copy the rows of ``source`` into ``target``; the rows stored (see the module)."""
    src, dst = remote.pgconn, local.pgconn
    with libpq.blocking(src, dst):
        _start(local, target, pq.ExecStatus.COPY_IN)
        try:
            _start(remote, source, pq.ExecStatus.COPY_OUT)
        except psycopg.Error:
            dst.put_copy_end(b"the source of the copy failed")
            _results(local)
            raise
        functions = libpq.functions() if use_c else None
        # pgconn_ptr: the PGconn's address, not part of psycopg's pq.abc
        pointers = getattr(src, "pgconn_ptr", None), getattr(dst, "pgconn_ptr", None)
        if functions is not None and SPEEDUPS is not None and all(pointers):
            outcome = SPEEDUPS.relay_copy(
                functions.get_copy_data, functions.put_copy_data, functions.freemem, *pointers
            )
        else:
            outcome = _py_relay(src, dst)
        if outcome == WRITE_FAILED:
            # The target is gone or failed: stop the source rather than read it
            # all (its error is then our cancel's, not worth reporting).
            remote.cancel_safe()
            try:
                while (n := src.get_copy_data(1)[0]) >= 0:
                    if n == 0:
                        _wait_readable(src)
            except psycopg.OperationalError:
                pass
            _results(remote)
            raise _error(local, _results(local)) or psycopg.OperationalError(
                f"writing the copy failed: {libpq.error_message(dst)}"
            )
        source_error = _error(remote, _results(remote))
        if source_error is not None or outcome == READ_FAILED:
            if dst.put_copy_end(b"the source of the copy failed") == 1:
                _results(local)
            raise source_error or psycopg.OperationalError(
                f"reading the copy failed: {libpq.error_message(src)}"
            )
        dst.put_copy_end(None)
        results = _results(local)
        target_error = _error(local, results)
        if target_error is not None:
            raise target_error
        return sum(max(res.command_tuples or 0, 0) for res in results)
