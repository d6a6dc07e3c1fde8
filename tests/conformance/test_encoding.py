"""After PostgreSQL's ``005_encoding.pl``: a subscriber database in another encoding
than the publisher's (UTF-8) receives the same characters, through the initial
copy (binary and text formats) and through apply; a character its encoding cannot
hold stops the subscription with the conversion error, naming the table."""

from __future__ import annotations

import pytest

from pgferry.testing import Cluster
from tests.conformance.conftest import Ferry
from tests.support import wait_for

SCHEMA = """
CREATE DOMAIN label AS text;
-- plain: copied in binary; labelled: a domain keeps the copy in text.
CREATE TABLE plain (id int PRIMARY KEY, v text, c varchar(20));
CREATE TABLE labelled (id int PRIMARY KEY, v label);
"""


def _database(cluster: Cluster, name: str, encoding: str) -> None:
    cluster.sql(
        f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'"
        " TEMPLATE template0"
    )


def _insert(ferry: Ferry, key: int, word: str) -> None:
    ferry.on_pub("INSERT INTO plain VALUES (%s, %s, %s)", (key, word, word))
    ferry.on_pub("INSERT INTO labelled VALUES (%s, %s)", (key, word))


@pytest.mark.parametrize(
    ("encoding", "word", "foreign"),
    [("LATIN1", "Zürich", "€"), ("EUC_JP", "東京", "😀")],
)
def test_text_is_converted_into_the_subscriber_encoding(
    ferry: Ferry, encoding: str, word: str, foreign: str
) -> None:
    _database(ferry.sub, "enc", encoding)
    ferry.sub_db = "enc"
    ferry.on_pub(SCHEMA)
    ferry.on_sub(SCHEMA)
    ferry.on_pub("CREATE PUBLICATION pub FOR TABLE plain, labelled")
    _insert(ferry, 1, word)
    ferry.subscribe("s", ["pub"])
    # The subscriber's own bytes for the word, in its encoding.
    expected = word.encode(encoding.replace("_", "-").lower())
    stored = "SELECT id, convert_to(v, %s) = %s FROM {} WHERE v = %s ORDER BY id"  # by value
    with ferry.running():
        ferry.wait_ready("s")
        for table in ("plain", "labelled"):
            rows = ferry.on_sub(stored.format(table), (encoding, expected, word))
            assert rows == [(1, True)], f"{table}: copied text is not {word!r} in {encoding}"
        _insert(ferry, 2, word)
        ferry.wait_rows(
            "SELECT id, v, c FROM plain ORDER BY id", [(1, word, word), (2, word, word)]
        )
        ferry.wait_rows("SELECT id, v FROM labelled ORDER BY id", [(1, word), (2, word)])
        for table in ("plain", "labelled"):
            rows = ferry.on_sub(stored.format(table), (encoding, expected, word))
            assert rows == [(1, True), (2, True)], f"{table}: applied text is not {word!r}"

        # A character the subscriber cannot hold: an error, nothing stored.
        ferry.on_pub("INSERT INTO plain VALUES (3, %s, 'x')", (foreign,))
        wait_for(
            lambda: "has no equivalent in encoding" in (ferry.subscription("s").last_error or ""),
            "the conversion error",
        )
        error = ferry.subscription("s").last_error or ""
        assert "public.plain" in error and encoding in error, error
        assert ferry.on_sub("SELECT count(*) FROM plain") == [(2,)]
