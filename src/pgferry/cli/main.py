"""The ``pgferry`` entry point: global options, logging, and error reporting.

Contract for every command: a :class:`~pgferry.errors.PgferryError` (or a
psycopg error that escaped) is printed as one ``pgferry: error: ...`` line, plus a
``hint:`` line when there is something to do, and the exit status is 1; no
traceback. Passwords never appear: messages carry masked conninfo only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
import psycopg

from pgferry import __version__
from pgferry.conninfo import mask
from pgferry.errors import PgferryError

EXIT_ERROR = 1


class _Group(click.Group):
    """Turns known errors into one clear line instead of a traceback."""

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
        click.echo(f"hint: {hint}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-d",
    "--dsn",
    default="",
    metavar="DSN",
    help="libpq conninfo or URI; without it the PG* environment variables are used, as psql.",
)
@click.option("-v", "--verbose", count=True, help="Log progress to stderr (-vv for debug).")
@click.version_option(__version__, prog_name="pgferry")
@click.pass_context
def main(ctx: click.Context, dsn: str, verbose: int) -> None:
    """pgferry: PostgreSQL logical replication engine."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s pgferry %(levelname)s %(message)s"
    )
    ctx.obj = {"dsn": dsn}
    logging.getLogger("pgferry").debug("using %s", mask(dsn) or "the PG* environment")


def _register() -> None:
    from pgferry.cli.conflicts import conflicts
    from pgferry.cli.demo import demo
    from pgferry.cli.publication import publication
    from pgferry.cli.run import run
    from pgferry.cli.schema import schema
    from pgferry.cli.sequences import sequences
    from pgferry.cli.status import status
    from pgferry.cli.stream import stream
    from pgferry.cli.subscription import subscription

    main.add_command(stream)
    main.add_command(demo)
    main.add_command(publication)
    main.add_command(run)
    main.add_command(subscription)
    main.add_command(status)
    main.add_command(conflicts)
    main.add_command(schema)
    main.add_command(sequences)


_register()
