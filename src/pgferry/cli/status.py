"""``pgferry status``: what every subscription of the ``-d`` database is doing.

::

    pgferry [-d DSN] status [--json]

``-d`` is the subscriber database. For each subscription: enabled, the apply
worker (running with its pid, stale, or stopped), received and applied positions,
lag in bytes and seconds, table states and the tables not ready yet, errors and
counters, and the publisher's slot (active, restart and confirmed positions,
retained WAL, ``wal_status``). A publisher that cannot be reached is shown as
such (masked conninfo and the error) next to the local part; the command still
exits 0. ``--json`` prints the array documented in :mod:`pgferry.status.report`.
Nothing is written anywhere.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from pgferry.status import collect, render_table, to_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_obj
def status(obj: dict[str, str], as_json: bool) -> None:
    """Show the state, lag and errors of every subscription (-d: subscriber)."""
    statuses = collect(obj["dsn"])
    if as_json:
        click.echo(to_json(statuses))
    elif not statuses:
        click.echo("no subscriptions")
    else:
        width = None if sys.stdout.isatty() else 200
        Console(soft_wrap=False, width=width).print(render_table(statuses))
