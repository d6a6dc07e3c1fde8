"""``pgferry schema``: the subscriber's schema compared with the publisher's.

::

    pgferry [-d DSN] schema diff NAME [--json]

``-d`` is the subscriber database; the publisher is reached with the
subscription's stored conninfo. ``diff`` compares the subscription's tables on
both sides (columns, indexes, constraints, sequences, the extensions of the
column types; see :mod:`pgferry.schema.diff`) and prints one line per difference
then a summary, or with ``--json`` the object documented there. Exit status 0
only when the two are equivalent; 1 when they differ, and on an error (one
``pgferry: error:`` line). Nothing is written (but a catalog upgrade).
"""

from __future__ import annotations

import sys

import click

from pgferry.schema.diff import diff_subscription, render_text, to_json

#: Exit status when the schemas differ (an error exits 1 too).
EXIT_DIFFERENT = 1


@click.group()
def schema() -> None:
    """Compare the subscriber's schema with the publisher's (-d: subscriber)."""


@schema.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of lines.")
@click.pass_obj
def diff(obj: dict[str, str], name: str, as_json: bool) -> None:
    """Compare subscription NAME's tables with the publisher's; exit 1 if they differ."""
    result = diff_subscription(obj["dsn"], name)
    if as_json:
        click.echo(to_json(result))
    else:
        for line in render_text(result):
            click.echo(line)
    if not result.equivalent:
        sys.exit(EXIT_DIFFERENT)
