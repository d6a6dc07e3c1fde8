"""``pgferry run``: the launcher for the subscriptions of the ``-d`` database.

See :mod:`pgferry.runner.launcher`.
"""

from __future__ import annotations

import signal
from types import FrameType

import click

from pgferry.runner import Launcher


@click.command()
@click.option(
    "--max-sync-workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Table sync workers per subscription (max_sync_workers_per_subscription).",
)
@click.pass_obj
def run(obj: dict[str, str], max_sync_workers: int) -> None:
    """Run the apply and table sync workers of every enabled subscription."""
    launcher = Launcher(obj["dsn"], max_sync_workers_per_subscription=max_sync_workers)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        launcher.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    launcher.run()
