"""Classifying captured statements (pure): the corpus is safe, the statements
deliberately not replicated are not, and what the subscriber runs."""

from __future__ import annotations

import json

import pytest

from pgferry.ddl.classify import DdlCommand, DdlObject, runnable, statements, unsafe
from tests.ddl.corpus import CORPUS, NOT_REPLICATED


def _command(text: str, tag: str = "ALTER TABLE", *objects: DdlObject) -> DdlCommand:
    return DdlCommand(1, tag, text, "public", "app", ("p",), objects)


def _tag(text: str) -> str:
    words = text.split()
    if words[0] == "SELECT":
        return "SELECT INTO"
    if words[:4] == ["CREATE", "TABLE", "events_copy", "AS"]:
        return "CREATE TABLE AS"
    if words[0] == "DO":
        return "ALTER TABLE"
    return " ".join(w.strip('"') for w in words[:2])


@pytest.mark.parametrize(
    "statement", [s for _, s in CORPUS if not s.startswith(("INSERT", "UPDATE"))]
)
def test_the_corpus_is_replicated(statement: str) -> None:
    assert unsafe(_command(statement, _tag(statement)), ["p"]) is None


@pytest.mark.parametrize(("statement", "why"), NOT_REPLICATED)
def test_deliberately_not_replicated(statement: str, why: str) -> None:
    assert unsafe(_command(statement, _tag(statement)), ["p"]) is not None, why


def test_several_statements_and_temporary_objects() -> None:
    assert unsafe(_command("ALTER TABLE t ADD a int; ALTER TABLE t ADD b int"), ["p"]) == (
        "the query string holds 2 statements; only the first one's objects are known"
        " (send them one by one)"
    )
    assert unsafe(_command("CREATE TABLE u (id int); INSERT INTO u VALUES (1)"), ["p"])
    assert unsafe(_command("ALTER TABLE t ADD a int; CREATE TABLE u AS SELECT 1"), ["p"])
    assert unsafe(_command("CREATE TEMP VIEW v AS SELECT 1", "CREATE VIEW"), ["p"])
    # A semicolon inside a literal, a comment or a dollar quote does not split.
    text = "COMMENT ON TABLE t IS 'a; b' -- c; d\n"
    assert len(statements(text)) == 1
    assert len(statements("CREATE FUNCTION f() RETURNS int AS $x$ SELECT 1; $x$ LANGUAGE sql")) == 1
    assert unsafe(_command("ALTER TABLE t ADD COLUMN c int DEFAULT now()"), ["p"])
    assert unsafe(_command("ALTER TABLE t ALTER c TYPE int USING random()::int"), ["p"])
    assert unsafe(_command("ALTER TABLE t ALTER c SET DEFAULT now()"), ["p"]) is None
    assert unsafe(_command("ALTER TABLE t ADD COLUMN c text DEFAULT 'now()'"), ["p"]) is None


def test_mixing_tables_in_and_out_of_the_publication() -> None:
    ours = DdlObject("table", "public.a", "public", "public.a", ("p",), True)
    other = DdlObject("table", "public.b", "public", "public.b", (), True)
    command = _command("DROP TABLE a, b", "DROP TABLE", ours, other)
    assert unsafe(command, ["p"]) == "it touches tables of the subscription and tables outside it"
    assert unsafe(_command("DROP TABLE a", "DROP TABLE", ours), ["p"]) is None


def test_runnable_drops_concurrently() -> None:
    def run(text: str) -> str:
        return runnable(_command(text))

    assert run('CREATE INDEX CONCURRENTLY "i" ON "t" ("c")') == 'CREATE INDEX  "i" ON "t" ("c")'
    assert run("CREATE UNIQUE INDEX CONCURRENTLY i ON t (c);") == "CREATE UNIQUE INDEX  i ON t (c)"
    assert run("DROP INDEX CONCURRENTLY i") == "DROP INDEX  i"
    assert run("ALTER TABLE m DETACH PARTITION m1 CONCURRENTLY") == (
        "ALTER TABLE m DETACH PARTITION m1 "
    )
    # A name that is the word itself, quoted, stays.
    assert run('CREATE INDEX "concurrently" ON t (c)') == 'CREATE INDEX "concurrently" ON t (c)'


def test_a_queue_row_in_text_form() -> None:
    objects = [
        {
            "type": "table",
            "identity": 'public."we ird"',
            "schema": "public",
            "table": 'public."we ird"',
            "publications": ['p"x'],
            "listed": ['p"x'],
            "dropped": False,
        }
    ]
    command = DdlCommand.from_values(
        {
            "id": "7",
            "command_tag": "ALTER TABLE",
            "command": 'ALTER TABLE "we ird" ADD c int',
            "search_path": '"$user", public',
            "role": "app",
            "publications": json.dumps(['p"x']),
            "objects": json.dumps(objects),
        }
    )
    assert command.id == 7 and command.publications == ('p"x',)
    assert command.objects[0].listed == ('p"x',)
    assert command.concerns(['p"x', "q"]) and not command.concerns(["q"])
