"""``pgferry status`` and ``pgferry top``: what every subscription of the ``-d``
database is doing.

::

    pgferry [-d DSN] status [--json] [--watch [SECONDS] [--count N]]
    pgferry [-d DSN] top [--interval SECONDS] [--count N]

``-d`` is the subscriber database. For each subscription, one block of
``key: value`` lines: enabled, the apply worker (running with its pid, stale,
retrying with the attempt and when, or stopped), received and applied positions,
lag in bytes and seconds, table states and the tables not ready yet, each table
sync worker (phase, pid, how long) and its copy's progress (rows and bytes done,
estimated totals, rate, ETA), errors and counters with the last error's next
action, and the publisher's slot. The text fits 80 columns when not on a
terminal and the terminal's width on one; values are wrapped at spaces only. A
publisher that cannot be reached is shown as such next to the local part; the
command still exits 0. ``--json`` prints the array documented in
:mod:`pgferry.status.report`.

``--watch`` shows it again every SECONDS (2), in place on a terminal, one block
after another otherwise (with ``--json``: one array per line); ``--count`` stops
after N views, Ctrl-C at any time. ``top`` is ``status --watch`` listing every
table. Nothing is written anywhere.
"""

from __future__ import annotations

import sys

import click

from pgferry.status import collect, to_json
from pgferry.status.render import WIDTH, render_text
from pgferry.status.watch import INTERVAL
from pgferry.status.watch import watch as watch_status


def _width() -> int:
    if sys.stdout.isatty():
        from rich.console import Console

        return Console().width
    return WIDTH


_COUNT = click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --watch: stop after N views (default: until Ctrl-C).",
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of text.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=INTERVAL,
    default=None,
    metavar="[SECONDS]",
    help=f"Show it again every SECONDS (default {INTERVAL:g}) until Ctrl-C.",
)
@_COUNT
@click.pass_obj
def status(obj: dict[str, str], as_json: bool, watch: float | None, count: int | None) -> None:
    """Show the state, lag, copy progress and errors of every subscription
    (-d: subscriber)."""
    if watch is not None or count is not None:
        _watch(obj["dsn"], watch or INTERVAL, count, as_json=as_json, all_tables=False)
        return
    statuses = collect(obj["dsn"])
    if as_json:
        click.echo(to_json(statuses))
    elif not statuses:
        click.echo("no subscriptions")
    else:
        click.echo(render_text(statuses, _width()))


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=INTERVAL,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two views.",
)
@_COUNT
@click.pass_obj
def top(obj: dict[str, str], interval: float, count: int | None) -> None:
    """A live view of every subscription and table (status --watch), until Ctrl-C."""
    _watch(obj["dsn"], interval, count, as_json=False, all_tables=True)


def _watch(
    dsn: str, interval: float, count: int | None, *, as_json: bool, all_tables: bool
) -> None:
    watch_status(
        dsn,
        interval=interval,
        count=count,
        as_json=as_json,
        all_tables=all_tables,
        out=sys.stdout,
        terminal=sys.stdout.isatty(),
    )
