"""verify's pure parts: table names as the command line takes them, the key."""

from __future__ import annotations

import pytest

from pgferry.errors import InterfaceError
from pgferry.verify.compare import parse_table
from pgferry.verify.plan import choose_key
from pgferry.verify.report import TableReport, VerifyReport, render_text


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("t", (None, "t")),
        ("T", (None, "t")),
        ("public.t", ("public", "t")),
        ('"we ird"."x""y"', ("we ird", 'x"y')),
        ('"a.b"', (None, "a.b")),
        ('s."Mixed"', ("s", "Mixed")),
    ],
)
def test_table_names(text: str, parsed: tuple[str | None, str]) -> None:
    assert parse_table(text) == parsed


@pytest.mark.parametrize("text", ["", "a.b.c", '"open', "a.", ".b"])
def test_bad_table_names(text: str) -> None:
    with pytest.raises(InterfaceError):
        parse_table(text)


def test_the_key_is_the_primary_key_when_published() -> None:
    rows = [(True, "a"), (True, "b"), (False, "c")]
    assert choose_key(rows, ["a", "b", "c"]) == ("a", "b")
    assert choose_key(rows, ["a", "c"]) == ()
    assert choose_key([(False, "c")], ["c"]) == ("c",)
    assert choose_key([(True, None)], ["a"]) == ()
    assert choose_key([], ["a"]) == ()


def test_equal_keys_with_other_row_counts_are_not_identical() -> None:
    """Every key compared equal while the row counts differ (a check every
    report makes): the report says so and the verdict is not identical."""
    same = TableReport("public.t", rows_publisher=3, rows_subscriber=3)
    more = TableReport("public.u", rows_publisher=3, rows_subscriber=4)
    assert same.identical and not more.identical and more.differences == 0
    report = VerifyReport("s", None, [same, more])
    assert not report.identical
    lines = render_text(report)
    assert lines[1].startswith("public.u: rows differ in number")
    assert lines[-1].startswith("subscription s: 2 tables, rows differ in number")
