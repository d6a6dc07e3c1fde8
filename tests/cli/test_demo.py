"""``pgferry demo``: the README's first command, end to end."""

from __future__ import annotations

import subprocess

from tests.support import PGFERRY


def _postmasters() -> int:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True).stdout.decode()
    return sum(1 for line in ps.splitlines() if "/postgres -D " in line)


def test_demo_replicates_and_verifies_identical_tables() -> None:
    before = _postmasters()
    proc = subprocess.run(
        [*PGFERRY, "demo", "--seconds", "3"],
        capture_output=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "Identical: all 4 tables match row for row" in out
    assert "Traceback" not in proc.stderr.decode()
    # The demo cleans up after itself: its two servers are gone.
    assert _postmasters() == before
