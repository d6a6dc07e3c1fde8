"""What ships with the metrics agrees with them: docs/reference.md (Monitoring) lists
every metric and no other, the alert rules and the Grafana dashboard use only
exported metrics; names follow Prometheus' conventions; ``--metrics`` addresses."""

from __future__ import annotations

import json
import re

import pytest

from pgferry import metrics
from pgferry.errors import InterfaceError
from tests.metrics.conftest import DASHBOARD, ROOT, RULES

NAMES = {spec.name for spec in metrics.METRICS}
_NAME = re.compile(r"\bpgferry_[a-z0-9_]*[a-z0-9]")


def _monitoring_section() -> str:
    text = (ROOT / "docs" / "reference.md").read_text()
    start = text.index("\n## Monitoring\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_reference_lists_every_metric() -> None:
    rows = re.findall(r"^\| `(pgferry_[a-z0-9_]+)` \|", _monitoring_section(), re.MULTILINE)
    assert sorted(rows) == sorted(NAMES)
    assert len(rows) == len(set(rows))


def test_rules_and_dashboard_use_exported_metrics() -> None:
    rules = set(_NAME.findall(RULES.read_text())) - {"pgferry_"}
    assert rules and rules <= NAMES, rules - NAMES
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in _NAME.findall(expr)}
    assert used and used <= NAMES, used - NAMES
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", "instance", "subscription"]


def test_metric_names_follow_conventions() -> None:
    for spec in metrics.METRICS:
        assert spec.name.startswith("pgferry_")
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert spec.help and not spec.help.endswith(".")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9187", ("0.0.0.0", 9187)),  # noqa: S104 (what ":9187" means)
        ("127.0.0.1:9187", ("127.0.0.1", 9187)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9187", ("::1", 9187)),
    ],
)
def test_metrics_address(text: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_address(text) == expected


@pytest.mark.parametrize("text", ["9187", "host:", ":99999", "[::1]9187", "a:b:1"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(InterfaceError, match="invalid metrics address") as info:
        metrics.parse_address(text)
    assert info.value.hint is not None and ":9187" in info.value.hint


def test_port_in_use() -> None:
    server = metrics.serve("127.0.0.1:0", "dbname=unused")
    try:
        port = server.address[1]
        with pytest.raises(InterfaceError, match="cannot serve metrics") as info:
            metrics.serve(f"127.0.0.1:{port}", "dbname=unused")
        assert info.value.hint is not None
    finally:
        server.stop()
