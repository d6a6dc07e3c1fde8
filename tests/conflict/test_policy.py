"""Resolution specs and decisions: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgferry.conflict import (
    CONFLICT_TYPES,
    ConflictType,
    Outcome,
    Policy,
    Resolution,
    Stamp,
    decide,
)
from pgferry.errors import InterfaceError

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(microseconds=1)


def test_default_is_native_behaviour() -> None:
    spec = Resolution.parse(None)
    assert spec.empty and str(spec) == ""
    native = {
        ConflictType.INSERT_EXISTS: Policy.ERROR,
        ConflictType.UPDATE_EXISTS: Policy.ERROR,
        ConflictType.MULTIPLE_UNIQUE_CONFLICTS: Policy.ERROR,
        ConflictType.UPDATE_MISSING: Policy.SKIP,
        ConflictType.DELETE_MISSING: Policy.SKIP,
        ConflictType.UPDATE_ORIGIN_DIFFERS: Policy.APPLY_REMOTE,
        ConflictType.DELETE_ORIGIN_DIFFERS: Policy.APPLY_REMOTE,
    }
    assert {t: spec.policy_for(t) for t in CONFLICT_TYPES} == native
    assert {t: Resolution.parse("error").policy_for(t) for t in CONFLICT_TYPES} == native


def test_per_type_entries_override_the_base_and_error_per_type_stops() -> None:
    spec = Resolution.parse(" Last_Update_Wins , update_missing:error,delete_missing:skip ")
    assert str(spec) == "last_update_wins,update_missing:error,delete_missing:skip"
    assert spec.policy_for(ConflictType.INSERT_EXISTS) is Policy.LAST_UPDATE_WINS
    assert spec.policy_for(ConflictType.UPDATE_MISSING) is Policy.ERROR
    assert spec.policy_for(ConflictType.DELETE_MISSING) is Policy.SKIP
    assert Resolution.parse(str(spec)) == spec


def test_a_table_spec_falls_back_to_the_subscription_only_without_a_base() -> None:
    sub = Resolution.parse("apply_remote")
    assert (
        Resolution.parse("insert_exists:skip").policy_for(ConflictType.UPDATE_EXISTS, sub)
        is Policy.APPLY_REMOTE
    )
    assert (
        Resolution.parse("keep_local").policy_for(ConflictType.UPDATE_EXISTS, sub)
        is Policy.KEEP_LOCAL
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("newest", "unknown resolution policy 'newest'"),
        ("insert_clash:skip", "unknown conflict type 'insert_clash'"),
        ("skip,apply_remote", "more than one policy for every type"),
        ("insert_exists:skip,insert_exists:error", "insert_exists is given twice"),
    ],
)
def test_bad_specs_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(InterfaceError, match=message):
        Resolution.parse(text)


def test_fixed_policies() -> None:
    remote, local = Stamp(T0, "a"), [Stamp(LATER, "b")]
    for ctype in CONFLICT_TYPES:
        assert decide(ctype, Policy.ERROR, remote, local) is Outcome.ERROR
        assert decide(ctype, Policy.SKIP, remote, local) is Outcome.SKIP
        assert decide(ctype, Policy.KEEP_LOCAL, remote, local) is Outcome.SKIP
        assert decide(ctype, Policy.APPLY_REMOTE, remote, local) is Outcome.APPLY


def test_last_and_first_update_wins_compare_commit_times() -> None:
    ctype = ConflictType.UPDATE_ORIGIN_DIFFERS
    lww, fuw = Policy.LAST_UPDATE_WINS, Policy.FIRST_UPDATE_WINS
    assert decide(ctype, lww, Stamp(LATER, "a"), [Stamp(T0, "b")]) is Outcome.APPLY
    assert decide(ctype, lww, Stamp(T0, "a"), [Stamp(LATER, "b")]) is Outcome.SKIP
    assert decide(ctype, fuw, Stamp(T0, "a"), [Stamp(LATER, "b")]) is Outcome.APPLY
    assert decide(ctype, fuw, Stamp(LATER, "a"), [Stamp(T0, "b")]) is Outcome.SKIP
    # Several local rows: the remote change must beat every one of them.
    assert (
        decide(
            ctype,
            lww,
            Stamp(LATER, "a"),
            [Stamp(T0, "b"), Stamp(LATER + timedelta(seconds=1), "c")],
        )
        is Outcome.SKIP
    )


def test_ties_go_to_the_greater_node_on_both_nodes() -> None:
    ctype = ConflictType.UPDATE_ORIGIN_DIFFERS
    for policy in (Policy.LAST_UPDATE_WINS, Policy.FIRST_UPDATE_WINS):
        # Node "a" receives b's change; node "b" receives a's: both keep b's version.
        on_a = decide(ctype, policy, Stamp(T0, "b"), [Stamp(T0, "a")])
        on_b = decide(ctype, policy, Stamp(T0, "a"), [Stamp(T0, "b")])
        assert (on_a, on_b) == (Outcome.APPLY, Outcome.SKIP)


def test_unknown_local_times_and_missing_rows() -> None:
    remote = Stamp(T0, "a")
    unknown = [Stamp(None, None)]
    ctype = ConflictType.INSERT_EXISTS
    assert decide(ctype, Policy.LAST_UPDATE_WINS, remote, unknown) is Outcome.APPLY
    assert decide(ctype, Policy.FIRST_UPDATE_WINS, remote, unknown) is Outcome.SKIP
    for missing in (ConflictType.UPDATE_MISSING, ConflictType.DELETE_MISSING):
        assert decide(missing, Policy.LAST_UPDATE_WINS, remote, []) is Outcome.SKIP
        assert decide(missing, Policy.FIRST_UPDATE_WINS, remote, []) is Outcome.SKIP


def test_counter_names_are_pg18_columns() -> None:
    assert [t.counter for t in CONFLICT_TYPES] == [
        "confl_insert_exists",
        "confl_update_origin_differs",
        "confl_update_exists",
        "confl_update_missing",
        "confl_delete_origin_differs",
        "confl_delete_missing",
        "confl_multiple_unique_conflicts",
    ]
