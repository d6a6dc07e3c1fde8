"""The switchover tests' environment (:mod:`pgferry.testing.upgrade`), once
per module: clusters of two majors, PgBouncer, and a launcher on each side."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgferry.testing.pgbouncer import pgbouncer_binary
from pgferry.testing.upgrade import Upgrade, upgrade_setup


@pytest.fixture(scope="module")
def upgrade() -> Iterator[Upgrade]:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)")
    with upgrade_setup("upgrade") as found:
        yield found
