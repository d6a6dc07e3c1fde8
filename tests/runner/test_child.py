"""The worker process entry point (``python -m pgferry.runner.child``)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from pgferry.runner import child
from pgferry.runner.env import DSN_ENV
from pgferry.testing import Cluster

# Runs main() in a process of its own (it sets signal handlers and logging), then
# prints what it left the garbage collector with, and main()'s exit status.
_PROBE = (
    "import gc, sys\n"
    "from pgferry.runner import child\n"
    "code = child.main(sys.argv[1:])\n"
    "print(gc.get_threshold()[0], code)\n"
)


def test_a_worker_process_collects_young_objects_in_large_steps(
    cluster: Cluster, dbname: str
) -> None:
    # The worker fails (no catalog in this database), after it was set up as a
    # worker runs.
    env = {**os.environ, DSN_ENV: cluster.dsn(dbname)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "apply", "nosuch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    threshold, code = out.stdout.split()
    assert int(code) == 1, out.stderr
    assert int(threshold) == child.GC_THRESHOLD != gc.get_threshold()[0]
