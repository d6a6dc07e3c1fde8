"""Replication command text per server version, option gating, and quoting.

Quoting is checked by reading the command back the way PostgreSQL does: the
replication grammar's quoted identifiers and string literals, then pgoutput's
``SplitIdentifierString`` for ``publication_names``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgferry.errors import FeatureNotSupported, InterfaceError
from pgferry.protocol import Lsn
from pgferry.sqltext import quote_ident, quote_literal
from pgferry.stream.commands import (
    PgoutputOptions,
    create_replication_slot,
    drop_replication_slot,
    identify_system,
    major_version,
    max_protocol_version,
    start_replication,
)

PG13, PG14, PG15, PG16, PG17, PG18 = 130000, 140000, 150000, 160000, 170000, 180000
ALL = [PG13, PG14, PG15, PG16, PG17, PG18]
LSN = Lsn.parse("0/16B3748")

# -- reading commands back, as the server does ---------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ident>"(?:[^"]|"")*")
      | (?P<literal>'(?:[^']|'')*')
      | (?P<punct>[(),])
      | (?P<word>[^\s"'(),]+)
    )""",
    re.VERBOSE | re.DOTALL,
)


def tokens(command: str) -> list[tuple[str, str]]:
    """(kind, value) tokens of a replication command; quotes resolved."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(command):
        if command[pos:].strip() == "":
            break
        m = _TOKEN.match(command, pos)
        assert m is not None, f"cannot tokenize {command[pos:]!r}"
        kind = m.lastgroup
        assert kind is not None
        text = m.group(kind)
        if kind == "ident":
            out.append(("ident", text[1:-1].replace('""', '"')))
        elif kind == "literal":
            out.append(("literal", text[1:-1].replace("''", "'")))
        else:
            out.append((kind, text))
        pos = m.end()
    return out


def split_identifier_string(raw: str, separator: str = ",") -> list[str]:
    """PostgreSQL's SplitIdentifierString (varlena.c), as pgoutput applies it to
    publication_names: double-quoted or bare (downcased) names, whitespace around."""
    names: list[str] = []
    i = 0
    space = " \t\n\r\f\v"
    while i < len(raw) and raw[i] in space:
        i += 1
    if i == len(raw):
        return names
    while True:
        if i < len(raw) and raw[i] == '"':
            name = ""
            i += 1
            while True:
                end = raw.find('"', i)
                assert end >= 0, "unterminated quoted name"
                name += raw[i:end]
                i = end + 1
                if i < len(raw) and raw[i] == '"':
                    name += '"'
                    i += 1
                    continue
                break
        else:
            start = i
            while i < len(raw) and raw[i] != separator and raw[i] not in space:
                i += 1
            name = raw[start:i].lower()
            assert name, "empty name"
        names.append(name)
        while i < len(raw) and raw[i] in space:
            i += 1
        if i < len(raw) and raw[i] == separator:
            i += 1
            while i < len(raw) and raw[i] in space:
                i += 1
            continue
        assert i == len(raw), f"junk after name: {raw[i:]!r}"
        return names


def read_start_replication(command: str) -> tuple[str, Lsn, list[tuple[str, str]]]:
    """START_REPLICATION SLOT name LOGICAL X/Y (opt 'value', ...) -> parts."""
    toks = tokens(command)
    assert toks[:2] == [("word", "START_REPLICATION"), ("word", "SLOT")]
    assert toks[2][0] == "ident"
    assert toks[3] == ("word", "LOGICAL")
    assert toks[4][0] == "word"
    lsn = Lsn.parse(toks[4][1])
    assert toks[5] == ("punct", "(") and toks[-1] == ("punct", ")")
    options: list[tuple[str, str]] = []
    body = toks[6:-1]
    for n in range(0, len(body), 3):
        name, value = body[n], body[n + 1]
        assert name[0] == "ident" and value[0] == "literal", body
        options.append((name[1], value[1]))
        if n + 2 < len(body):
            assert body[n + 2] == ("punct", ",")
    return toks[2][1], lsn, options


def options_of(command: str) -> dict[str, str]:
    return dict(read_start_replication(command)[2])


def opts(**kwargs: Any) -> PgoutputOptions:
    kwargs.setdefault("publication_names", ("pub",))
    return PgoutputOptions(**kwargs)


# -- versions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num", "major", "proto"),
    [
        (130000, 13, 1),
        (130015, 13, 1),
        (140000, 14, 2),
        (149999, 14, 2),
        (150000, 15, 3),
        (150004, 15, 3),
        (160000, 16, 4),
        (170002, 17, 4),
        (180000, 18, 4),
    ],
)
def test_versions(num: int, major: int, proto: int) -> None:
    assert major_version(num) == major
    assert max_protocol_version(num) == proto


# -- simple commands -----------------------------------------------------------------------


def test_identify_system() -> None:
    assert identify_system() == "IDENTIFY_SYSTEM"


def test_drop_replication_slot() -> None:
    assert drop_replication_slot("s") == 'DROP_REPLICATION_SLOT "s"'
    assert drop_replication_slot('my "slot"', wait=True) == (
        'DROP_REPLICATION_SLOT "my ""slot""" WAIT'
    )


