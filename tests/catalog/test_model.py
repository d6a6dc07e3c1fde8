"""The catalog's typed model: table states and options parsed from what is stored,
and stored as before (native's letters, the options as a JSON object)."""

from __future__ import annotations

import pytest

from pgferry.catalog import (
    Subscription,
    SubscriptionOptions,
    SubscriptionTable,
    TableState,
    ensure_catalog,
    handover,
    store,
)
from pgferry.conflict import Policy, Resolution
from pgferry.errors import InterfaceError
from pgferry.subscription.options import DEFAULTS, STORED_KEYS
from pgferry.testing import Cluster


def test_table_states_are_natives_letters() -> None:
    assert [s.value for s in TableState] == ["i", "d", "f", "s", "r"]
    assert TableState.parse("s") is TableState.SYNCDONE
    letter: str = "r"
    assert letter == TableState.READY and f"{TableState.FINISHED}" == "f"
    with pytest.raises(InterfaceError, match="invalid table state 'x'"):
        TableState.parse("x")


def test_options_defaults_are_the_documented_ones() -> None:
    stored = SubscriptionOptions().to_json()
    assert tuple(stored) == STORED_KEYS
    assert {**stored, "enabled": True} == DEFAULTS
    assert SubscriptionOptions.from_json({}) == SubscriptionOptions()


def test_options_parsed_from_stored_json() -> None:
    options = SubscriptionOptions.from_json(
        {
            "streaming": "on",
            "disable_on_error": True,
            "conflict_resolution": "last_update_wins,delete_missing:error",
            "batch_transactions": 7,
            "retired_key": 1,
        }
    )
    assert options.streaming == "on" and options.disable_on_error is True
    assert options.batch_transactions == 7 and options.batch_latency_ms == 100
    assert options.conflict_resolution.base is Policy.LAST_UPDATE_WINS
    assert options.conflict_resolution == Resolution.parse("last_update_wins,delete_missing:error")
    stored = options.to_json()
    assert stored["conflict_resolution"] == "last_update_wins,delete_missing:error"
    assert "retired_key" not in stored
    assert SubscriptionOptions.from_json(stored) == options


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("binary", "yes"),
        ("streaming", "sometimes"),
        ("origin", None),
        ("batch_transactions", 0),
        ("batch_latency_ms", True),
        ("conflict_resolution", 3),
        ("conflict_resolution", "newest_wins"),
    ],
)
def test_invalid_stored_option(key: str, value: object) -> None:
    with pytest.raises(InterfaceError):
        SubscriptionOptions.from_json({key: value})


def test_catalog_rows_keep_letters_and_json(cluster: Cluster, dbname: str) -> None:
    with cluster.connect(dbname, autocommit=True) as conn:
        ensure_catalog(conn)
        options = SubscriptionOptions(streaming="off", apply_mode="exact")
        store.create_subscription(
            conn, Subscription("m", "dbname=x", ("p",), "m", "pgferry_m", options=options)
        )
        row = conn.execute("SELECT options FROM pgferry.subscription WHERE name = 'm'").fetchone()
        assert row is not None and row[0] == options.to_json()
        assert row[0]["streaming"] == "off" and row[0]["conflict_resolution"] == "error"
        assert store.get_subscription(conn, "m").options == options
        # An options object of an older catalog: missing keys take their defaults.
        conn.execute("UPDATE pgferry.subscription SET options = '{\"binary\": true}'")
        assert store.get_subscription(conn, "m").options == SubscriptionOptions(binary=True)
        assert store.record_failure(conn, "m", "boom") is False
        conn.execute("UPDATE pgferry.subscription SET options = '{}'")
        store.set_options(conn, "m", SubscriptionOptions(disable_on_error=True))
        assert store.record_failure(conn, "m", "boom") is True

        store.upsert_table(conn, SubscriptionTable("m", "s", "t", "s", "t", TableState.INIT, None))
        store.set_table_state(conn, "m", "s", "t", TableState.FINISHED, None)
        letter = conn.execute("SELECT state::text FROM pgferry.subscription_table").fetchone()
        assert letter == ("f",)
        (table,) = store.tables(conn, "m")
        assert table.state is TableState.FINISHED
        assert handover.states(conn, "m")[("s", "t")].state is TableState.FINISHED
        assert store.table_state_counts(conn) == {"m": {TableState.FINISHED: 1}}
