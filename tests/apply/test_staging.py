"""Set-based apply (:mod:`pgferry.apply.staging`): net effect per key, and what
must still be applied in order, row by row."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from pgferry._cmodule import SPEEDUPS
from pgferry.apply.mapping import Stamps, TableMap, UniqueIndex
from pgferry.apply.staging import Eligibility, Stage, _escape, _py_line, eligibility
from pgferry.catalog import store
from pgferry.protocol.messages import (
    UNCHANGED_TOAST,
    BinaryValue,
    Column,
    Delete,
    Insert,
    Relation,
    Update,
    Value,
)
from tests.apply.pair import Pair

RELATION = Relation(
    None,
    1,
    "public",
    "t",
    "d",
    (Column("id", 23, -1, True), Column("v", 25, -1, False)),
)


def _table(**changes: object) -> TableMap:
    fields: dict[str, object] = {
        "relation": RELATION,
        "target": sql.SQL("public.t"),
        "types": ("integer", "text"),
        "names": ("id", "v"),
        "key": (0,),
        "full": False,
        "no_equality": frozenset(),
        "uniques": (UniqueIndex("t_pkey", (0,)),),
    }
    fields.update(changes)
    return TableMap(**fields)  # type: ignore[arg-type]


def _ins(k: int, v: str | None) -> Insert:
    return Insert(None, 1, (str(k).encode(), None if v is None else v.encode()))


def _upd(k: int, v: Value, old: int | None = None) -> Update:
    old_tuple = None if old is None else (str(old).encode(), None)
    return Update(None, 1, "K" if old is not None else None, old_tuple, (str(k).encode(), v))


def _del(k: int) -> Delete:
    return Delete(None, 1, "K", (str(k).encode(), None))


def _lines(stage: Stage) -> list[bytes]:
    """The COPY lines without their entry numbers."""
    data, _counts = stage.copy_data()
    return sorted(line.rsplit(b"\t", 1)[0] for line in data.splitlines())


def test_eligibility() -> None:
    assert eligibility(_table()) is Eligibility.KEYED
    assert eligibility(_table(fires_triggers=True)) is Eligibility.NONE
    assert eligibility(_table(full=True)) is Eligibility.INSERTS
    # Rows another origin wrote are reported and applied: only under that policy.
    assert eligibility(_table(stamps=Stamps.ORIGIN)) is Eligibility.KEYED
    assert eligibility(_table(stamps=Stamps.ORIGIN), False) is Eligibility.INSERTS
    assert eligibility(_table(stamps=Stamps.TIME), False) is Eligibility.KEYED
    # The key is not a local unique index (several rows could match it).
    assert eligibility(_table(uniques=())) is Eligibility.INSERTS
    # Another unique index: the order of rows could matter for it.
    other = (UniqueIndex("t_pkey", (0,)), UniqueIndex("t_v", (1,)))
    assert eligibility(_table(uniques=other)) is Eligibility.INSERTS


def test_net_effect_per_key() -> None:
    stage = Stage(_table(), Eligibility.KEYED)
    changes: list[Insert | Update | Delete] = [
        _ins(1, "a"),  # inserted, updated twice: INSERT of the last version
        _upd(1, b"b"),
        _upd(1, b"c"),
        _upd(2, b"x"),  # existed: UPDATE
        _del(3),  # existed: DELETE
        _ins(4, "tmp"),  # inserted then deleted: must be absent
        _del(4),
        _upd(5, b"y"),  # updated then deleted: DELETE
        _del(5),
        _ins(6, "p"),  # inserted, deleted, inserted: INSERT
        _del(6),
        _ins(6, "q\tr\\s\nt"),
    ]
    assert all(stage.add(c) for c in changes)
    assert _lines(stage) == sorted(
        [
            b"1\tc\tI",
            b"2\tx\tU",
            b"3\t\\N\tD",
            b"4\t\\N\tA",
            b"5\t\\N\tD",
            b"6\tq\\tr\\\\s\\nt\tI",
        ]
    )
    assert stage.copy_data()[1] == {"D": 2, "U": 1, "I": 2, "A": 1}


@pytest.mark.parametrize(
    "history",
    [
        [_ins(1, "a"), _ins(1, "b")],  # insert of an existing key
        [_upd(1, b"a"), _ins(1, "b")],
        [_del(1), _ins(1, "b")],  # delete then reinsert resets unsent columns
        [_del(1), _upd(1, b"b")],  # update of a deleted row
        [_del(1), _del(1)],
        [_upd(2, b"a", old=1)],  # key change
        [_upd(1, UNCHANGED_TOAST)],  # unchanged TOAST with nothing to take it from
        [_ins(1, None), Insert(None, 1, (None, b"x"))],  # NULL key
    ],
)
def test_what_cannot_be_staged(history: list[Insert | Update | Delete]) -> None:
    stage = Stage(_table(), Eligibility.KEYED)
    *before, last = history
    assert all(stage.add(c) for c in before)
    assert not stage.add(last)


def test_unchanged_toast_takes_the_batch_s_last_value() -> None:
    stage = Stage(_table(), Eligibility.KEYED)
    assert stage.add(_upd(1, b"big"))
    assert stage.add(_upd(1, UNCHANGED_TOAST))
    assert _lines(stage) == [b"1\tbig\tU"]


def test_inserts_only_stage() -> None:
    stage = Stage(_table(full=True), Eligibility.INSERTS)
    assert stage.add(_ins(1, "a")) and stage.add(_ins(1, "a"))
    assert not stage.add(_del(1))
    assert _lines(stage) == [b"1\ta\tI", b"1\ta\tI"]


SCHEMA = """
CREATE TABLE k (id int PRIMARY KEY, v text, big text, n int DEFAULT 0);
CREATE TABLE nokey (a int, b text);
CREATE TABLE uq (id int PRIMARY KEY, email text UNIQUE);
CREATE TABLE trig (id int PRIMARY KEY, v text);
CREATE TABLE trig_log (id serial, op text, old_v text, new_v text);
CREATE FUNCTION log_trig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.trig_log (op, old_v, new_v) VALUES (TG_OP,
    CASE WHEN TG_OP <> 'INSERT' THEN OLD.v END, CASE WHEN TG_OP <> 'DELETE' THEN NEW.v END);
  RETURN NULL;
