"""``pgferry stream``: decoded changes of a slot as JSON lines on stdout (CDC).

See :mod:`pgferry.cdc.runner` for the delivery guarantee and
:mod:`pgferry.cdc.jsonlines` for the line format.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Literal, cast

import click

from pgferry.cdc.runner import StreamConfig, StreamRunner
from pgferry.errors import InterfaceError
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.stream import PgoutputOptions


def _lsn(text: str | None, option: str) -> Lsn | None:
    if text is None:
        return None
    try:
        return Lsn.parse(text)
    except InterfaceError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.command()
@click.option("--slot", required=True, help="Logical replication slot to stream from.")
@click.option(
    "--publication",
    "publications",
    multiple=True,
    required=True,
    help="Publication to stream (repeatable).",
)
@click.option("--create-slot", is_flag=True, help="Create the slot first (pgoutput).")
@click.option("--temporary", is_flag=True, help="With --create-slot: a temporary slot.")
@click.option("--start", "start", metavar="LSN", help="Start at this LSN (default: the slot's).")
@click.option("--end-lsn", metavar="LSN", help="Stop once this LSN is reached.")
@click.option("--binary", is_flag=True, help="Ask for binary column values (PG 14+).")
@click.option(
    "--streaming",
    type=click.Choice(["on", "off"]),
    default=None,
    help="Receive large transactions while in progress (default: on from PG 14); "
    "they are emitted after their commit either way.",
)
@click.option("--messages", is_flag=True, help="Include pg_logical_emit_message output.")
@click.option("--two-phase", is_flag=True, help="Decode prepared transactions (PG 15+).")
@click.option("--with-tx", is_flag=True, help="Also emit begin and commit lines.")
@click.option(
    "--status-interval",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between status updates to the server.",
)
@click.pass_obj
def stream(
    obj: dict[str, str],
    slot: str,
    publications: tuple[str, ...],
    create_slot: bool,
    temporary: bool,
    start: str | None,
    end_lsn: str | None,
    binary: bool,
    streaming: str | None,
    messages: bool,
    two_phase: bool,
    with_tx: bool,
    status_interval: float,
) -> None:
    """Stream a slot's decoded changes as JSON lines (one per change) on stdout."""
    if temporary and not create_slot:
        raise click.UsageError("--temporary needs --create-slot")
    start_lsn = _lsn(start, "--start") or INVALID_LSN
    end = _lsn(end_lsn, "--end-lsn")
    options = PgoutputOptions(
        publication_names=publications,
        binary=binary,
        messages=messages,
        streaming=cast(Literal["on", "off"], streaming or "on"),
        two_phase=two_phase,
    )
    config = StreamConfig(
        dsn=obj["dsn"],
        slot=slot,
        options=options,
        create_slot=create_slot,
        temporary=temporary,
        start_lsn=start_lsn,
        end_lsn=end,
        with_tx=with_tx,
        status_interval=status_interval,
        # The default "on" quietly becomes "off" on PG 13, which cannot stream;
        # the output is the same either way.
        streaming_if_supported=streaming is None,
    )
    runner = StreamRunner(config, sys.stdout.buffer)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runner.run()
