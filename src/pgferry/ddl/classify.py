"""What a captured DDL statement is, and whether replaying it gives the same data.

Pure code, no I/O. :class:`DdlCommand` is a queue row (see :mod:`.capture`);
:func:`unsafe` says why replaying it on the subscriber would not give the data
the publisher has (None: it would), which the subscription's ``ddl_unsafe``
policy then decides (stop, or skip the statement):

* ``CREATE TABLE AS`` / ``SELECT INTO``: the new table's rows would be computed
  from the subscriber's data;
* a statement that is not itself DDL (``DO``, ``CALL``, ``SELECT f()``...): the
  whole text is all the queue has, and replaying it would repeat its other
  effects, which reach the subscriber as row changes already;
* a query string of several statements (a migration file sent whole): the queue
  has one row per query string, at its first command's place and with that
  command's objects only, so the later statements' objects (a table outside the
  subscription, which a table of the same name on the subscriber would pay for)
  cannot be told apart. Transaction control around one statement (``BEGIN``,
  ``START TRANSACTION``, ``COMMIT``, ``END``) does not count: ``BEGIN; ALTER
  ...; COMMIT;`` is that one statement;
* temporary objects;
* a rewrite with a volatile (or merely non-immutable) value: ``ADD COLUMN`` with
  such a default, a serial or identity column, ``ALTER COLUMN ... TYPE ... USING``
  such an expression: existing rows would get other values on each side. A
  date/time literal read when the statement runs (``'now'``, ``'today'``,
  ``'tomorrow'``, ``'yesterday'``: ``'now'::timestamptz``, ``date 'today'``,
  ``DEFAULT 'now'`` on a date/time column) is such a value;
* a statement touching both tables of the subscription's publications and
  tables outside them.

:func:`runnable` is the text the subscriber runs: the statement itself, with
``CONCURRENTLY`` removed where it cannot run in a transaction block (``CREATE
INDEX``, ``DROP INDEX``, ``REINDEX``, ``DETACH PARTITION``): the subscriber runs
each DDL in the local transaction holding the changes around it. Of a query
string wrapped in a transaction block, it is the statement alone (its ``BEGIN``
and ``COMMIT`` would end the subscriber's transaction).

:attr:`DdlCommand.settings` are the publisher session's :data:`SETTINGS` the
statement ran under (what it reads or writes as text depends on them: a
``timestamp`` to ``timestamptz`` conversion on ``TimeZone``, a date literal on
``DateStyle``); the subscriber runs it under the same. Only these names are
kept from a queue row; one from an older queue has none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The session settings recorded with each statement and set for its replay.
SETTINGS = ("TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits")

#: First words of a statement that is DDL itself.
_DDL_WORDS = frozenset(
    {"create", "alter", "drop", "comment", "reindex", "security", "import", "refresh", "cluster"}
)
#: Words of an expression whose value differs between two evaluations.
_VOLATILE_WORDS = frozenset(
    {
        "current_timestamp",
        "current_date",
        "current_time",
        "localtime",
        "localtimestamp",
        "current_user",
        "current_role",
        "session_user",
        "user",
        "nextval",
    }
)
#: Functions known to be immutable (anything else called in a default or a USING
#: expression makes the rewrite unsafe).
_IMMUTABLE_FUNCTIONS = frozenset(
    {
        "lower",
        "upper",
        "coalesce",
        "nullif",
        "length",
        "abs",
        "round",
        "trim",
        "btrim",
        "ltrim",
        "rtrim",
        "substring",
        "substr",
        "replace",
        "concat",
        "cast",
        "array",
        "row",
        "greatest",
        "least",
        "md5",
        "int4",
        "int8",
        "numeric",
        "text",
        "varchar",
        "bool",
        "to_jsonb",
        "jsonb_build_object",
        "jsonb_build_array",
        "json_build_object",
        "json_build_array",
        "make_date",
        "make_interval",
        "split_part",
        "left",
        "right",
        "char_length",
        "floor",
        "ceil",
        "trunc",
        "array_length",
        "string_to_array",
        "array_to_string",
    }
)
_SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial4", "serial8", "serial2"})
#: Words naming a date/time type (``timestamp with time zone`` has two).
_TIME_TYPES = frozenset({"date", "time", "timetz", "timestamp", "timestamptz"})
#: Date/time input resolved when it is read, not a constant.
_MOMENT = re.compile(r"\b(?:now|today|tomorrow|yesterday)\b", re.IGNORECASE)


@dataclass(frozen=True)
class DdlObject:
    """An object a statement touched, as the capture described it."""

    type: str
    identity: str | None
    schema: str | None
    #: The published table it belongs to ("schema.name" as regclass prints it).
    table: str | None
    publications: tuple[str, ...]
    dropped: bool
    #: The publications listing the table itself (its changes come under its
    #: own name: the subscriber's table), for a table the statement created.
    listed: tuple[str, ...] = ()


@dataclass(frozen=True)
class DdlCommand:
    """One queue row: one statement captured on the publisher."""

    id: int
    command_tag: str
    command: str
    search_path: str
    role: str
    publications: tuple[str, ...]
    objects: tuple[DdlObject, ...]
    #: The publisher session's :data:`SETTINGS` (none from an older queue).
    settings: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: Mapping[str, str | None]) -> DdlCommand:
        """From the queue row's columns in text form (as pgoutput sends them)."""

        def text(key: str) -> str:
            value = values.get(key)
            return "" if value is None else value

        objects = tuple(
            DdlObject(
                str(o.get("type") or ""),
                o.get("identity"),
                o.get("schema"),
                o.get("table"),
                tuple(o.get("publications") or ()),
                bool(o.get("dropped")),
                tuple(o.get("listed") or ()),
            )
            for o in json.loads(text("objects") or "[]")
        )
        recorded = json.loads(text("settings") or "{}")
        settings = {
            name: recorded[name]
            for name in SETTINGS
            if isinstance(recorded, dict) and isinstance(recorded.get(name), str)
        }
        return cls(
            int(text("id")) if text("id").isdigit() else 0,
            text("command_tag"),
            text("command"),
            text("search_path"),
            text("role"),
            tuple(json.loads(text("publications") or "[]")),
            objects,
            settings,
        )

    def concerns(self, publications: Iterable[str]) -> bool:
        """Whether the statement is for one of ``publications``."""
        return not set(self.publications).isdisjoint(publications)


