"""Entry point of one worker process started by the launcher.

    python -m pgferry.runner.child apply SUBSCRIPTION
    python -m pgferry.runner.child sync SUBSCRIPTION SCHEMA TABLE
    python -m pgferry.runner.child sequences SUBSCRIPTION

(one line per kind of :mod:`.kinds`)
or, without a new interpreter, :func:`run_forked` in a process forked from the
launcher (see :mod:`.launcher`).

The subscriber DSN comes in the environment (``PGFERRY_SUBSCRIBER_DSN``), not on
the command line, so that no password shows in ``ps``. SIGTERM and SIGINT stop the
worker cleanly (it finishes the transaction in hand, confirms, and exits 0). Exit
status 1 means the worker failed (the error is logged and stored in the catalog);
the launcher restarts it after a pause. A pgferry error, or a connection lost
(the subscriber or publisher restarting), is one log line; only what pgferry did
not expect is logged with its traceback.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import traceback
from types import FrameType
from typing import NoReturn

import psycopg

from pgferry.errors import PgferryError
from pgferry.runner import kinds
from pgferry.runner.env import DSN_ENV, LAUNCHER_PID_ENV, LOG_LEVEL_ENV

#: Container objects allocated (net of those freed) before the garbage collector
#: looks at the youngest ones; Python's default is 700. A worker allocates a few
#: per change (the envelope, the message, a staged row), and most die by reference
#: counting soon after; with the default, those that live to the end of their batch
#: (the staged rows) are scanned by collection after collection. In a catch-up that
#: was about a quarter of the apply worker's CPU (docs/benchmarks.md). Cycles are
#: still collected, in larger steps.
GC_THRESHOLD = 100_000


def tune_gc() -> None:
    """Collect this worker process's young objects in large steps (see above)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the launcher dies, even by kill -9, so
    a restarted launcher never finds orphans holding the slots."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup only
        pass
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):
        sys.exit(0)  # the launcher died before the request above took effect


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO"),
        stream=sys.stderr,
        format="%(asctime)s pgferry[%(process)d] %(levelname)s %(message)s",
        force=True,  # forked: not the launcher's settings
    )
    worker = kinds.build(os.environ.get(DSN_ENV, ""), args)
    if worker is None:
        print(kinds.usage(), file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tune_gc()
    try:
        worker.run()
    except PgferryError as exc:
        logging.getLogger("pgferry").error("%s", exc.message)
        return 1
    except psycopg.OperationalError as exc:  # a connection lost: no traceback to show
        logging.getLogger("pgferry").error(
            "%s worker for %s: %s", args[0], " ".join(args[1:]), " ".join(str(exc).split())
        )
        return 1
    except Exception as exc:  # a worker must not die silently
        logging.getLogger("pgferry").exception("worker failed: %s", exc)
        return 1
    return 0


def run_forked(dsn: str, launcher_pid: int, args: list[str]) -> NoReturn:
    """Run a worker in a process just forked from the launcher, and end it.

    What a worker started with ``python -m`` gets, it gets here too: the DSN and
    the launcher's pid in the environment, stdin from /dev/null, its own logging
    and signal handlers. It never returns into the launcher's code (whose frames,
    and whose catalog connection, the fork copied: the connection is left alone,
    as closing it would end the launcher's session): ``os._exit``.
    """
    code = 1
    try:
        # Until main() sets its own: the launcher's would only stop the copy of it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.environ[DSN_ENV] = dsn
        os.environ[LAUNCHER_PID_ENV] = str(launcher_pid)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
