"""Opening ordinary (not replication) connections for the workers.

Every session that carries replicated values speaks UTF-8 (``client_encoding``),
as the replication connection does (see :mod:`pgferry.stream.connection`): the
publisher converts what it sends into UTF-8 and the subscriber converts it into
its database's encoding, so text arrives as the same characters whatever the two
databases' encodings are, and a character the subscriber's encoding cannot hold
is an error there ("... has no equivalent in encoding ..."), as with native's
subscriber, not a mangled value. Python's side of pgferry works in UTF-8 too.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgferry import conninfo as ci

#: The encoding of every worker session.
CLIENT_ENCODING = "UTF8"


def session(dsn: str, *, application_name: str = "pgferry") -> psycopg.Connection[Any]:
    """An autocommit connection in UTF-8; ``application_name`` unless the conninfo
    names one."""
    params = ci.parse(dsn)
    params.setdefault("application_name", application_name)
    params["client_encoding"] = CLIENT_ENCODING
    return psycopg.connect(make_conninfo(**params), autocommit=True)
