"""What verify compares of one table, and the SQL that reads it on either side.

A :class:`TablePlan` is built on the publisher, inside the publisher snapshot:

* the columns: those the subscription's publications send (column lists
  respected, see :mod:`pgferry.publisher.shape`), in the publisher's order, read
  by name on both sides (extra subscriber columns are ignored);
* the rows: the publications' row filter on the publisher; every row on the
  subscriber (a subscriber row the filter would not publish is a difference);
* the key: the publisher's primary key, else its replica identity index, when
  every one of its columns is published; otherwise none (whole-row multiset
  compare).

Rows with a NULL in a key column (a subscriber table without the publisher's
unique key and NOT NULL may hold them; the publisher's key never does) belong to
no key range: they are a range of their own, :data:`NULL_KEYS`, read on both
sides alike. Every other range holds only rows whose key columns are all
non-NULL, so the ranges of one side never overlap and together hold every row.

Row encoding: ``ROW(c1, ..., cn)::text`` (the record's text form quotes any value
holding a separator, a quote or a parenthesis, and tells NULL from ''), hashed
with ``hashtextextended(..., 0)`` (64 bits) and summed as ``numeric`` together
with the row count: a sum, not XOR, so two equal rows cannot cancel out. Both
sides' sessions use the same settings (:data:`SESSION_SETTINGS`), so the text of
the same values is the same on PostgreSQL 15 and 18.

Key ranges are half-open, ``lo <= key < hi`` in the key's btree order, written as
row comparisons against literals (untyped, so each side reads them as its own
column types). Keys travel as their text forms. A key column of a collatable type
(text, varchar, char, citext, a domain over one...) is compared and ordered
``COLLATE "C"`` on both sides, in the range predicates, the split points and the
ordering alike: the two servers cut and order keys the same way whatever their
own collations (another default, another libc or ICU version). Such a column's
range predicates cannot use an index of another collation.

A range compared row by row (:meth:`TablePlan.rows_query`) is read as each row's
key texts and row hash in key order. A range compared directly
(:meth:`TablePlan.groups_query`) is read as its distinct (key, row hash) pairs
with their counts, ordered by the key's text forms as UTF-8 bytes (``convert_to``,
no collation at all) and then by the hash, so the two sides' streams merge in one
pass in any client.

Repair reads rows by key (:meth:`TablePlan.key_predicate`: a NULL key column by
``IS NULL``), on the subscriber with where each row is (``tableoid``, ``ctid``),
so each of a key's copies can be fixed on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgferry.publisher.shape import PublishedTable
from pgferry.sqltext import qualified, quote_ident, quote_literal

#: The session settings of every comparing session, on both sides.
SESSION_SETTINGS: tuple[tuple[str, str], ...] = (
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)

#: The collation text-like key columns are compared and ordered in, on both sides.
C_COLLATION = 'pg_catalog."C"'

#: A key as its columns' text forms.
Key = tuple[str | None, ...]


@dataclass(frozen=True)
class Range:
    """``lo <= key < hi`` among the rows without a NULL key column; None:
    unbounded. ``null_keys``: instead the rows with a NULL in a key column."""

    lo: Key | None
    hi: Key | None
    null_keys: bool = False


FULL = Range(None, None)
NULL_KEYS = Range(None, None, null_keys=True)


@dataclass(frozen=True)
class TablePlan:
    remote_schema: str
    remote_name: str
    local_schema: str
    local_name: str
    columns: tuple[str, ...]
    #: Key columns in index order; empty: no key.
    key: tuple[str, ...]
    row_filter: str | None
    #: Per key column: whether its type is collatable (compared ``COLLATE "C"``).
    collatable: tuple[bool, ...] = ()

    @property
    def display(self) -> str:
        return qualified(self.remote_schema, self.remote_name)

    def relation(self, publisher: bool) -> str:
        if publisher:
            return f"{quote_ident(self.remote_schema)}.{quote_ident(self.remote_name)}"
        return f"{quote_ident(self.local_schema)}.{quote_ident(self.local_name)}"

    # -- SQL pieces -----------------------------------------------------------------

    def row_text(self) -> str:
        return "ROW(" + ", ".join(quote_ident(c) for c in self.columns) + ")::text"

    def row_hash(self) -> str:
        return f"pg_catalog.hashtextextended({self.row_text()}, 0)"

    def _key_list(self) -> str:
        """The key columns as range predicates and orderings compare them."""
        return ", ".join(self._key_expr(i) for i in range(len(self.key)))

    def _key_expr(self, i: int) -> str:
        column = quote_ident(self.key[i])
        if i < len(self.collatable) and self.collatable[i]:
            return f"{column} COLLATE {C_COLLATION}"
        return column

    def _key_texts(self) -> str:
        # (Aliased: ORDER BY a key column must not mean its text output column.)
        return ", ".join(f"{quote_ident(c)}::text AS pgferry_k{i}" for i, c in enumerate(self.key))

    def _null_key(self) -> str:
        """True for a row with a NULL in a key column (never NULL itself)."""
        return "(" + " OR ".join(f"{quote_ident(c)} IS NULL" for c in self.key) + ")"

    def _range_tests(self, rng: Range) -> list[str]:
        if rng.null_keys:
            return [self._null_key()]
        tests = [f"NOT {self._null_key()}"]
        if rng.lo is not None:
            tests.append(f"({self._key_list()}) >= ({_literals(rng.lo)})")
        if rng.hi is not None:
            tests.append(f"({self._key_list()}) < ({_literals(rng.hi)})")
        return tests

    def _where(self, publisher: bool, rng: Range | None, *tests: str) -> str:
        """The publisher's row filter, the range's tests (with a key), ``tests``."""
        parts: list[str] = []
        if publisher and self.row_filter is not None:
            parts.append(f"({self.row_filter})")
        if rng is not None and self.key:
            parts.extend(self._range_tests(rng))
        parts.extend(tests)
        return " WHERE " + " AND ".join(parts) if parts else ""

    # -- queries --------------------------------------------------------------------

    def hash_query(self, publisher: bool, rng: Range) -> str:
        """One row: the count and the sum of row hashes (text) of the range."""
        return (
            f"SELECT count(*), COALESCE(sum({self.row_hash()}::numeric), 0)::text"
            f" FROM {self.relation(publisher)}{self._where(publisher, rng)}"
        )

    def boundaries_query(self, publisher: bool, rng: Range, step: int) -> str:
        """Every ``step``-th key of the range in key order: split points."""
        columns = ", ".join(quote_ident(c) for c in self.key)
        return (
            f"SELECT {', '.join(f'k.{quote_ident(c)}::text' for c in self.key)} FROM"
            f" (SELECT {columns}, row_number() OVER (ORDER BY {self._key_list()}) AS pgferry_rn"
            f" FROM {self.relation(publisher)}{self._where(publisher, rng)}) k"
            f" WHERE k.pgferry_rn % {int(step)} = 0 ORDER BY k.pgferry_rn"
        )

    def bounds_query(self) -> str:
        """The publisher's smallest and largest key (of a one-column key), as text."""
        key = self._key_expr(0)
        return (
            f"SELECT min({key})::text, max({key})::text"
            f" FROM {self.relation(True)}{self._where(True, FULL)}"
        )

    def rows_query(self, publisher: bool, rng: Range) -> str:
        """Each row of the range: its key's text forms, then its row hash; in key order."""
        return (
            f"SELECT {self._key_texts()}, {self.row_hash()}"
            f" FROM {self.relation(publisher)}{self._where(publisher, rng)}"
            f" ORDER BY {self._key_list()}"
        )

    def groups_query(self, publisher: bool, rng: Range) -> str:
        """Each distinct (key texts, row hash) of the range with its count, ordered
        by the key texts' UTF-8 bytes (NULL last), then the hash; without a key,
        each distinct row hash with its count, by hash."""
        keys = [f"pgferry_k{i}" for i in range(len(self.key))]
        inner = ", ".join(
            [
                *(
                    f"({quote_ident(c)}::text) COLLATE {C_COLLATION} AS {k}"
                    for c, k in zip(self.key, keys, strict=True)
                ),
                f"{self.row_hash()} AS pgferry_h",
            ]
        )
        order = ", ".join([*(f"pg_catalog.convert_to({k}, 'UTF8')" for k in keys), "pgferry_h"])
        grouped = ", ".join([*keys, "pgferry_h"])
        return (
            f"SELECT {grouped}, count(*) FROM (SELECT {inner} FROM"
            f" {self.relation(publisher)}{self._where(publisher, rng)}) r"
            f" GROUP BY {grouped} ORDER BY {order}"
        )

    def texts_query(self, publisher: bool, hashes: Sequence[int]) -> str:
        """Without a key: each distinct row text whose hash is one of ``hashes``,
        with its count."""
        wanted = ", ".join(str(int(h)) for h in hashes) or "NULL"
        where = self._where(publisher, None, f"{self.row_hash()} IN ({wanted})")
        return (
            f"SELECT ({self.row_text()}) COLLATE {C_COLLATION}, count(*)"
            f" FROM {self.relation(publisher)}{where} GROUP BY 1"
        )

    def key_predicate(self, key: Key) -> str:
        """The rows with this key: each column by its own equality (an index
        serves it), and ``COLLATE "C"`` too when it is collatable (a
        nondeterministic collation's equality is not the text's); a NULL by
        ``IS NULL``."""
        tests: list[str] = []
        for i, value in enumerate(key):
            column = quote_ident(self.key[i])
            if value is None:
                tests.append(f"{column} IS NULL")
                continue
            tests.append(f"{column} = {quote_literal(value)}")
            if i < len(self.collatable) and self.collatable[i]:
                tests.append(f"{self._key_expr(i)} = {quote_literal(value)}")
        return "(" + " AND ".join(tests) + ")"

    def _by_keys(self, keys: Sequence[Key]) -> str:
        return "(" + (" OR ".join(self.key_predicate(k) for k in keys) or "false") + ")"

    def _column_texts(self) -> str:
        return "".join(f", {quote_ident(c)}::text" for c in self.columns)

    def values_query(self, keys: Sequence[Key]) -> str:
        """The publisher's rows with these keys: the key's text forms, then the
        published columns'."""
        where = self._where(True, None, self._by_keys(keys))
        return f"SELECT {self._key_texts()}{self._column_texts()} FROM {self.relation(True)}{where}"

    def located_query(self, keys: Sequence[Key]) -> str:
        """The subscriber's rows with these keys: where each is (``tableoid``,
        ``ctid``), the key's text forms, then the published columns'."""
        where = self._where(False, None, self._by_keys(keys))
        return (
            f"SELECT tableoid::pg_catalog.text, ctid::pg_catalog.text, {self._key_texts()}"
            f"{self._column_texts()} FROM {self.relation(False)}{where}"
        )

    def rows_by_text_query(self, publisher: bool, texts: Sequence[str]) -> str:
        """Without a key: the published columns' text forms of rows by row text."""
        wanted = ", ".join(quote_literal(t) for t in texts) or "NULL"
        where = self._where(publisher, None, f"{self.row_text()} IN ({wanted})")
        return (
            f"SELECT {self.row_text()}{self._column_texts()} FROM {self.relation(publisher)}{where}"
        )


