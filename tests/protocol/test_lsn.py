"""Lsn: the X/Y text form, range checks, and int behaviour (compare, subtract)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgferry.errors import InterfaceError
from pgferry.protocol import INVALID_LSN, Lsn

MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/1", 1),
        ("0/16B3748", 0x16B3748),
        ("0/16b3748", 0x16B3748),
        ("1/0", 1 << 32),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", MAX),
        ("ffffffff/ffffffff", MAX),
        ("00000000/00000010", 0x10),
    ],
)
def test_parse(text: str, value: int) -> None:
    lsn = Lsn.parse(text)
    assert lsn == value
    assert type(lsn) is Lsn


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0/0"),
        (0x16B3748, "0/16B3748"),
        (1 << 32, "1/0"),
        ((0xAB << 32) | 0xCD, "AB/CD"),
        (MAX, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_format(value: int, text: str) -> None:
    assert str(Lsn(value)) == text
    assert repr(Lsn(value)) == f"Lsn('{text}')"
    assert f"{Lsn(value)}" == text


@given(st.integers(min_value=0, max_value=MAX))
def test_text_round_trip(value: int) -> None:
    text = str(Lsn(value))
    assert re.fullmatch(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}", text)
    assert Lsn.parse(text) == value
    assert Lsn.parse(text.lower()) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "/",
        "0/",
        "/0",
        "1/2/3",
        "G/0",
        "0/G",
        "0.0",
        "100000000/0",  # each half is at most 8 hex digits
        "0/100000000",
        "lsn",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InterfaceError) as info:
        Lsn.parse(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "0x1/0",  # Python int() literals that are not pg_lsn's plain hex digits
        "0/0x10",
        "+1/0",
        "-0/0",
        "0/+0",
        "1_0/0",
        "1 /0",
        "0/ 1",
        "\uff11/0",  # FULLWIDTH DIGIT ONE
    ],
)
def test_parse_rejects_what_pg_lsn_rejects(text: str) -> None:
    # PostgreSQL's pg_lsn_in accepts only [0-9A-Fa-f]{1,8} "/" [0-9A-Fa-f]{1,8}.
    with pytest.raises(InterfaceError):
        Lsn.parse(text)


@pytest.mark.parametrize("value", [-1, MAX + 1, -(2**64), 2**100])
def test_out_of_range(value: int) -> None:
    with pytest.raises(InterfaceError):
        Lsn(value)


def test_default_and_invalid() -> None:
    assert Lsn() == 0
    assert INVALID_LSN == 0
    assert str(INVALID_LSN) == "0/0"


def test_compare_and_subtract() -> None:
    a = Lsn.parse("0/16B3748")
    b = Lsn.parse("0/16B3800")
    c = Lsn.parse("1/0")
    assert a < b < c
    assert max(c, a, b) is c
    assert sorted([c, a, b]) == [a, b, c]
    assert b - a == 0xB8  # a byte distance
    assert c - b == (1 << 32) - 0x16B3800
    assert a - b == -0xB8
    assert Lsn.parse("0/10") == 16 and hash(Lsn(16)) == hash(16)
    assert Lsn.parse("1/0") > Lsn.parse("0/FFFFFFFF")  # not a string comparison
    by_position: dict[int, str] = {Lsn(5): "x"}
    assert by_position[5] == "x"
