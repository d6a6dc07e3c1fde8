"""Each conflict type produced on purpose and resolved by each policy, row by row.

Publisher and subscriber are two databases of one cluster (``track_commit_timestamp``
is on in test clusters). A conflict is made by writing the subscriber's copy of a
row before the publisher's change reaches it; "local newer" means the local write
commits after the remote transaction, "local older" before it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.catalog import conflict_log, store
from pgferry.conflict import Resolution
from pgferry.errors import ConflictError
from pgferry.runner import Launcher
from pgferry.status import wait_ready
from pgferry.subscription import create_subscription
from tests.apply.pair import Pair

DDL = "CREATE TABLE t (id int PRIMARY KEY, u int UNIQUE, v text)"


def setup(pair: Pair, resolution: str | None, rows: str = "") -> None:
    options: dict[str, Any] = {}
    if resolution is not None:
        options["conflict_resolution"] = str(Resolution.parse(resolution))
    pair.publish(DDL, ["t"], **options)
    if rows:
        pair.cluster.sql(f"INSERT INTO t VALUES {rows}", dbname=pair.pub)
        pair.sync()


def table(pair: Pair) -> list[tuple[object, ...]]:
    return pair.rows("SELECT id, u, v FROM t ORDER BY id")


def logged(pair: Pair) -> list[conflict_log.LoggedConflict]:
    with pair.cluster.connect(pair.sub) as conn:
        return conflict_log.list_conflicts(conn, subscription="ferry")


def counts(pair: Pair) -> dict[str, int]:
    with pair.cluster.connect(pair.sub) as conn:
        return {k: v for k, v in store.stats(conn, "ferry").items() if v}


def remote(pair: Pair, statement: str) -> None:
    pair.cluster.sql(statement, dbname=pair.pub)


def local(pair: Pair, statement: str) -> None:
    pair.rows(statement)


# -- every type under every policy -----------------------------------------------------


@dataclass(frozen=True)
class Case:
    initial: str  # rows replicated before the conflict ("" : none)
    local: str  # the subscriber's write, committed before the remote change
    remote: str
    applied: list[tuple[object, ...]]  # the table when the remote change wins
    kept: list[tuple[object, ...]]  # the table when the local state stays


CASES = {
    "insert_exists": Case(
        "",
        "INSERT INTO t VALUES (1, 10, 'local')",
        "INSERT INTO t VALUES (1, 11, 'remote')",
        [(1, 11, "remote")],
        [(1, 10, "local")],
    ),
    "update_origin_differs": Case(
        "(1, 10, 'one')",
        "UPDATE t SET v = 'local'",
        "UPDATE t SET v = 'remote'",
        [(1, 10, "remote")],
        [(1, 10, "local")],
    ),
    "update_exists": Case(
        "(1, 10, 'one')",
        "INSERT INTO t VALUES (3, 30, 'local')",
        "UPDATE t SET u = 30, v = 'remote' WHERE id = 1",
        [(1, 30, "remote")],
        [(1, 10, "one"), (3, 30, "local")],
    ),
    "update_missing": Case(
        "(1, 10, 'one')",
        "DELETE FROM t",
        "UPDATE t SET v = 'remote'",
        [(1, 10, "remote")],
        [],
    ),
    "delete_origin_differs": Case(
        "(1, 10, 'one')",
        "UPDATE t SET v = 'local'",
        "DELETE FROM t",
        [],
        [(1, 10, "local")],
    ),
    "delete_missing": Case("(1, 10, 'one')", "DELETE FROM t", "DELETE FROM t", [], []),
    "multiple_unique_conflicts": Case(
        "",
        "INSERT INTO t VALUES (5, 50, 'five'), (6, 60, 'six')",
        "INSERT INTO t VALUES (5, 60, 'remote')",
        [(5, 60, "remote")],
        [(5, 50, "five"), (6, 60, "six")],
    ),
}
POLICIES = ["error", "skip", "keep_local", "apply_remote", "last_update_wins", "first_update_wins"]


def _outcome(ctype: str, policy: str) -> str:
    if policy == "error":
        return "error"
    if policy in ("skip", "keep_local", "first_update_wins"):
        return "kept"  # first_update_wins: the local write came first
    if policy == "last_update_wins" and ctype.endswith("_missing"):
        return "kept"  # a missing row stays missing
    return "applied"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("ctype", list(CASES))
def test_each_type_under_each_policy(pair: Pair, ctype: str, policy: str) -> None:
    case = CASES[ctype]
    setup(pair, f"{ctype}:{policy}", case.initial)
    local(pair, case.local)
    after_local = table(pair)
    remote(pair, case.remote)
    outcome = _outcome(ctype, policy)
    if outcome == "error":
        with pytest.raises(ConflictError) as exc:
            pair.sync()
        assert exc.value.conflict_type == ctype
        assert table(pair) == after_local, "a stopped transaction applied something"
        expected_counts = {"apply_error_count": 1, f"confl_{ctype}": 1}
    else:
        pair.sync()
        assert table(pair) == (case.applied if outcome == "applied" else case.kept)
        expected_counts = {f"confl_{ctype}": 1}
    (entry,) = logged(pair)
    assert (entry.conflict_type, entry.resolution) == (ctype, policy)
    assert entry.applied == (outcome == "applied")
    assert counts(pair) == expected_counts


# -- insert_exists ---------------------------------------------------------------------

INSERT_CASES = {
    # policy, local newer?: expected rows
    ("error", False): None,
    ("skip", False): [(1, 10, "local"), (2, 20, "two")],
    ("keep_local", False): [(1, 10, "local"), (2, 20, "two")],
    ("apply_remote", True): [(1, 11, "remote"), (2, 20, "two")],
    ("last_update_wins", False): [(1, 11, "remote"), (2, 20, "two")],
    ("last_update_wins", True): [(1, 10, "local"), (2, 20, "two")],
    ("first_update_wins", False): [(1, 10, "local"), (2, 20, "two")],
    ("first_update_wins", True): [(1, 11, "remote"), (2, 20, "two")],
}


@pytest.mark.parametrize(("policy", "local_newer"), list(INSERT_CASES))
def test_insert_exists(pair: Pair, policy: str, local_newer: bool) -> None:
    setup(pair, policy)
    if not local_newer:
        local(pair, "INSERT INTO t VALUES (1, 10, 'local')")
    remote(pair, "INSERT INTO t VALUES (1, 11, 'remote'), (2, 20, 'two')")
    if local_newer:
        local(pair, "INSERT INTO t VALUES (1, 10, 'local')")
    expected = INSERT_CASES[(policy, local_newer)]
    if expected is None:
        with pytest.raises(ConflictError) as exc:
            pair.sync()
        assert exc.value.conflict_type == "insert_exists"
        assert table(pair) == [(1, 10, "local")]
        (entry,) = logged(pair)
        assert (entry.resolution, entry.applied) == ("error", False)
        assert counts(pair) == {"apply_error_count": 1, "confl_insert_exists": 1}
        return
    pair.sync()
    assert table(pair) == expected
    (entry,) = logged(pair)
    assert entry.conflict_type == "insert_exists" and entry.resolution == policy
    assert entry.applied == (expected[0][2] == "remote")
    assert entry.key == {"id": "1"}
    assert entry.local_row == {"id": 1, "u": 10, "v": "local"}
    assert entry.remote_row == {"id": "1", "u": "11", "v": "remote"}
    assert entry.local_origin is None and entry.local_commit_time is not None
    assert entry.remote_commit_time is not None and entry.remote_xid
    assert counts(pair) == {"confl_insert_exists": 1}


# -- multiple_unique_conflicts -----------------------------------------------------------


@pytest.mark.parametrize("policy", ["error", "apply_remote"])
def test_multiple_unique_conflicts(pair: Pair, policy: str) -> None:
    setup(pair, policy)
    local(pair, "INSERT INTO t VALUES (5, 50, 'five'), (6, 60, 'six')")
    remote(pair, "INSERT INTO t VALUES (5, 60, 'remote')")  # id of one, u of the other
    if policy == "error":
        with pytest.raises(ConflictError) as exc:
            pair.sync()
        assert exc.value.conflict_type == "multiple_unique_conflicts"
        assert '"t_pkey"' in exc.value.message and '"t_u_key"' in exc.value.message
        assert table(pair) == [(5, 50, "five"), (6, 60, "six")]
        return
    pair.sync()
    if policy == "skip":
        assert table(pair) == [(5, 50, "five"), (6, 60, "six")]
    else:
        assert table(pair) == [(5, 60, "remote")]
    (entry,) = logged(pair)
    assert entry.conflict_type == "multiple_unique_conflicts"
    assert isinstance(entry.local_row, list) and len(entry.local_row) == 2
    assert counts(pair) == {"confl_multiple_unique_conflicts": 1}


def test_one_row_colliding_on_two_indexes_is_multiple_as_in_pg18(pair: Pair) -> None:
    setup(pair, "apply_remote")
    local(pair, "INSERT INTO t VALUES (5, 50, 'local')")
    remote(pair, "INSERT INTO t VALUES (5, 50, 'remote')")
    pair.sync()
    assert table(pair) == [(5, 50, "remote")]
    assert counts(pair) == {"confl_multiple_unique_conflicts": 1}


# -- update_origin_differs ----------------------------------------------------------------

ORIGIN_CASES = {
    # policy, local newer?: v after the remote update (None: the worker stops)
    (None, True): "remote",  # native: applied and logged
    ("update_origin_differs:error", True): None,
    ("skip", True): "local",
    ("apply_remote", True): "remote",
    ("last_update_wins", True): "local",
    ("last_update_wins", False): "remote",
    ("first_update_wins", True): "remote",
    ("first_update_wins", False): "local",
}


@pytest.mark.parametrize(("policy", "local_newer"), list(ORIGIN_CASES))
def test_update_origin_differs(pair: Pair, policy: str | None, local_newer: bool) -> None:
    setup(pair, policy, "(1, 10, 'one'), (2, 20, 'two')")
    if not local_newer:
        local(pair, "UPDATE t SET v = 'local' WHERE id = 1")
    remote(pair, "UPDATE t SET v = 'remote'")
    if local_newer:
        local(pair, "UPDATE t SET v = 'local' WHERE id = 1")
    expected = ORIGIN_CASES[(policy, local_newer)]
    if expected is None:
        with pytest.raises(ConflictError) as exc:
            pair.sync()
        assert exc.value.conflict_type == "update_origin_differs"
        assert "written locally" in exc.value.message
        assert table(pair) == [(1, 10, "local"), (2, 20, "two")]
        return
    pair.sync()
    # Row 2 was last written by this subscription: no conflict there.
    assert table(pair) == [(1, 10, expected), (2, 20, "remote")]
    (entry,) = logged(pair)
    assert entry.conflict_type == "update_origin_differs"
    assert entry.applied == (expected == "remote")
    assert entry.local_row == {"id": 1, "u": 10, "v": "local"}
    assert counts(pair) == {"confl_update_origin_differs": 1}


def test_rows_last_written_by_the_subscription_are_no_conflict(pair: Pair) -> None:
    setup(pair, "last_update_wins", "(1, 10, 'one')")
    remote(pair, "UPDATE t SET v = 'again'")
    remote(pair, "DELETE FROM t")
    pair.sync()
    assert table(pair) == [] and logged(pair) == []


# -- update_exists ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["error", "apply_remote"])
def test_update_exists(pair: Pair, policy: str) -> None:
    setup(pair, policy, "(1, 10, 'one')")
    local(pair, "INSERT INTO t VALUES (3, 30, 'local')")
    remote(pair, "UPDATE t SET u = 30, v = 'remote' WHERE id = 1")
    if policy == "error":
        with pytest.raises(ConflictError) as exc:
            pair.sync()
        assert exc.value.conflict_type == "update_exists"
        assert '"t_u_key"' in exc.value.message
        assert table(pair) == [(1, 10, "one"), (3, 30, "local")]
        return
    pair.sync()
    if policy == "skip":
        assert table(pair) == [(1, 10, "one"), (3, 30, "local")]
    else:  # the local row is older than the remote update
        assert table(pair) == [(1, 30, "remote")]
    (entry,) = logged(pair)
    assert entry.conflict_type == "update_exists"
    assert entry.local_row == {"id": 3, "u": 30, "v": "local"}
    assert counts(pair) == {"confl_update_exists": 1}


def test_key_change_onto_an_existing_key_is_update_exists(pair: Pair) -> None:
    setup(pair, "update_exists:apply_remote", "(1, 10, 'one')")
    local(pair, "INSERT INTO t VALUES (2, 20, 'local')")
    remote(pair, "UPDATE t SET id = 2 WHERE id = 1")
    pair.sync()
    assert table(pair) == [(2, 10, "one")]
    assert counts(pair) == {"confl_update_exists": 1}


# -- update_missing / delete_missing --------------------------------------------------------


@pytest.mark.parametrize(
    "policy", [None, "update_missing:error", "apply_remote", "last_update_wins"]
)
def test_update_missing(pair: Pair, policy: str | None) -> None:
    setup(pair, policy, "(1, 10, 'one')")
    local(pair, "DELETE FROM t")
    remote(pair, "UPDATE t SET v = 'remote'")
    if policy == "update_missing:error":
        with pytest.raises(ConflictError) as exc:
            pair.sync()
        assert exc.value.conflict_type == "update_missing"
        assert exc.value.sqlstate == "40001"
        return
    pair.sync()
    if policy == "apply_remote":
        assert table(pair) == [(1, 10, "remote")]
    else:  # native skips; a missing row stays missing under last_update_wins
        assert table(pair) == []
    (entry,) = logged(pair)
    assert entry.conflict_type == "update_missing" and entry.local_row is None
    assert entry.resolution == (policy or "skip")
    assert counts(pair) == {"confl_update_missing": 1}


@pytest.mark.parametrize("policy", [None, "delete_missing:error"])
def test_delete_missing(pair: Pair, policy: str | None) -> None:
    setup(pair, policy, "(1, 10, 'one')")
    local(pair, "DELETE FROM t")
    remote(pair, "DELETE FROM t")
    if policy:
        with pytest.raises(ConflictError):
            pair.sync()
        return
    pair.sync()
    (entry,) = logged(pair)
    assert (entry.conflict_type, entry.resolution, entry.key) == (
        "delete_missing",
        "skip",
        {"id": "1"},
    )
    assert counts(pair) == {"confl_delete_missing": 1}


# -- delete_origin_differs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kept"),
    [(None, False), ("keep_local", True), ("last_update_wins", True), ("first_update_wins", False)],
)
def test_delete_origin_differs(pair: Pair, policy: str | None, kept: bool) -> None:
    setup(pair, policy, "(1, 10, 'one')")
    remote(pair, "DELETE FROM t")
    local(pair, "UPDATE t SET v = 'local'")  # newer than the remote delete
    pair.sync()
    assert table(pair) == ([(1, 10, "local")] if kept else [])
    (entry,) = logged(pair)
    assert entry.conflict_type == "delete_origin_differs" and entry.applied == (not kept)
    assert counts(pair) == {"confl_delete_origin_differs": 1}


# -- per table, and the resolution is atomic with the progress ------------------------------


def test_a_table_setting_overrides_the_subscription(pair: Pair) -> None:
    pair.publish(
        DDL + "; CREATE TABLE w (id int PRIMARY KEY, v text)",
        ["t", "w"],
        conflict_resolution="skip",
    )
    with pair.cluster.connect(pair.sub) as conn:
        conflict_log.set_table_resolution(
            conn, "ferry", "public", "w", Resolution.parse("apply_remote")
        )
    local(pair, "INSERT INTO t VALUES (1, 1, 'local'); INSERT INTO w VALUES (1, 'local')")
    remote(pair, "INSERT INTO t VALUES (1, 1, 'remote'); INSERT INTO w VALUES (1, 'remote')")
    pair.sync()
    assert table(pair) == [(1, 1, "local")]
    assert pair.rows("SELECT * FROM w") == [(1, "remote")]
    assert sorted((e.table_name, e.resolution) for e in logged(pair)) == [
        ("t", "skip"),
        ("w", "apply_remote"),
    ]


def test_resolved_conflicts_are_not_applied_twice_after_a_restart(pair: Pair) -> None:
    setup(pair, "apply_remote")
    local(pair, "INSERT INTO t VALUES (1, 10, 'local')")
    remote(pair, "INSERT INTO t VALUES (1, 11, 'remote')")
    pair.sync()
    pair.sync()  # a new worker starts from the origin: nothing again
    assert table(pair) == [(1, 11, "remote")]
    assert len(logged(pair)) == 1


def test_rows_of_the_initial_copy_are_no_conflict(pair: Pair) -> None:
    """The copy writes with its sync worker's origin, dropped at the handover;
    changing those rows later is not update_origin_differs (native reports it)."""
    cluster = pair.cluster
    cluster.sql(DDL + "; CREATE PUBLICATION pub FOR TABLE t", dbname=pair.pub)
    cluster.sql(
        "INSERT INTO t SELECT g, g, 'copied' FROM generate_series(1, 50) g", dbname=pair.pub
    )
    cluster.sql(DDL, dbname=pair.sub)
    create_subscription(cluster.dsn(pair.sub), "copied", cluster.dsn(pair.pub), ["pub"])
    launcher = Launcher(cluster.dsn(pair.sub), poll_interval=0.3)
    thread = threading.Thread(target=launcher.run, daemon=True)
    thread.start()
    try:
        wait_ready(cluster.dsn(pair.sub), "copied", timeout=60)
        cluster.sql("UPDATE t SET v = 'changed'; DELETE FROM t WHERE id <= 5", dbname=pair.pub)
        wait_ready(cluster.dsn(pair.sub), "copied", timeout=60)
        assert table(pair) == cluster.sql("SELECT id, u, v FROM t ORDER BY id", dbname=pair.pub)
        with cluster.connect(pair.sub) as conn:
            assert conflict_log.list_conflicts(conn) == []
    finally:
        launcher.request_stop()
        thread.join(timeout=60)


# -- what a conflict reports, and how often -------------------------------------------------


def test_a_unique_conflict_reports_the_index_and_key_it_is_about(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, email text UNIQUE, v text)", ["t"])
    remote(pair, "INSERT INTO t VALUES (1, 'a@x', 'one')")
    pair.sync()
    local(pair, "INSERT INTO t VALUES (2, 'b@x', 'local')")
    # Many rows in one batch with it: the staged batch fails, the exact retry reports.
    remote(pair, "INSERT INTO t SELECT g, 'e' || g, 'x' FROM generate_series(10, 50) g")
    remote(pair, "INSERT INTO t VALUES (3, 'b@x', 'remote')")
    with pytest.raises(ConflictError) as exc:
        pair.sync()
    assert exc.value.conflict_type == "insert_exists"
    assert 'Key (email)=(b@x) in unique index "t_email_key"' in exc.value.message
    assert "(id)=(3)" not in exc.value.message
    (entry,) = logged(pair)
    assert entry.key == {"email": "b@x"}
    # An UPDATE onto another row's email: that key, and the row's replica identity.
    local(pair, "DELETE FROM t WHERE id = 2")
    pair.sync()
    local(pair, "INSERT INTO t VALUES (4, 'c@x', 'local')")
    remote(pair, "UPDATE t SET email = 'c@x' WHERE id = 1")
    with pytest.raises(ConflictError) as exc:
        pair.sync()
    assert exc.value.conflict_type == "update_exists"
    assert 'Key (email)=(c@x) in unique index "t_email_key"' in exc.value.message
    assert "replica identity (id)=(1)" in exc.value.message
    assert logged(pair)[-1].key == {"email": "c@x"}


def test_a_conflict_that_stops_the_worker_is_logged_and_counted_once(pair: Pair) -> None:
    setup(pair, None, "(1, 10, 'one')")
    local(pair, "INSERT INTO t VALUES (3, 30, 'local')")
    remote(pair, "INSERT INTO t VALUES (2, 20, 'two'); UPDATE t SET u = 30 WHERE id = 1")
    for _ in range(3):  # three attempts meet it: each a new worker from the origin
        with pytest.raises(ConflictError):
            pair.sync()
    assert len(logged(pair)) == 1
    assert counts(pair) == {"apply_error_count": 3, "confl_update_exists": 1}
    with pair.cluster.connect(pair.sub) as conn:  # the failed transaction, for --skip
        assert store.failed_lsn(conn, "ferry") == logged(pair)[0].remote_commit_lsn
