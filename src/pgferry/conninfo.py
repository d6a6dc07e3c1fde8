"""Connection strings: masking passwords and preparing replication connections.

A conninfo (``key=value ...``) or URI (``postgresql://...``) may carry a password.
Anything that goes into a message, a log line or the terminal passes through
:func:`mask` first. Parsing is libpq's own (via psycopg), so every form libpq
accepts works, including an empty string meaning "the PG* environment variables",
as psql does; ``sslmode`` and every other libpq key pass through untouched.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgferry.errors import InterfaceError

_SECRET_KEYS = ("password",)
_MASK = "********"
# For strings libpq cannot parse: anything that looks like a password, a quoted
# one possibly unterminated, or the password part of a URI's user:password@.
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"(://[^:/@\s]*:)([^@/\s]*)(@|/|$)")


def _secrets(text: str) -> list[str]:
    """Password candidates in an unparsable conninfo, longest first, in the raw,
    unquoted and percent-decoded forms libpq might echo in its error message."""
    found: set[str] = set()
    for m in _PASSWORD_KV.finditer(text):
        found.update((m.group(2), m.group(2).strip("'")))
    for m in _PASSWORD_URI.finditer(text):
        found.add(m.group(2))
    found.update([unquote(f) for f in found])
    return sorted((f for f in found if f), key=len, reverse=True)


def _hide(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def mask(conninfo: str) -> str:
    """The conninfo with any password replaced by asterisks, for display."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return _hide(conninfo, _secrets(conninfo))
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = _MASK
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def parse(conninfo: str) -> dict[str, str]:
    """Parse a conninfo or URI; a malformed one is an :class:`InterfaceError`
    whose message shows neither the password nor any part of it libpq echoed."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:
        secrets = _secrets(conninfo)
        reason = _hide(" ".join(str(exc).split()), secrets)
        raise InterfaceError(
            f"invalid connection string {_hide(conninfo, secrets)!r}: {reason}",
            hint="use libpq key=value pairs or a postgresql:// URI",
        ) from None
    return {k: str(v) for k, v in params.items() if v is not None}


def with_params(conninfo: str, **params: str) -> str:
    """The conninfo with ``params`` added or replaced."""
    merged = parse(conninfo)
    merged.update(params)
    return make_conninfo(**merged)
