"""Table specs as written in ``CREATE PUBLICATION``: a strict, pure parser.

Grammar (whitespace allowed between tokens)::

    spec       := name [ "(" column { "," column } ")" ] [ WHERE "(" expression ")" ]
    name       := identifier [ "." identifier ]
    identifier := unquoted | '"' { any character but '"' | '""' } '"'

* An unquoted identifier starts with a letter, ``_`` or a non-ASCII character and
  goes on with those, digits and ``$``; it is folded to lower case (ASCII letters
  only, as PostgreSQL does in UTF-8). A quoted one is taken as is, ``""`` standing
  for one ``"``. Empty identifiers, NUL characters and identifiers longer than
  63 bytes in UTF-8 (PostgreSQL would silently truncate them) are errors.
* Without a schema (``table``) the server's ``search_path`` decides.
* A column list is never empty and never names a column twice.
* ``WHERE`` (any case) must be followed by a parenthesised expression. The text
  between the outer parentheses is kept verbatim in :attr:`TableSpec.row_filter`
  and later sent as ``WHERE (<text>)``. It must be balanced: parentheses are
  counted outside string literals (``'...'``, ``E'...'`` with backslash escapes,
  ``$tag$...$tag$``) and quoted identifiers, so the expression can never close
  the ``WHERE (...)`` it is put in. Comments and ``;`` are refused there: neither
  has a place in an expression, and a ``--`` comment would swallow the closing
  parenthesis.
* ``ONLY`` and ``*`` are not supported: the table is published with its
  descendants, PostgreSQL's default.

Errors are :class:`TableSpecError` (an :class:`~pgferry.errors.InterfaceError`)
naming the spec and the 1-based character position of the problem.

:func:`~pgferry.sqltext.bare_or_quoted` quotes an identifier when needed; ``str(spec)`` writes a
spec back in this syntax, so ``parse_table_spec(str(spec)) == spec``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgferry.errors import InterfaceError
from pgferry.sqltext import bare_or_quoted

#: PostgreSQL's NAMEDATALEN - 1: longer identifiers are truncated by the server.
MAX_IDENTIFIER_BYTES = 63

_WHITESPACE = " \t\n\r\f\v"
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


class TableSpecError(InterfaceError):
    """A malformed table spec; ``offset`` is the 0-based position of the problem."""

    def __init__(self, spec: str, offset: int, reason: str) -> None:
        super().__init__(
            f"invalid table spec {spec!r}: {reason} at position {offset + 1}",
            hint="write [schema.]table [(column, ...)] [WHERE (expression)]; "
            'quote names with "..."',
        )
        self.spec = spec
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class TableSpec:
    """One table of a publication: its name, optional column list and row filter."""

    schema: str | None
    name: str
    columns: tuple[str, ...] | None = None
    row_filter: str | None = None

    @property
    def qualified(self) -> str:
        """``schema.table`` (or ``table``), quoted where needed."""
        if self.schema is None:
            return bare_or_quoted(self.name)
        return f"{bare_or_quoted(self.schema)}.{bare_or_quoted(self.name)}"

    def __str__(self) -> str:
        text = self.qualified
        if self.columns is not None:
            text += " (" + ", ".join(bare_or_quoted(c) for c in self.columns) + ")"
        if self.row_filter is not None:
            text += f" WHERE ({self.row_filter})"
        return text


def _is_ident_start(ch: str) -> bool:
    return not ch.isascii() or ch.isalpha() or ch == "_"


def _is_ident_char(ch: str) -> bool:
    return _is_ident_start(ch) or (ch.isascii() and ch.isdigit()) or ch == "$"


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        # Bytes that were not UTF-8 on the command line arrive as lone surrogates;
        # they could never be sent to the server.
        bad = _SURROGATE.search(text)
        if bad is not None:
            raise self.fail("text that is not valid UTF-8", bad.start())

    # -- helpers -------------------------------------------------------------

    def fail(self, reason: str, at: int | None = None) -> TableSpecError:
        return TableSpecError(self.text, self.pos if at is None else at, reason)

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "end of spec"
        return repr(self.text[self.pos])

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str, what: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {what}, found {self.found()}")
        self.pos += 1

    # -- identifiers ---------------------------------------------------------

    def identifier(self, what: str) -> tuple[str, bool]:
        """The next identifier and whether it was quoted."""
        start = self.pos
        ch = self.peek()
        if ch == '"':
            self.pos += 1
            parts: list[str] = []
            while True:
                end = self.text.find('"', self.pos)
                if end < 0:
                    raise self.fail("unterminated quoted identifier", start)
                parts.append(self.text[self.pos : end])
                self.pos = end + 1
                if self.peek() == '"':  # "" stands for one "
                    parts.append('"')
                    self.pos += 1
                    continue
                break
            name = "".join(parts)
            if not name:
                raise self.fail("empty quoted identifier", start)
            quoted = True
        elif ch and _is_ident_start(ch):
            while self.pos < len(self.text) and _is_ident_char(self.text[self.pos]):
                self.pos += 1
            raw = self.text[start : self.pos]
            # PostgreSQL folds only ASCII letters in multibyte encodings.
            name = "".join(c.lower() if c.isascii() else c for c in raw)
            quoted = False
        else:
            raise self.fail(f"expected {what}, found {self.found()}")
        if "\0" in name:
            raise self.fail("NUL character in identifier", start)
        if len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise self.fail(
                f"identifier longer than {MAX_IDENTIFIER_BYTES} bytes "
                "(PostgreSQL would truncate it)",
                start,
            )
        return name, quoted

    def keyword_ahead(self, word: str) -> bool:
        """An unquoted ``word`` (any case) starts at the current position."""
        end = self.pos + len(word)
        return self.text[self.pos : end].lower() == word and (
            end >= len(self.text) or not _is_ident_char(self.text[end])
        )

    # -- the spec --------------------------------------------------------------

    def spec(self) -> TableSpec:
        self.skip_ws()
        if self.keyword_ahead("where"):
            raise self.fail("expected a table name, found WHERE")
        start = self.pos
        first, quoted = self.identifier("a table name")
        name_end = self.pos
        self.skip_ws()
        if (
            first == "only"
            and not quoted
            and self.pos > name_end
            and (self.peek() == '"' or _is_ident_start(self.peek()))
            and not self.keyword_ahead("where")
        ):
            raise self.fail("ONLY is not supported (descendant tables are always published)", start)
        schema: str | None = None
        name = first
        if self.peek() == ".":
            self.pos += 1
            self.skip_ws()
            schema, name = first, self.identifier("a table name after '.'")[0]
            self.skip_ws()
        columns: tuple[str, ...] | None = None
        if self.peek() == "(":
            columns = self.column_list()
            self.skip_ws()
        row_filter: str | None = None
        if self.keyword_ahead("where"):
            self.pos += len("where")
            self.skip_ws()
            row_filter = self.row_filter()
            self.skip_ws()
        if not self.at_end():
            wanted = "end of spec" if row_filter is not None else "'(', WHERE or end of spec"
            if columns is not None and row_filter is None:
                wanted = "WHERE or end of spec"
            raise self.fail(f"expected {wanted}, found {self.found()}")
        return TableSpec(schema, name, columns, row_filter)

    def column_list(self) -> tuple[str, ...]:
        self.expect("(", "'('")
        self.skip_ws()
        if self.peek() == ")":
            raise self.fail("empty column list")
        columns: list[str] = []
        while True:
            start = self.pos
            column, _ = self.identifier("a column name")
            if column in columns:
                raise self.fail(f"column {bare_or_quoted(column)} listed twice", start)
            columns.append(column)
            self.skip_ws()
            if self.peek() == ",":
                self.pos += 1
                self.skip_ws()
                continue
            self.expect(")", "',' or ')'")
            return tuple(columns)

    def row_filter(self) -> str:
        """The text between the parentheses after WHERE, checked for balance."""
        open_at = self.pos
        self.expect("(", "'(' after WHERE")
        start = self.pos
        depth = 1
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    body = text[start : self.pos]
                    self.pos += 1
                    if not body.strip(_WHITESPACE):
                        raise self.fail("empty row filter", open_at)
                    return body
            elif ch == "'":
                self.string_literal(escapes=self.escape_string_prefix())
                continue
            elif ch == '"':
                self.identifier("a quoted identifier")
                continue
            elif ch == "$" and self.dollar_quote():
                continue
            elif ch == ";":
                raise self.fail("';' is not allowed in a row filter")
            elif text.startswith("--", self.pos) or text.startswith("/*", self.pos):
                raise self.fail("comments are not allowed in a row filter")
            elif _is_ident_char(ch):
                # Skip a whole word so a '$' inside it is not taken for a quote.
                while self.pos < len(text) and _is_ident_char(text[self.pos]):
                    self.pos += 1
                continue
            self.pos += 1
        raise self.fail("unbalanced parentheses: missing ')'", open_at)

    def escape_string_prefix(self) -> bool:
        """The quote at the current position opens an E'...' string."""
        # A lone E (not the end of a longer word) right before the quote.
        p = self.pos
        return (
            p >= 1 and self.text[p - 1] in "eE" and (p < 2 or not _is_ident_char(self.text[p - 2]))
        )

    def string_literal(self, *, escapes: bool) -> None:
        """Skip '...' ('' inside; also backslash escapes in E'...')."""
        start = self.pos
        self.pos += 1
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if escapes and ch == "\\":
                self.pos += 2
                continue
            if ch == "'":
                if text.startswith("''", self.pos):
                    self.pos += 2
                    continue
                self.pos += 1
                return
            self.pos += 1
        raise self.fail("unterminated string literal", start)

    def dollar_quote(self) -> bool:
        """Skip $tag$...$tag$ if one starts here (else it is e.g. a parameter)."""
        m = _DOLLAR_TAG.match(self.text, self.pos)
        if m is None:
            return False
        tag = m.group(0)
        end = self.text.find(tag, m.end())
        if end < 0:
            raise self.fail("unterminated dollar-quoted string", self.pos)
        self.pos = end + len(tag)
        return True


def parse_table_spec(text: str) -> TableSpec:
    """Parse ``[schema.]table [(col, ...)] [WHERE (expr)]``; see the module docstring."""
    return _Parser(text).spec()


def parse_table_name(text: str) -> TableSpec:
    """Parse ``[schema.]table`` alone (no column list, no row filter)."""
    spec = parse_table_spec(text)
    if spec.columns is not None or spec.row_filter is not None:
        at = text.find("(")
        raise TableSpecError(text, max(at, 0), "a table name only is expected here")
    return spec


def parse_identifier(text: str) -> str:
    """Parse one identifier (a schema name, say): bare and folded, or quoted."""
    parser = _Parser(text)
    parser.skip_ws()
    name, _ = parser.identifier("a name")
    parser.skip_ws()
    if not parser.at_end():
        raise parser.fail(f"expected end of name, found {parser.found()}")
    return name


def strip_outer_parens(expression: str) -> str:
    """``(a > 1)`` -> ``a > 1`` when one pair of parentheses encloses it all
    (as in PostgreSQL's deparsed row filters); anything else unchanged."""
    inner = expression.strip(_WHITESPACE)
    if not (inner.startswith("(") and inner.endswith(")")):
        return expression
    parser = _Parser("x WHERE " + inner)
    try:
        spec = parser.spec()
    except TableSpecError:
        return expression
    return spec.row_filter if spec.row_filter is not None else expression
