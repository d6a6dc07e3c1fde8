"""The table spec parser and the ``--with`` options: pure, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgferry.errors import InterfaceError
from pgferry.publisher.spec import (
    MAX_IDENTIFIER_BYTES,
    TableSpec,
    TableSpecError,
    parse_identifier,
    parse_table_name,
    parse_table_spec,
    strip_outer_parens,
)
from pgferry.publisher.validate import PublicationOptions, parse_with
from pgferry.sqltext import bare_or_quoted as quote_ident

# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("t", TableSpec(None, "t")),
        ("public.t", TableSpec("public", "t")),
        ("  Public . T  ", TableSpec("public", "t")),  # folded, spaces around the dot
        ('"Public"."T"', TableSpec("Public", "T")),
        ('"we ird"."x"', TableSpec("we ird", "x")),
        ('"we ird".x', TableSpec("we ird", "x")),
        ('"a""b.c"', TableSpec(None, 'a"b.c')),  # quotes and a dot inside the name
        ('"s.q"".""x"', TableSpec(None, 's.q"."x')),
        ('"we ird"".""x"', TableSpec(None, 'we ird"."x')),
        ('"s"".q"."x""y"', TableSpec('s".q', 'x"y')),
        ("Straße.Ünïcode", TableSpec("straße", "Ünïcode")),  # only ASCII folds
        ("_t$1.a_2$", TableSpec("_t$1", "a_2$")),
        ('"select"', TableSpec(None, "select")),
        ('"where"', TableSpec(None, "where")),
        ("only", TableSpec(None, "only")),
    ],
)
def test_names(text: str, expected: TableSpec) -> None:
    assert parse_table_spec(text) == expected


# -- column lists ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("t (a)", ("a",)),
        ("t(a,b)", ("a", "b")),
        ("t ( A , b )", ("a", "b")),
        ('t ("A", "b c", "d""e", "f,g)")', ("A", "b c", 'd"e', "f,g)")),
        ('s.t ("x")', ("x",)),
    ],
)
def test_column_lists(text: str, columns: tuple[str, ...]) -> None:
    spec = parse_table_spec(text)
    assert spec.columns == columns
    assert spec.row_filter is None


# -- row filters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row_filter"),
    [
        ("t WHERE (a > 1)", "a > 1"),
        ("t where(a > 1)", "a > 1"),
        ("t WhErE   ( a > 1 )  ", " a > 1 "),
        ("t (a, b) WHERE (a > (1 + (2 * 3)))", "a > (1 + (2 * 3))"),
        ("t WHERE ((a > 1) AND (b < 2))", "(a > 1) AND (b < 2)"),
        ("t WHERE (b = ')')", "b = ')'"),
        ("t WHERE (b = '(' OR b = ')))')", "b = '(' OR b = ')))'"),
        ("t WHERE (b = 'it''s (')", "b = 'it''s ('"),
        ("t WHERE (b = E'\\')' )", "b = E'\\')' "),  # backslash escape in E''
        ("t WHERE (b = e'\\\\' AND c = ')')", "b = e'\\\\' AND c = ')'"),
        ("t WHERE (b = $$)$$)", "b = $$)$$"),
        ("t WHERE (b = $q$ ) $$ ( $q$)", "b = $q$ ) $$ ( $q$"),
        ('t WHERE ("we)ird" > 1)', '"we)ird" > 1'),
        ("t WHERE (a$b > 1)", "a$b > 1"),  # $ inside an identifier is not a quote
        ("t WHERE (b LIKE '%(x)%' OR b = '{}')", "b LIKE '%(x)%' OR b = '{}'"),
        ("t WHERE (b = 'a;b' AND c = '--')", "b = 'a;b' AND c = '--'"),
        ("t WHERE (name = 'x')", "name = 'x'"),  # 'e' ending a word: no E'' string
    ],
)
def test_row_filters(text: str, row_filter: str) -> None:
    spec = parse_table_spec(text)
    assert spec.name == "t"
    assert spec.row_filter == row_filter


def test_full_spec() -> None:
    spec = parse_table_spec('"My Schema"."a""b" ("Id", name) WHERE (name <> \'(\' AND "Id" > 0)')
    assert spec == TableSpec("My Schema", 'a"b', ("Id", "name"), "name <> '(' AND \"Id\" > 0")


# -- errors name the spec and the position --------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ("", "expected a table name, found end of spec", 1),
        ("   ", "expected a table name", 4),
        ("1t", "expected a table name, found '1'", 1),
        ("a.b.c", "found '.'", 4),
        ("a.", "expected a table name after '.'", 3),
        ('"abc', "unterminated quoted identifier", 1),
        ('s.""', "empty quoted identifier", 3),
        ('"a\0b"', "NUL character", 1),
        ("x" * 64, f"longer than {MAX_IDENTIFIER_BYTES} bytes", 1),
        ("s." + "é" * 32, f"longer than {MAX_IDENTIFIER_BYTES} bytes", 3),  # 64 bytes
        ("t (", "expected a column name, found end of spec", 4),
        ("t ()", "empty column list", 4),
        ("t (a b)", "expected ',' or ')', found 'b'", 6),
        ("t (a,)", "expected a column name, found ')'", 6),
        ("t (a, A)", "column a listed twice", 7),
        ("t (a) b", "expected WHERE or end of spec, found 'b'", 7),
        ("t x", "expected '(', WHERE or end of spec, found 'x'", 3),
        ("t WHERE a > 1", "expected '(' after WHERE, found 'a'", 9),
        ("t WHERE", "expected '(' after WHERE, found end of spec", 8),
        ("t WHERE ()", "empty row filter", 9),
        ("t WHERE (a > (1)", "unbalanced parentheses", 9),
        ("t WHERE (a > 1))", "expected end of spec, found ')'", 16),
        ("t WHERE (a > 1) AND (b)", "expected end of spec, found 'A'", 17),
        ("t WHERE (b = ')'", "unbalanced parentheses", 9),
        ("t WHERE (b = 'x)", "unterminated string literal", 14),
        ("t WHERE (b = E'\\')", "unterminated string literal", 15),
        ("t WHERE (b = $$x)", "unterminated dollar-quoted string", 14),
        ('t WHERE ("a) > 1', "unterminated quoted identifier", 10),
        ("t WHERE (a > 1; DROP TABLE t)", "';' is not allowed", 15),
        ("t WHERE (a > 1 -- x)", "comments are not allowed", 16),
        ("t WHERE (a > /* ) */ 1)", "comments are not allowed", 14),
        ("WHERE (a)", "expected a table name, found WHERE", 1),
        ("ONLY t", "ONLY is not supported", 1),
        ("t *", "found '*'", 3),
        ("s.t\udcff", "not valid UTF-8", 4),  # a non-UTF-8 byte from the command line
        # An attempt to close WHERE (...) early and add another table.
        ("t WHERE (true), u WHERE (true", "expected end of spec, found ','", 15),
    ],
)
def test_errors(text: str, reason: str, position: int) -> None:
    with pytest.raises(TableSpecError) as caught:
        parse_table_spec(text)
    error = caught.value
    assert isinstance(error, InterfaceError)
    assert reason in error.reason
    assert error.offset + 1 == position
    assert error.message == f"invalid table spec {text!r}: {error.reason} at position {position}"
    assert error.hint is not None and "WHERE" in error.hint


def test_table_name_only() -> None:
    assert parse_table_name('"we ird".x') == TableSpec("we ird", "x")
    with pytest.raises(TableSpecError, match="a table name only"):
        parse_table_name("t (a)")
    with pytest.raises(TableSpecError, match="a table name only"):
        parse_table_name("t WHERE (a)")


def test_identifier() -> None:
    assert parse_identifier("Sales") == "sales"
    assert parse_identifier(' "Sales Dept" ') == "Sales Dept"
    with pytest.raises(TableSpecError, match=r"expected end of name, found '\.'"):
        parse_identifier("a.b")
    with pytest.raises(TableSpecError, match="expected a name"):
        parse_identifier("")


# -- writing specs back ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("t", "t"),
        ("t_1$", '"t_1$"'),
        ("T", '"T"'),
        ("1t", '"1t"'),
        ("we ird", '"we ird"'),
        ('a"b', '"a""b"'),
        ("a.b", '"a.b"'),
        ("é", '"é"'),
    ],
)
def test_quote_ident(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


def test_str() -> None:
    spec = TableSpec("we ird", 'x"y', ("Id", "b"), "b > (1)")
    assert str(spec) == '"we ird"."x""y" ("Id", b) WHERE (b > (1))'
    assert spec.qualified == '"we ird"."x""y"'
    assert str(TableSpec(None, "t")) == "t"


def test_strip_outer_parens() -> None:
    assert strip_outer_parens("((a > 1) AND (b < 2))") == "(a > 1) AND (b < 2)"
    assert strip_outer_parens("(a) AND (b)") == "(a) AND (b)"
    assert strip_outer_parens("active") == "active"
    assert strip_outer_parens("(b = ')')") == "b = ')'"


# -- properties ------------------------------------------------------------------------

identifiers = st.text(
    st.characters(codec="utf-8", exclude_characters="\0"),  # no surrogates, no NUL
    min_size=1,
    max_size=MAX_IDENTIFIER_BYTES,
).filter(lambda s: len(s.encode()) <= MAX_IDENTIFIER_BYTES)


@given(identifiers, identifiers, st.lists(identifiers, min_size=1, max_size=4, unique=True))
def test_quoted_identifiers_round_trip(schema: str, name: str, columns: list[str]) -> None:
    text = f"{quote_ident(schema)}.{quote_ident(name)} ({', '.join(map(quote_ident, columns))})"
    assert parse_table_spec(text) == TableSpec(schema, name, tuple(columns))
    assert parse_identifier(quote_ident(name)) == name


@given(identifiers)
def test_always_quoted_identifiers_round_trip(name: str) -> None:
    # What psql's quote_ident would not do for a safe name: quote it anyway.
    assert parse_table_spec('"' + name.replace('"', '""') + '"') == TableSpec(None, name)


filters = st.sampled_from(
    ["a > 1", "(a) = ')'", "b = $x$)($x$", '"c)" IS NULL', "E'\\'' = d", "f(g(h))"]
)


@given(
    st.one_of(st.none(), identifiers),
    identifiers,
    st.one_of(st.none(), st.lists(identifiers, min_size=1, max_size=3, unique=True)),
    st.one_of(st.none(), filters),
)
def test_specs_round_trip(
    schema: str | None, name: str, columns: list[str] | None, row_filter: str | None
) -> None:
    spec = TableSpec(schema, name, None if columns is None else tuple(columns), row_filter)
    assert parse_table_spec(str(spec)) == spec


@given(st.text(max_size=40))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        spec = parse_table_spec(text)
    except TableSpecError as error:
        assert 0 <= error.offset <= len(text)
    else:
        assert parse_table_spec(str(spec)) == spec


# -- --with options ---------------------------------------------------------------------


def test_with_options() -> None:
    assert parse_with([]) == PublicationOptions()
    assert parse_with([]).empty
    options = parse_with(["publish = update, INSERT,update", "publish_via_partition_root=ON"])
    assert options == PublicationOptions(("insert", "update"), True)
    assert parse_with(["publish="]) == PublicationOptions(())
    assert parse_with(["publish_via_partition_root=false"]).via_root is False


@pytest.mark.parametrize(
    ("items", "message", "hint"),
    [
        (["bogus=1"], "unknown key 'bogus'", "publish, publish_via_partition_root"),
        (["publish"], "expected KEY=VALUE", "publish, publish_via_partition_root"),
        (["publish=insert,upsert"], "unknown action 'upsert'", "insert, update, delete"),
        (["publish_via_partition_root=maybe"], "not a boolean", "true or false"),
        (["publish=insert", "publish=update"], "given more than once", None),
    ],
)
def test_with_errors(items: list[str], message: str, hint: str | None) -> None:
    with pytest.raises(InterfaceError) as caught:
        parse_with(items)
    assert message in caught.value.message
    if hint is not None:
        assert caught.value.hint is not None and hint in caught.value.hint


def test_with_sql() -> None:
    options = PublicationOptions(("insert", "delete"), False)
    assert (
        options.to_sql().as_string()
        == "publish = 'insert, delete', publish_via_partition_root = false"
    )
