"""``pgferry demo``: replication end to end on two embedded clusters (see
:mod:`pgferry.demo`)."""

from __future__ import annotations

import sys

import click
from rich.console import Console


@click.command()
@click.option("--keep", is_flag=True, help="Leave both clusters running and say how to connect.")
@click.option(
    "--seconds",
    type=click.IntRange(1, 600),
    default=10,
    show_default=True,
    help="How long pgbench writes.",
)
def demo(keep: bool, seconds: int) -> None:
    """Publisher, subscriber, initial copy, a write load and a row-by-row check."""
    from pgferry.demo import run_demo

    result = run_demo(Console(), keep=keep, seconds=seconds)
    if not result.identical:
        sys.exit(1)
