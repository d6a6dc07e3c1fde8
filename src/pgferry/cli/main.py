"""The ``pgferry`` entry point: global options, logging, and error reporting.

Contract for every command: a :class:`~pgferry.errors.PgferryError` (or a
psycopg error that escaped) is printed as one ``pgferry: error: ...`` line, plus a
``hint:`` line when there is something to do, and the exit status is 1; no
traceback. Passwords never appear: messages carry masked conninfo only.

The global options (``-d``, ``-v``, ``-q``, ``--log-format``) are accepted
before and after any subcommand (:mod:`.options`); logging is :mod:`pgferry.logs`.
A hint that names a pgferry command names it as it was started
(:func:`invoked_as`): ``.venv/bin/pgferry status`` when that, not the
``pgferry`` on PATH, is what ran; the same holds in log lines.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
import psycopg

from pgferry import __version__, logs
from pgferry.cli import options
from pgferry.cli.helptext import WholeSummaries
from pgferry.conninfo import mask
from pgferry.errors import PgferryError

EXIT_ERROR = 1


#: Every command: its name, and where it lives (loaded the first time it is asked for).
COMMANDS = {
    "stream": "pgferry.cli.stream:stream",
    "demo": "pgferry.cli.demo:demo",
    "publication": "pgferry.cli.publication:publication",
    "run": "pgferry.cli.run:run",
    "subscription": "pgferry.cli.subscription:subscription",
    "status": "pgferry.cli.status:status",
    "top": "pgferry.cli.status:top",
    "conflicts": "pgferry.cli.conflicts:conflicts",
    "schema": "pgferry.cli.schema:schema",
    "sequences": "pgferry.cli.sequences:sequences",
    "verify": "pgferry.cli.verify:verify",
    "switchover": "pgferry.cli.switchover:switchover",
}


class _Group(WholeSummaries):
    """Turns known errors into one clear line instead of a traceback; lists each
    command's summary whole; loads a command's module only when the command is
    asked for (``pgferry switchover`` does not import what ``pgferry run`` needs:
    a command started beside a write load takes less of the machine)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
            options.share_with(command)
        return super().get_command(ctx, cmd_name)

    def all_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """Every command, loaded."""
        found = (self.get_command(ctx, name) for name in self.list_commands(ctx))
        return {c.name: c for c in found if c is not None and c.name is not None}

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgferryError as exc:
            _fail(exc.message, exc.hint)
        except psycopg.Error as exc:
            _fail(" ".join(str(exc).split()) or type(exc).__name__, None)
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): not an error of ours.
            sys.stderr.close()
            sys.exit(0)


def _fail(message: str, hint: str | None) -> None:
    click.echo(f"pgferry: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {logs.rewrite_hint(hint)}", err=True)
    sys.exit(EXIT_ERROR)


def invoked_as(argv0: str | None = None) -> str | None:
    """The executable to name in hints instead of ``pgferry``: the one started
    (as it was typed), when the ``pgferry`` on PATH is another file or none.
    None when they are the same file, or when pgferry was started as
    ``python -m`` (no executable of its own to name)."""
    started = sys.argv[0] if argv0 is None else argv0
    if not started or os.path.basename(started) in ("__main__.py", "-c", "-m"):
        return None
    if not os.path.isfile(started):
        return None
    on_path = shutil.which("pgferry")
    try:
        if on_path is not None and os.path.samefile(on_path, started):
            return None
    except OSError:
        pass
    return shlex.quote(started)


def hint_rewriter(program: str | None, commands: Iterable[str]) -> Callable[[str], str]:
    """Rewrites ``pgferry COMMAND`` (a command of ``commands``, or an option) in
    a hint to ``PROGRAM COMMAND``; unchanged when ``program`` is None."""
    names = "|".join(re.escape(c) for c in sorted(commands, key=len, reverse=True))
    if program is None or not names:
        return str
    pattern = re.compile(rf"(?<![\w./-])pgferry(?= (?:-|(?:{names})\b))")
    return lambda hint: pattern.sub(lambda _: program, hint)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgferry")
@click.pass_context
def main(ctx: click.Context, dsn: str, verbose: int, quiet: int, log_format: str) -> None:
    """pgferry: PostgreSQL logical replication engine.

    The options -d, -v, -q and --log-format are accepted after a command too.
    """
    assert isinstance(ctx.command, click.Group)
    logs.set_hint_rewriter(hint_rewriter(invoked_as(), ctx.command.list_commands(ctx)))
    ctx.obj = {"dsn": dsn}
    given = options.given(ctx)
    given.verbose, given.quiet, given.log_format = verbose, quiet, log_format
    options.configure_logging(ctx)
    logging.getLogger("pgferry").debug("using %s", mask(dsn) or "the PG* environment")


options.declare(main)