# -- CREATE_REPLICATION_SLOT ---------------------------------------------------------------


@pytest.mark.parametrize("version", [PG13, PG14])
def test_create_slot_old_syntax(version: int) -> None:
    assert (
        create_replication_slot("s", version)
        == 'CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput NOEXPORT_SNAPSHOT'
    )
    assert (
        create_replication_slot("s", version, temporary=True, snapshot="export")
        == 'CREATE_REPLICATION_SLOT "s" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT'
    )
    assert (
        create_replication_slot("s", version, snapshot="use")
        == 'CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput USE_SNAPSHOT'
    )
    with pytest.raises(FeatureNotSupported) as info:
        create_replication_slot("s", version, two_phase=True)
    assert "15" in str(info.value)


@pytest.mark.parametrize("version", [PG15, PG16, PG17, PG18])
def test_create_slot_new_syntax(version: int) -> None:
    assert (
        create_replication_slot("s", version)
        == "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'nothing')"
    )
    assert (
        create_replication_slot("s", version, temporary=True, snapshot="export", two_phase=True)
        == 'CREATE_REPLICATION_SLOT "s" TEMPORARY LOGICAL pgoutput '
        "(SNAPSHOT 'export', TWO_PHASE true)"
    )
    assert create_replication_slot("s", version, snapshot="use").endswith("(SNAPSHOT 'use')")


@pytest.mark.parametrize("version", ALL)
def test_create_slot_quotes_the_name(version: int) -> None:
    command = create_replication_slot("we\"ird, slot's name", version)
    toks = tokens(command)
    assert toks[0] == ("word", "CREATE_REPLICATION_SLOT")
    assert toks[1] == ("ident", "we\"ird, slot's name")
    with pytest.raises(InterfaceError):
        create_replication_slot("nul\0", version)


# -- START_REPLICATION ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "proto"), [(PG13, 1), (PG14, 2), (PG15, 3), (PG16, 4), (PG17, 4), (PG18, 4)]
)
def test_start_replication_defaults(version: int, proto: int) -> None:
    command, used = start_replication("slot", LSN, opts(), version)
    assert used == proto
    assert command == (
        f'START_REPLICATION SLOT "slot" LOGICAL 0/16B3748 '
        f'("proto_version" \'{proto}\', "publication_names" \'"pub"\')'
    )


def test_start_replication_every_option() -> None:
    options = opts(
        publication_names=("a", "b"),
        binary=True,
        messages=True,
        streaming="parallel",
        two_phase=True,
        origin="none",
        extra={"my_option": "it's"},
    )
    command, used = start_replication("slot", Lsn(0), options, PG16)
    assert used == 4
    slot, lsn, parsed = read_start_replication(command)
    assert (slot, lsn) == ("slot", 0)
    assert parsed == [
        ("proto_version", "4"),
        ("publication_names", '"a","b"'),
        ("binary", "true"),
        ("messages", "true"),
        ("streaming", "parallel"),
        ("two_phase", "true"),
        ("origin", "none"),
        ("my_option", "it's"),
    ]


def test_start_lsn_text() -> None:
    command, _ = start_replication("s", Lsn.parse("FFFFFFFF/FFFFFFFF"), opts(), PG16)
    assert read_start_replication(command)[1] == 2**64 - 1
    assert " LOGICAL FFFFFFFF/FFFFFFFF (" in command


NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(slot=NAMES, publications=st.lists(NAMES, min_size=1, max_size=4))
def test_names_survive_the_servers_parsing(slot: str, publications: list[str]) -> None:
    command, _ = start_replication(slot, LSN, opts(publication_names=tuple(publications)), PG16)
    got_slot, _, parsed = read_start_replication(command)
    assert got_slot == slot
    assert split_identifier_string(dict(parsed)["publication_names"]) == publications


@pytest.mark.parametrize(
    "names",
    [
        ("My Pub",),
        ("a,b", "c"),
        ('quo"te', "it's"),
        ("  spaced  ", "UPPER", "ünï"),
        ("back\\slash",),
    ],
)
def test_awkward_publication_names(names: tuple[str, ...]) -> None:
    command, _ = start_replication('sl"ot', LSN, opts(publication_names=names), PG14)
    slot, _, parsed = read_start_replication(command)
    assert slot == 'sl"ot'
    assert split_identifier_string(dict(parsed)["publication_names"]) == list(names)


