"""``pgferry demo``: the README's first command, end to end, then ``--keep`` and
``--stop`` (which works as root: the servers run as an unprivileged user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import PGFERRY

#: The console script, started by its path while no ``pgferry`` on PATH is it.
SCRIPT = Path(sys.executable).with_name("pgferry")


def _servers(paths: list[str]) -> int:
    """How many of the clusters in ``paths`` have a server running."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return sum(1 for line in ps.splitlines() for p in paths if f"/postgres -D {p}/data" in line)


def _run(command: list[str], state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "60"},
    )


def test_demo_keep_then_stop(tmp_path: Path) -> None:
    program = [str(SCRIPT)] if SCRIPT.is_file() else PGFERRY
    try:
        _keep_then_stop(program, tmp_path)
    finally:  # whatever failed, no server is left behind
        _run([*PGFERRY, "demo", "--stop"], tmp_path)


def _keep_then_stop(program: list[str], tmp_path: Path) -> None:
    proc = _run([*program, "demo", "--seconds", "3", "--keep"], tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Identical: all 4 tables match row for row" in out
    assert "Traceback" not in proc.stderr
    # The status view ran during the demo, copy included where it was seen.
    assert "subscription demo (enabled; publications demo_pub)" in out
    # Kept: both servers run, recorded for --stop; the commands printed whole
    # (not wrapped at 60 columns) and naming the executable that was started.
    kept = json.loads((tmp_path / "pgferry" / "demo.json").read_text())
    paths = [c["path"] for c in kept]
    assert len(paths) == 2 and all(Path(p).is_dir() for p in paths)
    assert _servers(paths) == 2
    lines = out.splitlines()
    named = program[0] if program[0] == str(SCRIPT) else "pgferry"
    assert f"  remove them:        {named} demo --stop" in lines
    resume = next(line for line in lines if line.startswith("  resume replication: "))
    assert resume.startswith(f"  resume replication: {named} -d ") and resume.endswith(" run")
    assert "pg_ctl" not in out

    stopped = _run([*PGFERRY, "demo", "--stop"], tmp_path)
    assert stopped.returncode == 0 and stopped.stderr == "", stopped
    assert stopped.stdout.count("stopped and removed") == 2
    assert _servers(paths) == 0
    assert not any(Path(p).exists() for p in paths)
    assert not (tmp_path / "pgferry" / "demo.json").exists()
    again = _run([*PGFERRY, "demo", "--stop"], tmp_path)
    assert again.returncode == 0 and "no clusters kept" in again.stdout
