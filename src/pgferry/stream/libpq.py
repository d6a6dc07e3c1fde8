"""The libpq psycopg loaded: its error message, and its functions for the C loops
of :mod:`pgferry._speedups`.

Contract: :func:`functions` returns the addresses of the libpq functions the C
loops call (:class:`Functions`), or None. They
are handed a ``PGconn`` that psycopg made, so they must belong to the very libpq
that made it: a ``PGconn`` of one libpq passed to another is memory corruption.
The addresses are given out only when exactly one libpq is mapped into the
process (``/proc/self/maps``) and it reports psycopg's libpq version; otherwise
(another OS, two libpqs, no C module) the callers use psycopg's bindings, their
Python twins.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
from collections.abc import Iterator
from typing import NamedTuple

import psycopg
from psycopg import pq

from pgferry._cmodule import SPEEDUPS

_LIBPQ_NAME = re.compile(r"^libpq[-.].*\.so")


class Functions(NamedTuple):
    """Addresses, in the order ``_speedups.exchange`` takes them."""

    get_copy_data: int
    put_copy_data: int
    freemem: int
    send_query: int
    get_result: int
    result_status: int
    put_copy_end: int
    cmd_tuples: int
    ntuples: int
    get_value: int
    get_is_null: int
    get_length: int
    result_error_field: int
    result_error_message: int
    error_message: int
    clear: int


#: The libpq function behind each field of :class:`Functions`.
_NAMES = (
    "PQgetCopyData",
    "PQputCopyData",
    "PQfreemem",
    "PQsendQuery",
    "PQgetResult",
    "PQresultStatus",
    "PQputCopyEnd",
    "PQcmdTuples",
    "PQntuples",
    "PQgetvalue",
    "PQgetisnull",
    "PQgetlength",
    "PQresultErrorField",
    "PQresultErrorMessage",
    "PQerrorMessage",
    "PQclear",
)


@functools.cache
def _find() -> Functions | None:
    try:
        with open("/proc/self/maps") as maps:
            paths = {
                fields[-1]
                for fields in (line.split() for line in maps)
                if len(fields) >= 6 and _LIBPQ_NAME.match(fields[-1].rsplit("/", 1)[-1])
            }
    except OSError:  # not Linux
        return None
    if len(paths) != 1:
        return None
    try:
        lib = ctypes.CDLL(paths.pop())  # the loaded library: dlopen returns its handle
        if lib.PQlibVersion() != pq.version():
            return None
        found = [getattr(lib, name) for name in _NAMES]
    except (OSError, AttributeError):
        return None
    addresses = [ctypes.cast(f, ctypes.c_void_p).value or 0 for f in found]
    if not all(addresses):
        return None
    return Functions(*addresses)


def functions() -> Functions | None:
    """psycopg's libpq functions for the C loops, or None: use the Python twins
    (also when pgferry runs without its C module)."""
    if SPEEDUPS is None:
        return None
    return _find()


def error_message(pgconn: pq.abc.PGconn, default: str = "") -> str:
    """libpq's last error message on the connection (``default`` if none)."""
    return pgconn.error_message.decode(errors="replace").strip() or default


@contextlib.contextmanager
def blocking(*pgconns: pq.abc.PGconn) -> Iterator[None]:
    """The connections in libpq's blocking mode (the C loops wait inside libpq),
    then back in the mode they were in."""
    modes = [pgconn.nonblocking for pgconn in pgconns]
    for pgconn in pgconns:
        pgconn.nonblocking = 0
    try:
        yield
    finally:
        for pgconn, mode in zip(pgconns, modes, strict=True):
            # (A connection that is gone cannot be set: its error is the one raised.)
            with contextlib.suppress(psycopg.OperationalError):
                pgconn.nonblocking = mode
