"""Connection strings: masking passwords and preparing replication connections.

A conninfo (``key=value ...``) or URI (``postgresql://...``) may carry a password.
Anything that goes into a message, a log line or the terminal passes through
:func:`mask` first. Parsing is libpq's own (via psycopg), so every form libpq
accepts works, including an empty string meaning "the PG* environment variables",
as psql does; ``sslmode`` and every other libpq key pass through untouched.
"""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgferry.errors import InterfaceError

_SECRET_KEYS = ("password",)
_MASK = "********"
# Fallback for strings libpq cannot parse: hide anything that looks like a password.
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def mask(conninfo: str) -> str:
    """The conninfo with any password replaced by asterisks, for display."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        text = _PASSWORD_KV.sub(lambda m: m.group(1) + _MASK, conninfo)
        return _PASSWORD_URI.sub(lambda m: m.group(1) + _MASK + m.group(3), text)
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = _MASK
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def parse(conninfo: str) -> dict[str, str]:
    """Parse a conninfo or URI; a malformed one is an :class:`InterfaceError`."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:
        raise InterfaceError(
            f"invalid connection string {mask(conninfo)!r}: "
            + _strip_password(" ".join(str(exc).split())),
            hint="use libpq key=value pairs or a postgresql:// URI",
        ) from None
    return {k: str(v) for k, v in params.items() if v is not None}


def with_params(conninfo: str, **params: str) -> str:
    """The conninfo with ``params`` added or replaced."""
    merged = parse(conninfo)
    merged.update(params)
    return make_conninfo(**merged)


def _strip_password(text: str) -> str:
    return _PASSWORD_KV.sub(lambda m: m.group(1) + _MASK, text)