# -- tokens -------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A word (lower case; quoted identifiers keep their case and ``quoted``), a
    literal (``kind`` "string"), or one punctuation character."""

    kind: str  # word, string, number, punct
    text: str
    start: int
    end: int
    quoted: bool = False


_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")
_WORD = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z_0-9$\u0080-\uffff]*")
_NUMBER = re.compile(r"[0-9][0-9._eE+-]*")


def tokens(text: str) -> list[Token]:
    """The SQL text's tokens, comments left out."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
        elif ch == "'" or (ch in "eE" and text.startswith("'", i + 1)):
            backslash = ch in "eE"
            j = i + (2 if backslash else 1)
            while j < n:
                if backslash and text[j] == "\\":
                    j += 2
                elif text[j] == "'":
                    if text.startswith("''", j):
                        j += 2
                    else:
                        j += 1
                        break
                else:
                    j += 1
            out.append(Token("string", text[i:j], i, j))
            i = j
        elif ch == '"':
            j = i + 1
            while j < n:
                if text[j] == '"':
                    if text.startswith('""', j):
                        j += 2
                        continue
                    j += 1
                    break
                j += 1
            out.append(Token("word", text[i + 1 : j - 1].replace('""', '"'), i, j, quoted=True))
            i = j
        elif ch == "$" and (m := _DOLLAR.match(text, i)):
            close = text.find(m.group(0), m.end())
            j = n if close < 0 else close + len(m.group(0))
            out.append(Token("string", text[i:j], i, j))
            i = j
        elif m := _WORD.match(text, i):
            out.append(Token("word", m.group(0).lower(), i, m.end()))
            i = m.end()
        elif m := _NUMBER.match(text, i):
            out.append(Token("number", m.group(0), i, m.end()))
            i = m.end()
        else:
            out.append(Token("punct", ch, i, i + 1))
            i += 1
    return out


