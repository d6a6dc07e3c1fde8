"""SQL text: quoting identifiers and literals, and names fit for one-line messages.

The one home for writing names and values into SQL (or replication commands)
and into messages:

* :func:`quote_ident` / :func:`quote_literal` always quote (for commands built as
  text; the replication grammar takes the same quoting as SQL); a NUL byte, which
  no identifier or string can hold, is an :class:`~pgferry.errors.InterfaceError`;
* :func:`bare_or_quoted` writes an identifier bare when it reads back the same
  (lower case ASCII letters, digits and underscores), quoted otherwise, for SQL
  meant to be read (a publication's table spec);
* :func:`ident` and :func:`qualified` are :func:`bare_or_quoted` for messages:
  control characters escaped by :func:`printable`, so a message stays one line.

Statements sent with psycopg compose their identifiers with ``psycopg.sql``.
"""

from __future__ import annotations

import re

from pgferry.errors import InterfaceError

_BARE = re.compile(r"[a-z_][a-z0-9_]*")


def quote_ident(name: str) -> str:
    """``name`` double-quoted, inner double quotes doubled."""
    if "\0" in name:
        raise InterfaceError(f"identifier contains a NUL byte: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a standard string literal."""
    if "\0" in value:
        raise InterfaceError(f"string contains a NUL byte: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def bare_or_quoted(name: str) -> str:
    """``name`` as an identifier: bare when that reads back the same, else quoted."""
    return name if _BARE.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a message stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def ident(name: str) -> str:
    """An identifier for a message: as SQL would need it written, on one line."""
    return printable(bare_or_quoted(name))


def qualified(schema: str, name: str) -> str:
    """``schema.name`` for a message."""
    return f"{ident(schema)}.{ident(name)}"
