"""conninfo: passwords never reach a message; parsing is libpq's."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgferry.conninfo import mask, parse, with_params
from pgferry.errors import InterfaceError

SECRET = "S3cr3tPw"  # noqa: S105 - a test value
MASK = "********"


@pytest.mark.parametrize(
    "conninfo",
    [
        f"host=db.example user=me dbname=app password={SECRET} sslmode=require",
        f"password={SECRET} host=db.example",
        f"host=db.example password = {SECRET}",
        f"host=db.example password='{SECRET}'",
        f"host=db.example password='{SECRET} with spaces'",
        f"host=db.example password='{SECRET}\\'quote\\\\slash'",
        f"host=db.example password={SECRET}\\ escaped-space",
    ],
)
def test_mask_key_value(conninfo: str) -> None:
    masked = mask(conninfo)
    assert SECRET not in masked
    assert "quote" not in masked and "with spaces" not in masked and "escaped" not in masked
    assert MASK in masked
    # everything but the password survives, and the result is still a conninfo
    expected = parse(conninfo)
    expected["password"] = MASK
    assert parse(masked) == expected


@pytest.mark.parametrize(
    "conninfo",
    [
        f"postgresql://me:{SECRET}@db.example:5433/app?sslmode=require",
        f"postgres://me:{SECRET}@db.example/app",
        f"postgresql://me@db.example/app?password={SECRET}",
        f"postgresql:///app?host=/tmp&password={SECRET}",
        f"postgresql://me:{quote(SECRET + '@:/ x', safe='')}@db.example/app",
    ],
)
def test_mask_uri(conninfo: str) -> None:
    masked = mask(conninfo)
    assert SECRET not in masked
    assert MASK in masked
    params = parse(masked)
    assert params["password"] == MASK
    assert {k: v for k, v in params.items() if k != "password"} == {
        k: v for k, v in parse(conninfo).items() if k != "password"
    }


@pytest.mark.parametrize(
    "conninfo",
    ["", "host=db.example dbname=app", "postgresql://me@db.example/app", "service=prod"],
)
def test_mask_without_password_keeps_everything(conninfo: str) -> None:
    assert parse(mask(conninfo)) == parse(conninfo)
    assert MASK not in mask(conninfo)


@pytest.mark.parametrize(
    "conninfo",
    [
        f"host=db.example password={SECRET} bogus",  # a word without '='
        f"host=db.example PASSWORD={SECRET} x",  # keys are case-sensitive in libpq
        f"host=db.example password={SECRET} nokey=1 =",
        f"postgresql://me:{SECRET}@db.example/app?bogus=1",
        f"postgresql://me:{SECRET}@db.example/d%zz",
        f"postgresql://me:{SECRET}%zz@db.example/app",  # bad percent-encoding in the password
        f"postgresql://me:{SECRET}@[::1/app",
        f"password='{SECRET}' host='unterminated",
    ],
)
def test_mask_unparsable(conninfo: str) -> None:
    with pytest.raises(InterfaceError):
        parse(conninfo)  # really unparsable
    masked = mask(conninfo)
    assert SECRET not in masked
    assert MASK in masked


def test_mask_unparsable_unterminated_quoted_password() -> None:
    # libpq cannot parse this (the quote never closes), so mask() falls back to a
    # pattern; the password runs to the end of the string and must be hidden whole.
    conninfo = f"host=db.example password='{SECRET} tail"
    with pytest.raises(InterfaceError):
        parse(conninfo)
    masked = mask(conninfo)
    assert SECRET not in masked
    assert "tail" not in masked


@pytest.mark.parametrize(
    "conninfo",
    [
        f"host=db.example password={SECRET} bogus",
        f"host=db.example password='{SECRET}' =x",
        f"postgresql://me:{SECRET}@db.example/app?bogus=1",
        f"postgresql://me:{SECRET}@db.example/d%zz",
        f"password='{SECRET}' host='unterminated",
    ],
)
def test_parse_error_hides_the_password(conninfo: str) -> None:
    with pytest.raises(InterfaceError) as info:
        parse(conninfo)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.args)
    assert info.value.hint
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("conninfo", "secret"),
    [
        # libpq names the offending token - here the password itself
        (f"postgresql://me:{SECRET}%zz@db.example/app", SECRET),
        # libpq quotes the whole URI
        (f"postgresql://me:{SECRET}@[::1/app", SECRET),
        # the password runs to the end of the string: its second word is secret too
        (f"host=db.example password='{SECRET} tail", "tail"),
    ],
)
def test_parse_error_hides_the_password_libpq_echoes(conninfo: str, secret: str) -> None:
    with pytest.raises(InterfaceError) as info:
        parse(conninfo)
    assert secret not in str(info.value)


def test_parse() -> None:
    assert parse("host=h port=5433 dbname=d sslmode=verify-full") == {
        "host": "h",
        "port": "5433",
        "dbname": "d",
        "sslmode": "verify-full",
    }
    assert parse("postgresql://u@h:1/d?application_name=a") == {
        "user": "u",
        "host": "h",
        "port": "1",
        "dbname": "d",
        "application_name": "a",
    }
    assert parse("") == {}


def test_with_params() -> None:
    result = parse(with_params(f"host=h password={SECRET}", replication="database", host="h2"))
    assert result == {"host": "h2", "password": SECRET, "replication": "database"}
    with pytest.raises(InterfaceError):
        with_params(f"host=h password={SECRET} bogus", replication="database")


PASSWORDS = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
).map(lambda s: "Zq9" + s)


def kv_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@settings(max_examples=200, deadline=None)
@given(password=PASSWORDS)
def test_mask_hides_any_password(password: str) -> None:
    forms = [
        f"host=h dbname=d password={kv_quote(password)}",
        f"password={kv_quote(password)} user=u",
        f"postgresql://u:{quote(password, safe='')}@h/d",
        f"postgresql://u@h/d?password={quote(password, safe='')}",
    ]
    for conninfo in forms:
        assert parse(conninfo)["password"] == password
        masked = mask(conninfo)
        assert password not in masked
        assert parse(masked)["password"] == MASK


@settings(max_examples=200, deadline=None)
@given(password=PASSWORDS)
def test_parse_errors_never_show_a_quoted_password(password: str) -> None:
    for conninfo in (
        f"host=h password={kv_quote(password)} bogus",
        f"postgresql://u:{quote(password, safe='')}@h/d?bogus=1",
    ):
        with pytest.raises(InterfaceError) as info:
            parse(conninfo)
        assert password not in str(info.value)
        assert quote(password, safe="") not in str(info.value)
        assert password not in mask(conninfo)