def statements(text: str) -> list[list[Token]]:
    """The text's statements (top-level ``;``), each as its tokens; a ``BEGIN
    ATOMIC`` body's semicolons do not split."""
    result: list[list[Token]] = [[]]
    atomic = 0
    previous = ""
    for token in tokens(text):
        if token.kind == "word" and not token.quoted:
            if token.text == "atomic" and previous == "begin":
                atomic += 1
            elif token.text == "end" and atomic:
                atomic -= 1
        if token.kind == "punct" and token.text == ";" and not atomic:
            result.append([])
        else:
            result[-1].append(token)
        previous = token.text if token.kind == "word" else ""
    return [s for s in result if s]


def _is(token: Token, *words: str) -> bool:
    return token.kind == "word" and not token.quoted and token.text in words


def _transaction_control(words: list[Token]) -> bool:
    """``BEGIN``, ``START TRANSACTION``, ``COMMIT`` or ``END`` (with their
    options): a transaction block around a statement, not a statement of its own."""
    first = words[0]
    second = words[1] if len(words) > 1 else None
    if _is(first, "begin"):
        return second is None or not _is(second, "atomic")
    if _is(first, "commit"):
        return second is None or not _is(second, "prepared")
    if _is(first, "end"):
        return True
    return _is(first, "start") and second is not None and _is(second, "transaction")


def ddl_statements(text: str) -> list[list[Token]]:
    """The text's statements (see :func:`statements`) but its transaction control."""
    return [words for words in statements(text) if not _transaction_control(words)]


# -- classification ---------------------------------------------------------------


def unsafe(command: DdlCommand, publications: Iterable[str]) -> str | None:
    """Why replaying ``command`` for a subscription of ``publications`` would not
    give the publisher's data; None when it would (see the module docstring)."""
    tag = command.command_tag.upper()
    if tag in ("CREATE TABLE AS", "SELECT INTO"):
        return f"{tag} computes the new table's rows from the subscriber's data"
    parts = ddl_statements(command.command)
    if not parts:
        return "the statement text is empty"
    if len(parts) > 1:
        return (
            f"the query string holds {len(parts)} statements; only the first one's objects"
            " are known (send them one by one)"
        )
    for words in parts:
        if not _is(words[0], *_DDL_WORDS):
            first = words[0].text.upper()
            return f"the DDL ran inside a {first} statement, whose other effects would run twice"
        if _temporary(words):
            return "it creates or changes a temporary object"
        if [t.text for t in words[:2] if not t.quoted] == ["alter", "table"]:
            reason = _volatile_rewrite(words)
            if reason is not None:
                return reason
    if any((o.schema or "").startswith("pg_temp") for o in command.objects):
        return "it creates or changes a temporary object"
    ours = set(publications)
    tables = [o for o in command.objects if o.table is not None or o.type == "table"]
    mine = {bool(ours.intersection(o.publications)) for o in tables}
    if len(mine) > 1:
        return "it touches tables of the subscription and tables outside it"
    return None


def _temporary(words: list[Token]) -> bool:
    """CREATE [OR REPLACE] TEMP|TEMPORARY ..."""
    if not _is(words[0], "create"):
        return False
    return any(_is(token, "temp", "temporary") for token in words[1:4])


def _clauses(words: list[Token]) -> list[list[Token]]:
    """An ALTER TABLE's subcommands (split on top-level commas)."""
    result: list[list[Token]] = [[]]
    depth = 0
    for token in words:
        if token.kind == "punct" and token.text == "(":
            depth += 1
        elif token.kind == "punct" and token.text == ")":
            depth -= 1
        if depth == 0 and token.kind == "punct" and token.text == ",":
            result.append([])
        else:
            result[-1].append(token)
    return result


_NOT_COLUMN = ("constraint", "primary", "unique", "check", "foreign", "exclude")


def _volatile_rewrite(words: list[Token]) -> str | None:
    for clause in _clauses(words):
        at = next((i for i, t in enumerate(clause) if _is(t, "add", "type")), None)
        if at is None:
            continue
        if _is(clause[at], "add"):
            rest = clause[at + 1 :]
            if rest and _is(rest[0], "column"):
                rest = rest[1:]
            if not rest or _is(rest[0], *_NOT_COLUMN):
                continue
            if any(_is(t, *_SERIAL_TYPES) for t in rest[:6]) or any(
                _is(t, "identity") for t in rest
            ):
                return "ADD COLUMN with a serial or identity column numbers the rows anew"
            if len(rest) > 3 and [t.text for t in rest[:3] if not t.quoted] == [
                "if",
                "not",
                "exists",
            ]:
                rest = rest[3:]
            column_type = _upto_end(rest[1:])
            expression = _after(rest, "default")
            what = "ADD COLUMN with the default"
        else:
            column_type = _upto_end(clause[at + 1 :])
            expression = _after(clause[at + 1 :], "using")
            what = "ALTER COLUMN TYPE with USING"
        if expression and (not _immutable(expression) or _moment(expression, column_type)):
            shown = " ".join(t.text for t in expression)
            return f"{what} {shown} may give other values on the subscriber"
    return None


