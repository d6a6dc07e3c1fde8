"""Classifying captured statements (pure): the corpus is safe, the statements
deliberately not replicated are not, and what the subscriber runs."""

from __future__ import annotations

import json

import pytest

from pgferry.ddl.classify import DdlCommand, DdlObject, runnable, statements, unsafe
from pgferry.ddl.execute import command_of
from pgferry.protocol.messages import Column, Relation
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


@pytest.mark.parametrize(
    "clause",
    [
        "ADD COLUMN t timestamptz DEFAULT 'now'::timestamptz",
        "ADD COLUMN t timestamptz DEFAULT 'now'",
        "ADD COLUMN t timestamp DEFAULT 'now'",
        "ADD COLUMN IF NOT EXISTS t timestamp(3) NOT NULL DEFAULT ' NoW '",
        "ADD COLUMN d date DEFAULT 'today'",
        "ADD COLUMN d date DEFAULT 'TOMORROW'::date",
        "ADD d text DEFAULT 'yesterday'::date::text",
        "ADD COLUMN t timestamptz DEFAULT CAST('now' AS timestamptz)",
        "ADD COLUMN t timestamptz DEFAULT cast ( 'now' as timestamp with time zone )",
        "ADD COLUMN t timestamptz DEFAULT timestamptz 'now'",
        "ADD COLUMN t timestamptz DEFAULT pg_catalog.timestamptz 'now'",
        "ADD COLUMN t timestamptz DEFAULT timestamp with time zone 'now'",
        "ADD COLUMN t time DEFAULT time 'now'",
        "ADD COLUMN t timetz DEFAULT 'now' :: timetz",
        "ADD COLUMN t timestamp DEFAULT 'tomorrow 10:00'",
        "ADD COLUMN t timestamptz DEFAULT $$now$$::timestamptz",
        "ADD COLUMN t timestamptz DEFAULT E'now'::timestamptz",
        "ADD COLUMN t timestamp[] DEFAULT '{now}'",
        "ADD COLUMN t text DEFAULT to_char('now'::timestamptz, 'YYYY')",
        "ALTER COLUMN c TYPE date USING 'today'",
        "ALTER COLUMN c TYPE timestamptz USING coalesce(c, 'now')",
    ],
)
def test_a_date_time_literal_read_at_execution_is_volatile(clause: str) -> None:
    reason = unsafe(_command(f"ALTER TABLE t {clause}"), ["p"])
    assert reason is not None and "may give other values on the subscriber" in reason, clause


@pytest.mark.parametrize(
    "clause",
    [
        "ADD COLUMN c text DEFAULT 'now'",
        "ADD COLUMN c text DEFAULT 'today'::text",
        "ADD COLUMN c varchar(10) DEFAULT 'Tomorrow'",
        "ADD COLUMN t timestamptz DEFAULT 'epoch'::timestamptz",
        "ADD COLUMN t timestamptz DEFAULT 'infinity'",
        "ADD COLUMN d date DEFAULT '2025-03-04'",
        "ADD COLUMN t timestamp DEFAULT 'snow'",
        'ADD COLUMN jd jsonb DEFAULT \'{"when": "today"}\'',
        "ALTER COLUMN t SET DEFAULT 'now'::timestamptz",
        "ALTER COLUMN c TYPE text USING 'now'",
    ],
)
def test_constants_and_text_are_not_read_at_execution(clause: str) -> None:
    assert unsafe(_command(f"ALTER TABLE t {clause}"), ["p"]) is None, clause


@pytest.mark.parametrize(
    "text",
    [
        "BEGIN; ALTER TABLE t ADD COLUMN c int; COMMIT;",
        "begin;alter table t add column c int;commit",
        "BEGIN WORK; ALTER TABLE t ADD COLUMN c int; COMMIT WORK;",
        "BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED;\nALTER TABLE t ADD COLUMN c int;\nEND;",
        "START TRANSACTION; ALTER TABLE t ADD COLUMN c int; COMMIT AND NO CHAIN ;;  ",
        "START TRANSACTION READ WRITE; ALTER TABLE t ADD COLUMN c int; END TRANSACTION",
        "-- migration 42\nBEGIN; /* add c; */ ALTER TABLE t ADD COLUMN c int; -- c;\nCOMMIT; --",
    ],
)
def test_a_transaction_block_around_one_statement_is_that_statement(text: str) -> None:
    command = _command(text)
    assert unsafe(command, ["p"]) is None
    assert runnable(command).upper() == "ALTER TABLE T ADD COLUMN C INT"


