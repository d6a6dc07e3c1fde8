"""pytest plugin: real PostgreSQL clusters as fixtures, over a matrix of majors.

Enable it from a ``conftest.py``::

    pytest_plugins = ["pgferry.testing.pytest_plugin"]

Majors: ``--pg=18,15`` on the command line, else ``$PGFERRY_TEST_PG``, else
``18,15``. Each major is resolved by
:func:`pgferry.testing.provision.install_for_major` (which may download it).

Fixtures (every test using one of them runs once per major, ids ``pg18``...):

* ``pg_install`` (session) - the :class:`~pgferry.testing.PgInstall` of the major;
* ``cluster`` (session) - one running cluster per major, shared by its tests:
  never stop it or change its settings (use ``make_cluster`` for that);
* ``make_cluster`` (function) - ``make_cluster(settings={...}) -> Cluster``:
  new started clusters of the same major, destroyed after the test;
* ``dbname`` (function) - a fresh database on ``cluster``, dropped after the
  test with its replication slots and subscriptions.

Markers: ``@pytest.mark.pg_min(16)`` / ``@pytest.mark.pg_max(15)`` skip a test on
majors outside the range.

When a test fails, the server log lines written during the test by every
cluster it used are added to the report (sections "pgferry server log ...").
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

import pytest

from pgferry.testing.binaries import PgInstall
from pgferry.testing.cluster import Cluster, live_clusters
from pgferry.testing.provision import install_for_major

ENV_MAJORS = "PGFERRY_TEST_PG"
DEFAULT_MAJORS = "18,15"
LOG_LINES = 80  # per cluster, in a failure report

_log_offsets = pytest.StashKey[dict[Cluster, int]]()
_preexisting = pytest.StashKey[set[Cluster]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgferry")
    group.addoption(
        "--pg",
        dest="pgferry_majors",
        default=None,
        metavar="MAJORS",
        help=f"PostgreSQL majors to test, comma-separated "
        f"(default: ${ENV_MAJORS} or {DEFAULT_MAJORS})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg_min(major): skip on PostgreSQL majors below this")
    config.addinivalue_line("markers", "pg_max(major): skip on PostgreSQL majors above this")
    selected_majors(config)  # a malformed --pg is a usage error, before collection


def parse_majors(text: str) -> list[int]:
    """``"18, 15"`` -> ``[18, 15]``; duplicates dropped, order kept."""
    majors: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise pytest.UsageError(f"--pg / {ENV_MAJORS}: {part!r} is not a major version")
        if int(part) not in majors:
            majors.append(int(part))
    if not majors:
        raise pytest.UsageError(f"--pg / {ENV_MAJORS}: no PostgreSQL major given")
    return majors


def selected_majors(config: pytest.Config) -> list[int]:
    option: str | None = config.getoption("pgferry_majors")
    return parse_majors(option or os.environ.get(ENV_MAJORS) or DEFAULT_MAJORS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_install" in metafunc.fixturenames:
        majors = selected_majors(metafunc.config)
        # Session scope groups the tests by major, so one major's clusters are
        # torn down before the next major's start.
        metafunc.parametrize(
            "pg_install", majors, indirect=True, scope="session", ids=[f"pg{m}" for m in majors]
        )


@pytest.fixture(scope="session")
def pg_install(request: pytest.FixtureRequest) -> PgInstall:
    major: int = request.param
    return install_for_major(major)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The major is known from the parameter: skip without resolving binaries.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "pg_install" not in callspec.params:
            continue
        major = int(callspec.params["pg_install"])
        low = item.get_closest_marker("pg_min")
        high = item.get_closest_marker("pg_max")
        if low is not None and major < int(low.args[0]):
            item.add_marker(pytest.mark.skip(reason=f"needs PostgreSQL >= {low.args[0]}"))
        if high is not None and major > int(high.args[0]):
            item.add_marker(pytest.mark.skip(reason=f"needs PostgreSQL <= {high.args[0]}"))


@pytest.fixture(scope="session")
def cluster(pg_install: PgInstall) -> Iterator[Cluster]:
    with Cluster(pg_install) as shared:
        yield shared


class ClusterFactory:
    """The ``make_cluster`` fixture: started clusters, destroyed at teardown."""

    def __init__(self, install: PgInstall, base_dir: Path | None = None) -> None:
        self.install = install
        self.base_dir = base_dir
        self.clusters: list[Cluster] = []

    def __call__(self, settings: Mapping[str, str] | None = None) -> Cluster:
        new = Cluster(self.install, settings=settings, base_dir=self.base_dir)
        self.clusters.append(new)  # before start: a failed start is cleaned up too
        new.start()
        return new

    def destroy_all(self) -> None:
        errors: list[BaseException] = []
        for each in self.clusters:
            try:
                each.destroy()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def make_cluster(pg_install: PgInstall) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(pg_install)
    try:
        yield factory
    finally:
        factory.destroy_all()


def _database_name(test_name: str) -> str:
    # Readable in server logs, unique, and within the 63-byte identifier limit.
    stem = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def dbname(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _database_name(request.node.name)
    cluster.create_database(name)
    try:
        yield name
    finally:
        cluster.drop_database(name)


def _clusters_of(item: pytest.Item) -> list[Cluster]:
    """Clusters the test used: fixture values, ``make_cluster`` products, and
    clusters created (and not yet destroyed) since the test's setup began."""
    found: list[Cluster] = []
    funcargs = getattr(item, "funcargs", {})
    for value in funcargs.values():
        candidates = value.clusters if isinstance(value, ClusterFactory) else [value]
        found += [c for c in candidates if isinstance(c, Cluster) and c not in found]
    older = item.stash.get(_preexisting, set())
    found += [c for c in live_clusters() if c not in found and c not in older]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    item.stash[_preexisting] = set(live_clusters())
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    # Remember where each log ended so a failure shows only this test's lines.
    item.stash[_log_offsets] = {c: c.log_size() for c in _clusters_of(item)}
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        offsets = item.stash.get(_log_offsets, {})
        for each in _clusters_of(item):
            text = each.server_log(LOG_LINES, offset=offsets.get(each, 0))
            if text:
                title = f"pgferry server log: PostgreSQL {each.install.version} ({each.path})"
                report.sections.append((title, text))
    return report