_ENDS = frozenset(
    {
        "not",
        "null",
        "constraint",
        "primary",
        "unique",
        "check",
        "references",
        "collate",
        "generated",
        "default",
        "using",
    }
)


def _after(clause: list[Token], keyword: str) -> list[Token]:
    """The expression after ``keyword`` in a subcommand, up to the next
    constraint keyword at depth 0."""
    start = next((i for i, t in enumerate(clause) if _is(t, keyword)), None)
    if start is None:
        return []
    return _upto_end(clause[start + 1 :])


def _upto_end(tokens: list[Token]) -> list[Token]:
    """The tokens up to the first constraint keyword at depth 0 (an
    expression, or a column's type)."""
    expression: list[Token] = []
    depth = 0
    for token in tokens:
        if token.kind == "punct" and token.text == "(":
            depth += 1
        elif token.kind == "punct" and token.text == ")":
            depth -= 1
        if depth == 0 and expression and _is(token, *_ENDS):
            break
        expression.append(token)
    return expression


def _immutable(expression: list[Token]) -> bool:
    for i, token in enumerate(expression):
        if token.kind != "word" or token.quoted:
            continue
        if token.text in _VOLATILE_WORDS:
            return False
        follows = expression[i + 1] if i + 1 < len(expression) else None
        called = follows is not None and follows.kind == "punct" and follows.text == "("
        after_cast = i > 0 and expression[i - 1].text == ":"
        if called and not after_cast and token.text not in _IMMUTABLE_FUNCTIONS:
            return False
    return True


def _moment(expression: list[Token], column_type: list[Token]) -> bool:
    """Whether the expression has a date/time literal that is read when the
    statement runs (``'now'``, ``'today'``...): a literal naming one, in an
    expression with a date/time type name (a cast, a typed literal) or for a
    column of such a type."""
    if not any(t.kind == "string" and _MOMENT.search(_literal(t)) for t in expression):
        return False
    return any(t.kind == "word" and t.text in _TIME_TYPES for t in (*expression, *column_type))


def _literal(token: Token) -> str:
    """A string token's value (escapes left as they are)."""
    text = token.text
    if text.startswith("$"):
        tag = text[: text.index("$", 1) + 1]
        return text[len(tag) : len(text) - len(tag)]
    return text[text.index("'") + 1 : -1].replace("''", "'")


# -- what runs on the subscriber -------------------------------------------------------


def runnable(command: DdlCommand) -> str:
    """The statement the subscriber runs (see the module docstring)."""
    text = command.command
    parts = ddl_statements(text)
    if len(parts) != 1:
        return text
    words = parts[0]
    cut: Token | None = None
    head = [t.text for t in words[:4] if t.kind == "word" and not t.quoted]
    if head[:2] in (["create", "index"], ["drop", "index"]) or head[:3] == [
        "create",
        "unique",
        "index",
    ]:
        cut = next((t for t in words[:5] if _is(t, "concurrently")), None)
    elif head[:1] == ["reindex"]:
        cut = next((t for t in words[:6] if _is(t, "concurrently")), None)
    elif head[:2] == ["alter", "table"]:
        for i, t in enumerate(words):
            if _is(t, "detach") and i + 1 < len(words) and _is(words[i + 1], "partition"):
                cut = next((u for u in words[i + 2 :] if _is(u, "concurrently")), None)
    if cut is None:
        return text[words[0].start : words[-1].end]
    return text[words[0].start : cut.start] + text[cut.end : words[-1].end]


def describe(value: Any) -> str:
    """A statement shortened to one line for messages."""
    line = " ".join(str(value).split())
    return line if len(line) <= 200 else line[:197] + "..."