END $$;
CREATE TRIGGER trig_log AFTER INSERT OR UPDATE OR DELETE ON trig
  FOR EACH ROW EXECUTE FUNCTION log_trig();
"""

WORKLOAD = [
    "INSERT INTO k SELECT g, 'v' || g, repeat('B', 3000) || g FROM generate_series(1, 300) g",
    "INSERT INTO nokey SELECT g, 'b' FROM generate_series(1, 50) g",
    "INSERT INTO uq VALUES (1, 'a'), (2, 'b')",
    "INSERT INTO trig VALUES (1, 'one'), (2, 'two')",
    "UPDATE k SET v = 'again' || id WHERE id <= 100",
    "UPDATE k SET v = 'third' || id WHERE id <= 50",
    "DELETE FROM k WHERE id BETWEEN 40 AND 60",
    "INSERT INTO k SELECT g, 'back' || g, 'small' FROM generate_series(45, 55) g",
    "UPDATE k SET id = id + 1000 WHERE id BETWEEN 200 AND 210",
    "UPDATE k SET v = 'after key change' WHERE id BETWEEN 1200 AND 1205",
    "INSERT INTO k VALUES (5000, 'tmp', 'tmp')",
    "DELETE FROM k WHERE id = 5000",
    "UPDATE uq SET email = 'c' WHERE id = 1",
    "UPDATE uq SET email = 'a' WHERE id = 2",
    "UPDATE trig SET v = 'uno' WHERE id = 1",
    "UPDATE trig SET v = 'eins' WHERE id = 1",
    "DELETE FROM trig WHERE id = 2",
    "UPDATE nokey SET b = 'c' WHERE a = 1",
]


def _publish(pair: Pair, **options: object) -> None:
    pair.publish(SCHEMA, ["k", "nokey", "uq", "trig"], **options)
    pair.cluster.sql("ALTER TABLE nokey REPLICA IDENTITY FULL", dbname=pair.pub)
    pair.cluster.sql("ALTER TABLE trig ENABLE ALWAYS TRIGGER trig_log", dbname=pair.sub)


def _state(pair: Pair, db: str) -> list[list[tuple[object, ...]]]:
    return [
        pair.cluster.sql(f"SELECT * FROM {t} ORDER BY 1, 2", dbname=db)
        for t in ("k", "nokey", "uq", "trig")
    ]


def test_batch_of_mixed_changes_matches_the_publisher(pair: Pair) -> None:
    _publish(pair)
    for statement in WORKLOAD:
        pair.cluster.sql(statement, dbname=pair.pub)
    worker = pair.sync()
    assert _state(pair, pair.sub) == _state(pair, pair.pub)
    # The set-based path did the bulk of the work.
    assert worker.applier is not None
    assert worker.applier.staged_rows >= 300
    # Row triggers saw every change, in order, as with exact apply.
    log = pair.rows("SELECT op, old_v, new_v FROM trig_log ORDER BY id")
    assert log == [
        ("INSERT", None, "one"),
        ("INSERT", None, "two"),
        ("UPDATE", "one", "uno"),
        ("UPDATE", "uno", "eins"),
        ("DELETE", "two", None),
    ]
    with pair.cluster.connect(pair.sub) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pgferry.conflict WHERE subscription = 'ferry'"
        ).fetchone() == (0,)


def _published_with_rows(pair: Pair) -> None:
    """Published and applied: 20 rows of k on both sides."""
    _publish(pair)
    pair.cluster.sql(
        "INSERT INTO k SELECT g, 'v', 'b' FROM generate_series(1, 20) g", dbname=pair.pub
    )
    pair.sync()


def test_a_missing_row_in_a_staged_batch_is_found_and_logged_exactly(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgferry.apply")
    _published_with_rows(pair)
    pair.cluster.sql("DELETE FROM k WHERE id = 7", dbname=pair.sub)
    pair.cluster.sql("UPDATE k SET v = 'w' WHERE id <= 10", dbname=pair.pub)
    pair.cluster.sql("UPDATE k SET n = 1 WHERE id > 10", dbname=pair.pub)
    pair.sync()
    # Native skips the missing row and counts one update_missing; so does pgferry,
    # after the staged batch is found short and applied again row by row.
    expected = [r for r in _state(pair, pair.pub)[0] if r[0] != 7]
    assert _state(pair, pair.sub)[0] == expected
    # The staged batch came up short and was applied again exactly.
    assert "staged batch failed; applying up to" in caplog.text
    with pair.cluster.connect(pair.sub) as conn:
        rows = conn.execute(
            "SELECT conflict_type, key::text FROM pgferry.conflict WHERE subscription = 'ferry'"
        ).fetchall()
    assert rows == [("update_missing", '{"id": "7"}')]


def test_rows_written_by_another_origin_are_reported_once_per_key(pair: Pair) -> None:
    """track_commit_timestamp is on in the test clusters: a staged UPDATE or DELETE
    of a locally written row is an *_origin_differs conflict, applied and logged
    for the first remote change that met the row, as exact apply logs it."""
    _published_with_rows(pair)
    pair.cluster.sql("UPDATE k SET n = 99 WHERE id IN (3, 4)", dbname=pair.sub)
    pair.cluster.sql("UPDATE k SET v = 'first' WHERE id <= 5", dbname=pair.pub)
    pair.cluster.sql("UPDATE k SET v = 'second' WHERE id <= 5", dbname=pair.pub)
    pair.cluster.sql("DELETE FROM k WHERE id = 4", dbname=pair.pub)
    worker = pair.sync()
    assert worker.applier is not None and worker.applier.staged_rows >= 5
    assert _state(pair, pair.sub)[0] == _state(pair, pair.pub)[0]
    with pair.cluster.connect(pair.sub) as conn:
        rows = conn.execute(
            "SELECT conflict_type, key->>'id', remote_row->>'v', local_row->>'n', applied"
            " FROM pgferry.conflict WHERE subscription = 'ferry' ORDER BY 2"
        ).fetchall()
        counted = store.stats(conn, "ferry")["confl_update_origin_differs"]
    assert rows == [
        ("update_origin_differs", "3", "first", "99", True),
        ("update_origin_differs", "4", "first", "99", True),
    ]
    assert counted == 2


@given(
    st.lists(
        st.one_of(st.none(), st.binary(max_size=8), st.sampled_from([b"\\N", b"\t", b"a\\b"])),
        min_size=1,
        max_size=6,
    )
)
def test_copy_lines_escape_exactly_what_copy_needs(values: list[bytes | None]) -> None:
    row = tuple(values)
    assert _py_line(row, b"\n") == b"\t".join(map(_escape, row)) + b"\n"


# -- the C twin of Stage.add -----------------------------------------------------------

_key_values = st.sampled_from([b"1", b"2", b"3"])
_column_values = st.one_of(
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.sampled_from([b"", b"a", b"bb", b"c\td"]),
    st.just(BinaryValue(b"\x00\x01")),
)
_keys = st.one_of(_key_values, st.none(), st.just(UNCHANGED_TOAST), st.just(BinaryValue(b"1")))
_rows = st.tuples(_keys, _keys, _column_values)
_changes = st.one_of(
    st.builds(lambda new: Insert(None, 1, new), _rows),
    st.builds(
        lambda old, new: Update(None, 1, None if old is None else "K", old, new),
        st.one_of(st.none(), _rows),
        _rows,
    ),
    st.builds(lambda old: Delete(None, 1, "K", old), _rows),
)


@pytest.mark.skipif(SPEEDUPS is None, reason="pgferry._speedups not built")
@pytest.mark.parametrize(
    ("key", "kind"),
    [((0,), Eligibility.KEYED), ((1, 0), Eligibility.KEYED), ((0,), Eligibility.INSERTS)],
    ids=["one-column key", "two-column key", "inserts only"],
)
@given(history=st.lists(_changes, max_size=30))
def test_the_c_twin_of_add_stages_exactly_as_the_python_one(
    key: tuple[int, ...], kind: Eligibility, history: list[Insert | Update | Delete]
) -> None:
    shape = {
        "relation": RELATION._replace(columns=(*RELATION.columns, Column("w", 25, -1, False))),
        "types": ("integer", "integer", "text"),
        "names": ("id", "id2", "w"),
        "key": key,
        "uniques": (UniqueIndex("t_pkey", key),),
    }
    c_stage, py_stage = Stage(_table(**shape), kind), Stage(_table(**shape), kind)
    for n, change in enumerate(history):
        expected = py_stage._py_add(change, n)
        assert c_stage.add(change, n) == expected, change
        assert c_stage._rows == py_stage._rows and c_stage._inserts == py_stage._inserts
        assert c_stage.size == py_stage.size


@pytest.mark.skipif(SPEEDUPS is None, reason="pgferry._speedups not built")
def test_the_common_changes_are_staged_in_c() -> None:
    assert SPEEDUPS is not None
    stage = Stage(_table(), Eligibility.KEYED)
    rows, positions = stage._rows, stage.table.key
    # The C twin takes them itself (it would leave them to Python with -1).
    assert SPEEDUPS.stage_change(rows, None, positions, _ins(1, "a"), "tx1") == 2
    assert SPEEDUPS.stage_change(rows, None, positions, _upd(1, b"bcd"), "tx2") == 4
    assert SPEEDUPS.stage_change(rows, None, positions, _upd(2, b"x"), "tx3") == 2
    assert SPEEDUPS.stage_change(rows, None, positions, _del(2), "tx4") == 0
    assert rows == {
        (b"1",): [False, (b"1", b"bcd"), None, None],
        (b"2",): [True, None, "tx3", (b"2", b"x")],
    }
    # What it leaves: a key change, a second delete, unchanged TOAST.
    assert SPEEDUPS.stage_change(rows, None, positions, _upd(3, b"x", old=1), "tx5") == -1
    assert SPEEDUPS.stage_change(rows, None, positions, _del(2), "tx6") == -1
    assert SPEEDUPS.stage_change(rows, None, positions, _upd(1, UNCHANGED_TOAST), "tx7") == -1
    assert len(rows) == 2