def test_transaction_control_around_other_statements() -> None:
    def run(text: str) -> str:
        return runnable(_command(text))

    # Several DDL statements stay several, with or without the block.
    several = "BEGIN; ALTER TABLE t ADD a int; ALTER TABLE t ADD b int; COMMIT;"
    assert unsafe(_command(several), ["p"]) == (
        "the query string holds 2 statements; only the first one's objects are known"
        " (send them one by one)"
    )
    assert run(several) == several
    # The block does not hide what the statement is.
    assert unsafe(_command("BEGIN; ALTER TABLE t ADD c int DEFAULT now(); COMMIT"), ["p"])
    assert unsafe(_command("BEGIN; CREATE TEMP TABLE x (a int); COMMIT", "CREATE TABLE"), ["p"])
    assert unsafe(_command("BEGIN; ALTER TABLE t ADD c int; ROLLBACK; COMMIT"), ["p"])
    assert "DO statement" in (
        unsafe(_command("BEGIN; DO $$ BEGIN NULL; END $$; COMMIT;"), ["p"]) or ""
    )
    # A semicolon or COMMIT in a literal, a dollar quote or a comment is no boundary.
    assert run("BEGIN; COMMENT ON TABLE t IS 'x; COMMIT; y'; COMMIT") == (
        "COMMENT ON TABLE t IS 'x; COMMIT; y'"
    )
    function = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END"
    assert run(f"BEGIN; {function}; COMMIT;") == function
    body = "CREATE FUNCTION g() RETURNS void AS $b$ BEGIN; COMMIT; $b$ LANGUAGE sql"
    assert run(f"START TRANSACTION; {body}; END") == body
    assert unsafe(_command(f"START TRANSACTION; {body}; END", "CREATE FUNCTION"), ["p"]) is None
    # CONCURRENTLY still goes.
    assert run("BEGIN; CREATE INDEX CONCURRENTLY i ON t (c); COMMIT;") == "CREATE INDEX  i ON t (c)"
    assert unsafe(_command("BEGIN; COMMIT;"), ["p"]) == "the statement text is empty"


def test_settings_of_a_queue_row() -> None:
    values = {
        "id": "3",
        "command_tag": "ALTER TABLE",
        "command": "ALTER TABLE t ALTER ts TYPE timestamptz",
        "search_path": "public",
        "role": "app",
        "publications": '["p"]',
        "objects": "[]",
    }
    # A row of an older queue has no settings column: none are set.
    assert DdlCommand.from_values(values).settings == {}
    assert DdlCommand.from_values({**values, "settings": None}).settings == {}
    recorded = {
        "TimeZone": "America/New_York",
        "DateStyle": "SQL, DMY",
        "IntervalStyle": "postgres",
        "extra_float_digits": "1",
        # Only the known names are kept: a queue row sets nothing else.
        "session_replication_role": "origin",
        "search_path": "evil",
    }
    command = DdlCommand.from_values({**values, "settings": json.dumps(recorded)})
    assert command.settings == {
        "TimeZone": "America/New_York",
        "DateStyle": "SQL, DMY",
        "IntervalStyle": "postgres",
        "extra_float_digits": "1",
    }


def test_an_insert_into_an_older_queue() -> None:
    """A publisher whose queue has no ``settings`` column (an older capture): its
    statements run with no settings of their own."""
    row: dict[str, bytes] = {
        "id": b"9",
        "at": b"2025-01-01",
        "xid": b"1",
        "started": b"2025-01-01",
        "publications": b'["p"]',
        "command_tag": b"ALTER TABLE",
        "command": b"ALTER TABLE t ADD c int",
        "search_path": b"public",
        "role": b"app",
        "objects": b"[]",
    }
    columns = tuple(Column(name, 25, -1, name == "id") for name in row)
    relation = Relation(None, 1, "pgferry_ddl", "queue", "d", columns)
    values = list(row.values())
    command = command_of(relation, values)
    assert (command.id, command.command, command.settings) == (9, "ALTER TABLE t ADD c int", {})
