"""``pgferry run``: the launcher for the subscriptions of the ``-d`` database.

See :mod:`pgferry.runner.launcher`; ``--metrics ADDR`` also serves Prometheus
metrics from the launcher process while it runs (:mod:`pgferry.metrics`).

``run`` logs at INFO unless ``-q``/``-v`` (or ``$PGFERRY_LOG_LEVEL``) say
otherwise: its log is what an operator reads. Its workers log at its level and
in its format, and stream with its ``--receiver-timeout``: all three reach them
in their environment. SIGINT and SIGTERM stop it cleanly (exit status 0).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from pgferry.cli import options
from pgferry.runner import Launcher
from pgferry.runner.env import LOG_FORMAT_ENV, LOG_LEVEL_ENV
from pgferry.stream.connection import DEFAULT_RECEIVER_TIMEOUT, RECEIVER_TIMEOUT_ENV


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
@click.option(
    "--receiver-timeout",
    type=click.FloatRange(0, 86400),
    metavar="SECONDS",
    default=None,
    help=(
        "Give up a publisher connection silent this long, even to a keepalive request,"
        f" and retry (native's wal_receiver_timeout; 0: never)  [default: ${RECEIVER_TIMEOUT_ENV}"
        f" or {DEFAULT_RECEIVER_TIMEOUT:g}]"
    ),
)
@click.pass_context
def run(
    ctx: click.Context,
    max_sync_workers: int,
    metrics_address: str | None,
    receiver_timeout: float | None,
) -> None:
    """Run the apply and table sync workers of every enabled subscription."""
    obj: dict[str, str] = ctx.ensure_object(dict)
    level = options.configure_logging(ctx, default=logging.INFO)
    env = {
        LOG_LEVEL_ENV: logging.getLevelName(level),
        LOG_FORMAT_ENV: options.given(ctx).log_format,
    }
    if receiver_timeout is not None:
        env[RECEIVER_TIMEOUT_ENV] = f"{receiver_timeout:g}"
    launcher = Launcher(
        obj.get("dsn", ""), max_sync_workers_per_subscription=max_sync_workers, worker_env=env
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        launcher.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = None
    if metrics_address is not None:
        from pgferry import metrics  # (prometheus_client: imported only when asked for)

        server = metrics.serve(metrics_address, obj.get("dsn", ""), launcher)
        host, port = server.address
        host = f"[{host}]" if ":" in host else host
        launcher.metrics_url = f"http://{host}:{port}/metrics"
    try:
        launcher.run()
    finally:
        if server is not None:
            server.stop()
