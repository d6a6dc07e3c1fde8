"""The shipped alert rules and a real Prometheus server scraping ``pgferry run
--metrics``: ``promtool check rules`` and ``promtool test rules`` on the shipped
file, and an alert that fires while apply is held by a lock on the subscriber."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.conformance.conftest import Ferry
from tests.metrics.conftest import DASHBOARD, RULES, Prometheus, exporting, prometheus

SUB = "s1"
RULE_TESTS = Path(__file__).with_name("pgferry-alerts.test.yml")


def test_promtool_checks_the_rules(promtool_bin: str) -> None:
    done = subprocess.run(
        [promtool_bin, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests(promtool_bin: str) -> None:
    """The shipped rules, with their real durations, on made-up series."""
    done = subprocess.run(
        [promtool_bin, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def fast_rules(workdir: Path) -> Path:
    """The shipped rules, renamed group ``pgferry-fast``, with every ``for:`` 0s and
    every range 5s, so that they fire within seconds."""
    text = RULES.read_text()
    text = re.sub(r"^(\s*- name: )pgferry$", r"\1pgferry-fast", text, flags=re.MULTILINE)
    text = re.sub(r"\bfor: \S+", "for: 0s", text)
    text = re.sub(r"\[\d+[smhd]\]", "[5s]", text)
    path = workdir / "pgferry-alerts-fast.yml"
    path.write_text(text)
    return path


def _rule(server: Prometheus, group: str, name: str) -> dict[str, Any]:
    for g in server.rule_groups():
        if g["name"] == group:
            for rule in g["rules"]:
                if rule["name"] == name:
                    found: dict[str, Any] = rule
                    return found
    raise AssertionError(f"no rule {name} in group {group}")


def _all_evaluated(server: Prometheus) -> bool:
    groups = {g["name"]: g["rules"] for g in server.rule_groups()}
    assert set(groups) == {"pgferry", "pgferry-fast"}, groups
    assert len(groups["pgferry"]) == len(groups["pgferry-fast"]) == 15
    bad = [r for rules in groups.values() for r in rules if r["health"] == "err"]
    assert not bad, bad
    return all(r["health"] == "ok" for rules in groups.values() for r in rules)


def _check_dashboard(prom: Prometheus) -> None:
    """Every query of the dashboard is valid PromQL; those of the overview have data."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            expr = re.sub(r"\$(instance|subscription)", ".*", expr)
            result = prom.query(expr)  # (fails on an error)
            if panel["gridPos"]["y"] == 1:
                assert result, f"no data for {panel['title']!r}: {expr}"


@contextmanager
def writing(ferry: Ferry) -> Iterator[None]:
    """The publisher inserts a row into t every 0.2 s while the block runs."""
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(ferry.pub.dsn(ferry.pub_db), autocommit=True) as conn:
            n = 1000
            while not stop.wait(0.2):
                n += 1
                conn.execute("INSERT INTO t VALUES (%s, 'w')", (n,))

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_prometheus_scrapes_and_alerts(ferry: Ferry, prometheus_bin: str, tmp_path: Path) -> None:
    ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)"
    ferry.on_pub(ddl)
    ferry.on_sub(ddl)
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE t")
    ferry.subscribe(SUB, ["p"], "copy_data=false")
    rules = [RULES, fast_rules(tmp_path)]
    with (
        exporting(ferry) as (_, server),
        prometheus(prometheus_bin, tmp_path, server.address, rules) as prom,
    ):
        prom.wait(
            lambda: (
                [r["value"][1] for r in prom.query(f'pgferry_lag_bytes{{subscription="{SUB}"}}')]
                == ["0"]
            ),
            "Prometheus to have scraped pgferry, caught up",
        )
        (enabled,) = prom.query("pgferry_subscription_enabled")
        assert enabled["metric"]["subscription"] == SUB and enabled["value"][1] == "1"
        assert enabled["metric"]["job"] == "pgferry"
        prom.wait(lambda: _all_evaluated(prom), "every rule evaluated")
        _check_dashboard(prom)
        assert _rule(prom, "pgferry-fast", "PgferryApplyStuck")["state"] == "inactive"

        # Apply held by a lock on the subscriber while the publisher writes: stuck.
        with psycopg.connect(ferry.sub_dsn) as locker, writing(ferry):
            locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            prom.wait(
                lambda: _rule(prom, "pgferry-fast", "PgferryApplyStuck")["state"] == "firing",
                "PgferryApplyStuck to fire",
            )
            stuck = _rule(prom, "pgferry-fast", "PgferryApplyStuck")["alerts"]
            assert [a["labels"]["subscription"] for a in stuck] == [SUB]
            assert _rule(prom, "pgferry-fast", "PgferrySubscriptionDisabled")["state"] == "inactive"
            locker.rollback()

        # Disabled: the shipped rule is pending (its 15 minutes not yet over).
        ferry.alter(SUB, disable=True)
        prom.wait(
            lambda: (
                _rule(prom, "pgferry-fast", "PgferrySubscriptionDisabled")["state"] == "firing"
                and _rule(prom, "pgferry", "PgferrySubscriptionDisabled")["state"] == "pending"
            ),
            "PgferrySubscriptionDisabled to fire (fast) and be pending (shipped)",
        )
