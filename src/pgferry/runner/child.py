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
the launcher restarts it after a pause. The error that ends a worker is logged
once, as one line (:mod:`pgferry.logs`): a pgferry error with its hint and, for
an apply error, its table and finish LSN; a connection lost (the subscriber or
publisher restarting) with the server's words; what pgferry did not expect with
its class, and its traceback at DEBUG. The log level and format come from the
launcher (:data:`~.env.LOG_LEVEL_ENV`, default INFO; :data:`~.env.LOG_FORMAT_ENV`),
and every record carries the worker's kind, subscription and table.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from types import FrameType
from typing import NoReturn

import psycopg

from pgferry import logs
from pgferry.errors import ApplyError, PgferryError
from pgferry.runner import kinds
from pgferry.runner.env import DSN_ENV, LAUNCHER_PID_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV
from pgferry.stream import waiting

logger = logging.getLogger("pgferry.runner")

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


def _configure_logging() -> bool:
    """Log as the launcher asks (its environment); False, with one line on
    stderr, when what it asks is not valid."""
    try:
        level, fmt = logs.from_environment(
            os.environ, LOG_LEVEL_ENV, LOG_FORMAT_ENV, default=logging.INFO
        )
    except PgferryError as exc:
        print(f"pgferry: error: {exc.message}", file=sys.stderr)
        return False
    logs.configure(level, fmt)  # (forked: replaces the launcher's handler)
    return True


def _error_fields(exc: PgferryError) -> dict[str, object]:
    """What the error says in fields of its log record (hint, table, LSN)."""
    fields: dict[str, object] = {"hint": exc.hint}
    if isinstance(exc, ApplyError):
        fields.update(subscription=exc.subscription, table=exc.table, lsn=exc.finish_lsn)
    return fields


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    if not _configure_logging():
        return 2
    worker = kinds.build(os.environ.get(DSN_ENV, ""), args)
    if worker is None:
        print(kinds.usage(), file=sys.stderr)
        return 2
    logs.bind(**kinds.log_fields(args))
    which = kinds.describe(args)
    logger.debug(
        "%s: running, logging at %s", which, logging.getLevelName(logger.getEffectiveLevel())
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # ... and the stop request ends a wait for the publisher's data at once.
    waiting.wake_on_signals()
    tune_gc()
    try:
        worker.run()
    except PgferryError as exc:
        # (Named as the worker unless the message names its subscription already.)
        names = [f"subscription {args[1]!r}", f"subscription {args[1]}"] if len(args) > 1 else []
        named = any(name in exc.message for name in names)
        logger.error("%s%s", "" if named else f"{which}: ", exc.message, extra=_error_fields(exc))
        return 1
    except psycopg.OperationalError as exc:  # a connection lost: no traceback to show
        logger.error("%s: %s", which, exc)
        return 1
    except Exception as exc:  # a worker must not die silently
        logger.error(
            "%s failed: %s: %s",
            which,
            type(exc).__name__,
            exc,
            exc_info=True,
            extra={"hint": "a pgferry bug: run with -vv for the traceback, and report it"},
        )
        return 1
    return 0


def run_forked(
    dsn: str, launcher_pid: int, args: list[str], env: Mapping[str, str] | None = None
) -> NoReturn:
    """Run a worker in a process just forked from the launcher, and end it.

    What a worker started with ``python -m`` gets, it gets here too: the DSN,
    the launcher's pid and ``env`` in the environment, stdin from /dev/null, its own logging
    and signal handlers. It never returns into the launcher's code (whose frames,
    and whose catalog connection, the fork copied: the connection is left alone,
    as closing it would end the launcher's session): ``os._exit``.
    """
    code = 1
    try:
        # Until main() sets its own: the launcher's would only stop the copy of it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.environ.update(env or {})
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
