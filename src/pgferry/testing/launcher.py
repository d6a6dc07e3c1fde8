"""A launcher in a process of its own, as ``pgferry run`` runs, with test intervals.

:class:`LauncherProcess` starts ``python -m pgferry.testing.launcher DSN POLL
RETRY``: a fresh interpreter with one thread, so the launcher forks its workers
from its loaded modules as ``pgferry run`` does (a launcher run as a thread of a
test process starts each worker as a new interpreter instead, and shares that
process's interpreter lock with whatever else it runs, such as client threads).
``POLL`` and ``RETRY`` are the launcher's poll and retry intervals, shorter in
tests than ``run``'s defaults. The DSN reaches the process in its environment,
not on its command line. Its log (INFO, text) goes to a file. SIGTERM stops it
cleanly, as it stops ``pgferry run``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from pgferry import logs
from pgferry.runner import Launcher
from pgferry.runner.env import DSN_ENV, LOG_LEVEL_ENV

#: Seconds a launcher may take to stop after SIGTERM before it is killed.
STOP_WAIT = 60.0


class LauncherProcess:
    """``pgferry run`` for ``dsn`` in a child process, logging to ``log``."""

    def __init__(
        self, dsn: str, log: Path, *, poll_interval: float = 0.2, retry_interval: float = 1.0
    ) -> None:
        self.dsn = dsn
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, f"{poll_interval:g}", f"{retry_interval:g}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, DSN_ENV: dsn, LOG_LEVEL_ENV: "INFO"},
            )

    def stop(self) -> int:
        """SIGTERM, and its exit status (killed after :data:`STOP_WAIT` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def main(argv: list[str]) -> int:
    poll, retry = (float(a) for a in argv)
    logs.configure(logging.INFO)
    launcher = Launcher(
        os.environ[DSN_ENV],
        poll_interval=poll,
        retry_interval=retry,
        worker_env={LOG_LEVEL_ENV: "INFO"},
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        launcher.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    launcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
