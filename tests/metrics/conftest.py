"""Fixtures of the metrics tests: a publisher and a subscriber cluster of their own
(the publisher may be stopped, and has ``max_slot_wal_keep_size``), ``pgferry run``
with ``--metrics`` in a thread, scraping it, and a real Prometheus server.

Prometheus: the ``prometheus`` and ``promtool`` binaries on PATH (``.ci/run``
installs Debian's package). Without them the tests that need them are skipped,
except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgferry import metrics
from pgferry.runner import Launcher
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.conformance.conftest import Ferry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "monitoring" / "pgferry-alerts.yml"
DASHBOARD = ROOT / "docs" / "monitoring" / "pgferry-dashboard.json"

#: (metric name, sorted label items) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def ferry(make_cluster: ClusterFactory) -> Ferry:
    """A publisher cluster (database ``pub``, ``max_slot_wal_keep_size`` set) and a
    subscriber cluster (database ``sub``), both this test's own."""
    publisher = make_cluster(settings={"max_slot_wal_keep_size": "1GB"})
    publisher.create_database("pub")
    subscriber = make_cluster()
    subscriber.create_database("sub")
    return Ferry(publisher, "pub", subscriber)


@contextmanager
def exporting(ferry: Ferry) -> Iterator[tuple[Launcher, metrics.MetricsServer]]:
    """``pgferry run --metrics 127.0.0.1:0`` in a thread until the block ends."""
    with ferry.running() as launcher:
        server = metrics.serve("127.0.0.1:0", ferry.sub_dsn, launcher)
        try:
            yield launcher, server
        finally:
            server.stop()


def url(server: metrics.MetricsServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}/metrics"


def scrape(server: metrics.MetricsServer) -> Samples:
    """One scrape of the endpoint, parsed."""
    with urllib.request.urlopen(url(server), timeout=30) as response:  # noqa: S310 (http)
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the sample with exactly these labels, None if absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_scrape(
    server: metrics.MetricsServer,
    condition: Any,
    what: str,
    timeout: float = 30,
) -> Samples:
    """Scrape until ``condition(samples)`` holds; the samples that made it true."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            shown = {k: v for k, v in samples.items() if k[0].startswith("pgferry_")}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {shown}")
        time.sleep(0.2)


# -- Prometheus ---------------------------------------------------------------------------


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/run installs Debian's prometheus package)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _binary("promtool")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Prometheus:
    """A running Prometheus server and its HTTP API."""

    base: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.base}{path}{query}", timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr``: [{"metric": {...}, "value": [t, "v"]}]."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("/api/v1/rules")["groups"]
        return groups

    def wait(self, condition: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                tail = self.log.read_text()[-3000:]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
            time.sleep(0.25)


@contextmanager
def prometheus(
    binary: str, workdir: Path, target: tuple[str, int], rule_files: list[Path]
) -> Iterator[Prometheus]:
    """Prometheus on a free port, scraping ``target`` and evaluating rules every
    second, with its configuration and storage in ``workdir``; stopped at the end."""
    config = workdir / "prometheus.yml"
    rules = ", ".join(json.dumps(str(p)) for p in rule_files)
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        "  - job_name: pgferry\n"
        f"    static_configs: [{{targets: ['{target[0]}:{target[1]}']}}]\n"
    )
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        server.wait(lambda: _ready(server.base, process), "prometheus to be ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(base: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"prometheus exited with status {process.returncode}"
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False
