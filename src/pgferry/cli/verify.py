"""``pgferry verify``: compare a subscription's tables on both sides at one LSN.

::

    pgferry [-d DSN] verify NAME [--table T ...] [--jobs N] [--json] [--repair]
                                 [--limit N] [--timeout S] [--lease S]

``-d`` is the subscriber database; the publisher is reached with the
subscription's stored conninfo, and ``pgferry run`` must be applying the
subscription (its apply worker is held for a moment at the publisher LSN both
sides are compared at; see :mod:`pgferry.verify`). Prints one line per table and
per differing key (``--limit`` per kind, all counted), then a summary; or with
``--json`` the object of :func:`pgferry.verify.report.to_dict`. Exit status 0
only when both sides hold the same published data; 1 when they differ (even if
``--repair`` fixed them), and on an error (one ``pgferry: error:`` line).
"""

from __future__ import annotations

import sys

import click

from pgferry.verify import render_text, to_json, verify_subscription
from pgferry.verify.compare import DEFAULT_LIMIT
from pgferry.verify.consistent import DEFAULT_LEASE, DEFAULT_TIMEOUT

#: Exit status when the two sides differ (an error exits 1 too).
EXIT_DIFFERENT = 1


@click.command()
@click.argument("name")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="T",
    help="Compare only this table (schema.name; repeatable).",
)
@click.option("--jobs", default=4, show_default=True, help="Sessions on each side.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of lines.")
@click.option(
    "--repair",
    is_flag=True,
    help="Fix the differences on the subscriber (the publisher wins), at a fresh held LSN.",
)
@click.option(
    "--limit",
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Keys listed per table and kind (all are counted).",
)
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the publisher to answer (at least 2), and for the apply"
    " worker to pause and to reach the LSN.",
)
@click.option(
    "--lease",
    default=DEFAULT_LEASE,
    show_default=True,
    help="Seconds the apply hold lasts unless renewed (if verify dies).",
)
@click.pass_obj
def verify(
    obj: dict[str, str],
    name: str,
    tables: tuple[str, ...],
    jobs: int,
    as_json: bool,
    repair: bool,
    limit: int,
    timeout: float,
    lease: float,
) -> None:
    """Compare subscription NAME's tables on both sides at one LSN; exit 1 if they differ."""
    report = verify_subscription(
        obj["dsn"],
        name,
        tables=tables or None,
        jobs=jobs,
        limit=limit,
        repair=repair,
        lease=lease,
        timeout=timeout,
    )
    if as_json:
        click.echo(to_json(report))
    else:
        for line in render_text(report):
            click.echo(line)
    if not report.identical:
        sys.exit(EXIT_DIFFERENT)