def test_nul_in_names_or_values_is_refused() -> None:
    for options, slot in (
        (opts(publication_names=("p\0",)), "s"),
        (opts(), "s\0"),
        (opts(extra={"k": "v\0"}), "s"),
        (opts(extra={"k\0": "v"}), "s"),
    ):
        with pytest.raises(InterfaceError):
            start_replication(slot, LSN, options, PG16)


def test_quote_helpers() -> None:
    assert quote_ident('a"b') == '"a""b"'
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("back\\slash") == "'back\\slash'"  # standard strings: no escapes


# -- option gating -------------------------------------------------------------------------

#: (what the error names, options, first server version with it, the rendered option)
GATED: list[tuple[str, dict[str, Any], int, tuple[str, str]]] = [
    ("binary", {"binary": True}, PG14, ("binary", "true")),
    ("messages", {"messages": True}, PG14, ("messages", "true")),
    ("streaming", {"streaming": "on"}, PG14, ("streaming", "on")),
    ("streaming = parallel", {"streaming": "parallel"}, PG16, ("streaming", "parallel")),
    ("two_phase", {"two_phase": True}, PG15, ("two_phase", "true")),
    ("origin", {"origin": "any"}, PG16, ("origin", "any")),
    ("origin", {"origin": "none"}, PG16, ("origin", "none")),
]


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(
    ("what", "kwargs", "since", "rendered"), GATED, ids=[f"{g[0]}-{g[3][1]}" for g in GATED]
)
def test_option_gating(
    what: str, kwargs: dict[str, Any], since: int, rendered: tuple[str, str], version: int
) -> None:
    options = opts(**kwargs)
    if version < since:
        with pytest.raises(FeatureNotSupported) as info:
            start_replication("s", LSN, options, version)
        assert what in str(info.value)
        assert str(since // 10000) in str(info.value)
    else:
        command, _ = start_replication("s", LSN, options, version)
        assert rendered in read_start_replication(command)[2]


@pytest.mark.parametrize(
    ("kwargs", "version", "needed"),
    [
        ({"streaming": "on", "protocol_version": 1}, PG14, 2),
        ({"two_phase": True, "protocol_version": 2}, PG15, 3),
        ({"streaming": "parallel", "protocol_version": 3}, PG16, 4),
    ],
)
def test_option_needs_a_newer_protocol(kwargs: dict[str, Any], version: int, needed: int) -> None:
    with pytest.raises(FeatureNotSupported) as info:
        start_replication("s", LSN, opts(**kwargs), version)
    assert f"protocol version {needed}" in str(info.value)


@pytest.mark.parametrize(("version", "newest"), [(PG13, 1), (PG14, 2), (PG15, 3)])
def test_protocol_newer_than_the_server(version: int, newest: int) -> None:
    with pytest.raises(FeatureNotSupported):
        start_replication("s", LSN, opts(protocol_version=newest + 1), version)
    _, used = start_replication("s", LSN, opts(protocol_version=newest), version)
    assert used == newest


@pytest.mark.parametrize("version", ALL)
def test_explicit_older_protocol_is_used(version: int) -> None:
    command, used = start_replication("s", LSN, opts(protocol_version=1), version)
    assert used == 1
    assert options_of(command)["proto_version"] == "1"


@pytest.mark.parametrize("bad", [0, 5, -1, 100])
def test_protocol_version_that_does_not_exist(bad: int) -> None:
    # 0 included: it is not a protocol version, not "use the default" (None is).
    with pytest.raises(InterfaceError):
        opts(protocol_version=bad).resolve_protocol(PG16)


def test_resolve_protocol() -> None:
    assert opts().resolve_protocol(PG13) == 1
    assert opts().resolve_protocol(PG18) == 4
    assert opts(streaming="parallel").resolve_protocol(PG16) == 4
    assert opts(streaming="on", protocol_version=2).resolve_protocol(PG16) == 2


def test_publications_needed() -> None:
    with pytest.raises(InterfaceError):
        start_replication("s", LSN, opts(publication_names=()), PG16)


def test_reader_self_check() -> None:
    # the test-side reader must refuse what the server refuses, or it proves nothing
    assert split_identifier_string('"a" , b ,"C"') == ["a", "b", "C"]
    assert split_identifier_string("Abc") == ["abc"]
    for bad in ('"a" "b"', "a,", '"a', "a b"):
        with pytest.raises(AssertionError):
            split_identifier_string(bad)
    assert tokens("X \"a\"\"b\" 'c''d'") == [("word", "X"), ("ident", 'a"b'), ("literal", "c'd")]
