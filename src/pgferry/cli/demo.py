"""``pgferry demo``: replication end to end on two embedded clusters (see
:mod:`pgferry.demo`); ``pgferry demo --stop`` removes the clusters ``--keep``
left running."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from pgferry.errors import InterfaceError


@click.command()
@click.option("--keep", is_flag=True, help="Leave both clusters running and say how to connect.")
@click.option(
    "--stop", is_flag=True, help="Stop and remove the clusters an earlier --keep left running."
)
@click.option(
    "--seconds",
    type=click.IntRange(1, 600),
    default=10,
    show_default=True,
    help="How long pgbench writes.",
)
def demo(keep: bool, stop: bool, seconds: int) -> None:
    """Publisher, subscriber, initial copy, a write load and a row-by-row check."""
    if stop:
        from pgferry.demo import stop_demo

        if keep:
            raise InterfaceError(
                "--keep and --stop exclude each other",
                hint="pgferry demo --stop removes what an earlier pgferry demo --keep left",
            )

        stop_demo(Console())
        return
    from pgferry.demo import run_demo

    result = run_demo(Console(), keep=keep, seconds=seconds)
    if not result.identical:
        sys.exit(1)
