"""Opening connections: the subscriber, the publisher, and one error classifier.

Every connection pgferry opens goes through :func:`open_connection` (the
replication connection too: :meth:`pgferry.stream.ReplicationConnection.connect`):
the conninfo is parsed by libpq's rules (an empty one means the PG* variables),
``sslmode`` and every other key pass through untouched, ``application_name``
defaults to pgferry's, and a failure is one :class:`~pgferry.errors.PgferryError`
from :func:`connect_error` that names which side could not be reached, shows the
conninfo with its password masked, and says in a ``hint`` what to check (the
server down or the port wrong, an unknown host, the password or ``pg_hba.conf``,
a database that does not exist, a server that does not answer).

No connection attempt waits forever: ``connect_timeout`` is
:data:`CONNECT_TIMEOUT` (10 s) unless the conninfo or ``PGCONNECT_TIMEOUT`` sets
one, for every connection, replication ones included.

Worker sessions (:func:`session`) speak UTF-8 (``client_encoding``), as the
replication connection does: the publisher converts what it sends into UTF-8 and
the subscriber converts it into its database's encoding, so text arrives as the
same characters whatever the two databases' encodings are, and a character the
subscriber's encoding cannot hold is an error there ("... has no equivalent in
encoding ..."), not a mangled value. Python's side of pgferry works in UTF-8 too.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import psycopg
from psycopg.conninfo import make_conninfo

from pgferry import conninfo as ci
from pgferry.errors import ConnectionFailed, PgferryError, ReplicationNotPermitted

#: The encoding of every worker session.
CLIENT_ENCODING = "UTF8"

#: Seconds a connection attempt may take, unless the conninfo or
#: ``PGCONNECT_TIMEOUT`` says otherwise (libpq's own default is to wait forever).
CONNECT_TIMEOUT = 10

#: Which server a connection is for, as messages name it.
Side = Literal["subscriber", "publisher"]

_HINTS: dict[Side, str] = {
    "subscriber": "-d takes the subscriber database's conninfo (the catalog lives there)",
    "publisher": "check the subscription's or command's conninfo for the publisher",
}


def open_connection(
    dsn: str,
    *,
    side: Side,
    application_name: str = "pgferry",
    params: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
) -> psycopg.Connection[Any]:
    """An autocommit connection; ``params`` override the conninfo's keys,
    ``defaults`` apply where it sets none."""
    merged = {**(defaults or {}), **ci.parse(dsn), **(params or {})}
    merged.setdefault("application_name", application_name)
    if "connect_timeout" not in merged and not os.environ.get("PGCONNECT_TIMEOUT"):
        merged["connect_timeout"] = str(CONNECT_TIMEOUT)
    try:
        return psycopg.connect(make_conninfo(**merged), autocommit=True)
    except psycopg.Error as exc:
        replication = merged.get("replication") is not None
        raise connect_error(
            exc, dsn, side, replication=replication, timeout=merged.get("connect_timeout")
        ) from None


def session(
    dsn: str, *, side: Side = "subscriber", application_name: str = "pgferry"
) -> psycopg.Connection[Any]:
    """A worker's session (the subscriber, or the publisher for a copy): in UTF-8."""
    return open_connection(
        dsn,
        side=side,
        application_name=application_name,
        params={"client_encoding": CLIENT_ENCODING},
    )


def subscriber(dsn: str) -> psycopg.Connection[Any]:
    """A connection to the subscriber database (the catalog's), for commands."""
    return open_connection(dsn, side="subscriber")


def publisher(
    dsn: str, *, application_name: str = "pgferry", timeout: float | None = None
) -> psycopg.Connection[Any]:
    """A connection to the publisher database (not a replication one); ``timeout``:
    ``connect_timeout`` unless the conninfo sets one."""
    defaults = {} if timeout is None else {"connect_timeout": str(int(timeout))}
    return open_connection(
        dsn, side="publisher", application_name=application_name, defaults=defaults
    )


def connect_error(
    exc: psycopg.Error,
    dsn: str,
    side: Side,
    *,
    replication: bool = False,
    timeout: str | None = None,
) -> PgferryError:
    """What a failed connection attempt means, in one line with a hint saying
    what to check (``timeout``: the attempt's ``connect_timeout``).

    A connection refused during authentication carries no SQLSTATE through libpq
    (it reports the server's FATAL message as text), so the reason is read from
    that text, here and nowhere else.
    """
    text = " ".join(str(exc).split())
    masked = ci.mask(dsn) or "PG* environment"
    lowered = text.lower()
    if replication and (
        "replication role" in lowered
        or "permission denied to start wal sender" in lowered
        or exc.sqlstate == "42501"
    ):
        return ReplicationNotPermitted(
            f"cannot open a replication connection ({masked}): {text}",
            hint="the role needs the REPLICATION attribute (ALTER ROLE name REPLICATION)",
        )
    if replication and "pg_hba.conf" in lowered and "replication" in lowered:
        return ReplicationNotPermitted(
            f"cannot open a replication connection ({masked}): {text}",
            hint="add a 'replication' line for this role/host to pg_hba.conf on the publisher",
        )
    return ConnectionFailed(
        f"cannot connect to the {side} ({masked}): {text}",
        hint=_reason_hint(exc.sqlstate, lowered, side, timeout),
    )


def _reason_hint(sqlstate: str | None, lowered: str, side: Side, timeout: str | None) -> str:
    """What to check for a failed connection, from its SQLSTATE or libpq's text."""
    where = f"on the {side}"
    if sqlstate == "28P01" or "password" in lowered:
        return "check the password (password= in the conninfo, PGPASSWORD or ~/.pgpass)"
    if "pg_hba.conf" in lowered:
        return f"add a line for this role, database and host to pg_hba.conf {where}"
    if sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
        return f"check dbname= in the conninfo: the database must exist {where}"
    if sqlstate == "28000" or ("role" in lowered and "does not exist" in lowered):
        return f"check user= in the conninfo: the role must exist {where}"
    if "resolve host" in lowered or "translate host name" in lowered:
        return "check the host name (host= in the conninfo): it is not known to DNS"
    if "timeout expired" in lowered:
        seconds = timeout or os.environ.get("PGCONNECT_TIMEOUT") or CONNECT_TIMEOUT
        return (
            f"the server did not answer within {seconds} s: check host= and"
            " port= (a firewall, a stopped or overloaded server); connect_timeout= sets the wait"
        )
    if "connection refused" in lowered or "no such file or directory" in lowered:
        return (
            "is the server running? check host= and port= in the conninfo, and the server's"
            " listen_addresses and port"
        )
    if sqlstate == "57P03" or "starting up" in lowered or "shutting down" in lowered:
        return "the server is starting up or shutting down: try again in a moment"
    return _HINTS[side]
