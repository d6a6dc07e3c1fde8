"""``pgferry run``: the launcher for the subscriptions of the ``-d`` database.

See :mod:`pgferry.runner.launcher`; ``--metrics ADDR`` also serves Prometheus
metrics from the launcher process while it runs (:mod:`pgferry.metrics`).
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
@click.option(
    "--metrics",
    "metrics_address",
    metavar="ADDR",
    default=None,
    help="Serve Prometheus metrics at http://ADDR/metrics ([HOST]:PORT, e.g. :9187).",
)
@click.pass_obj
def run(obj: dict[str, str], max_sync_workers: int, metrics_address: str | None) -> None:
    """Run the apply and table sync workers of every enabled subscription."""
    launcher = Launcher(obj["dsn"], max_sync_workers_per_subscription=max_sync_workers)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        launcher.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = None
    if metrics_address is not None:
        from pgferry import metrics  # (prometheus_client: imported only when asked for)

        server = metrics.serve(metrics_address, obj["dsn"], launcher)
    try:
        launcher.run()
    finally:
        if server is not None:
            server.stop()