def _literals(key: Key) -> str:
    return ", ".join("NULL" if v is None else quote_literal(v) for v in key)


def key_query(schema: str, name: str) -> str:
    """The primary key's and the replica identity index's columns, in index order:
    (is the primary key, column name, is the column's type collatable)."""
    return _KEY_QUERY.format(schema=quote_literal(schema), name=quote_literal(name))


_KEY_QUERY = """
SELECT i.indisprimary, a.attname::text, a.attcollation <> 0
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE n.nspname = {schema} AND c.relname = {name} AND (i.indisprimary OR i.indisreplident)
  AND i.indpred IS NULL
ORDER BY i.indisprimary DESC, i.indexrelid, k.pos
"""


def choose_key(rows: Sequence[tuple[bool, str | None]], columns: Sequence[str]) -> tuple[str, ...]:
    """The key from :func:`key_query`'s rows: the primary key's columns, else the
    replica identity index's; none if an expression or an unpublished column is in it."""
    if not rows:
        return ()
    primary = rows[0][0]
    names = [name for is_primary, name in rows if is_primary == primary]
    if any(name is None or name not in columns for name in names):
        return ()
    return tuple(n for n in names if n is not None)


def plan_table(
    shape: PublishedTable,
    local: tuple[str, str],
    key: tuple[str, ...],
    collatable: tuple[bool, ...] = (),
) -> TablePlan:
    return TablePlan(
        shape.schema,
        shape.name,
        local[0],
        local[1],
        shape.columns,
        key,
        shape.row_filter,
        collatable,
    )
